"""Elliptical power-law mass profile (Tessore & Metcalf 2015)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from .._validation import is_concrete, largest_ellipticity
from ._geometry import broadcast_shape, cdiv, cmul, safe_norm, sum_pixels, sum_to, tiny
from .base import MassProfile

__all__ = ["EPL", "epl_series_terms"]

# Unit roundoff of each dtype: the truncation error of the series is kept below it.
_UNIT_ROUNDOFF = {tf.float32: 2.0**-24, tf.float64: 2.0**-53}
_GAMMA_RANGE = (1.0, 3.0)
# The series is summed as this many interleaved chains (see _power_series).
_SPLIT = 4


def epl_series_terms(q_min: float, dtype=tf.float32) -> int:
    """Highest power ``N`` of the hypergeometric series that :class:`EPL` needs so that the
    truncation error is below the unit roundoff of ``dtype`` for every axis ratio
    ``q >= q_min`` and every ``1 < gamma < 3``.

    With ``c_n <= 1`` (true for ``t = gamma - 1 < 2``) the tail after ``u^N`` is at most
    ``|e|^{N+1} / (1 - |e|)``, and ``|F| >= 1 / (1 + |e|)`` on ``|u| = |e|``, so the relative
    error is at most ``|e|^{N+1} / q``. E.g. ``q_min = 0.2`` gives ``N = 44`` in float32 and
    ``N = 94`` in float64.
    """
    q_min = float(q_min)
    e_max = (1.0 - q_min) / (1.0 + q_min)
    if e_max <= 0.0:
        return 2
    eps = _UNIT_ROUNDOFF[tf.as_dtype(dtype)]
    n = math.ceil(math.log(eps * q_min) / math.log(e_max)) - 1
    return max(int(n), 2)


def _scaled_coefficients(t, n_terms, derivative=False):
    """Coefficients of ``F(u) = 2F1(1, t/2; 2 - t/2; u) = sum_n c_n u^n`` (or of ``dF/dt``),
    times a per-lens scale ``k``: returns ``([k c_0, ..., k c_N], k)``.

    ``c_0 = 1``, ``c_1 = t / (4 - t)``, ``c_n = c_1 P_n`` with
    ``P_n = prod_{j=2}^n (2j - 2 + t)/(2j + 2 - t)``; with ``k = 4 - t`` the scaled
    coefficients are ``4 - t, t, t P_2, ...``. The derivatives are ``dc_0/dt = 0``,
    ``dc_1/dt = 4 / (4 - t)^2``, ``dc_n/dt = P_n (dc_1/dt + c_1 S_n)`` with
    ``S_n = sum_{j=2}^n [1/(2j-2+t) + 1/(2j+2-t)]``; with ``k = (4 - t)^2`` they are
    ``0, 4, P_n (4 + t (4 - t) S_n)``. Nothing divides by ``t``: finite for ``0 <= t < 2``.
    """
    dtype = t.dtype
    j = tf.constant(np.arange(2, n_terms + 1), dtype)
    j = tf.reshape(j, [-1] + [1] * t.shape.rank)
    num = 2.0 * j - 2.0 + t
    den = 2.0 * j + 2.0 - t
    prod = tf.math.cumprod(num / den, axis=0)
    if not derivative:
        return [4.0 - t, t] + tf.unstack(t * prod, axis=0), 4.0 - t
    s = tf.math.cumsum(1.0 / num + 1.0 / den, axis=0)
    four = tf.fill(tf.shape(t), tf.constant(4.0, dtype))
    return ([tf.zeros_like(t), four] + tf.unstack(prod * (4.0 + t * (4.0 - t) * s), axis=0),
            tf.square(4.0 - t))


def _chains(coeffs, ur, ui, split=_SPLIT):
    """The ``split`` interleaved chains ``S_j(w) = sum_m a_{j + m split} w^m`` of
    ``sum_n a_n u^n = sum_{j < split} u^j S_j(u^split)`` (real coefficients ``a_n``,
    complex ``u = ur + i ui``), and the powers ``[u^1, ..., u^split]``.

    Each ``S_j`` is summed by Clenshaw's recurrence
    ``beta_m = a_m + 2 Re(w) beta_{m+1} - |w|^2 beta_{m+2}``,
    ``S(w) = a_0 + w (beta_1 - conj(w) beta_2)`` (two multiply-adds a term, half of a
    complex Horner scheme). The ``split`` chains are independent, so the CPU overlaps them;
    a single chain would be limited by the latency of its multiply-adds, not their
    throughput.
    """
    powers = [(ur, ui)]  # u^1 ... u^split
    for _ in range(split - 1):
        powers.append(cmul(powers[-1][0], powers[-1][1], ur, ui))
    wr, wi = powers[-1]
    two_x = 2.0 * wr
    rho2 = wr * wr + wi * wi
    chains = []
    for j in range(split):
        chain = coeffs[j::split]
        if not chain:
            chains.append(None)
            continue
        if len(chain) == 1:
            chains.append((chain[0] + tf.zeros_like(ur), tf.zeros_like(ur)))
            continue
        # the first two steps written out (no multiplications by zero)
        b1, b2 = chain[-1] + tf.zeros_like(ur), None
        for a in reversed(chain[1:-1]):
            b1, b2 = (a + two_x * b1 if b2 is None else a + two_x * b1 - rho2 * b2), b1
        sr = chain[0] + wr * b1 - (0.0 if b2 is None else rho2 * b2)
        chains.append((sr, wi * b1))
    return chains, powers


def _combine(chains, powers, shift=0):
    """``sum_j u^(j + shift) S_j`` (``shift`` 0 or 1) of :func:`_chains`."""
    total_r = total_i = None
    for j, c in enumerate(chains):
        if c is None:
            continue
        sr, si = c
        if j + shift:
            sr, si = cmul(powers[j + shift - 1][0], powers[j + shift - 1][1], sr, si)
        total_r = sr if total_r is None else total_r + sr
        total_i = si if total_i is None else total_i + si
    return total_r, total_i


def _power_series(coeffs, ur, ui, split=_SPLIT):
    """``sum_n a_n u^n`` for real coefficients ``a_n`` and complex ``u = ur + i ui``,
    as ``split`` interleaved Clenshaw chains (:func:`_chains`). Returns ``(real, imag)``."""
    return _combine(*_chains(coeffs, ur, ui, split))


def _unscale(re, im, scale):
    """``(re + i im) / scale`` for a real ``scale``, as one complex division.

    This is for XLA's sake: XLA copies chains of cheap elementwise operations into every
    fusion that consumes them, so the ~200-operation series would be evaluated once for
    each use of its real part and once for each use of its imaginary part. A division is
    "expensive" and is not copied, and a single complex output carries both parts, so the
    series is evaluated exactly once (measured on CPU: the forward pass ~10% faster than
    with two real divisions; with no division at all the backward pass is several times
    slower).
    """
    z = tf.complex(re, im) / tf.complex(scale, tf.zeros_like(scale))
    return tf.math.real(z), tf.math.imag(z)


def power_law_deflection(x, y, center_x, center_y, theta_E, t, e1, e2, hypergeometric,
                         t_derivative=None):
    """Deflection ``(alpha_x, alpha_y)`` of an elliptical power law (``t = gamma - 1``) at
    ``(x, y)``, with the hand-written gradient described in :class:`EPL`, for a given way
    of evaluating its hypergeometric function: the one home of that gradient, shared by
    :class:`EPL` (a series in ``u``) and :class:`~tfstronglens.profiles.SIE` (``t = 1``,
    a closed form).

    Args:
      hypergeometric: ``(ur, ui, t) -> (fr, fi, gr, gi)``: ``F(u) = 2F1(1, t/2; 2 - t/2;
        u)`` and ``G(u) = (F - 1) / u``, without a 0/0 at ``u = 0``.
      t_derivative: ``(ur, ui, t) -> (dfr, dfi, dscale)`` with ``dF/dt = (dfr + i dfi) /
        dscale``, or ``None`` when ``t`` is a number (a fixed slope: no gradient in ``t``,
        and ``(b/R)^t`` without a power for ``t = 1``).
    """
    variable_t = t_derivative is not None

    def forward(x, y, center_x, center_y, theta_E, t, e1, e2):
        dx = x - center_x
        dy = y - center_y
        # V = z - e conj(z) = (1 + |e|) W, |V| = (1 + |e|) R, w^2 = V^2 / |V|^2 = W^2 / R^2
        vr = dx - (e1 * dx + e2 * dy)
        vi = dy - (e2 * dx - e1 * dy)
        v2 = tf.maximum(vr * vr + vi * vi, tiny(vr.dtype))
        inv_v2 = 1.0 / v2
        w2r = (vr * vr - vi * vi) * inv_v2
        w2i = 2.0 * vr * vi * inv_v2
        # u = -conj(e) w^2, |u| = |e|
        ur = -(e1 * w2r + e2 * w2i)
        ui = e2 * w2r - e1 * w2i
        # F(u) and G(u) = (F - 1)/u: F for the value, both (through F') for the gradient
        fr, fi, gr_, gi_ = hypergeometric(ur, ui, t)
        s2 = 1.0 - e1 * e1 - e2 * e2
        # b / R = (1 + |e|) b / |V|, (1 + |e|) b = theta_E sqrt(1 - |e|^2)
        if variable_t:
            log_rho = tf.math.log(theta_E) + 0.5 * tf.math.log(s2) - 0.5 * tf.math.log(v2)
            rho_t = tf.exp(t * log_rho)  # (b / R)^t
        elif t == 1.0:
            rho_t = theta_E * tf.sqrt(s2) * tf.math.rsqrt(v2)
        else:
            rho_t = (theta_E * tf.sqrt(s2) * tf.math.rsqrt(v2)) ** t
        kr = rho_t * vr  # K = (b/R)^t V = (1 + |e|) b (b/R)^(t-1) W / R
        ki = rho_t * vi
        ar, ai = cmul(kr, ki, fr, fi)

        def grad(gx, gy):
            gx = tf.zeros_like(ar) if gx is None else gx
            gy = tf.zeros_like(ai) if gy is None else gy
            half_t = 0.5 * t
            # F'(u) = [(t/2) F - (1 - t/2) G] / (1 - u)
            fpr, fpi = cdiv(half_t * fr - (1.0 - half_t) * gr_, half_t * fi - (1.0 - half_t) * gi_,
                            1.0 - ur, -ui)
            upr, upi = cmul(ur, ui, fpr, fpi)
            # P = d alpha / dV = (b/R)^t [(1 - t/2) F + u F'],
            # Q = d alpha / d conj(V) = (b/R)^t w^2 [-(t/2) F - u F']
            pr = rho_t * ((1.0 - half_t) * fr + upr)
            pi = rho_t * ((1.0 - half_t) * fi + upi)
            qr, qi = cmul(rho_t * w2r, rho_t * w2i, -(half_t * fr + upr), -(half_t * fi + upi))
            # d/dx = P (1 - e) + Q (1 - conj(e)),  d/dy = i [P (1 + e) - Q (1 + conj(e))]
            xr = pr * (1.0 - e1) + pi * e2 + qr * (1.0 - e1) - qi * e2
            xi = pi * (1.0 - e1) - pr * e2 + qi * (1.0 - e1) + qr * e2
            yr_ = pr * (1.0 + e1) - pi * e2 - qr * (1.0 + e1) - qi * e2
            yi_ = pi * (1.0 + e1) + pr * e2 - qi * (1.0 + e1) + qr * e2
            # Re(conj(g) X) = gx Xr + gy Xi;  Re(conj(g) i Y) = gy Yr - gx Yi
            grad_dx = gx * xr + gy * xi
            grad_dy = gy * yr_ - gx * yi_
            # d/de1 = -P conj(z) - Q z - K F' w^2 - alpha t e1 / s2,
            # d/de2 = i (-P conj(z) + Q z + K F' w^2) - alpha t e2 / s2
            pzr = pr * dx + pi * dy  # P conj(z)
            pzi = pi * dx - pr * dy
            qzr = qr * dx - qi * dy  # Q z
            qzi = qr * dy + qi * dx
            kfr, kfi = cmul(kr, ki, fpr, fpi)
            kfwr, kfwi = cmul(kfr, kfi, w2r, w2i)
            g_alpha = gx * ar + gy * ai  # Re(conj(g) alpha)
            # the parameter derivatives are pixel sums of these, taken together
            # (sum_pixels); terms that are a parameter times a pixel sum are added after
            sums = [grad_dx, grad_dy, g_alpha,
                    -(gx * (pzr + qzr + kfwr) + gy * (pzi + qzi + kfwi)),
                    gy * (qzr - pzr + kfwr) - gx * (qzi - pzi + kfwi)]
            params = (center_x, center_y, theta_E, e1, e2)
            if not variable_t:
                s_x, s_y, s_alpha, s_e1, s_e2 = sum_pixels(sums, broadcast_shape(*params))
            else:
                # d/dt = alpha log(b/R) + K dF/dt, log(b/R) = log(theta_E sqrt(s2)) - log|V|.
                # Only Re(conj(g) K dF/dt) is needed: one series, summed in its own loop
                hr = gx * kr + gy * ki  # conj(g) K
                hi = gx * ki - gy * kr
                dfr, dfi, dscale = t_derivative(ur, ui, t)
                s_x, s_y, s_alpha, s_e1, s_e2, s_logv, s_series = sum_pixels(
                    sums + [tf.math.log(v2) * g_alpha], broadcast_shape(*params, t),
                    expensive=[hr * dfr - hi * dfi])
            # d/dtheta_E = t alpha / theta_E
            c = t / s2
            grads = (sum_to(grad_dx, x), sum_to(grad_dy, y),
                     sum_to(-s_x, center_x), sum_to(-s_y, center_y),
                     sum_to(t * s_alpha / theta_E, theta_E),
                     sum_to(s_e1 - c * e1 * s_alpha, e1), sum_to(s_e2 - c * e2 * s_alpha, e2))
            if variable_t:
                log_b = tf.math.log(theta_E) + 0.5 * tf.math.log(s2)
                s_t = s_series / dscale - 0.5 * s_logv
                grads += (sum_to(log_b * s_alpha + s_t, t),)
            return grads

        return (ar, ai), grad

    if variable_t:
        @tf.custom_gradient
        def deflection(x, y, center_x, center_y, theta_E, e1, e2, t):
            return forward(x, y, center_x, center_y, theta_E, t, e1, e2)

        return deflection(x, y, center_x, center_y, theta_E, e1, e2, t)

    @tf.custom_gradient
    def deflection_fixed_t(x, y, center_x, center_y, theta_E, e1, e2):
        return forward(x, y, center_x, center_y, theta_E, t, e1, e2)

    return deflection_fixed_t(x, y, center_x, center_y, theta_E, e1, e2)


def _series_hypergeometric(n_terms):
    """``F`` and ``G = (F - 1)/u`` of the EPL by its series (one series serves both:
    ``F = 1 + u G``), and ``dF/dt`` by one more: the arguments of
    :func:`power_law_deflection`."""

    def hypergeometric(ur, ui, t):
        coeffs, scale = _scaled_coefficients(t, n_terms)
        chains, powers = _chains(coeffs[1:], ur, ui)
        fr, fi = _combine(chains, powers, shift=1)  # u G
        fr, fi = _unscale(fr + scale, fi, scale)
        gr, gi = _unscale(*_combine(chains, powers), scale)
        return fr, fi, gr, gi

    def t_derivative(ur, ui, t):
        dcoeffs, dscale = _scaled_coefficients(t, n_terms, derivative=True)
        dfr, dfi = _power_series(dcoeffs, ur, ui)
        return dfr, dfi, dscale

    return hypergeometric, t_derivative


def _epl_deflection(x, y, center_x, center_y, theta_E, t, e1, e2, n_terms):
    """EPL deflection ``(alpha_x, alpha_y)`` at ``(x, y)`` (``t = gamma - 1``), with the
    hand-written gradient described in :class:`EPL`."""
    hypergeometric, t_derivative = _series_hypergeometric(n_terms)
    return power_law_deflection(x, y, center_x, center_y, theta_E, t, e1, e2,
                                hypergeometric, t_derivative)


class EPL(MassProfile):
    r"""Elliptical power-law mass distribution (lenstronomy ``EPL``).

    #### Mathematical details

    Convergence, with ``t = gamma - 1`` (``gamma`` the 3D logarithmic density slope,
    ``gamma = 2`` isothermal), axis ratio ``q`` and ``b = theta_E sqrt(q)``:

        kappa = (2 - t)/2 (b / R)^t,   R = sqrt(q^2 x'^2 + y'^2),

    with ``(x', y')`` along the major and minor axes (``theta_E`` is the Einstein radius of
    the circularised profile, lenstronomy's convention). The deflection is Tessore &
    Metcalf (2015, A&A 580, A79, eqs. 22-23), in complex notation
    ``alpha = alpha_x + i alpha_y`` and with ``W, u`` of
    :class:`~tfstronglens.profiles._geometry.EllipticalFrame`:

        alpha = (1 + |e|) b (b / R)^(t - 1) (W / R) F(u),
        F(u) = 2F1(1, t/2; 2 - t/2; u) = sum_n c_n u^n,
        c_0 = 1,  c_n = c_{n-1} (2n - 2 + t) / (2n + 2 - t),
        u = -conj(e) W^2 / R^2   (|u| = |e| = (1 - q)/(1 + q)).

    The potential is ``psi = (x alpha_x + y alpha_y) / (2 - t)`` (TM15 eq. 15; relative to
    the centre). ``gamma = 2`` is the :class:`SIE`.

    #### Implementation

    * Everything is written without ``|e|`` or the position angle: with ``V = z - e conj(z)``
      (``= (1 + |e|) W``), ``b / R = theta_E sqrt(1 - |e|^2) / |V|``,
      ``(1 + |e|) b = theta_E sqrt(1 - |e|^2)`` and ``alpha = (b/R)^t V F(u)``, so values and
      gradients are smooth and exact at ``q = 1``.
    * The series has a fixed number of terms ``N`` (static, so it compiles with XLA),
      chosen so that the truncation error is below the roundoff of ``dtype`` for every
      ``q >= q_min`` and ``1 < gamma < 3`` (:func:`epl_series_terms`; ``N = 44`` in float32
      and ``94`` in float64 for ``q_min = 0.2``). It is summed as 4 interleaved real
      Clenshaw recurrences in ``u^4`` (two multiply-adds a term, and independent chains
      that the CPU overlaps). The series summed is ``G = (F - 1)/u = sum_n c_{n+1} u^n``,
      and ``F = 1 + u G``: the value and the gradient share it.
    * The gradient is written by hand (``tf.custom_gradient``; autodiff through the
      unrolled series is 30-70 times slower than the value under XLA on CPU). With Wirtinger
      derivatives, ``d alpha / dV = (b/R)^t [(1 - t/2) F + u F']`` and
      ``d alpha / d conj(V) = (b/R)^t (V/|V|)^2 [-(t/2) F - u F']`` give the derivatives in
      ``x, y`` and, with the explicit dependence on ``e`` and ``theta_E``, in the
      parameters; ``F'(u) = [(t/2) F - (1 - t/2)(F - 1)/u] / (1 - u)`` follows from the
      first-order equation ``u (1 - u) F' = ((t/2)(1 + u) - 1) F + 1 - t/2`` of
      ``2F1(1, b; c; u)`` (with ``(F - 1)/u`` summed as its own series, no 0/0 at
      ``u = 0``), and ``dF/dt`` is one more series, summed over the pixels in its own
      vectorized loop (:func:`~tfstronglens.profiles._geometry.sum_pixels`). Value and
      gradient evaluate two series, the value one; second derivatives (e.g. of the
      autodiff :meth:`hessian`) are exact too.

    Parameters: ``theta_E`` (arcsec, > 0), ``gamma`` (``1 < gamma < 3``; accurate over the
    whole range, tested on ``[1.2, 2.8]``), ``e1, e2`` (``|e| < 1`` with
    ``q >= q_min``), ``center_x, center_y`` (arcsec, default 0). The convergence diverges
    at the centre for every ``gamma > 1``, and the deflection too for ``gamma > 2``; there
    the radius is floored (``|V| >= 1e-8`` arcsec in float32, ``1e-15`` in float64), the
    deflection is set to 0 (its angular average), and values and gradients stay finite.

    Args:
      dtype: ``tf.float32`` (default) or ``tf.float64``.
      q_min: smallest axis ratio for which the series is converged to ``dtype``
        precision (default 0.2). Concrete ``e1, e2`` with a smaller ``q`` raise
        ``ValueError``; lower ``q_min`` to allow them (more terms, slower).
      n_terms: override the number of series terms (highest power ``N``) computed from
        ``q_min``, e.g. to trade accuracy for speed.

    #### Example

    >>> epl = EPL()
    >>> ax, ay = epl.deflection([1.0, 0.5], [0.0, 0.3], theta_E=1.2, gamma=2.1, e1=0.1, e2=0.0)
    """

    name = "EPL"
    param_names = ("theta_E", "gamma", "e1", "e2", "center_x", "center_y")
    defaults = {"center_x": 0.0, "center_y": 0.0}
    positive_params = ("theta_E",)

    def __init__(self, dtype=tf.float32, q_min: float = 0.2, n_terms: int | None = None):
        super().__init__(dtype=dtype)
        try:
            q_min = float(q_min)
        except (TypeError, ValueError):
            raise ValueError(f"q_min must be a number in (0, 1], got {q_min!r}") from None
        if not 0.0 < q_min <= 1.0:
            raise ValueError(f"q_min must be in (0, 1], got {q_min!r}")
        self.q_min = q_min
        self._n_terms_override = None
        if n_terms is not None:
            if isinstance(n_terms, bool) or not isinstance(n_terms, (int, np.integer)) \
                    or n_terms < 2:
                raise ValueError(f"n_terms must be an integer >= 2, got {n_terms!r}")
            self._n_terms_override = int(n_terms)
        self.n_terms = self._n_terms_override or epl_series_terms(q_min, self.dtype)

    def get_config(self) -> dict:
        config = {**super().get_config(), "q_min": self.q_min}
        if self._n_terms_override is not None:
            config["n_terms"] = self._n_terms_override
        return config

    def _prepare_params(self, params: dict, method: str = "call", check: bool = True) -> dict:
        out = super()._prepare_params(params, method, check)
        if not check:
            return out
        where = f"{type(self).__name__}.{method}"
        gamma = params.get("gamma")
        if is_concrete(gamma):
            g = np.asarray(gamma.numpy() if hasattr(gamma, "numpy") else gamma, dtype=float)
            bad = g[(g <= _GAMMA_RANGE[0]) | (g >= _GAMMA_RANGE[1])]
            if bad.size:
                raise ValueError(
                    f"{where}: gamma must be in ({_GAMMA_RANGE[0]:g}, {_GAMMA_RANGE[1]:g}) "
                    f"(3D power-law slope, 2 = isothermal), got {bad.ravel()[0]!r}"
                )
        worst = largest_ellipticity(params.get("e1"), params.get("e2"))
        e_max = (1.0 - self.q_min) / (1.0 + self.q_min)
        if worst is not None and worst[2] > e_max * (1.0 + 1e-6) + 1e-12:
            e1_bad, e2_bad, e_bad = worst
            q = (1.0 - e_bad) / (1.0 + e_bad)
            raise ValueError(
                f"{where}: e1, e2 = ({e1_bad!r}, {e2_bad!r}) give |e| = {e_bad:.6g}, "
                f"i.e. axis ratio q = {q:.6g}, below q_min = {self.q_min:g} of this EPL; "
                f"create it with a smaller q_min (and |e| < 1)"
            )
        return out

    # ------------------------------------------------------------------ maths
    def _deflection(self, x, y, theta_E, gamma, e1, e2, center_x, center_y):
        return _epl_deflection(x, y, center_x, center_y, theta_E, gamma - 1.0, e1, e2,
                               self.n_terms)

    def _potential(self, x, y, theta_E, gamma, e1, e2, center_x, center_y):
        dx = x - center_x
        dy = y - center_y
        ax, ay = _epl_deflection(x, y, center_x, center_y, theta_E, gamma - 1.0, e1, e2,
                                 self.n_terms)
        return (dx * ax + dy * ay) / (3.0 - gamma)

    def _convergence(self, x, y, theta_E, gamma, e1, e2, center_x, center_y):
        t = gamma - 1.0
        dx = x - center_x
        dy = y - center_y
        v = safe_norm(dx - (e1 * dx + e2 * dy), dy - (e2 * dx - e1 * dy))  # (1 + |e|) R
        s = theta_E * tf.sqrt(1.0 - e1 * e1 - e2 * e2)  # (1 + |e|) b
        return 0.5 * (2.0 - t) * tf.exp(t * tf.math.log(s / v))
