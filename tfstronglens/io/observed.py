"""Read an observed lens image (and its PSF and noise) from FITS into an Observation.

Orientation: pixel ``(row i, column j)`` of the array is at ``(x, y) = ((j - (N-1)/2) s,
(i - (N-1)/2) s)`` arcsec (:class:`~tfstronglens.PixelGrid`), so row 0 is the bottom row
(``-y``): the FITS standard, in which the first stored row is the bottom of the image and
the FITS pixel coordinate ``Y`` grows upward. Files whose arrays are stored the other way
up (row 0 at ``+y``, as PyAutoLens writes them) are read with ``flip_y=True``
(``fit --flip-y``). With a celestial WCS in the header, :meth:`ObservedImage.sky_frame`
maps the model's frame to the sky (:mod:`tfstronglens.io.sky`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from .fits import read_fits

__all__ = ["ObservedImage", "load_lens_image", "pixel_scale_from_header"]


def pixel_scale_from_header(header):
    """Pixel scale in arcsec from a FITS header: ``PIXSCALE`` (arcsec), else the WCS
    (``CDELT``/``CD``/``PC`` matrix, degrees per pixel; the geometric mean of the two axes'
    scales), else ``None``."""
    if header is None:
        return None
    if "PIXSCALE" in header:
        value = float(header["PIXSCALE"])
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"header PIXSCALE must be a positive number, got {value!r}")
        return value
    has_wcs = any(k in header for k in ("CD1_1", "CDELT1", "PC1_1"))
    if not has_wcs:
        return None
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(header).celestial
    if wcs.naxis != 2:
        return None
    scales = proj_plane_pixel_scales(wcs)  # in the units of CUNIT (degrees by default)
    units = [str(u) for u in wcs.wcs.cunit]
    factor = 3600.0 if all(u in ("deg", "") for u in units) else None
    if factor is None:
        return None
    value = float(np.sqrt(scales[0] * scales[1])) * factor
    return value if math.isfinite(value) and value > 0 else None


@dataclasses.dataclass(frozen=True)
class ObservedImage:
    """An image with what a fit needs: ``data`` (``[N, N]`` float, e-/s per pixel),
    ``observation`` (:class:`~tfstronglens.observation.Observation`: pixel scale, PSF,
    background noise and exposure), ``noise_map`` (``[N, N]`` per-pixel sigma or ``None``),
    the primary ``header``, ``notes`` (the choices made: where each value came from), the
    file's ``path`` and ``flip_y`` (the arrays were stored with row 0 at ``+y`` and have
    been reversed: :meth:`flipped`)."""

    data: np.ndarray
    observation: object
    noise_map: np.ndarray | None
    header: object
    notes: list
    path: str
    flip_y: bool = False

    def flipped(self) -> "ObservedImage":
        """The same image read the other way up: the rows of ``data``, ``noise_map`` and
        of a pixel PSF kernel reversed (row ``i`` becomes row ``N - 1 - i``, i.e.
        ``y -> -y``), ``flip_y`` toggled (the header's WCS, which describes the array as
        stored, is applied accordingly by :meth:`sky_frame`) and a note added. Flipping
        twice gives the original arrays back."""
        from ..lensing import PixelPSF
        from ..observation import Observation

        obs = self.observation
        psf = obs.psf
        if isinstance(psf, PixelPSF):
            psf = PixelPSF(np.asarray(psf.kernel(), np.float64)[::-1].copy())
        flipped_obs = Observation(obs.num_pix, obs.pixel_scale, obs.exposure_time, psf=psf,
                                  background_rms=obs.background_rms, dtype=obs.dtype)
        flip = not self.flip_y
        note = ("rows reversed (flip_y): the file's arrays are stored with row 0 at +y" if flip
                else "rows reversed back: row 0 at -y (the FITS standard)")
        out = dataclasses.replace(
            self, data=np.ascontiguousarray(self.data[::-1]), observation=flipped_obs,
            noise_map=None if self.noise_map is None
            else np.ascontiguousarray(self.noise_map[::-1]),
            notes=[n for n in self.notes if not n.startswith(_WCS_NOTE)] + [note],
            flip_y=flip)
        _note_wcs(out)
        return out

    def sky_frame(self):
        """The :class:`~tfstronglens.io.sky.SkyFrame` of the header's celestial WCS (with
        the model's pixel scale and ``flip_y``), or ``None`` when the header has none."""
        from .sky import SkyFrame

        return SkyFrame.from_header(self.header, int(self.data.shape[0]),
                                    float(self.observation.pixel_scale), flip_y=self.flip_y)

    def noise_sigma(self) -> np.ndarray:
        """The per-pixel noise sigma ``[N, N]`` (e-/s): the noise map if one was given, else
        the observation's noise for a model equal to the data (clipped at 0): background
        plus, with an exposure time, the Poisson term."""
        if self.noise_map is not None:
            return np.asarray(self.noise_map, np.float64)
        import tensorflow as tf

        model = tf.constant(np.maximum(np.asarray(self.data, np.float64), 0.0), tf.float32)
        return np.sqrt(self.observation.noise_variance(model).numpy()).astype(np.float64)


