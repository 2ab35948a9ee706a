"""Synthetic galaxy morphologies (numpy): bulge + disk + spiral arms + clumps + irregulars.

:class:`SyntheticGalaxyGenerator` draws realistic-looking HST-like galaxy stamps for
training galaxy source models (the ``synthetic_galaxies`` TFDS dataset is built from it,
but it needs no TFDS)::

    from tfstronglens.simulation.galaxies import SyntheticGalaxyGenerator

    gen = SyntheticGalaxyGenerator(stamp_size=64, pixel_scale=0.03)
    out = gen.sample(1000, seed=1)          # dict of numpy arrays
    out["image"].shape                      # (1000, 64, 64), float32, peak of noise-free ~ 1

Everything is vectorised numpy (float32 images, float64 parameters); example ``i`` of
``sample(n, seed, start)`` depends only on ``(seed, start + i)`` (fixed chunks of
``chunk_size`` galaxies drawn from ``numpy.random.SeedSequence([seed, chunk])``), so results
are reproducible and independent of ``n``.

#### The model (all choices documented in ``datasets/synthetic_galaxies/README.md``)

* Population: redshift ``z ~ U(z_range)``, stellar mass ``log10 M* ~ U(log_mass_range)``;
  a galaxy is quiescent ("early") with probability ``early_fraction_max / (1 + exp(-(log M*
  - 10.6) / 0.25))`` (early types dominate above ~4e10 M_sun), else star forming; star
  forming galaxies are irregular with probability ``irregular_fraction``.
* Sizes: half-light radii from the size-mass relations of van der Wel et al. (2014, ApJ
  788, 28, their Table 1 at z = 0.25 with the redshift evolution of their Section 5,
  ``R ~ (1+z)^-0.75`` for late and ``(1+z)^-1.48`` for early types)::

      late:  R_e = 10^0.86 kpc (M*/5e10)^0.25 ((1+z)/1.25)^-0.75,  sigma(log10 R_e) = 0.16
      early: R_e = 10^0.60 kpc (M*/5e10)^0.75 ((1+z)/1.25)^-1.48,  sigma(log10 R_e) = 0.10

  (lognormal scatter), converted to arcsec with the angular-diameter distance of a flat
  LCDM cosmology (H0 = 70, Om0 = 0.3). Galaxies whose half-light radius falls outside
  ``[r_min, stamp field / 6]`` are redrawn (the stamp must hold the galaxy).
* Bulge-to-total: early types ``B/T ~ U(0.6, 1)`` (the galaxy radius is the bulge's, the
  disk is ``U(1.5, 3)`` times larger); star-forming ``B/T = 0.5 Beta(1, 3)`` (mean 0.125,
  like the disk-dominated part of the Simard et al. 2011, ApJS 196, 11 distribution), the
  bulge ``U(0.15, 0.4)`` times the disk radius (Graham & Worley 2008, MNRAS 388, 1708);
  irregulars have no bulge. Bulge Sersic index ``n ~ U(bulge_n_range)`` (default 3-5,
  around de Vaucouleurs' 4), disks exponential (``n = 1``).
* Ellipticities ``|e| = (1-q)/(1+q)`` from the priors of Miller et al. (2013, MNRAS 429,
  2858, eqs. 2-3; fits to SDSS): disks ``p(e) ~ e (1 - exp((e - 0.804)/0.2539)) /
  ((1 + e) sqrt(e^2 + 0.0256^2))``, bulges ``p(e) ~ e exp(-2.368 e - 6.691 e^2)``
  (``ellipticity_prior="rayleigh"`` uses a Rayleigh distribution of scale
  ``ellipticity_sigma`` truncated at 0.8 instead); uniform position angle shared by bulge
  and disk.
* Spiral arms: a fraction ``spiral_fraction`` of star-forming disks has ``m = 2`` (or 3,
  with probability 0.2) logarithmic arms in the deprojected disk plane:
  ``I_disk * (1 + A w(r) [((1 + cos(m (theta - ln(r / h) / tan p) + phi0)) / 2)^2 / (3/8) - 1])``,
  ``A ~ U(0.3, 0.9)``, pitch angle ``p ~ U(10, 30)`` deg (Kennicutt 1981, AJ 86, 1847),
  ``w(r) = 1 - exp(-(r / h)^2)`` suppressing the arms inside one scale length ``h``. The
  modulation has unit mean over angle, so it preserves the disk flux (up to the
  ``w``-weighted ellipse average).
* Clumps: star-forming galaxies are clumpy with probability ``clumpy_fraction`` (rising
  towards the ~60% of Guo et al. 2015, ApJ 800, 39 at z ~ 2: ``clumpy_fraction *
  min(1, (1 + z) / 2)``), with ``1 + Poisson(2)`` circular Gaussian knots (``sigma ~
  U(0.01, 0.04)``") carrying ``U(0.05, 0.25)`` of the galaxy's flux, placed like the disk
  light (radius ``~ Gamma(2, h)`` in the disk plane, projected).
* Irregulars: no bulge, a lopsided (``m = 1``) disk ``I * (1 + A1 w(r) cos(theta - phi1))``
  with ``A1 ~ U(0.3, 0.8)``, and 2-5 large knots (``sigma ~ U(0.02, 0.08)``") carrying
  ``U(0.3, 0.6)`` of the flux spread over 1.5 disk scale lengths.

#### Rendering, PSF, noise, normalisation

Sersic components are integrated over pixels by supersampling on nested grids (midpoint
rule): ``supersample^2`` sub-pixels per pixel (default 1), ``core_supersample^2`` (36) in the
central ``core_size^2`` (16 x 16) pixels and 24 x 24 in the central 2 x 2 pixels, where the
cusps are (the flux of an n = 4, R_e = 1.7-pixel bulge is within ~0.5%, of an unresolved
n = 5, R_e = 0.7-pixel one within ~1.5%); the Gaussian knots are integrated exactly (products of
``erf`` differences). The image is convolved (zero-padded FFTs) with the PSF sampled at
pixel centres and shifted (a Fourier phase) so that its light-weighted centroid is at the
stamp centre (pixel ``(S - 1) / 2``, the convention of
:class:`tfstronglens.lensing.PixelGrid`). Pixel values are e-/s in an HST/ACS F814W-like
exposure: the total flux follows from the drawn S/N and the per-pixel noise
``reference_noise * pixel_scale / 0.03`` (white noise), and ``mag = zeropoint - 2.5
log10(flux)`` (AB, ``zeropoint = 25.94``). Noise: white Gaussian with ``sigma =
sqrt(sum(I^2)) / snr``, ``snr ~ U(snr_range)`` the matched-filter S/N of the noise-free
image ``I`` in the stamp. Finally everything is divided by ``flux_scale = max(I)``, so
the noise-free galaxy peaks at exactly 1.

The stored ``psf`` is the PSF integrated over pixels (the effective, pixel-convolved PSF:
what a model sampled at pixel centres must be convolved with), normalised to sum 1.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np
from scipy import fft as sp_fft
from scipy.special import erf, gammaincinv, gammaln

__all__ = ["SyntheticGalaxyConfig", "SyntheticGalaxyGenerator", "sersic_total_flux",
           "sample_ellipticity", "ZEROPOINT_F814W", "GALAXY_TYPES"]

#: AB zero point of HST/ACS WFC F814W for e-/s (Sirianni et al. 2005, PASP 117, 1049).
ZEROPOINT_F814W = 25.94
#: Per-pixel noise std (e-/s) of HST/ACS F814W stamps at 0.03"/pixel: sqrt of the typical
#: NOISE_VARIANCE (~7e-6) of GalSim's AEGIS/COSMOS real-galaxy catalogs.
REFERENCE_NOISE = 0.0026
#: ``params["type"]`` codes.
GALAXY_TYPES = {"disk": 0, "early": 1, "irregular": 2}

_KPC_PER_ARCSEC = None


def _kpc_per_arcsec(z):
    """Proper kpc per arcsec at redshift ``z`` (flat LCDM, H0 = 70, Om0 = 0.3), interpolated."""
    global _KPC_PER_ARCSEC
    if _KPC_PER_ARCSEC is None:
        from astropy.cosmology import FlatLambdaCDM

        zz = np.linspace(0.01, 8.0, 800)
        da = FlatLambdaCDM(H0=70.0, Om0=0.3).angular_diameter_distance(zz).to_value("kpc")
        _KPC_PER_ARCSEC = (zz, da * math.pi / (180.0 * 3600.0))
    return np.interp(z, *_KPC_PER_ARCSEC)


def sersic_b_n(n):
    """Exact Sersic ``b_n`` (``gamma(2n, b_n) = Gamma(2n)/2``), numpy."""
    return gammaincinv(2.0 * np.asarray(n, np.float64), 0.5)


def sersic_total_flux(amp, R_sersic, n_sersic):
    """Total flux ``2 pi n R^2 amp e^b Gamma(2n) / b^(2n)`` of a Sersic profile whose
    surface brightness at the half-light radius ``R_sersic`` is ``amp`` (numpy)."""
    n = np.asarray(n_sersic, np.float64)
    b = sersic_b_n(n)
    return (2.0 * np.pi * n * np.asarray(R_sersic) ** 2 * np.asarray(amp)
            * np.exp(b + gammaln(2.0 * n) - 2.0 * n * np.log(b)))


# --------------------------------------------------------------- ellipticity priors
def _disk_e_pdf(e):  # Miller et al. 2013, eq. (2)
    return e * (1.0 - np.exp((e - 0.804) / 0.2539)) / ((1.0 + e) * np.sqrt(e * e + 0.0256**2))


def _bulge_e_pdf(e):  # Miller et al. 2013, eq. (3)
    return e * np.exp(-2.368 * e - 6.691 * e * e)


_E_GRID = np.linspace(0.0, 0.804, 2049)
_E_CDF = {}


def sample_ellipticity(rng, n, kind="disk", prior="miller2013", sigma=0.25):
    """Draw ``n`` ellipticity moduli ``|e| = (1-q)/(1+q)`` by inverse-CDF sampling.

    ``prior="miller2013"``: the disk (``kind="disk"``) or bulge (``kind="bulge"``) prior of
    Miller et al. (2013, MNRAS 429, 2858); ``prior="rayleigh"``: a Rayleigh distribution
    of scale ``sigma`` truncated at 0.8.
    """
    u = rng.random(n)
    if prior == "rayleigh":
        cmax = 1.0 - math.exp(-0.5 * (0.8 / sigma) ** 2)
        return sigma * np.sqrt(-2.0 * np.log1p(-u * cmax))
    key = kind
    if key not in _E_CDF:
        pdf = (_disk_e_pdf if kind == "disk" else _bulge_e_pdf)(_E_GRID)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]))])
        _E_CDF[key] = cdf / cdf[-1]
    return np.interp(u, _E_CDF[key], _E_GRID)


# --------------------------------------------------------------------- config
def _pair(value, name, low=-math.inf, high=math.inf, strict_order=False):
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (low, high), got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and low <= a <= b <= high) or (strict_order and a == b):
        raise ValueError(f"{name} must satisfy {low} <= low <= high <= {high}, got {value!r}")
    return (a, b)


def _fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _positive_int(value, name, odd=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1 or (odd and value % 2 == 0):
        raise ValueError(f"{name} must be a positive {'odd ' if odd else ''}integer, got {value!r}")
    return int(value)


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class SyntheticGalaxyConfig:
    """Settings of :class:`SyntheticGalaxyGenerator` (see the module docs for the model).

    Args:
      stamp_size: stamp side ``S`` in pixels.
      pixel_scale: arcsec per pixel.
      psf: ``"gaussian"`` or ``"moffat"``.
      psf_fwhm: PSF FWHM in arcsec (default 0.1", HST/ACS-like in the red).
      psf_beta: Moffat index (``psf="moffat"``).
      psf_size: side ``P`` (odd) of the stored PSF kernel.
      snr_range: matched-filter S/N drawn uniformly in this range.
      supersample: sub-pixels per pixel side for the Sersic components (default 1).
      core_supersample, core_size: sub-pixels per pixel side (default 6) in the central
        ``core_size x core_size`` pixels (default 16), where the Sersic cusps are; the
        central 2 x 2 pixels get ``4 core_supersample``.
      z_range, log_mass_range: redshift and log10(M*/M_sun) drawn uniformly in these ranges.
      r_min: smallest half-light radius (arcsec); the largest is ``S * pixel_scale / 6``.
      bulge_n_range: bulge Sersic index range.
      early_fraction_max, irregular_fraction, spiral_fraction, clumpy_fraction: morphology mix.
      ellipticity_prior: ``"miller2013"`` or ``"rayleigh"`` (with ``ellipticity_sigma``).
      reference_noise: per-pixel noise (e-/s) at 0.03"/pixel that sets the flux units and ``mag``.
      zeropoint: AB zero point (e-/s) for ``mag``.
      chunk_size: galaxies per random-number chunk (fixes the reproducibility unit).
    """

    stamp_size: int = 64
    pixel_scale: float = 0.03
    psf: str = "gaussian"
    psf_fwhm: float = 0.1
    psf_beta: float = 3.5
    psf_size: int = 33
    snr_range: tuple = (15.0, 50.0)
    supersample: int = 1
    core_supersample: int = 6
    core_size: int = 16
    z_range: tuple = (0.3, 2.5)
    log_mass_range: tuple = (9.0, 11.3)
    r_min: float = 0.02
    bulge_n_range: tuple = (3.0, 5.0)
    early_fraction_max: float = 0.7
    irregular_fraction: float = 0.15
    spiral_fraction: float = 0.5
    clumpy_fraction: float = 0.5
    ellipticity_prior: str = "miller2013"
    ellipticity_sigma: float = 0.25
    reference_noise: float = REFERENCE_NOISE
    zeropoint: float = ZEROPOINT_F814W
    chunk_size: int = 128

    def __post_init__(self):
        f = object.__setattr__
        f(self, "stamp_size", _positive_int(self.stamp_size, "stamp_size"))
        if self.stamp_size < 8:
            raise ValueError(f"stamp_size must be >= 8 pixels, got {self.stamp_size!r}")
        f(self, "pixel_scale", _positive(self.pixel_scale, "pixel_scale"))
        if self.psf not in ("gaussian", "moffat"):
            raise ValueError(f"psf must be 'gaussian' or 'moffat', got {self.psf!r}")
        f(self, "psf_fwhm", _positive(self.psf_fwhm, "psf_fwhm"))
        f(self, "psf_beta", _positive(self.psf_beta, "psf_beta"))
        if self.psf_beta <= 1:
            raise ValueError(f"psf_beta must be > 1, got {self.psf_beta!r}")
        f(self, "psf_size", _positive_int(self.psf_size, "psf_size", odd=True))
        f(self, "snr_range", _pair(self.snr_range, "snr_range", low=1e-3))
        f(self, "supersample", _positive_int(self.supersample, "supersample"))
        f(self, "core_supersample", _positive_int(self.core_supersample, "core_supersample"))
        f(self, "core_size", _positive_int(self.core_size, "core_size"))
        f(self, "z_range", _pair(self.z_range, "z_range", low=0.01, high=8.0))
        f(self, "log_mass_range", _pair(self.log_mass_range, "log_mass_range", low=6.0, high=13.0))
        f(self, "r_min", _positive(self.r_min, "r_min"))
        if self.r_min >= self.r_max:
            raise ValueError(f"r_min ({self.r_min!r}) must be below stamp_size * pixel_scale / 6 "
                             f"= {self.r_max:.4g} arcsec")
        f(self, "bulge_n_range", _pair(self.bulge_n_range, "bulge_n_range", low=0.3, high=8.0))
        for name in ("early_fraction_max", "irregular_fraction", "spiral_fraction", "clumpy_fraction"):
            f(self, name, _fraction(getattr(self, name), name))
        if self.ellipticity_prior not in ("miller2013", "rayleigh"):
            raise ValueError(f"ellipticity_prior must be 'miller2013' or 'rayleigh', got "
                             f"{self.ellipticity_prior!r}")
        f(self, "ellipticity_sigma", _positive(self.ellipticity_sigma, "ellipticity_sigma"))
        f(self, "reference_noise", _positive(self.reference_noise, "reference_noise"))
        if isinstance(self.zeropoint, bool) or not isinstance(self.zeropoint, numbers.Real):
            raise ValueError(f"zeropoint must be a number, got {self.zeropoint!r}")
        f(self, "zeropoint", float(self.zeropoint))
        f(self, "chunk_size", _positive_int(self.chunk_size, "chunk_size"))

    @property
    def r_max(self) -> float:
        """Largest half-light radius (arcsec): a sixth of the stamp's field."""
        return self.stamp_size * self.pixel_scale / 6.0

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SyntheticGalaxyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SyntheticGalaxyConfig fields {unknown}; known: {sorted(names)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


# ------------------------------------------------------------------ generator
class SyntheticGalaxyGenerator:
    """Draws synthetic galaxy stamps (see the module docs for the model and its references).

    Args:
      config: a :class:`SyntheticGalaxyConfig` (or ``None``); keyword arguments override
        its fields, e.g. ``SyntheticGalaxyGenerator(stamp_size=32, pixel_scale=0.06)``.

    #### Example

    >>> gen = SyntheticGalaxyGenerator(stamp_size=32, supersample=2)
    >>> out = gen.sample(8, seed=0)
    >>> out["image"].shape, out["psf"].shape
    ((8, 32, 32), (8, 33, 33))
    """

    def __init__(self, config: SyntheticGalaxyConfig | None = None, **overrides):
        if config is None:
            config = SyntheticGalaxyConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, SyntheticGalaxyConfig):
            raise ValueError(f"config must be a SyntheticGalaxyConfig, got {config!r}")
        self.config = config
        c = config
        self._psf_kernel = self._stored_psf().astype(np.float32)
        # supersampled coordinates along one axis (arcsec), PixelGrid convention
        n = c.stamp_size
        self._xc = (np.arange(n) - 0.5 * (n - 1)) * c.pixel_scale
        self._x_outer = _subpixels(self._xc, c.supersample, c.pixel_scale)
        # refined levels: the core, and its central 2 x 2 (or 1) pixels at 4x the core's sampling
        self._levels = []
        for size, sub in ((c.core_size, c.core_supersample), (2, 4 * c.core_supersample)):
            size = min(size, n)
            size -= (n - size) % 2                     # centred: same parity as the stamp
            if size > 0 and sub > c.supersample:
                lo = (n - size) // 2
                self._levels.append((lo, size, sub, _subpixels(self._xc[lo:lo + size], sub,
                                                               c.pixel_scale)))
        # FFT convolution: pad to S + P - 1 (rounded up to a fast size)
        self._nfft = sp_fft.next_fast_len(n + c.psf_size - 1, real=True)
        k = np.zeros((self._nfft, self._nfft))
        h = c.psf_size // 2
        kc = self._sampled_psf()
        idx = np.arange(-h, h + 1) % self._nfft
        k[np.ix_(idx, idx)] = kc
        self._psf_ft = sp_fft.rfft2(k).astype(np.complex64)
        self._freq_y = sp_fft.fftfreq(self._nfft)[:, None]
        self._freq_x = sp_fft.rfftfreq(self._nfft)[None, :]

    # ---------------------------------------------------------------- PSF
    def _psf_object(self):
        from ..lensing.psf import GaussianPSF, MoffatPSF

        c = self.config
        if c.psf == "gaussian":
            return GaussianPSF(c.psf_fwhm, size=c.psf_size)
        return MoffatPSF(c.psf_fwhm, beta=c.psf_beta, size=c.psf_size)

    def _stored_psf(self) -> np.ndarray:
        """The pixel-integrated PSF (effective PSF), ``P x P``, sum 1 (float64)."""
        k = self._psf_object().pixel_integrals(self.config.pixel_scale)
        return k / k.sum()

    def _sampled_psf(self) -> np.ndarray:
        """The PSF sampled at pixel centres, sum 1: the kernel applied to pixel-integrated
        images (pixel integration is already in the rendering)."""
        c = self.config
        h = c.psf_size // 2
        r = np.hypot(*np.meshgrid(np.arange(-h, h + 1), np.arange(-h, h + 1))) * c.pixel_scale
        if c.psf == "gaussian":
            sigma = c.psf_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
            k = np.exp(-0.5 * (r / sigma) ** 2)
        else:
            k = self._psf_object().profile(r)
        return k / k.sum()

    @property
    def psf(self) -> np.ndarray:
        """The stored ``[P, P]`` PSF (float32, sums to 1)."""
        return self._psf_kernel

    # ------------------------------------------------------------ sampling
    def sample(self, n: int, seed: int, start: int = 0, noise_free: bool = True,
               params: bool = True) -> dict:
        """Draw galaxies ``start, ..., start + n - 1`` of the stream of ``seed``.

        Returns a dict of numpy arrays: ``image`` ``[n, S, S]`` float32 (noisy, divided by
        ``flux_scale``), ``noise_std`` ``[n]`` (same units), ``psf`` ``[n, P, P]`` (a
        read-only broadcast of the one PSF), ``snr`` ``[n]``, ``flux_scale`` ``[n]``
        (e-/s), ``id`` ``[n]`` int64 (the running index), ``mag`` ``[n]`` float32, and if
        requested ``noise_free`` ``[n, S, S]`` (same units as ``image``, maximum 1) and
        ``params`` (a dict of ``[n]`` arrays: ``type``, ``z``, ``log_mass``,
        ``bulge_fraction``, ``bulge_r_e``, ``bulge_n``, ``bulge_e1``, ``bulge_e2``,
        ``disk_r_e``, ``disk_e1``, ``disk_e2``, ``arm_amplitude``, ``arm_number``,
        ``arm_pitch_deg``, ``n_clumps``, ``clump_fraction``, ``total_flux``,
        ``centroid_shift_x``, ``centroid_shift_y``; radii in arcsec, total flux in e-/s).
        """
        for name, v in (("n", n), ("start", start)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        cs = self.config.chunk_size
        parts = []
        first, last = start // cs, (start + n - 1) // cs if n else start // cs - 1
        for k in range(first, last + 1):
            chunk = self._chunk(int(seed), k)
            lo = max(start - k * cs, 0)
            hi = min(start + n - k * cs, cs)
            parts.append(_slice(chunk, lo, hi))
        S, P = self.config.stamp_size, self.config.psf_size
        if parts:
            out = _concat(parts)
        else:
            out = _slice(self._empty(), 0, 0)
        out["psf"] = np.broadcast_to(self._psf_kernel, (n, P, P))
        assert out["image"].shape == (n, S, S)
        if not noise_free:
            out.pop("noise_free")
        if not params:
            out.pop("params")
        return out

    def _empty(self):
        S = self.config.stamp_size
        z = np.zeros(0)
        return {"image": np.zeros((0, S, S), np.float32), "noise_free": np.zeros((0, S, S), np.float32),
                "noise_std": z.astype(np.float32), "snr": z.astype(np.float32),
                "flux_scale": z.astype(np.float32), "id": z.astype(np.int64), "mag": z.astype(np.float32),
                "params": {}}

    def _chunk(self, seed: int, k: int) -> dict:
        c = self.config
        n = c.chunk_size
        rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
        p = self._draw_params(rng, n)
        model = self._render(p)                       # [n, S, S] e-/s per unit total flux
        # S/N and flux units
        snr = rng.uniform(*c.snr_range, size=n)
        sigma_pix = c.reference_noise * c.pixel_scale / 0.03
        norm = np.sqrt(np.sum(model.astype(np.float64) ** 2, axis=(1, 2)))
        flux = snr * sigma_pix / norm                 # total flux (e-/s) giving this S/N
        noise = rng.standard_normal(model.shape).astype(np.float32)
        peak = model.reshape(n, -1).max(axis=1).astype(np.float64)
        flux_scale = flux * peak
        noise_std = sigma_pix / flux_scale
        nf = (model / peak[:, None, None]).astype(np.float32)
        image = nf + noise * noise_std.astype(np.float32)[:, None, None]
        p["total_flux"] = flux
        mag = c.zeropoint - 2.5 * np.log10(flux)
        return {"image": image, "noise_free": nf, "noise_std": noise_std.astype(np.float32),
                "snr": snr.astype(np.float32), "flux_scale": flux_scale.astype(np.float32),
                "id": np.arange(k * n, (k + 1) * n, dtype=np.int64), "mag": mag.astype(np.float32),
                "params": p}

    # ------------------------------------------------------------ parameters
    def _draw_params(self, rng, n) -> dict:
        c = self.config
        z = rng.uniform(*c.z_range, n)
        logm = rng.uniform(*c.log_mass_range, n)
        p_early = c.early_fraction_max / (1.0 + np.exp(-(logm - 10.6) / 0.25))
        early = rng.random(n) < p_early
        irregular = ~early & (rng.random(n) < c.irregular_fraction)
        # sizes: van der Wel et al. (2014), redrawn until inside [r_min, r_max]
        r_gal = np.empty(n)
        todo = np.ones(n, bool)
        kpc = _kpc_per_arcsec(z)
        for _ in range(200):
            m = int(todo.sum())
            if m == 0:
                break
            e = early[todo]
            log_a = np.where(e, 0.60, 0.86)
            alpha = np.where(e, 0.75, 0.25)
            beta_z = np.where(e, -1.48, -0.75)
            scatter = np.where(e, 0.10, 0.16)
            log_r = (log_a + alpha * (logm[todo] - math.log10(5e10))
                     + beta_z * np.log10((1.0 + z[todo]) / 1.25) + scatter * rng.standard_normal(m))
            r = 10.0 ** log_r / kpc[todo]
            r_gal[todo] = r
            ok = (r >= c.r_min) & (r <= c.r_max)
            idx = np.flatnonzero(todo)
            todo[idx[ok]] = False
            # redraw mass and redshift too for the galaxies that do not fit
            bad = idx[~ok]
            z[bad] = rng.uniform(*c.z_range, bad.size)
            logm[bad] = rng.uniform(*c.log_mass_range, bad.size)
            kpc[bad] = _kpc_per_arcsec(z[bad])
        r_gal = np.clip(r_gal, c.r_min, c.r_max)
        # bulge/disk split
        bt = np.where(early, rng.uniform(0.6, 1.0, n), 0.5 * rng.beta(1.0, 3.0, n))
        bt = np.where(irregular, 0.0, bt)
        ratio_early = rng.uniform(1.5, 3.0, n)
        ratio_late = rng.uniform(0.15, 0.4, n)
        r_bulge = np.where(early, r_gal, np.maximum(r_gal * ratio_late, 0.5 * c.r_min))
        r_disk = np.where(early, np.minimum(r_gal * ratio_early, c.r_max), r_gal)
        n_bulge = rng.uniform(*c.bulge_n_range, n)
        # ellipticities (shared position angle)
        phi = rng.uniform(0.0, np.pi, n)
        e_disk = sample_ellipticity(rng, n, "disk", c.ellipticity_prior, c.ellipticity_sigma)
        e_bulge = sample_ellipticity(rng, n, "bulge", c.ellipticity_prior, c.ellipticity_sigma)
        # spiral arms (star-forming, non-irregular disks)
        spiral = ~early & ~irregular & (rng.random(n) < c.spiral_fraction)
        arm_amp = np.where(spiral, rng.uniform(0.3, 0.9, n), 0.0)
        arm_m = np.where(rng.random(n) < 0.2, 3, 2)
        pitch = rng.uniform(10.0, 30.0, n)
        arm_phase = rng.uniform(0.0, 2 * np.pi, n)
        # lopsidedness (irregulars)
        lop_amp = np.where(irregular, rng.uniform(0.3, 0.8, n), 0.0)
        lop_phase = rng.uniform(0.0, 2 * np.pi, n)
        # clumps
        k_max = 6
        clumpy = ~early & ~irregular & (rng.random(n) < c.clumpy_fraction * np.minimum(1.0, (1.0 + z) / 2.0))
        n_clumps = np.where(clumpy, np.minimum(1 + rng.poisson(2.0, n), k_max), 0)
        n_clumps = np.where(irregular, rng.integers(2, 6, n), n_clumps)
        clump_frac = np.where(clumpy, rng.uniform(0.05, 0.25, n), 0.0)
        clump_frac = np.where(irregular, rng.uniform(0.3, 0.6, n), clump_frac)
        csig = np.where(irregular[:, None], rng.uniform(0.02, 0.08, (n, k_max)),
                        rng.uniform(0.01, 0.04, (n, k_max)))
        q_disk = (1.0 - e_disk) / (1.0 + e_disk)
        h_major = r_disk / 1.678 / np.sqrt(q_disk)            # major-axis scale length
        spread = np.where(irregular, 1.5, 1.0)[:, None]
        rad = rng.gamma(2.0, 1.0, (n, k_max)) * h_major[:, None] * spread
        rad = np.minimum(rad, 0.45 * c.stamp_size * c.pixel_scale)
        th = rng.uniform(0.0, 2 * np.pi, (n, k_max))
        u, v = rad * np.cos(th), rad * np.sin(th) * q_disk[:, None]
        cp, sp = np.cos(phi)[:, None], np.sin(phi)[:, None]
        cx, cy = cp * u - sp * v, sp * u + cp * v
        w = rng.uniform(0.5, 1.5, (n, k_max)) * (np.arange(k_max)[None, :] < n_clumps[:, None])
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-30)
        cflux = w * clump_frac[:, None]
        typ = np.where(early, GALAXY_TYPES["early"],
                       np.where(irregular, GALAXY_TYPES["irregular"], GALAXY_TYPES["disk"]))
        c2, s2 = np.cos(2 * phi), np.sin(2 * phi)
        return {
            "type": typ.astype(np.int64), "z": z, "log_mass": logm, "bulge_fraction": bt,
            "bulge_r_e": r_bulge, "bulge_n": n_bulge, "bulge_e1": e_bulge * c2, "bulge_e2": e_bulge * s2,
            "disk_r_e": r_disk, "disk_e1": e_disk * c2, "disk_e2": e_disk * s2,
            "arm_amplitude": arm_amp, "arm_number": arm_m.astype(np.int64), "arm_pitch_deg": pitch,
            "arm_phase": arm_phase, "lopsided_amplitude": lop_amp, "lopsided_phase": lop_phase,
            "n_clumps": n_clumps.astype(np.int64), "clump_fraction": clump_frac,
            "_clump_x": cx, "_clump_y": cy, "_clump_sigma": csig, "_clump_flux": cflux,
        }

    # ------------------------------------------------------------- rendering
    def _integrate(self, fn, m: int) -> np.ndarray:
        """Pixel averages ``[m, S, S]`` of the surface brightness ``fn(X, Y) -> [m, ny, nx]``:
        ``supersample^2`` sub-pixels per pixel, ``core_supersample^2`` in the central
        ``core_size x core_size`` pixels and ``(4 core_supersample)^2`` in the central 2 x 2
        (where the Sersic cusps are)."""
        c = self.config
        S = c.stamp_size
        out = _bin(fn(self._x_outer[None, None, :], self._x_outer[None, :, None]), S, c.supersample)
        for lo, size, sub, x in self._levels:
            out[:, lo:lo + size, lo:lo + size] = _bin(fn(x[None, None, :], x[None, :, None]), size, sub)
        return out

    def _render(self, p) -> np.ndarray:
        """Noise-free, PSF-convolved, centred images of unit total flux (before the stamp
        cut), ``[n, S, S]`` float32; sets ``p["centroid_shift_x/y"]`` (arcsec)."""
        c = self.config
        n = p["z"].shape[0]
        S = c.stamp_size
        img = np.zeros((n, S, S), np.float32)
        bt = p["bulge_fraction"]
        # --- bulges (only where B/T > 0)
        idx = np.flatnonzero(bt > 0)
        if idx.size:
            img[idx] += self._sersic(idx, p["bulge_r_e"], p["bulge_n"], p["bulge_e1"], p["bulge_e2"], bt)
        # --- disks with arms / lopsidedness
        disk_flux = (1.0 - bt) * (1.0 - p["clump_fraction"])
        idx = np.flatnonzero(disk_flux > 0)
        if idx.size:
            img[idx] += self._disk(idx, p, disk_flux)
        # --- clumps, integrated exactly over pixels
        cf = p["_clump_flux"] * (1.0 - bt)[:, None]
        if np.any(cf > 0):
            h = 0.5 * c.pixel_scale
            sig = np.sqrt(2.0) * p["_clump_sigma"][:, :, None]
            xc = self._xc[None, None, :]
            gx = 0.5 * (erf((xc + h - p["_clump_x"][:, :, None]) / sig)
                        - erf((xc - h - p["_clump_x"][:, :, None]) / sig))
            gy = 0.5 * (erf((xc + h - p["_clump_y"][:, :, None]) / sig)
                        - erf((xc - h - p["_clump_y"][:, :, None]) / sig))
            img += np.einsum("nk,nky,nkx->nyx", cf, gy, gx).astype(np.float32)
        # --- centroid, PSF convolution and centring shift in Fourier space
        w = img.astype(np.float64)
        tot = w.sum(axis=(1, 2))
        cx = (w.sum(axis=1) @ self._xc) / tot          # arcsec, relative to the centre
        cy = (w.sum(axis=2) @ self._xc) / tot
        p["centroid_shift_x"], p["centroid_shift_y"] = -cx, -cy
        ft = sp_fft.rfft2(img, s=(self._nfft, self._nfft), workers=-1)
        dx, dy = cx / c.pixel_scale, cy / c.pixel_scale   # shift by (-dx, -dy) pixels
        phase_x = np.exp(2j * np.pi * self._freq_x[None] * dx[:, None, None]).astype(np.complex64)
        phase_y = np.exp(2j * np.pi * self._freq_y[None] * dy[:, None, None]).astype(np.complex64)
        ft *= self._psf_ft[None]
        ft *= phase_x
        ft *= phase_y
        out = sp_fft.irfft2(ft, s=(self._nfft, self._nfft), workers=-1)
        return out[:, :S, :S]

    def _sersic(self, idx, r_e, n_s, e1, e2, flux):
        """Pixel-integrated elliptical Sersic images of total flux ``flux`` for galaxies ``idx``."""
        r_e, n_s, e1, e2, flux = (a[idx] for a in (r_e, n_s, e1, e2, flux))
        b = sersic_b_n(n_s)
        amp = flux / sersic_total_flux(1.0, r_e, n_s)
        inv_2n = (0.5 / n_s).astype(np.float32)[:, None, None]
        offset = (-np.log(r_e) / n_s).astype(np.float32)[:, None, None]
        log_amp = (np.log(amp) + b).astype(np.float32)[:, None, None]
        b32 = b.astype(np.float32)[:, None, None]

        def fn(X, Y):
            r_sq = _elliptical_radius_sq(X, Y, e1, e2)
            frac = np.exp(np.log(np.maximum(r_sq, np.float32(1e-8))) * inv_2n + offset)
            return np.exp(log_amp - b32 * frac)

        return self._integrate(fn, idx.size) * np.float32(self.config.pixel_scale ** 2)

    def _disk(self, idx, p, disk_flux):
        """Pixel-integrated exponential disks (with arms / lopsidedness) for galaxies ``idx``."""
        r_e = p["disk_r_e"][idx]
        e1, e2 = p["disk_e1"][idx], p["disk_e2"][idx]
        h = r_e / sersic_b_n(1.0)                                # product-average scale length
        amp = disk_flux[idx] / (2.0 * np.pi * h * h)             # central surface brightness
        inv_h = (1.0 / h).astype(np.float32)[:, None, None]
        mod = np.flatnonzero((p["arm_amplitude"][idx] > 0) | (p["lopsided_amplitude"][idx] > 0))
        if mod.size:
            j = idx[mod]
            e = np.hypot(e1[mod], e2[mod])
            q = (1.0 - e) / (1.0 + e)
            phi = 0.5 * np.arctan2(e2[mod], e1[mod])
            col = lambda a: np.asarray(a, np.float32)[:, None, None]  # noqa: E731
            cp, sp, inv_q = col(np.cos(phi)), col(np.sin(phi)), col(1.0 / q)
            inv_hq = col(1.0 / (h[mod] * np.sqrt(q)))            # 1 / major-axis scale length
            arm_a, m = col(p["arm_amplitude"][j]), col(p["arm_number"][j])
            inv_tan = col(1.0 / np.tan(np.radians(p["arm_pitch_deg"][j])))
            ph0 = col(p["arm_phase"][j])
            lop_a, lop_ph = col(p["lopsided_amplitude"][j]), col(p["lopsided_phase"][j])

        def fn(X, Y):
            r = np.sqrt(_elliptical_radius_sq(X, Y, e1, e2))
            sb = np.exp(-r * inv_h)
            if mod.size:
                u = cp * X + sp * Y
                v = (-sp * X + cp * Y) * inv_q
                theta = np.arctan2(v, u)
                rr = r[mod] * inv_hq                            # disk-plane radius / h
                wgt = 1.0 - np.exp(-rr * rr)
                arm = 0.5 * (1.0 + np.cos(m * (theta - np.log(np.maximum(rr, 1e-3)) * inv_tan) + ph0))
                sb[mod] *= 1.0 + wgt * (arm_a * (arm * arm / np.float32(0.375) - 1.0)
                                        + lop_a * np.cos(theta - lop_ph))
            return sb

        return self._integrate(fn, idx.size) * (amp * self.config.pixel_scale ** 2).astype(np.float32)[:, None, None]


def _elliptical_radius_sq(X, Y, e1, e2):
    """``q x'^2 + y'^2 / q`` (product-average elliptical radius squared), float32 numpy."""
    e1 = e1.astype(np.float32)[:, None, None]
    e2 = e2.astype(np.float32)[:, None, None]
    e_sq = e1 * e1 + e2 * e2
    a = (1.0 + e_sq - 2.0 * e1) / (1.0 - e_sq)        # coefficient of x^2
    cc = (1.0 + e_sq + 2.0 * e1) / (1.0 - e_sq)       # of y^2
    bb = -4.0 * e2 / (1.0 - e_sq)                     # of x y
    return a * (X * X) + cc * (Y * Y) + bb * (X * Y)


def _subpixels(centres, s, pixel_scale):
    offsets = ((np.arange(s) + 0.5) / s - 0.5) * pixel_scale
    return (centres[:, None] + offsets[None, :]).reshape(-1).astype(np.float32)


def _bin(sb, S, s):
    """Mean over ``s x s`` sub-pixels: ``[n, S s, S s] -> [n, S, S]``."""
    if s == 1:
        return sb
    return sb.reshape(sb.shape[0], S, s, S, s).mean(axis=(2, 4))


def _slice(chunk, lo, hi):
    out = {k: v[lo:hi] for k, v in chunk.items() if k != "params"}
    out["params"] = {k: v[lo:hi] for k, v in chunk["params"].items() if not k.startswith("_")}
    return out


def _concat(parts):
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "params"}
    out["params"] = {k: np.concatenate([p["params"][k] for p in parts]) for k in parts[0]["params"]}
    return out
