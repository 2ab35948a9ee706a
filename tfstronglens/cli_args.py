"""Command-line options shared by the commands that read an observed lens image (``fit``,
``reconstruct``): parsed in one place, read in one place."""

from __future__ import annotations

from .cli import _positive_float

__all__ = ["add_image_args", "load_image_args"]


def add_image_args(p, what: str = "the lens image (square)"):
    """Add ``IMAGE.fits`` and the options that describe it (HDU, PSF, noise, exposure,
    pixel scale) to the parser ``p``."""
    p.add_argument("image", metavar="IMAGE.fits", help=what)
    p.add_argument("--hdu", default=None, help="HDU of the image (index or EXTNAME)")
    p.add_argument("--psf", metavar="PSF.fits", default=None,
                   help="PSF kernel (default: the image file's PSF extension, if any)")
    p.add_argument("--psf-fwhm", type=_positive_float, default=None, metavar="ARCSEC",
                   help="Gaussian PSF FWHM when there is no kernel")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise-rms", type=_positive_float, default=None, metavar="S",
                       help="background noise per pixel, e-/s (default: header BKGRMS)")
    noise.add_argument("--noise-map", default=None, metavar="FILE",
                       help="FITS map of the per-pixel noise sigma (e-/s)")
    p.add_argument("--exposure", type=_positive_float, default=None, metavar="T",
                   help="exposure time in s for the source's Poisson noise (default: "
                        "header EXPTIME; without it only the background noise)")
    p.add_argument("--pixel-scale", type=_positive_float, default=None, metavar="S",
                   help="arcsec per pixel (default: header PIXSCALE or the WCS)")


def load_image_args(args):
    """The :class:`~tfstronglens.io.ObservedImage` that :func:`add_image_args`' options
    describe."""
    from .io import load_lens_image

    hdu = args.hdu
    if hdu is not None and hdu.lstrip("-").isdigit():
        hdu = int(hdu)
    return load_lens_image(args.image, hdu=hdu, psf=args.psf, psf_fwhm=args.psf_fwhm,
                           noise_rms=args.noise_rms, noise_map=args.noise_map,
                           exposure_time=args.exposure, pixel_scale=args.pixel_scale)
