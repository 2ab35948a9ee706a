"""TFDS builder ``cosmos_galaxies``: real HST galaxy stamps from a GalSim RealGalaxyCatalog.

Reads the catalog (``real_galaxy_catalog_23.5.fits`` or ``..._25.2.fits``, or the file a
config names, e.g. ``AEGIS_F814w_catalog.fits``) and its image and PSF files from the TFDS
``manual_dir`` (see :data:`MANUAL_DOWNLOAD_INSTRUCTIONS`) and writes stamps with the
features of :mod:`tfstronglens.datasets.galaxies`.

#### Processing of one galaxy (:func:`process_galaxy`)

1. The stamp (HDU ``GAL_HDU`` of ``GAL_FILENAME``) and its pixel scale ``PIXEL_SCALE``
   (missing column: the config's) and noise std ``sqrt(NOISE_VARIANCE)`` (missing column
   or non-positive value: ``1.4826 MAD`` of the 4-pixel border, :func:`border_noise_std`).
2. Centring: :func:`light_centroid` (3x3-box-smoothed light of the connected region above
   2 sigma that holds the galaxy). At equal pixel scales the stamp is shifted by whole
   pixels only (no interpolation: the noise is untouched), so the centroid ends within
   half a pixel of ``((S-1)/2, (S-1)/2)``. Otherwise the stamp is resampled onto the output
   grid centred on the centroid with cubic splines (``scipy.ndimage.map_coordinates``),
   after a box filter of the output pixel size when the output pixels are larger
   (downsampling integrates over the new pixels), and multiplied by ``(p_out / p_in)^2``
   (flux conservation). The noise std after resampling is *propagated*: the same
   operations are applied to a noise field of the input std with the lag-1 pixel
   correlations measured on the stamp's border (HST drizzled noise has rho ~ 0.45), and
   the std of the result is used.
3. The ``S x S`` cut: pixels outside the input stamp are filled with white Gaussian noise
   of the output noise std (seeded by ``IDENT``; the real noise there is correlated).
4. S/N ``sqrt(max(sum(x^2)/sigma^2 - S^2, 0))`` on the cut stamp. With ``degrade_snr``,
   galaxies above the range get extra white noise that brings them to an S/N drawn
   uniformly in the range (documented as degraded in the card); examples whose S/N is then
   outside ``snr_range`` are skipped.
5. ``flux_scale`` = maximum of the 3x3-box-smoothed stamp; the stamp and the noise std are
   divided by it.
6. The PSF (HDU ``PSF_HDU`` of ``PSF_FILENAME``, any float type, any size) is resampled
   with cubic splines onto ``P x P`` pixels at the config pixel scale, centred on its
   light centroid (box-filtered first when the output pixels are larger), zero outside,
   and normalised to sum 1.

Splits: ``validation`` holds the galaxies whose hashed ``IDENT`` falls in the
``validation_fraction`` (default 10%), ``train`` the rest: stable when the catalog grows.

With Apache Beam (a ``DownloadConfig`` with ``beam_runner`` or ``beam_options``, e.g.
``tfds build ... --beam_pipeline_options=runner=DirectRunner``) the galaxies are processed
by the Beam workers (each reads the FITS files of ``manual_dir``, which must be readable
by them); the records are the same as those of the plain build.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import logging
import math
import os

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

from ._builder import BeamSwitch
from .galaxies import (border_noise_std, box_smooth3, estimated_snr, galaxy_features,
                       light_centroid)

__all__ = ["CosmosGalaxies", "CosmosGalaxiesConfig", "GalaxyStampReader",
           "MANUAL_DOWNLOAD_INSTRUCTIONS", "catalog_row", "check_kept", "find_catalog",
           "read_catalog", "process_galaxy", "process_psf"]

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put a GalSim RealGalaxyCatalog in the manual directory (`manual_dir`, by default
~/tensorflow_datasets/downloads/manual/):

  * with GalSim installed:  galsim_download_cosmos -s 23.5 -d <dir>   (or -s 25.2), then
    copy or link the files of <dir>/COSMOS_23.5_training_sample/ into manual_dir;
  * or download COSMOS_23.5_training_sample.tar.gz (or COSMOS_25.2_training_sample.tar.gz)
    from https://zenodo.org/records/3242143 (GalSim's "COSMOS real galaxy" data) and
    unpack it into manual_dir.

Expected files (23.5 sample: 56,062 galaxies; 25.2 sample: 87,798):
  real_galaxy_catalog_23.5.fits               the catalog (the `_fits` and `_selection`
                                              companions are not needed)
  real_galaxy_images_23.5_n{1..57}.fits       galaxy stamps (GAL_FILENAME, GAL_HDU)
  real_galaxy_PSF_images_23.5_n{1..57}.fits   PSFs (PSF_FILENAME, PSF_HDU)
(25.2: real_galaxy_catalog_25.2.fits and n1..88). Another catalog in the same format
(e.g. AEGIS_F814w_catalog.fits) is used when the config names it (`catalog=`).
"""

