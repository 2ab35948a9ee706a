"""Multipole perturbations of the main lens: circular (``MULTIPOLE``) and elliptical
(``MULTIPOLE_ELL``).

A real lens galaxy is not a perfect ellipse: boxy or disky isodensity contours (m = 4),
lopsidedness (m = 1) and triangular distortions (m = 3) perturb the arcs at the percent
level, which is also the size of a subhalo's signal. A subhalo search whose macro model has
no angular freedom mistakes these for subhalos (Nightingale et al. 2024, arXiv 2209.10566),
so the fitted lens model should be able to include them.

Both profiles take the order ``m`` as a static setting (``MULTIPOLE(m=4)``, also
``get_profile("MULTIPOLE", m=4)``): it selects the formula, it is not fitted. lenstronomy
passes ``m`` with the other keyword parameters; here the remaining parameters are
lenstronomy's (``a_m``, ``phi_m``, ``center_x``, ``center_y``, ``r_E``, and ``q`` for the
elliptical form) with lenstronomy's conventions, and the tests compare with lenstronomy.
"""

from __future__ import annotations

import math
import numbers

import tensorflow as tf

from ._geometry import tiny
from .base import MassProfile

__all__ = ["Multipole", "EllipticalMultipole"]

_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)


def _check_order(m, allowed=None):
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
        raise ValueError(f"m (the multipole order) must be an integer >= 1, got {m!r}")
    if allowed is not None and m not in allowed:
        raise ValueError(f"m (the multipole order) must be one of {sorted(allowed)} for the "
                         f"elliptical multipole, got {m!r}")
    return int(m)


def _polar(x, y, center_x, center_y):
    """``(r, cos(phi), sin(phi))`` of ``(x, y)`` about the centre; at the exact centre the
    direction is set to ``phi = 0`` and ``r`` to a tiny floor, so that values and gradients
    stay finite (the deflections of these profiles are direction dependent there)."""
    dx, dy = x - center_x, y - center_y
    r2 = dx * dx + dy * dy
    at_centre = r2 < tiny(dx.dtype)
    r = tf.sqrt(tf.where(at_centre, tf.ones_like(r2), r2))
    c = tf.where(at_centre, tf.ones_like(r), dx / r)
    s = tf.where(at_centre, tf.zeros_like(r), dy / r)
    r = tf.where(at_centre, math.sqrt(tiny(dx.dtype)) * tf.ones_like(r), r)
    return r, c, s


def _unit_power(c, s, m):
    """``(cos(m phi), sin(m phi))`` from ``(cos(phi), sin(phi))`` by complex powers (no
    angles: no branch cut, exact gradients)."""
    pr, pi = tf.ones_like(c), tf.zeros_like(c)
    for _ in range(m):
        pr, pi = pr * c - pi * s, pr * s + pi * c
    return pr, pi


def _circular(m, r, c, s, a_m, phi_m, r_E):
    """Potential, deflection and convergence of the circular multipole of order ``m``."""
    cm, sm = _unit_power(c, s, m)
    cos_m, sin_m = tf.cos(m * phi_m), tf.sin(m * phi_m)
    C = cm * cos_m + sm * sin_m  # cos(m (phi - phi_m))
    S = sm * cos_m - cm * sin_m  # sin(m (phi - phi_m))
    kappa = 0.5 * a_m * C / r
    if m == 1:
        log_r = tf.math.log(r / r_E)
        psi = 0.5 * a_m * r * log_r * C
        ax = 0.5 * a_m * (tf.cos(phi_m) * log_r + C * c)
        ay = 0.5 * a_m * (tf.sin(phi_m) * log_r + C * s)
    else:
        k = a_m / (1.0 - m * m)
        psi = k * r * C
        ax = k * (c * C + m * s * S)
        ay = k * (s * C - m * c * S)
    return psi, ax, ay, kappa


