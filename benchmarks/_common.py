"""Helpers shared by the benchmark scripts: machine description, load average and the ``RESULTS.md`` writer.

Not a benchmark itself. Each script in ``benchmarks/`` imports it as ``_common`` (the script's own folder is put
on ``sys.path`` first). ``RESULTS.md`` holds one ``##`` section per script, between ``<!-- name:start -->`` and
``<!-- name:end -->``; a script may split its section into parts, ``<!-- name:part:start -->`` /
``<!-- name:part:end -->``, nested inside its own markers. Writing a section or a part leaves the rest of the file
as it was, byte for byte.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
FILE_HEADER = (
    "# Benchmark results\n\n"
    "Each benchmark script in `benchmarks/` rewrites only its own `##` section below, between its\n"
    "`<!-- name:start -->` / `<!-- name:end -->` marker comments; the numbers are measured by the script in the\n"
    "run it names, never typed in. See `benchmarks/README.md` for how to run them.\n"
)


def use_checkout_src() -> None:
    """Put this checkout's ``src/`` first on ``sys.path``, so that a benchmark measures the code it sits next to
    and not some installed copy of ``napari_mollifier``."""
    if (SRC / "napari_mollifier").is_dir() and str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))


# ------------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo``; ``platform.processor()`` (or the architecture) where it is absent."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def usable_cores() -> int | None:
    """Cores this process may run on (its CPU affinity); ``os.cpu_count()`` where affinity is not available."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def git_state(repo: Path = REPO, *, untracked: bool = False) -> str | None:
    """Short commit of ``repo``'s HEAD, plus ``" + uncommitted changes"`` when the tracked files differ from it
    (or, with ``untracked``, when there are untracked files too); None when git cannot tell."""
    porcelain = ["status", "--porcelain"] + ([] if untracked else ["--untracked-files=no"])
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), *porcelain], capture_output=True, text=True, check=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    return commit + (" + uncommitted changes" if dirty else "")


def machine(fields: Iterable[str], *, repo: Path = REPO, usable: bool = True, untracked: bool = False,
            git_unknown: str | None = "unknown") -> str:
    """One-line machine description: ``CPU <model>, <n> cores (<k> usable), <fields...>; git <commit>``.

    ``fields`` are the caller's own entries (library versions, threads, device...), joined with ``", "`` in the
    order given. ``usable=False`` leaves out the ``(<k> usable)`` count; ``git_unknown=None`` leaves out the git
    entry when git cannot tell (otherwise it reads ``git <git_unknown>``).
    """
    cores = f"{os.cpu_count()} cores" + (f" ({usable_cores()} usable)" if usable else "")
    text = ", ".join([f"CPU {cpu_model()}", cores, *fields])
    git = git_state(repo, untracked=untracked)
    if git is None:
        git = git_unknown
    return text if git is None else f"{text}; git {git}"


def load_average(all_three: bool = False) -> str:
    """System load average: the 1-minute value (``"1.2"``), or with ``all_three`` the 1/5/15-minute values
    (``"1.2/0.9/0.7"``); ``"n/a"`` where the platform has none."""
    try:
        loads = os.getloadavg()
    except (AttributeError, OSError):
        return "n/a"
    return "/".join(f"{v:.1f}" for v in (loads if all_three else loads[:1]))


def utc_stamp() -> str:
    """Current date and time, ``YYYY-MM-DD HH:MM UTC``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------------------------------------ RESULTS.md


def markers(name: str, part: str | None = None) -> tuple[str, str]:
    """The start and end marker comments of section ``name`` (or of its part ``part``)."""
    key = name if part is None else f"{name}:{part}"
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"


def read_section(path: Path, name: str, part: str | None = None) -> str | None:
    """Text between the markers of section ``name`` (or of its part ``part``) in ``path``, markers excluded;
    None when the file or the markers are missing."""
    path = Path(path)
    if not path.exists():
        return None
    text = path.read_text()
    start, end = markers(name)
    i, j = text.find(start), text.find(end)
    if not 0 <= i < j:
        return None
    if part is None:
        return text[i + len(start):j]
    outer = text[i:j]
    start, end = markers(name, part)
    a, b = outer.find(start), outer.find(end)
    return outer[a + len(start):b] if 0 <= a < b else None


def write_section(path: Path, name: str, body: str, *, part: str | None = None, heading: str | None = None) -> None:
    """Write ``body`` between the markers of section ``name`` of the markdown file ``path``, or, with ``part``,
    between the markers of that part inside section ``name``; the rest of the file is kept as it was.

    A missing file starts with :data:`FILE_HEADER`. A missing section is appended at the end of the file (with a
    part: as ``heading`` alone, the part then goes in it); a missing part goes at the end of its section. The file
    is replaced atomically (temporary file + ``os.replace``).
    """
    path = Path(path)
    text = path.read_text() if path.exists() else FILE_HEADER
    if part is not None:
        outer_start, outer_end = markers(name)
        if outer_start not in text:
            text = text.rstrip("\n") + f"\n\n{outer_start}\n{heading}\n\n{outer_end}\n"
    start, end = markers(name, part)
    section = f"{start}\n{body.strip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if 0 <= i < j:
        text = text[:i] + section + text[j + len(end):]
    elif part is None:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        k = text.find(outer_end)
        text = text[:k] + section + "\n" + text[k:]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