def _positive(value, name):
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


# The largest total of negative PSF pixels, as a fraction of the positive total, that is
# taken for noise (and set to zero) rather than refused.
_MAX_NEGATIVE_PSF = 0.01


def _clip_negative_psf(kernel, where: str, notes: list) -> np.ndarray:
    """``kernel`` with its negative pixels set to zero (noted in ``notes``) when they hold
    at most 1% of the positive flux (the noise of an empirical PSF); ``ValueError`` naming
    ``where`` (the option and file) when they hold more."""
    negative = kernel < 0
    if not negative.any():
        return kernel
    fraction = float(-kernel[negative].sum() / kernel[~negative].sum())
    if fraction > _MAX_NEGATIVE_PSF:
        raise ValueError(f"{where}: the PSF kernel has {int(negative.sum())} negative pixels "
                         f"holding {fraction:.1%} of its positive flux (at most "
                         f"{_MAX_NEGATIVE_PSF:.0%} is taken for noise); a PSF is "
                         "non-negative: subtract less background from it or clip it first")
    notes.append(f"{int(negative.sum())} negative PSF pixels ({fraction:.2%} of the flux) "
                 "set to zero")
    return np.maximum(kernel, 0.0)


def load_lens_image(path, *, hdu=None, psf=None, psf_fwhm=None, noise_rms=None,
                    noise_map=None, exposure_time=None, pixel_scale=None,
                    dtype="float32", flip_y: bool = False) -> ObservedImage:
    """Read a lens image and build its :class:`~tfstronglens.observation.Observation`.

    Args:
      path: FITS file of the image (primary HDU, or ``hdu``). It must be square, ``N x N``;
        pixel ``(row, column) = (y, x)``, pixel centres symmetric about 0
        (:class:`~tfstronglens.PixelGrid`), row 0 at the bottom (``-y``, the FITS
        standard; see ``flip_y``). Units: e-/s per pixel (the Poisson term of the
        noise uses the exposure time in seconds).
      psf: FITS file of a pixel PSF kernel (normalised to sum 1 here); default: a Gaussian
        of ``psf_fwhm`` if given, else the image file's ``PSF`` extension if it has one,
        else no PSF. Negative pixels holding at most 1% of the positive flux (noise) are
        set to zero, and a note says so; more is refused.
      psf_fwhm: FWHM in arcsec of a Gaussian PSF, instead of a kernel (not with ``psf``).
      noise_rms: background noise per pixel (e-/s); default: header ``BKGRMS`` or ``SIGMABKG``.
      noise_map: FITS file of a per-pixel noise sigma map (e-/s), used as is (then neither
        the background rms nor the exposure time enter the likelihood).
      exposure_time: total exposure in seconds (default: header ``EXPTIME``); with it the
        likelihood adds the source's Poisson noise ``max(model, 0) / T``; without it the
        noise is the background rms alone.
      pixel_scale: arcsec per pixel (default: header ``PIXSCALE`` or the WCS).
      dtype: ``"float32"`` or ``"float64"``.
      flip_y: the file's arrays (image, PSF kernel, noise map) are stored with row 0 at
        ``+y`` (the top), as PyAutoLens writes them: reverse their rows
        (:meth:`ObservedImage.flipped`). A header WCS still describes the array as stored.

    A celestial WCS in the header (``CTYPE``/``CRVAL``/``CRPIX``/``CD`` or ``PC``) gives
    :meth:`ObservedImage.sky_frame`, and a note says so.

    Raises:
      FileNotFoundError: a file does not exist.
      ValueError: the image is not square or not finite, the pixel scale or noise level
        is unknown or invalid, a map has the wrong shape, the PSF kernel is not a finite
        2D array of positive sum or has significant negative pixels, both ``psf`` and
        ``psf_fwhm`` are given.
    """
    from ..lensing import GaussianPSF, PixelPSF
    from ..observation import Observation

    if not isinstance(flip_y, (bool, np.bool_)):
        raise ValueError(f"flip_y must be True or False, got {flip_y!r}")
    image, header = read_fits(path, hdu=hdu)
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"the image in {path!r} must be a square 2D array, got shape "
                         f"{image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"the image in {path!r} has non-finite pixels (NaN or inf); "
                         "mask or fill them first")
    n = image.shape[0]
    notes = []
    pixel_scale = _positive(pixel_scale, "pixel_scale")
    if pixel_scale is None:
        pixel_scale = pixel_scale_from_header(header)
        if pixel_scale is None:
            raise ValueError(f"no pixel scale: {path!r} has neither PIXSCALE nor a celestial "
                             "WCS in its header; give --pixel-scale")
        notes.append(f"pixel scale {pixel_scale:g} arcsec from the header")

    if psf is not None and psf_fwhm is not None:
        raise ValueError(f"give a PSF kernel or a Gaussian FWHM, not both: got psf={psf!r} "
                         f"and psf_fwhm={psf_fwhm!r}")
    kernel = None
    if psf is not None:
        kernel, _ = read_fits(psf)
        where = f"--psf {str(psf)!r}"
        notes.append(f"PSF kernel from {psf}")
    elif psf_fwhm is None:
        try:
            kernel, _ = read_fits(path, hdu="PSF")
            where = f"the PSF extension of {str(path)!r}"
            notes.append("PSF kernel from the image file's PSF extension")
        except ValueError:
            kernel = None
    if kernel is not None:
        kernel = np.asarray(kernel, np.float64)
        if kernel.ndim != 2 or not np.all(np.isfinite(kernel)) or not kernel.sum() > 0:
            raise ValueError(f"{where}: the PSF kernel must be a finite 2D array with positive "
                             f"sum, got shape {kernel.shape}")
        kernel = _clip_negative_psf(kernel, where, notes)
        psf_obj = PixelPSF(kernel / kernel.sum())
    elif psf_fwhm is not None:
        psf_obj = GaussianPSF(_positive(psf_fwhm, "psf_fwhm"))
        notes.append(f"Gaussian PSF of FWHM {psf_fwhm:g} arcsec")
    else:
        psf_obj = None
        notes.append("no PSF (none given and no PSF extension)")

    sigma_map = None
    if noise_map is not None:
        sigma_map, _ = read_fits(noise_map)
        sigma_map = np.asarray(sigma_map, np.float64)
        if sigma_map.shape != image.shape:
            raise ValueError(f"noise map {noise_map!r} has shape {sigma_map.shape}, the image "
                             f"{image.shape}")
        if not (np.all(np.isfinite(sigma_map)) and np.all(sigma_map > 0)):
            raise ValueError(f"noise map {noise_map!r} must be finite and positive everywhere")
        notes.append(f"noise map from {noise_map}")

    noise_rms = _positive(noise_rms, "noise_rms")
    for key in ("BKGRMS", "SIGMABKG"):
        if noise_rms is None and key in header:
            noise_rms = _positive(header[key], f"header {key}")
            notes.append(f"background rms {noise_rms:g} e-/s from the header ({key})")
    exposure_time = _positive(exposure_time, "exposure_time")
    if exposure_time is None and "EXPTIME" in header and sigma_map is None:
        exposure_time = _positive(header["EXPTIME"], "header EXPTIME")
        notes.append(f"exposure {exposure_time:g} s from the header (EXPTIME)")
    if sigma_map is None and noise_rms is None:
        raise ValueError("unknown noise level: give --noise-rms or --noise-map (the header "
                         "has no BKGRMS or SIGMABKG)")
    if sigma_map is None and exposure_time is None:
        sigma_map = np.full(image.shape, noise_rms)
        notes.append("no exposure time: Gaussian noise of the background rms only (no "
                     "Poisson term)")
    obs = Observation(n, pixel_scale, exposure_time or 1.0, psf=psf_obj,
                      background_rms=noise_rms if noise_rms is not None else 0.0, dtype=dtype)
    img = ObservedImage(data=image, observation=obs, noise_map=sigma_map, header=header,
                        notes=notes, path=str(path))
    if flip_y:
        return img.flipped()
    _note_wcs(img)
    return img


_WCS_NOTE = "celestial WCS in the header"


def _note_wcs(img: ObservedImage):
    """Add to ``img.notes`` where its header's WCS puts the image, if it has one."""
    frame = img.sky_frame()
    if frame is not None:
        ra, dec = frame.centre
        img.notes.append(f"{_WCS_NOTE}: image centre at RA {ra:.6f}, Dec {dec:+.6f} deg, +y "
                         f"axis at PA {frame.y_axis_pa:.1f} deg east of north "
                         f"({frame.describe()['parity']}); sky positions are reported")