class _MultipoleProfile(MassProfile):
    """Shared machinery: the static order ``m`` and the fields from one ``_all`` call."""

    allowed_orders = None  # None: any m >= 1

    def __init__(self, m: int = 4, dtype=tf.float32):
        super().__init__(dtype=dtype)
        self.m = _check_order(m, self.allowed_orders)

    def get_config(self) -> dict:
        return {**super().get_config(), "m": self.m}

    def default_priors(self) -> dict:
        """``a_m`` uniform in [0, 0.1] arcsec (a fractional amplitude up to ~10% of a 1"
        lens), ``phi_m`` uniform over one period ``2 pi / m``, and (elliptical form) ``q``
        uniform in [0.4, 1] (tie it to the main deflector's axis ratio where known)."""
        half_period = math.pi / self.m
        priors = {"a_m": {"uniform": [0.0, 0.1]},
                  "phi_m": {"uniform": [-half_period, half_period]}}
        if "q" in self.param_names:
            priors["q"] = {"uniform": [0.4, 1.0]}
        return priors

    def _all(self, x, y, **p):  # pragma: no cover - abstract
        """``(psi, alpha_x, alpha_y, kappa)``."""
        raise NotImplementedError

    def _deflection(self, x, y, **p):
        _, ax, ay, _ = self._all(x, y, **p)
        return ax, ay

    def _potential(self, x, y, **p):
        return self._all(x, y, **p)[0]

    def _convergence(self, x, y, **p):
        return self._all(x, y, **p)[3]


class Multipole(_MultipoleProfile):
    r"""Circular multipole of order ``m`` (lenstronomy ``MULTIPOLE``; Xu et al. 2013,
    arXiv 1307.4220, eq. B12).

    #### Mathematical details

    With ``(r, phi)`` polar coordinates about the centre, the convergence is

        kappa = a_m cos(m (phi - phi_m)) / (2 r),

    a perturbation of an isothermal profile's ``1/(2r)`` whose isodensity contours are
    deformed with m-fold symmetry (m = 4: boxy for ``phi_m`` on the axes, disky at 45
    degrees). The potential is

        psi = r a_m cos(m (phi - phi_m)) / (1 - m^2)           (m >= 2),
        psi = (a_m / 2) r ln(r / r_E) cos(phi - phi_m)          (m = 1),

    and ``alpha = grad(psi)`` (closed forms in the code). ``r_E`` only sets the
    normalisation of the ``m = 1`` logarithm (a constant deflection).

    Parameters: ``a_m`` (dimensionless strength; at ``theta_E`` it is the fractional
    amplitude times ``theta_E``), ``phi_m`` (radians), ``center_x``, ``center_y``
    (arcsec), ``r_E`` (arcsec, > 0, default 1). Static setting: ``m`` (integer >= 1).
    Values and gradients are finite at the centre and at ``a_m = 0``.
    """

    name = "MULTIPOLE"
    param_names = ("a_m", "phi_m", "center_x", "center_y", "r_E")
    defaults = {"center_x": 0.0, "center_y": 0.0, "r_E": 1.0}
    positive_params = ("r_E",)

    def _all(self, x, y, a_m, phi_m, center_x, center_y, r_E):
        r, c, s = _polar(x, y, center_x, center_y)
        return _circular(self.m, r, c, s, a_m, phi_m, r_E)


# --------------------------------------------------------------- elliptical multipoles
# Paugnat & Gilman (2025), as implemented in lenstronomy's EllipticalMultipole: the
# reference ellipse has its major axis along x (R = sqrt(q x^2 + y^2 / q)). Every angular
# function below is written in (c, s) = (cos(phi), sin(phi)); the functions of
# "phi + pi/2" that lenstronomy calls for the sin(m phi_m) parts are those of (-s, c).

def _phi_minus_phi_ell(c, s, q):
    """``phi - phi_ell = arg(c + i s) - arg(q c + i s) = arg((c + i s)(q c - i s))``; the real
    part ``q c^2 + s^2`` is positive, so this has no branch cut."""
    return tf.atan2(c * s * (q - 1.0), q * c * c + s * s)


def _log_term(c, s, q):
    return tf.math.log(1.0 + q * q + (q * q - 1.0) * (c * c - s * s))


def _G(m, c, s, q):
    """``cos(m arg(q c + i s)) / |q c + i s|``: the angular part of the convergence."""
    pr, _ = _unit_power(q * c, s, m)  # Re((q c + i s)^m)
    mod2 = q * q * c * c + s * s
    return pr / mod2 ** (0.5 * (m + 1))