_CATALOG_PATTERN = "real_galaxy_catalog_*.fits"
_REQUIRED_COLUMNS = ("IDENT", "GAL_FILENAME", "GAL_HDU", "PSF_FILENAME", "PSF_HDU")


@dataclasses.dataclass
class CosmosGalaxiesConfig(tfds.core.BuilderConfig):
    """A builder config.

    Args:
      catalog: catalog file name in ``manual_dir`` (``None``: the one
        ``real_galaxy_catalog_*.fits`` there, ignoring ``*_fits.fits``/``*_selection.fits``).
      stamp_size, pixel_scale, psf_size: output stamp side (pixels), arcsec per pixel and
        PSF side (odd).
      snr_range: S/N range kept.
      degrade_snr: add noise to galaxies above the range to reach an S/N drawn in it.
      validation_fraction: fraction of galaxies (by hashed IDENT) in ``validation``.
      seed: seed of the padding/degradation noise (combined with IDENT).
      max_galaxies: use only the first ``max_galaxies`` catalog rows (``None``: all).
    """

    catalog: str | None = None
    stamp_size: int = 64
    pixel_scale: float = 0.03
    psf_size: int = 33
    snr_range: tuple = (15.0, 50.0)
    degrade_snr: bool = False
    validation_fraction: float = 0.1
    seed: int = 0
    max_galaxies: int | None = None

    def __post_init__(self):
        if not (isinstance(self.stamp_size, int) and self.stamp_size >= 8):
            raise ValueError(f"stamp_size must be an integer >= 8, got {self.stamp_size!r}")
        if not (isinstance(self.psf_size, int) and self.psf_size >= 3 and self.psf_size % 2 == 1):
            raise ValueError(f"psf_size must be an odd integer >= 3, got {self.psf_size!r}")
        if not (isinstance(self.pixel_scale, (int, float)) and math.isfinite(self.pixel_scale)
                and self.pixel_scale > 0):
            raise ValueError(f"pixel_scale must be a positive number, got {self.pixel_scale!r}")
        try:
            lo, hi = (float(v) for v in self.snr_range)
        except (TypeError, ValueError):
            raise ValueError(f"snr_range must be a pair (low, high), got {self.snr_range!r}") from None
        if not (0 <= lo < hi):
            raise ValueError(f"snr_range must satisfy 0 <= low < high, got {self.snr_range!r}")
        self.snr_range = (lo, hi)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")


def _config(name, description, **kw):
    return CosmosGalaxiesConfig(name=name, description=description, **kw)


