r"""Halo structure: a mass-concentration relation and the tidal truncation of subhalos.

* :class:`Duffy08Concentration`: ``c(M, z)`` of Duffy et al. (2008), with optional
  log-normal scatter (a ``tfp.distributions.LogNormal``).
* :func:`tidal_radius`: the tidal (truncation) radius of a subhalo of mass ``m`` at
  3D distance ``r`` from the centre of its host (Tormen, Diaferio & Syer 1998), with
  :func:`isothermal_enclosed_mass` and :func:`truncation_radius_isothermal` for the
  isothermal host of a strong lens, in lensing units.

All functions accept Python floats, numpy arrays and tensors (tensor in, tensor out, of
the tensor's dtype; differentiable and usable under ``tf.function(jit_compile=True)``).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from .._validation import check_positive, is_concrete, resolve_dtype
from .cosmology import LensCosmology, _Backend

tfd = tfp.distributions

__all__ = [
    "DUFFY08_PARAMETERS",
    "Duffy08Concentration",
    "tidal_radius",
    "isothermal_enclosed_mass",
    "truncation_radius_isothermal",
]

# Duffy, Schaye, Kay & Dalla Vecchia 2008, MNRAS 390, L64, Table 1: NFW fits
# c = A (M / M_pivot)^B (1 + z)^C, M_pivot = 2e12 M_sun/h, over 0 <= z <= 2 (WMAP5
# cosmology), for three mass definitions (200 x critical, virial, 200 x mean density),
# for the full halo sample and for the relaxed subsample (only its 200c row is given).
DUFFY08_PARAMETERS = {
    ("200c", "full"): (5.71, -0.084, -0.47),
    ("vir", "full"): (7.85, -0.081, -0.71),
    ("200m", "full"): (10.14, -0.081, -1.01),
    ("200c", "relaxed"): (6.71, -0.091, -0.44),
}
# Log-normal scatter about the relation, sigma(log10 c) (Duffy et al. 2008, sec. 3):
# 0.15 for the full sample and 0.11 for relaxed haloes.
DUFFY08_SCATTER_DEX = {"full": 0.15, "relaxed": 0.11}
DUFFY08_M_PIVOT = 2e12  # M_sun / h


class Duffy08Concentration:
    r"""Mass-concentration relation of Duffy et al. (2008, MNRAS 390, L64), Table 1.

    #### Mathematical details

        c(M, z) = A (M / M_pivot)^B (1 + z)^C,     M_pivot = 2 x 10^12 M_sun / h,

    with, for NFW fits to the full sample of haloes at 0 <= z <= 2,
    ``(A, B, C) = (5.71, -0.084, -0.47)`` for ``M200c`` (mass inside the radius enclosing
    200 times the critical density; ``c = r200c / Rs``), ``(7.85, -0.081, -0.71)`` for
    virial masses and ``(10.14, -0.081, -1.01)`` for ``M200m`` (200 times the mean
    density); the relaxed subsample has ``(6.71, -0.091, -0.44)`` for ``M200c``. The
    relation is log-normally scattered with ``sigma(log10 c) = 0.15`` (full sample) or
    ``0.11`` (relaxed) (Duffy et al. 2008, sec. 3). It was calibrated on haloes of
    ``1e11 - 1e15 M_sun/h``; applied to subhalos of ``1e6 - 1e10 M_sun`` it is an
    extrapolation (as in most lensing substructure studies), and it describes the
    concentration at the time of accretion for a subhalo.

    Masses are given in physical M_sun and converted to ``M_sun / h`` with the ``h`` of
    the cosmology: ``M / M_pivot = M h / 2e12``. The default definition, ``"200c"``, is
    the one of :meth:`LensCosmology.nfw_physical2angle` (lenstronomy's ``M200``).

    Note: lenstronomy's ``NFWParam.c_M_z`` uses ``(A, B, C) = (5.22, -0.072, -0.42)``,
    the numbers of Duffy et al.'s Moriond 2008 proceedings; this class uses the
    refereed paper's Table 1.

    Args:
      h: the dimensionless Hubble constant ``H0 / (100 km/s/Mpc)``; default: that of
        ``astropy.cosmology.Planck18`` (0.6766). ``LensCosmology.h`` gives the lens's.
      definition: ``"200c"`` (default), ``"vir"`` or ``"200m"``.
      sample: ``"full"`` (default) or ``"relaxed"`` (only with ``"200c"``).

    #### Example

    >>> cm = Duffy08Concentration(h=0.7)
    >>> cm(2e12 / 0.7, 0.0)          # = 5.71 (the pivot mass at z = 0)
    >>> cm.distribution(1e9, 0.5).sample(3, seed=1)   # with Duffy's 0.15 dex scatter
    """

    def __init__(self, h=None, definition: str = "200c", sample: str = "full"):
        if h is None:
            from astropy.cosmology import Planck18

            h = Planck18.H0.value / 100.0
        if isinstance(h, bool) or not isinstance(h, (int, float, np.floating, np.integer)) \
                or not math.isfinite(h) or h <= 0:
            raise ValueError(f"h must be a positive number, got {h!r}")
        key = (definition, sample)
        if key not in DUFFY08_PARAMETERS:
            raise ValueError(
                f"definition={definition!r}, sample={sample!r} is not in Duffy et al. "
                f"(2008) Table 1 as implemented; choose one of {sorted(DUFFY08_PARAMETERS)}"
            )
        self.h = float(h)
        self.definition = definition
        self.sample = sample
        self.A, self.B, self.C = DUFFY08_PARAMETERS[key]
        self.scatter_dex = DUFFY08_SCATTER_DEX[sample]

    def __repr__(self):
        return (f"Duffy08Concentration(h={self.h}, definition={self.definition!r}, "
                f"sample={self.sample!r})")

    def __call__(self, M, z):
        """Median concentration for mass ``M`` [M_sun] at redshift ``z``."""
        be = _Backend(M, z)
        check_positive(M, "M")
        check_positive(z, "z", allow_zero=True)
        M = be.convert(M, "M")
        z = be.convert(z, "z")
        xp = be.xp
        log_c = (math.log(self.A) + self.B * xp.log(M * (self.h / DUFFY08_M_PIVOT))
                 + self.C * xp.log1p(z))
        return be.out(xp.exp(log_c))

    def distribution(self, M, z, scatter_dex=None, dtype=None):
        """``tfd.LogNormal`` of the concentration: median :meth:`__call__`, standard
        deviation of ``log10 c`` equal to ``scatter_dex`` (default: Duffy's value for the
        sample, 0.15 or 0.11). ``dtype`` defaults to the tensor inputs' or float32."""
        scatter = self.scatter_dex if scatter_dex is None else scatter_dex
        check_positive(scatter, "scatter_dex")
        if dtype is None:
            be = _Backend(M, z)
            dtype = be.dtype if be.tf else tf.float32
        dtype = resolve_dtype(dtype)

        def as_t(v):
            if isinstance(v, (tf.Tensor, tf.Variable)):
                return tf.cast(v, dtype)
            return tf.constant(np.asarray(v, dtype=dtype.as_numpy_dtype))

        median = self(as_t(M), as_t(z))
        return tfd.LogNormal(loc=tf.math.log(median),
                             scale=tf.cast(scatter, dtype) * math.log(10.0))


def tidal_radius(m, r3d, M_enclosed, dlnM_dlnr=1.0, centrifugal: bool = False):
    r"""Tidal radius of a subhalo (Tormen, Diaferio & Syer 1998, MNRAS 299, 728).

    #### Mathematical details

    A subhalo of mass ``m`` at distance ``r`` from the centre of a host whose mass inside
    ``r`` is ``M(<r)`` loses the material outside

        r_t = r [ m / ((2 + k - dln M/dln r) M(<r)) ]^(1/3),

    where the self-gravity of the subhalo (treated as a point mass) balances the tidal
    field of the host along the radius. ``k = 0`` is the radial tidal field alone, the
    prescription of Tormen, Diaferio & Syer (1998); ``k = 1`` (``centrifugal=True``) adds
    the centrifugal term of a circular orbit (King 1962, AJ 67, 471; the Jacobi radius),
    which gives ``r (m / 3M)^(1/3)`` for a point-mass host. For an isothermal host
    (``M(<r) ~ r``, ``dln M/dln r = 1``) the two are ``r (m / M)^(1/3)`` (TDS98) and
    ``r (m / 2M)^(1/3)`` (with the centrifugal term).

    Args:
      m: subhalo mass (any unit, the same as ``M_enclosed``), > 0.
      r3d: 3D distance from the host centre (the result is in its units), >= 0.
      M_enclosed: host mass inside ``r3d``, > 0.
      dlnM_dlnr: logarithmic slope of the host's enclosed mass at ``r3d`` (1 for an
        isothermal host, 0 for a point mass), < 2 (< 3 with ``centrifugal``).
      centrifugal: include the centrifugal term (``k = 1``).
    """
    be = _Backend(m, r3d, M_enclosed, dlnM_dlnr)
    check_positive(m, "m")
    check_positive(r3d, "r3d", allow_zero=True)
    check_positive(M_enclosed, "M_enclosed")
    k = 3.0 if centrifugal else 2.0
    if is_concrete(dlnM_dlnr):
        slope = np.asarray(dlnM_dlnr.numpy() if hasattr(dlnM_dlnr, "numpy") else dlnM_dlnr)
        if not np.all(slope < k):
            raise ValueError(
                f"dlnM_dlnr must be < {k:g} (the tidal field must be stretching), got "
                f"{slope.ravel()[np.argmax(slope.ravel())].item()!r}"
            )
    m = be.convert(m, "m")
    r = be.convert(r3d, "r3d")
    M = be.convert(M_enclosed, "M_enclosed")
    s = be.convert(dlnM_dlnr, "dlnM_dlnr")
    xp = be.xp
    return be.out(r * xp.cbrt(m / ((k - s) * M)))


def isothermal_enclosed_mass(r3d, theta_E, sigma_crit_angle):
    r"""3D mass [M_sun] inside ``r3d`` [arcsec] of a singular isothermal sphere host.

    For ``rho = sigma_v^2 / (2 pi G r^2)``, ``M(<r) = 2 sigma_v^2 r / G``; with its
    Einstein radius ``theta_E = 4 pi (sigma_v / c)^2 D_ds / D_s`` and
    ``Sigma_crit = c^2 D_s / (4 pi G D_d D_ds)`` this is

        M(<r) = 2 Sigma_crit_angle theta_E r        (r, theta_E in arcsec),

    (``Sigma_crit_angle`` in M_sun/arcsec^2, :attr:`LensCosmology.sigma_crit_angle`).
    """
    be = _Backend(r3d, theta_E)
    check_positive(r3d, "r3d", allow_zero=True)
    check_positive(theta_E, "theta_E")
    check_positive(sigma_crit_angle, "sigma_crit_angle")
    r = be.convert(r3d, "r3d")
    t = be.convert(theta_E, "theta_E")
    return be.out(2.0 * float(sigma_crit_angle) * t * r)


def truncation_radius_isothermal(m, r3d, theta_E, lens_cosmology: LensCosmology,
                                 centrifugal: bool = False):
    r"""Tidal truncation radius [arcsec] of a subhalo in the isothermal host of a lens.

    :func:`tidal_radius` with the host mass of :func:`isothermal_enclosed_mass`
    (``dln M / dln r = 1``):

        r_t = r^(2/3) [ m / (2 k' Sigma_crit_angle theta_E) ]^(1/3),

    with ``k' = 1`` (Tormen, Diaferio & Syer 1998, default) or ``k' = 2`` with the
    centrifugal term (the Jacobi radius ``r (m / 2 M(<r))^(1/3)`` of a circular orbit,
    King 1962).

    Args:
      m: subhalo mass [M_sun] (its M200 before stripping, as usual in lensing studies).
      r3d: 3D distance from the host centre [arcsec at the lens distance]; the projected
        distance is a lower bound (the strongest truncation).
      theta_E: Einstein radius of the (isothermal) host [arcsec].
      lens_cosmology: the :class:`LensCosmology` of the lens (for ``Sigma_crit``).
      centrifugal: include the centrifugal term.
    """
    if not isinstance(lens_cosmology, LensCosmology):
        raise ValueError(f"lens_cosmology must be a LensCosmology, got {lens_cosmology!r}")
    be = _Backend(m, r3d, theta_E)
    check_positive(m, "m")
    check_positive(r3d, "r3d", allow_zero=True)
    check_positive(theta_E, "theta_E")
    m = be.convert(m, "m")
    r = be.convert(r3d, "r3d")
    t = be.convert(theta_E, "theta_E")
    xp = be.xp
    kk = 2.0 if centrifugal else 1.0
    # r (m / (kk M(<r)))^(1/3) with M(<r) = 2 Sigma theta_E r
    scale = 1.0 / (2.0 * kk * lens_cosmology.sigma_crit_angle)
    return be.out(xp.cbrt(m * scale / t * r * r))