def _odd_hat(m, c, s, q):
    """lenstronomy's ``F_hat`` (m = 1, 3) and its phi-derivative, and ``lambda_m``."""
    q2 = q * q
    L = _log_term(c, s, q)
    D = _phi_minus_phi_ell(c, s, q)
    den = 1.0 + q2 + (q2 - 1.0) * (c * c - s * s)
    sin2 = 2.0 * c * s
    dD = 1.0 - q / (q2 * c * c + s * s)
    if m == 1:
        const = _LN2 * (1.0 + q) / 2.0 - (1.0 - q2) * (1.0 + _LN2 / 4.0)
        f = -(c * (q * L - const) + 2.0 * s * D) / (2.0 * (1.0 - q2))
        df = -((-c * q * 2.0 * (q2 - 1.0) * sin2 / den + s * (-q * L + const))
               + 2.0 * c * D + 2.0 * s * dD) / (2.0 * (1.0 - q2))
        lam = 2.0 / (1.0 + q)
    else:  # m == 3
        A = (_LN2 * (1.0 + q) ** 2 - 2.0 * (1.0 - q) * (1.0 + q) ** 2 * (1.0 + _LN2 / 4.0)
             + (1.0 - q2) ** 2 / 4.0)
        k3, k13 = q * (3.0 + q2), 1.0 + 3.0 * q2
        norm = 2.0 * (1.0 - q2) ** 2
        f = (c * (k3 * L - A) + 2.0 * s * k13 * D) / norm
        df = ((-c * k3 * 2.0 * (q2 - 1.0) * sin2 / den + s * (-k3 * L + A))
              + 2.0 * c * k13 * D + 2.0 * s * k13 * dD) / norm
        lam = -2.0 * (1.0 - q) / (1.0 + q) ** 2
    return f, df, lam


def _odd_component(m, r, c, s, q, r_E):
    """Potential and deflection of lenstronomy's ``_potential_m{m}_1`` / ``_alpha_m{m}_1``."""
    f, df, lam = _odd_hat(m, c, s, q)
    log_r = tf.math.log(r / r_E)
    psi = r * f + 0.5 * lam * r * log_r * c
    ax = f * c - df * s + 0.5 * lam * (log_r + c * c)
    ay = f * s + df * c + 0.5 * lam * c * s
    return psi, ax, ay


def _m4_angular(c, s, q):
    """``F_m4_1, F_m4_2`` and their phi-derivatives (lenstronomy's closed forms)."""
    q2 = q * q
    q4 = q2 * q2
    one_q2 = 1.0 - q2
    cos2, sin2 = c * c - s * s, 2.0 * c * s
    K = 1.0 + q2 + (q2 - 1.0) * cos2
    sqK = tf.sqrt(K)
    AT = tf.atan(tf.sqrt(2.0 * one_q2) * c / sqK)
    u = tf.sqrt(one_q2) * s / q
    root = tf.sqrt(1.0 + u * u)
    LG = tf.math.log(u + root)
    p52 = one_q2 ** 2.5
    C5 = (1.0 + 6.0 * q2 + q4) / p52
    D5 = 4.0 * q * (1.0 + q2) / p52
    f1 = (-4.0 * _SQRT2 * (1.0 + 4.0 * q2 + q4 + (q4 - 1.0) * cos2) / (3.0 * one_q2**2 * sqK)
          + C5 * (c * AT + s * LG))
    df1 = (-4.0 * _SQRT2 * (1.0 + q4 + (q4 - 1.0) * cos2) * sin2 / (3.0 * one_q2 * K * sqK)
           - C5 * (s * AT + tf.sqrt(2.0 * one_q2) * sin2 / (2.0 * sqK))
           + C5 * c * (LG + u / root))
    f2 = (-4.0 * _SQRT2 * q / (3.0 * one_q2) * sin2 / sqK - D5 * s * AT + D5 * c * LG)
    df2 = (-8.0 * _SQRT2 * q / (6.0 * one_q2) * (-one_q2 * sin2 * sin2 / (K * sqK)
                                                 + 2.0 * cos2 / sqK)
           + D5 * (-c * AT + tf.sqrt(2.0 * one_q2) * s * s / sqK)
           + D5 * (-s * LG + tf.sqrt(one_q2) / q * c * c / root))
    return f1, df1, f2, df2