_CONFIGS = [
    _config("64", "COSMOS catalog in manual_dir, 64x64 pixels of 0.03\", 33x33 PSF, S/N 15-50 "
                  "(galaxies outside skipped)"),
    _config("64-degraded", "as 64, galaxies above S/N 50 degraded with extra noise to S/N "
                           "U(15, 50)", degrade_snr=True),
    _config("32", "32x32 pixels of 0.06\" (resampled), 17x17 PSF, S/N 15-50",
            stamp_size=32, pixel_scale=0.06, psf_size=17),
    _config("aegis_f814w-64", "GalSim's AEGIS F814W test catalog (AEGIS_F814w_catalog.fits), "
                              "64x64 at 0.03\", degraded to S/N 15-50",
            catalog="AEGIS_F814w_catalog.fits", degrade_snr=True),
    _config("aegis_f606w-64", "GalSim's AEGIS F606W test catalog (AEGIS_F606w_catalog.fits), "
                              "64x64 at 0.03\", degraded to S/N 15-50",
            catalog="AEGIS_F606w_catalog.fits", degrade_snr=True),
]


# --------------------------------------------------------------------- catalog
def find_catalog(manual_dir, catalog: str | None = None) -> str:
    """Path of the catalog file in ``manual_dir`` (see :class:`CosmosGalaxiesConfig`)."""
    manual_dir = os.fspath(manual_dir)
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir {manual_dir!r} does not exist.\n"
                                + MANUAL_DOWNLOAD_INSTRUCTIONS)
    if catalog is not None:
        path = os.path.join(manual_dir, catalog)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"catalog {catalog!r} not found in manual_dir {manual_dir!r}.\n"
                                    + MANUAL_DOWNLOAD_INSTRUCTIONS)
        return path
    found = sorted(p for p in glob.glob(os.path.join(manual_dir, _CATALOG_PATTERN))
                   if not p.endswith(("_fits.fits", "_selection.fits")))
    if not found:
        raise FileNotFoundError(
            f"no {_CATALOG_PATTERN} (e.g. real_galaxy_catalog_23.5.fits) in manual_dir "
            f"{manual_dir!r}; missing: the catalog and its image and PSF files.\n"
            + MANUAL_DOWNLOAD_INSTRUCTIONS)
    if len(found) > 1:
        raise ValueError(f"several catalogs in manual_dir {manual_dir!r}: "
                         f"{[os.path.basename(p) for p in found]}; name one with the config's "
                         "`catalog` field")
    return found[0]


