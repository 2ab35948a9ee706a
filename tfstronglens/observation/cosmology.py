r"""Lensing distances and conversions between physical and angular (lensing) units.

:class:`LensCosmology` is the TensorFlow counterpart of lenstronomy's
``lenstronomy.Cosmo.lens_cosmo.LensCosmo`` for one lens plane and one source plane. The
distances come from ``astropy.cosmology`` once, at construction, and are stored as Python
floats, so every conversion is a few multiplications that work on floats, numpy arrays
and TensorFlow tensors alike (a tensor in gives a tensor out, differentiable and usable
inside ``tf.function(jit_compile=True)``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf

from .._validation import check_finite, check_positive, is_concrete

__all__ = ["LensCosmology", "G_SI", "C_SI", "M_SUN_KG", "MPC_M", "ARCSEC_RAD", "RHO_CRIT_H2"]

# Physical constants: the values lenstronomy uses (lenstronomy.Util.constants), so that
# conversions agree with lenstronomy to rounding. They differ from astropy's CODATA 2018 /
# IAU 2015 values by < 4e-4 relative (G by 7e-5, the solar mass by 3.5e-4), far below the
# astrophysical uncertainties of any mass estimate.
G_SI = 6.67384e-11  # gravitational constant [m^3 kg^-1 s^-2] (CODATA 2010)
C_SI = 299792458.0  # speed of light [m/s]
M_SUN_KG = 1.9891e30  # solar mass [kg]
MPC_M = 3.08567758e22  # megaparsec [m]
ARCSEC_RAD = 2.0 * math.pi / 360.0 / 3600.0  # arcsecond [rad]
# Critical density today over h^2, 3 (100 km/s/Mpc)^2 / (8 pi G), in M_sun / Mpc^3: the
# value lenstronomy's NFWParam hard-codes (it equals astropy's Planck18 critical density
# to 1e-9).
RHO_CRIT_H2 = 2.77536627e11

# c^2 / (4 pi G) in M_sun / Mpc
_C2_4PIG = C_SI**2 / (4.0 * math.pi * G_SI) * MPC_M / M_SUN_KG
_G1 = 1.0 - math.log(2.0)  # 1 + ln(1/2): NFW mass inside X = 1, fixes rho0 from alpha_Rs


def _check_redshift(value, name):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite, positive redshift, got {value!r}")
    return value


def _resolve_cosmology(cosmology):
    from astropy import cosmology as acosmo

    if cosmology is None:
        return acosmo.Planck18
    if isinstance(cosmology, str):
        realization = getattr(acosmo.realizations, cosmology, None)
        if not isinstance(realization, acosmo.FLRW):
            raise ValueError(
                f"cosmology {cosmology!r} is not an astropy realization; known names: "
                f"{list(acosmo.realizations.available)}"
            )
        return realization
    if not isinstance(cosmology, acosmo.FLRW):
        raise ValueError(
            "cosmology must be an astropy.cosmology FLRW instance (e.g. "
            f"astropy.cosmology.Planck18), a realization name, or None; got {cosmology!r}"
        )
    return cosmology


class _Backend:
    """Elementwise maths on numpy arrays (float64) or on tensors (their own dtype)."""

    def __init__(self, *values):
        tensors = [v for v in values if isinstance(v, (tf.Tensor, tf.Variable))]
        self.tf = bool(tensors)
        if self.tf:
            dtypes = {v.dtype for v in tensors if v.dtype.is_floating}
            if len(dtypes) > 1:
                raise ValueError(
                    f"tensor arguments have different dtypes {sorted(d.name for d in dtypes)}"
                )
            self.dtype = dtypes.pop() if dtypes else tf.float32

    def convert(self, value, name):
        if is_concrete(value):
            check_finite(value, name)
        if self.tf:
            if isinstance(value, (tf.Tensor, tf.Variable)):
                if value.dtype != self.dtype:
                    if not (value.dtype.is_floating or value.dtype.is_integer):
                        raise ValueError(f"{name} must be real, got dtype {value.dtype.name}")
                    value = tf.cast(value, self.dtype)
                return tf.convert_to_tensor(value)
            return tf.convert_to_tensor(np.asarray(value, dtype=self.dtype.as_numpy_dtype))
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be a real number or array, got {value!r}")
        return arr.astype(np.float64)

    def out(self, value):
        if self.tf:
            return value
        return value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value

    @property
    def xp(self):
        return _TF if self.tf else np


class _TF:
    sqrt = staticmethod(tf.sqrt)
    log = staticmethod(tf.math.log)
    log1p = staticmethod(tf.math.log1p)
    exp = staticmethod(tf.exp)
    cbrt = staticmethod(lambda x: tf.pow(x, 1.0 / 3.0))


def _nfw_m(c, xp):
    """``m(c) = ln(1 + c) - c / (1 + c)``: NFW mass inside ``c Rs`` over ``4 pi rho0 Rs^3``."""
    return xp.log1p(c) - c / (1.0 + c)


class LensCosmology:
    r"""Angular-diameter distances and unit conversions for a lens at ``z_lens``.

    #### Mathematical details

    With the angular-diameter distances ``D_d`` (observer-lens), ``D_s`` (observer-source)
    and ``D_ds`` (lens-source), all physical (proper) Mpc from ``astropy.cosmology``:

        Sigma_crit = c^2 D_s / (4 pi G D_d D_ds)            [M_sun / Mpc^2]
        Sigma_crit_angle = Sigma_crit (D_d arcsec)^2         [M_sun / arcsec^2]

    (``arcsec`` in radians). Conversions (all angles in arcsec, masses in physical M_sun,
    no factors of ``h``):

    * mass within the Einstein radius of any circularly symmetric lens, and the point mass
      with Einstein radius ``theta_E``: ``M = pi theta_E^2 Sigma_crit_angle`` (the mean
      convergence inside ``theta_E`` is 1);
    * singular isothermal sphere: ``theta_E = 4 pi (sigma_v / c)^2 D_ds / D_s``;
    * NFW halo of mass ``M200`` (inside ``r200``, where the mean density is 200 times the
      critical density ``rho_crit(z_lens) = 3 H(z_lens)^2 / (8 pi G)``) and concentration
      ``c = r200 / Rs``, exactly as lenstronomy's ``LensCosmo.nfw_physical2angle``:

          r200 = (3 M200 / (800 pi rho_crit))^(1/3),   Rs = r200 / c,
          rho0 = (200/3) rho_crit c^3 / m(c),   m(c) = ln(1 + c) - c / (1 + c),
          Rs_angle = Rs / (D_d arcsec),
          alpha_Rs = 4 rho0 Rs^2 (1 - ln 2) / (Sigma_crit D_d arcsec),

      i.e. ``alpha_Rs`` is the deflection of the (untruncated) NFW at ``Rs``, the
      normalization of :class:`~tfstronglens.profiles.NFW` and ``TNFW``.

    Units and conventions, as in lenstronomy 1.14: lenstronomy's ``nfwParam_physical``
    converts ``M`` to ``M h`` [M_sun/h], uses ``rho_crit`` in ``h^2 M_sun/Mpc^3`` and
    divides the radius by ``h`` again, so its inputs and outputs are *physical* (not
    comoving, no ``h``) masses and radii at ``z_lens``; we do the same without the round
    trip. ``rho_crit(z) = 2.77536627e11 h^2 E(z)^2 M_sun/Mpc^3`` with ``E(z) = H(z)/H0``
    from the astropy cosmology (lenstronomy's constant; astropy's ``critical_density``
    agrees to 1e-9), and the physical constants are lenstronomy's (see the module
    constants), so results agree with lenstronomy to floating-point rounding.

    Args:
      z_lens: lens redshift (> 0).
      z_source: source redshift (> ``z_lens``).
      cosmology: an ``astropy.cosmology`` FLRW instance, the name of an astropy
        realization (e.g. ``"WMAP9"``), or ``None`` for ``astropy.cosmology.Planck18``.

    The distances are computed once, at construction, and kept as Python floats; the
    conversions accept Python floats, numpy arrays (returning float64 numpy values) and
    tensors (returning tensors of the same float dtype, differentiable, usable under
    ``tf.function(jit_compile=True)``). Concrete inputs are checked (finite, and positive
    where the formula needs it): bad values raise ``ValueError`` naming the argument.

    #### Example

    >>> lc = LensCosmology(0.5, 2.0)
    >>> Rs, alpha_Rs = lc.nfw_physical2angle(1e12, 8.0)   # arcsec: ~3.49, ~0.267
    >>> lc.sis_sigma_v2theta_E(250.0)                      # arcsec
    """

    def __init__(self, z_lens, z_source, cosmology=None):
        self.z_lens = _check_redshift(z_lens, "z_lens")
        self.z_source = _check_redshift(z_source, "z_source")
        if not self.z_source > self.z_lens:
            raise ValueError(
                f"z_source must be larger than z_lens, got z_source={self.z_source!r} and "
                f"z_lens={self.z_lens!r}"
            )
        self.cosmology = _resolve_cosmology(cosmology)
        cosmo = self.cosmology
        self.h = float(cosmo.H0.value) / 100.0
        self._D_d = float(cosmo.angular_diameter_distance(self.z_lens).to_value("Mpc"))
        self._D_s = float(cosmo.angular_diameter_distance(self.z_source).to_value("Mpc"))
        self._D_ds = float(
            cosmo.angular_diameter_distance(self.z_lens, self.z_source).to_value("Mpc")
        )
        self._rho_crit = RHO_CRIT_H2 * self.h**2 * float(cosmo.efunc(self.z_lens)) ** 2
        self._sigma_crit = _C2_4PIG * self._D_s / (self._D_d * self._D_ds)
        self._mpc_per_arcsec = self._D_d * ARCSEC_RAD
        self._sigma_crit_angle = self._sigma_crit * self._mpc_per_arcsec**2
        # NFW constants: Rs_angle = K_R M^(1/3) / c, alpha_Rs = K_A M^(2/3) c / m(c)
        r200_per_cbrt_m = (3.0 / (800.0 * math.pi * self._rho_crit)) ** (1.0 / 3.0)  # Mpc
        self._nfw_KR = r200_per_cbrt_m / self._mpc_per_arcsec
        self._nfw_KA = (
            4.0 * _G1 * (200.0 / 3.0) * self._rho_crit * r200_per_cbrt_m**2
            / (self._sigma_crit * self._mpc_per_arcsec)
        )
        # SIS: theta_E [arcsec] = K_SIS sigma_v^2 [km/s]
        self._sis_K = 4.0 * math.pi * (1000.0 / C_SI) ** 2 * self._D_ds / self._D_s / ARCSEC_RAD

    # ------------------------------------------------------------- distances
    @property
    def D_d(self) -> float:
        """Angular-diameter distance observer-lens [Mpc]."""
        return self._D_d

    @property
    def D_s(self) -> float:
        """Angular-diameter distance observer-source [Mpc]."""
        return self._D_s

    @property
    def D_ds(self) -> float:
        """Angular-diameter distance lens-source [Mpc]."""
        return self._D_ds

    @property
    def sigma_crit(self) -> float:
        """Critical surface density ``c^2 D_s / (4 pi G D_d D_ds)`` [M_sun / Mpc^2]."""
        return self._sigma_crit

    @property
    def sigma_crit_angle(self) -> float:
        """Critical surface density per square arcsec at the lens [M_sun / arcsec^2]."""
        return self._sigma_crit_angle

    @property
    def arcsec_to_kpc(self) -> float:
        """Physical (proper) kpc per arcsec at the lens redshift."""
        return self._mpc_per_arcsec * 1000.0

    @property
    def rho_crit(self) -> float:
        """Critical density ``3 H(z_lens)^2 / (8 pi G)`` [M_sun / Mpc^3] (physical)."""
        return self._rho_crit

    def __repr__(self):
        name = getattr(self.cosmology, "name", None) or type(self.cosmology).__name__
        return f"LensCosmology(z_lens={self.z_lens}, z_source={self.z_source}, cosmology={name})"

    # ---------------------------------------------------------- conversions
    def nfw_physical2angle(self, M200, c):
        """NFW ``(Rs, alpha_Rs)`` in arcsec from ``M200`` [M_sun] and ``c = r200 / Rs``.

        ``M200`` is the mass inside the radius where the mean density is 200 times the
        critical density at ``z_lens`` (physical M_sun, no ``h``), as in lenstronomy's
        ``LensCosmo.nfw_physical2angle`` (see the class docstring).
        """
        be = _Backend(M200, c)
        check_positive(M200, "M200")
        check_positive(c, "c")
        M = be.convert(M200, "M200")
        c = be.convert(c, "c")
        xp = be.xp
        cbrt_m = xp.cbrt(M)
        Rs = self._nfw_KR * cbrt_m / c
        alpha_Rs = self._nfw_KA * (cbrt_m * cbrt_m) * c / _nfw_m(c, xp)
        return be.out(Rs), be.out(alpha_Rs)

    def nfw_angle2physical(self, Rs, alpha_Rs):
        """Inverse of :meth:`nfw_physical2angle`: ``(M200 [M_sun], c)`` from arcsec.

        Solves ``c^3 / m(c) = 3 rho0 / (200 rho_crit)`` for ``c`` (the left side grows
        monotonically, with logarithmic slope between 1 and 3) by 64 bisections in
        ``ln c`` within a bracket that provably contains the root, then one Newton step
        (which also gives the exact implicit derivative when the input is a tensor); the
        result is exact to rounding. (lenstronomy's ``nfw_angle2physical`` interpolates a
        spline over ``0.1 < c < 30`` instead, accurate to ~1e-7.) Computed in float64;
        tensor inputs give tensors of their own dtype.
        """
        be = _Backend(Rs, alpha_Rs)
        check_positive(Rs, "Rs")
        check_positive(alpha_Rs, "alpha_Rs")
        Rs_t = be.convert(Rs, "Rs")
        a_t = be.convert(alpha_Rs, "alpha_Rs")
        Rs64 = tf.cast(tf.convert_to_tensor(Rs_t), tf.float64)
        a64 = tf.cast(tf.convert_to_tensor(a_t), tf.float64)
        # Rs_angle = K_R M^(1/3)/c and alpha_Rs = K_A M^(2/3) c / m(c) give
        # c^3 / m(c) = alpha_Rs K_R^2 / (K_A Rs^2) =: y
        log_y = (tf.math.log(a64) - 2.0 * tf.math.log(Rs64)
                 + math.log(self._nfw_KR**2 / self._nfw_KA))
        x = _solve_log_c(log_y)
        c = tf.exp(x)
        M = (Rs64 * c / self._nfw_KR) ** 3
        if be.tf:
            return tf.cast(M, be.dtype), tf.cast(c, be.dtype)
        return be.out(M.numpy()), be.out(c.numpy())

    def point_mass_theta_E(self, M):
        """Einstein radius [arcsec] of a point mass ``M`` [M_sun]:
        ``theta_E = sqrt(M / (pi Sigma_crit_angle)) = sqrt(4 G M D_ds / (c^2 D_d D_s))``."""
        be = _Backend(M)
        check_positive(M, "M", allow_zero=True)
        M = be.convert(M, "M")
        return be.out(be.xp.sqrt(M / (math.pi * self._sigma_crit_angle)))

    def point_mass_mass(self, theta_E):
        """Mass [M_sun] of a point mass with Einstein radius ``theta_E`` [arcsec]."""
        return self._pi_theta2_sigma(theta_E)

    def einstein_mass(self, theta_E):
        """Projected mass [M_sun] within the Einstein radius ``theta_E`` [arcsec] of an
        isothermal (or any circularly symmetric) lens: ``M = pi theta_E^2 Sigma_crit``
        (lenstronomy's ``LensCosmo.mass_in_theta_E``)."""
        return self._pi_theta2_sigma(theta_E)

    def _pi_theta2_sigma(self, theta_E):
        be = _Backend(theta_E)
        check_positive(theta_E, "theta_E", allow_zero=True)
        t = be.convert(theta_E, "theta_E")
        return be.out(math.pi * self._sigma_crit_angle * t * t)

    def sis_sigma_v2theta_E(self, sigma_v):
        """SIS Einstein radius [arcsec] from the velocity dispersion ``sigma_v`` [km/s]:
        ``theta_E = 4 pi (sigma_v / c)^2 D_ds / D_s``."""
        be = _Backend(sigma_v)
        check_positive(sigma_v, "sigma_v", allow_zero=True)
        s = be.convert(sigma_v, "sigma_v")
        return be.out(self._sis_K * s * s)

    def sis_theta_E2sigma_v(self, theta_E):
        """SIS velocity dispersion [km/s] from the Einstein radius ``theta_E`` [arcsec]
        (inverse of :meth:`sis_sigma_v2theta_E`)."""
        be = _Backend(theta_E)
        check_positive(theta_E, "theta_E", allow_zero=True)
        t = be.convert(theta_E, "theta_E")
        return be.out(be.xp.sqrt(t / self._sis_K))

    def get_config(self) -> dict:
        """Redshifts and the astropy cosmology (as given) to rebuild this object."""
        return {"z_lens": self.z_lens, "z_source": self.z_source, "cosmology": self.cosmology}


def _log_y_of_x(x):
    """``ln(c^3 / m(c))`` at ``c = e^x`` and its derivative in ``x`` (tensors, float64)."""
    c = tf.exp(x)
    m = _nfw_m(c, _TF)
    # m'(c) = c / (1 + c)^2, so d ln m / d x = c m'(c) / m = c^2 / ((1 + c)^2 m)
    f = 3.0 * x - tf.math.log(m)
    df = 3.0 - c * c / ((1.0 + c) ** 2 * m)
    return f, df


def _solve_log_c(log_y):
    """Root ``x = ln c`` of ``3 x - ln m(e^x) = log_y``, float64 tensors (see callers)."""
    x0 = tf.stop_gradient(0.5 * log_y)
    g0, _ = _log_y_of_x(x0)
    # the slope of g(x) = 3 x - ln m(e^x) lies in (1, 3): the root is within |g(x0)| of x0
    half = tf.abs(g0 - tf.stop_gradient(log_y)) + 1e-3
    lo, hi = x0 - half, x0 + half
    target = tf.stop_gradient(log_y)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        g, _ = _log_y_of_x(mid)
        below = g < target
        lo = tf.where(below, mid, lo)
        hi = tf.where(below, hi, mid)
    x = tf.stop_gradient(0.5 * (lo + hi))
    # one Newton step: polishes the last bits and carries d x / d log_y = 1 / g'(x)
    g, dg = _log_y_of_x(x)
    return x - (g - log_y) / dg