def _elliptical(m, r, c, s, a_m, phi_m, q, r_E):
    """Potential, deflection and convergence of the elliptical multipole (q < 1)."""
    amp = a_m * tf.sqrt(q)
    cos_m, sin_m = tf.cos(m * phi_m), tf.sin(m * phi_m)
    if m == 4:
        f1, df1, f2, df2 = _m4_angular(c, s, q)
        F = f1 * cos_m + f2 * sin_m
        dF = df1 * cos_m + df2 * sin_m
        psi = amp * r * F
        ax = amp * (F * c - dF * s)
        ay = amp * (F * s + dF * c)
        # kappa = a_m cos(m (phi_ell - phi_m)) / (2 R), R = r sqrt(q c^2 + s^2 / q)
        pr, pi = _unit_power(q * c, s, m)
        mod = tf.sqrt(q * q * c * c + s * s) ** m
        cos_ell = (pr * cos_m + pi * sin_m) / mod
        kappa = 0.5 * a_m * cos_ell / (r * tf.sqrt(q * c * c + s * s / q))
        return psi, ax, ay, kappa
    sign = -1.0 if m == 1 else 1.0
    p1, ax1, ay1 = _odd_component(m, r, c, s, q, r_E)
    p2, ax2, ay2 = _odd_component(m, r, -s, c, 1.0 / q, r_E)
    psi = amp * (cos_m * p1 + sign * sin_m / q * p2)
    ax = amp * (cos_m * ax1 + sign * sin_m / q * ay2)
    ay = amp * (cos_m * ay1 - sign * sin_m / q * ax2)
    kappa = 0.5 * amp * (cos_m * _G(m, c, s, q) + sign * sin_m / q * _G(m, -s, c, 1.0 / q)) / r
    return psi, ax, ay, kappa


class EllipticalMultipole(_MultipoleProfile):
    r"""Elliptical multipole of order m = 1, 3 or 4 (lenstronomy ``MULTIPOLE_ELL``; Paugnat
    & Gilman 2025).

    #### Mathematical details

    The perturbation that deforms the *elliptical* isodensity contours of an SIE of axis
    ratio ``q`` (major axis along x) with m-fold symmetry, instead of the circular ones of
    :class:`Multipole`. With ``phi_ell = arg(q x + i y)`` and ``R = sqrt(q x^2 + y^2 / q)``,
    the even (m = 4) convergence is

        kappa = a_m cos(m (phi_ell - phi_m)) / (2 R),

    and the potential is ``r F(phi)`` with the closed-form ``F`` of Paugnat & Gilman (odd
    m add ``r ln(r / r_E)`` terms). Deflections are ``grad(psi)``.

    The closed forms carry factors ``(1 - q^2)^{-(m+1)/2}`` that cancel between terms, so
    they are evaluated in float64 whatever ``dtype`` is (results are cast back; TPUs, which
    lack float64, should use :class:`Multipole`), and below
    ``|1 - q^2|^{(m+1)/2} < 1e-8`` the circular multipole is used, as lenstronomy does.

    Parameters: ``a_m``, ``phi_m`` (radians), ``q`` (axis ratio of the reference ellipse,
    0 < q <= 1), ``center_x``, ``center_y``, ``r_E`` (arcsec, default 1). Static setting:
    ``m`` in {1, 3, 4}.
    """

    name = "MULTIPOLE_ELL"
    param_names = ("a_m", "phi_m", "q", "center_x", "center_y", "r_E")
    defaults = {"center_x": 0.0, "center_y": 0.0, "r_E": 1.0}
    positive_params = ("q", "r_E")
    upper_bounds = {"q": 1.0}
    allowed_orders = (1, 3, 4)

    def _all(self, x, y, a_m, phi_m, q, center_x, center_y, r_E):
        f64 = [tf.cast(t, tf.float64) for t in (x, y, a_m, phi_m, q, center_x, center_y, r_E)]
        x, y, a_m, phi_m, q, center_x, center_y, r_E = f64
        m = self.m
        r, c, s = _polar(x, y, center_x, center_y)
        round_ = tf.abs(1.0 - q * q) ** (0.5 * (m + 1)) < 1e-8
        q_safe = tf.where(round_, 0.5 * tf.ones_like(q), q)
        ell = _elliptical(m, r, c, s, a_m, phi_m, q_safe, r_E)
        circ = _circular(m, r, c, s, a_m, phi_m, r_E)
        return [tf.cast(tf.where(round_, b, a), self.dtype) for a, b in zip(ell, circ)]