def read_catalog(path, max_galaxies: int | None = None) -> dict:
    """Read a RealGalaxyCatalog table: a dict of numpy columns, with ``PIXEL_SCALE``,
    ``NOISE_VARIANCE`` and ``MAG`` set to NaN where the column is missing. Checks that the
    image and PSF files exist beside the catalog (``FileNotFoundError`` listing the missing
    ones)."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        table = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
        if table is None:
            raise ValueError(f"catalog {str(path)!r} has no binary table HDU")
        data = table.data
        names = [n.upper() for n in data.columns.names]
        missing = [c for c in _REQUIRED_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"catalog {str(path)!r} lacks the columns {missing} (a GalSim "
                             f"RealGalaxyCatalog has {list(_REQUIRED_COLUMNS)})")
        n = len(data) if max_galaxies is None else min(len(data), int(max_galaxies))

        def col(name, dtype, default=None):
            if name in names:
                values = np.asarray(data.field(names.index(name)))[:n]
                if dtype is str:
                    return np.array([str(v).strip() for v in values])
                return values.astype(dtype)
            return np.full(n, default, dtype)

        cat = {"IDENT": col("IDENT", np.int64), "GAL_FILENAME": col("GAL_FILENAME", str),
               "GAL_HDU": col("GAL_HDU", np.int64), "PSF_FILENAME": col("PSF_FILENAME", str),
               "PSF_HDU": col("PSF_HDU", np.int64),
               "PIXEL_SCALE": col("PIXEL_SCALE", np.float64, np.nan),
               "NOISE_VARIANCE": col("NOISE_VARIANCE", np.float64, np.nan),
               "MAG": col("MAG", np.float64, np.nan)}
    directory = os.path.dirname(os.fspath(path))
    files = sorted(set(cat["GAL_FILENAME"]) | set(cat["PSF_FILENAME"]))
    absent = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
    if absent:
        shown = ", ".join(absent[:10]) + (f", ... ({len(absent)} files in all)" if len(absent) > 10 else "")
        raise FileNotFoundError(f"the catalog {os.path.basename(os.fspath(path))!r} in {directory!r} "
                                f"refers to files that are missing there: {shown}.\n"
                                + MANUAL_DOWNLOAD_INSTRUCTIONS)
    return cat


def _is_validation(ident, fraction: float) -> bool:
    """Deterministic split by a hash of IDENT (Knuth's multiplicative hash, 32 bits)."""
    h = (int(ident) * 2654435761) % (1 << 32)
    return h / float(1 << 32) < fraction


# ------------------------------------------------------------------ processing
def _resample(image, centre, out_size, ratio, order=3):
    """Values of ``image`` on an ``out_size^2`` grid of pixels ``ratio`` times larger, centred
    on ``centre`` (input pixel coords); a box filter of ``ratio`` first if ``ratio > 1``.
    Returns ``(values, inside)``, ``inside`` the mask of output pixels within the input."""
    a = np.asarray(image, np.float64)
    if ratio > 1.0 + 1e-9:
        # centred box of width `ratio` input pixels (fractional edge weights)
        m = int(math.ceil(0.5 * ratio - 0.5))
        k = np.arange(-m, m + 1)
        taps = np.clip(np.minimum(k + 0.5, 0.5 * ratio) - np.maximum(k - 0.5, -0.5 * ratio), 0, None)
        taps /= taps.sum()
        for axis in (0, 1):
            a = ndimage.correlate1d(a, taps, axis=axis, mode="nearest")
    off = (np.arange(out_size) - 0.5 * (out_size - 1)) * ratio
    yy = centre[0] + off[:, None] + 0.0 * off[None, :]
    xx = centre[1] + off[None, :] + 0.0 * off[:, None]
    inside = (yy >= -0.5) & (yy <= a.shape[0] - 0.5) & (xx >= -0.5) & (xx <= a.shape[1] - 0.5)
    vals = ndimage.map_coordinates(a, [yy, xx], order=order, mode="nearest")
    return vals, inside


def _lag1_correlation(image, width: int = 4):
    """Lag-1 noise correlations ``(rho_y, rho_x)`` of a stamp, from its border strips
    (4-sigma clipped), each clipped to ``[0, 0.7]``."""
    a = np.asarray(image, np.float64)
    w = max(1, min(width, min(a.shape) // 4))
    rho = []
    for axis in (0, 1):
        strips = [a[:w], a[-w:]] if axis == 1 else [a[:, :w].T, a[:, -w:].T]
        num = den = 0.0
        for b in strips:                         # correlations along the strips' length
            b = b - np.median(b)
            clip = 4.0 * 1.4826 * np.median(np.abs(b)) + 1e-300
            b = np.clip(b, -clip, clip)
            num += np.sum(b[:, 1:] * b[:, :-1])
            den += np.sum(b * b) * (b.shape[1] - 1) / b.shape[1]
        rho.append(float(np.clip(num / den, 0.0, 0.7)) if den > 0 else 0.0)
    return tuple(rho)


def _correlated_noise(image, sigma, rng):
    """A noise field of ``image``'s shape with std ``sigma`` and the lag-1 correlations of
    its border: white noise filtered by ``[c, 1, c]`` along each axis, with
    ``2c / (1 + 2c^2) = rho`` (a model of the drizzle correlations of HST stamps)."""
    field = rng.standard_normal(np.shape(image))
    for axis, rho in enumerate(_lag1_correlation(image)):
        if rho > 1e-3:
            c = (1.0 - math.sqrt(max(1.0 - 2.0 * rho * rho, 0.0))) / (2.0 * rho)
            field = ndimage.correlate1d(field, [c, 1.0, c], axis=axis, mode="wrap")
    return field * (sigma / field.std())


def process_psf(psf, pixel_scale_in: float, pixel_scale_out: float, size: int) -> np.ndarray:
    """A PSF image (any float type and size) resampled onto ``size x size`` (odd) pixels of
    ``pixel_scale_out``, centred on its light centroid, zero outside, summing to 1 (float32)."""
    a = np.asarray(psf, np.float64)
    if a.ndim != 2 or not np.all(np.isfinite(a)) or not a.sum() > 0:
        raise ValueError(f"PSF image must be 2D, finite, with a positive sum; got shape {a.shape}")
    pos = np.maximum(a, 0.0)
    tot = pos.sum()
    centre = ((pos.sum(axis=1) @ np.arange(a.shape[0])) / tot, (pos.sum(axis=0) @ np.arange(a.shape[1])) / tot)
    vals, inside = _resample(a, centre, size, pixel_scale_out / pixel_scale_in)
    vals = np.where(inside, vals, 0.0)
    s = vals.sum()
    if not s > 0:
        raise ValueError("the resampled PSF has a non-positive sum")
    return (vals / s).astype(np.float32)


def process_galaxy(image, pixel_scale_in: float, noise_variance: float, config: CosmosGalaxiesConfig,
                   rng: np.random.Generator):
    """Process one stamp (see the module docs). Returns ``(example, reason)``: ``example``
    a dict with ``image``, ``noise_std``, ``snr``, ``flux_scale`` (or ``None`` and the
    reason it was skipped)."""
    a = np.asarray(image, np.float64)
    if a.ndim != 2 or a.size == 0:
        return None, f"stamp is not a 2D image (shape {a.shape})"
    if not np.all(np.isfinite(a)):
        return None, "stamp has non-finite pixels"
    S = config.stamp_size
    if math.isfinite(noise_variance) and noise_variance > 0:
        sigma_in = math.sqrt(noise_variance)
    else:
        sigma_in = border_noise_std(a)
    if not (math.isfinite(sigma_in) and sigma_in > 0):
        return None, "noise std could not be determined"
    ratio = config.pixel_scale / pixel_scale_in
    c_out = 0.5 * (S - 1)
    cy, cx = light_centroid(a, sigma_in)
    if abs(ratio - 1.0) < 1e-6:
        sigma = sigma_in
        best = None
        for _ in range(6):           # integer shifts; re-centre on the cut (truncation moves it)
            oy, ox = int(round(cy - c_out)), int(round(cx - c_out))
            yy, xx = np.arange(S)[:, None] + oy, np.arange(S)[None, :] + ox
            inside = (yy >= 0) & (yy < a.shape[0]) & (xx >= 0) & (xx < a.shape[1])
            vals = a[np.clip(yy, 0, a.shape[0] - 1), np.clip(xx, 0, a.shape[1] - 1)]
            fy, fx = light_centroid(np.where(inside, vals, 0.0), sigma)
            err = max(abs(fy - c_out), abs(fx - c_out))
            if best is None or err < best[0]:
                best = (err, vals, inside)
            if err <= 0.5:
                break
            cy, cx = cy + fy - c_out, cx + fx - c_out
        _, out, inside = best
    else:
        area = ratio * ratio
        # noise propagation: the same resampling applied to white noise of the input std
        noise_field = _correlated_noise(a, sigma_in, np.random.default_rng(rng.integers(1 << 62)))
        centre_in = (0.5 * (a.shape[0] - 1), 0.5 * (a.shape[1] - 1))
        nvals, ninside = _resample(noise_field, centre_in, max(S, 32), ratio)
        if ninside.sum() >= 64:
            sigma = float(np.std(nvals[ninside]) * area)
        else:  # tiny stamp: the box-average of ratio^2 white-noise pixels
            sigma = sigma_in * area / max(ratio, 1.0)
        best = None
        for _ in range(6):
            vals, inside = _resample(a, (cy, cx), S, ratio)
            vals *= area
            fy, fx = light_centroid(np.where(inside, vals, 0.0), sigma)
            err = max(abs(fy - c_out), abs(fx - c_out))
            if best is None or err < best[0]:
                best = (err, vals, inside)
            if err <= 0.25:
                break
            cy, cx = cy + (fy - c_out) * ratio, cx + (fx - c_out) * ratio
        _, out, inside = best
    out = np.where(inside, out, rng.standard_normal(out.shape) * sigma)
    snr = float(estimated_snr(out, sigma))
    lo, hi = config.snr_range
    if snr > hi and config.degrade_snr:
        target = rng.uniform(lo, hi)
        signal_sq = max(np.sum(out * out) - out.size * sigma * sigma, 0.0)
        sigma_new = math.sqrt(signal_sq) / target
        extra = math.sqrt(max(sigma_new**2 - sigma**2, 0.0))
        # the estimated S/N scatters (by ~sqrt(S^2/2)/S/N): redraw the extra noise until it
        # lands in the range
        for _ in range(20):
            degraded = out + rng.standard_normal(out.shape) * extra
            snr = float(estimated_snr(degraded, sigma_new))
            if lo <= snr <= hi:
                break
        out, sigma = degraded, sigma_new
    if not lo <= snr <= hi:
        return None, f"S/N {snr:.3g} outside {config.snr_range}"
    flux_scale = float(box_smooth3(out).max())
    if not flux_scale > 0:
        return None, "stamp has no positive flux"
    return {"image": (out / flux_scale).astype(np.float32), "noise_std": np.float32(sigma / flux_scale),
            "snr": np.float32(snr), "flux_scale": np.float32(flux_scale)}, None


# --------------------------------------------------------------------- builder
class CosmosGalaxies(BeamSwitch, tfds.core.GeneratorBasedBuilder):
    """Real HST galaxy stamps from a GalSim RealGalaxyCatalog (see the module docs)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _CONFIGS
    DEFAULT_CONFIG_NAME = "64"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    # TFDS finds a builder's source file through ``importlib_resources``, which is not
    # always installed (tensorflow_datasets 4.9 does not require it); give it directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        from etils import epath

        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return self.dataset_info_from_configs(
            features=galaxy_features(cfg.stamp_size, cfg.psf_size),
            supervised_keys=None,
            homepage="https://github.com/GalSim-developers/GalSim/wiki/RealGalaxy%20Data",
            metadata=tfds.core.MetadataDict(
                catalog=cfg.catalog, stamp_size=cfg.stamp_size, pixel_scale=cfg.pixel_scale,
                psf_size=cfg.psf_size, snr_range=list(cfg.snr_range), degrade_snr=cfg.degrade_snr),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        path = find_catalog(dl_manager.manual_dir, cfg.catalog)
        cat = read_catalog(path, cfg.max_galaxies)
        val = np.array([_is_validation(i, cfg.validation_fraction) for i in cat["IDENT"]], bool)
        directory = os.path.dirname(path)
        rows = {"train": np.flatnonzero(~val), "validation": np.flatnonzero(val)}
        return {split: self._generate_examples(directory, cat, r, split, os.path.basename(path))
                for split, r in rows.items() if r.size}

    def _generate_examples(self, directory, cat, rows, split="train", catalog_name=""):
        """The examples of the catalog ``rows`` of ``split``: a generator, or with an
        Apache Beam build (:attr:`use_beam`) a ``beam.PTransform`` that processes the
        galaxies on the workers (:class:`tfstronglens.datasets._beam.CosmosGalaxyExamples`).
        Each example depends only on its catalog row and the config (its noise is seeded by
        ``(config.seed, IDENT)``), so both write the same records."""
        cfg = self.builder_config
        if self.use_beam:
            from ._beam import CosmosGalaxyExamples

            return CosmosGalaxyExamples(directory, cfg, [catalog_row(cat, r) for r in rows],
                                        split, catalog_name)
        return self._iter_examples(directory, cat, rows, split, catalog_name)

    def _iter_examples(self, directory, cat, rows, split, catalog_name):
        skipped = collections.Counter()
        count = 0
        with GalaxyStampReader(directory, self.builder_config) as reader:
            for r in rows:
                key, ex = reader.example(catalog_row(cat, r))
                if key is None:
                    skipped[ex] += 1
                    continue
                count += 1
                yield key, ex
        logging.getLogger(__name__).info("cosmos_galaxies %s: %d of %d galaxies kept, skipped: %s",
                                         split, count, len(rows), dict(skipped))
        check_kept(count, len(rows), split, catalog_name, self.builder_config, dict(skipped))


def check_kept(count: int, total: int, split: str, catalog_name: str,
               config: CosmosGalaxiesConfig, skipped: dict | None = None) -> None:
    """``ValueError`` if none (``count == 0``) of the ``total`` galaxies of a split passed."""
    if count == 0:
        detail = f" (skipped: {skipped})" if skipped is not None else ""
        raise ValueError(
            f"cosmos_galaxies: none of the {total} galaxies of split {split!r} of "
            f"{catalog_name!r} passed{detail}; with snr_range="
            f"{config.snr_range}, widen the range or set degrade_snr=True (config "
            f"'64-degraded') to add noise to brighter galaxies")


def catalog_row(cat: dict, r: int) -> dict:
    """Row ``r`` of a :func:`read_catalog` table as a dict of Python scalars (``row`` holds
    ``r``), the input of :meth:`GalaxyStampReader.example`."""
    return {"row": int(r), "IDENT": int(cat["IDENT"][r]),
            "GAL_FILENAME": str(cat["GAL_FILENAME"][r]), "GAL_HDU": int(cat["GAL_HDU"][r]),
            "PSF_FILENAME": str(cat["PSF_FILENAME"][r]), "PSF_HDU": int(cat["PSF_HDU"][r]),
            "PIXEL_SCALE": float(cat["PIXEL_SCALE"][r]),
            "NOISE_VARIANCE": float(cat["NOISE_VARIANCE"][r]), "MAG": float(cat["MAG"][r])}


class GalaxyStampReader:
    """Turns catalog rows (:func:`catalog_row`) into examples, keeping the FITS files of
    ``directory`` open (memory-mapped) and the last processed PSF; a context manager
    that closes the files. One per process (or Beam worker); not thread-safe."""

    def __init__(self, directory, config: CosmosGalaxiesConfig):
        self.directory = os.fspath(directory)
        self.config = config
        self._files = {}
        self._psf_cache = {}

    def _hdu_data(self, name, hdu):
        from astropy.io import fits

        if name not in self._files:
            self._files[name] = fits.open(os.path.join(self.directory, name), memmap=True)
        return np.asarray(self._files[name][int(hdu)].data)

    def example(self, row: dict):
        """``(key, example)`` of one catalog row, or ``(None, reason)`` if it is skipped
        (S/N outside the range: reason ``"S/N outside the range"``). The key is
        ``f"{IDENT}_{row}"``; the padding/degradation noise is seeded by
        ``(config.seed, IDENT)``, so the example does not depend on the other rows."""
        cfg = self.config
        ident = int(row["IDENT"])
        p_in = float(row["PIXEL_SCALE"])
        if not (math.isfinite(p_in) and p_in > 0):
            p_in = cfg.pixel_scale
        rng = np.random.default_rng([cfg.seed, ident & ((1 << 63) - 1)])
        ex, why = process_galaxy(self._hdu_data(row["GAL_FILENAME"], row["GAL_HDU"]), p_in,
                                 float(row["NOISE_VARIANCE"]), cfg, rng)
        if ex is None:
            return None, ("S/N outside the range" if why.startswith("S/N") else why)
        key = (row["PSF_FILENAME"], int(row["PSF_HDU"]), p_in)
        if key not in self._psf_cache:
            self._psf_cache.clear()  # PSFs are per galaxy in COSMOS: keep the cache small
            self._psf_cache[key] = process_psf(self._hdu_data(key[0], key[1]), p_in,
                                               cfg.pixel_scale, cfg.psf_size)
        ex["psf"] = self._psf_cache[key]
        ex["id"] = np.int64(ident)
        ex["mag"] = np.float32(row["MAG"])
        return f"{ident}_{int(row['row'])}", ex

    def close(self):
        """Close the open FITS files."""
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
