"""The examples in the core's docstrings run and print what they say."""

import doctest

import pytest

from napari_mollifier import kernels, mollifier


@pytest.mark.parametrize("module", [kernels, mollifier])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
