"""From localisations to heterochromatin domains (Kant et al., Nat Commun 2024).

Voronoi density, nucleus outline, DBSCAN domains, lamina-associated band, the lab's geometric rates, and the
fields the segmentation implies for :func:`napari_mollifier.infer_rates`. No Qt, no napari.
"""

from .fields import segmentation_fields
from .pipeline import DEFAULTS, analyse_localisations, analyse_table
from .rates import domain_spacing, geometric_rates, lognormal_fit
from .result import TABLE_COLUMNS, DomainResult
from .voronoi import density_image, voronoi_areas, voronoi_density

__all__ = ["analyse_localisations", "analyse_table", "DomainResult", "DEFAULTS", "TABLE_COLUMNS", "voronoi_areas",
           "voronoi_density", "density_image", "geometric_rates", "domain_spacing", "lognormal_fit",
           "segmentation_fields"]
