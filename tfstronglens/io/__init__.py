"""File input/output: FITS images with their headers, truth parameters and extensions.

Every writer is atomic (temporary file + ``os.replace``) and refuses to overwrite an
existing file unless ``overwrite=True``.
"""

from .fits import params_from_header, params_to_header, read_fits, write_fits
from .observed import ObservedImage, load_lens_image, pixel_scale_from_header

__all__ = ["write_fits", "read_fits", "params_to_header", "params_from_header",
           "load_lens_image", "ObservedImage", "pixel_scale_from_header"]
