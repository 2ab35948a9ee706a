"""External shear."""

from __future__ import annotations

import tensorflow as tf

from ._geometry import broadcast_shape, sum_pixels, sum_to
from .base import MassProfile


def _shear_deflection(x, y, gamma1, gamma2, ra_0, dec_0):
    """Shear deflection with a hand-written gradient whose two shear-parameter sums over
    pixels are taken together (:func:`~tfstronglens.profiles._geometry.sum_pixels`; XLA:CPU
    autodiff emits one slow reduction loop per parameter). First order only for
    ``gamma1, gamma2, ra_0, dec_0``; the derivatives in ``x, y`` are exact to all orders."""

    @tf.custom_gradient
    def deflection(x, y, gamma1, gamma2, ra_0, dec_0):
        dx, dy = x - ra_0, y - dec_0

        def grad(gx, gy):
            gx = tf.zeros_like(dx) if gx is None else gx
            gy = tf.zeros_like(dy) if gy is None else gy
            # d alpha_x = gamma1 d dx + gamma2 d dy, d alpha_y = gamma2 d dx - gamma1 d dy
            g_dx = gamma1 * gx + gamma2 * gy
            g_dy = gamma2 * gx - gamma1 * gy
            s1, s2 = sum_pixels([gx * dx - gy * dy, gx * dy + gy * dx],
                                broadcast_shape(gamma1, gamma2, ra_0, dec_0))
            return (sum_to(g_dx, x), sum_to(g_dy, y), sum_to(s1, gamma1), sum_to(s2, gamma2),
                    sum_to(-g_dx, ra_0), sum_to(-g_dy, dec_0))

        return (gamma1 * dx + gamma2 * dy, gamma2 * dx - gamma1 * dy), grad

    return deflection(x, y, gamma1, gamma2, ra_0, dec_0)


class Shear(MassProfile):
    r"""External shear (lenstronomy ``SHEAR``).

    #### Mathematical details

    With ``dx = x - ra_0``, ``dy = y - dec_0``:

        psi = gamma1 (dx^2 - dy^2) / 2 + gamma2 dx dy,
        alpha_x = gamma1 dx + gamma2 dy,   alpha_y = gamma2 dx - gamma1 dy,   kappa = 0.

    The shear strength is ``sqrt(gamma1^2 + gamma2^2)`` and its angle
    ``atan2(gamma2, gamma1) / 2``. ``ra_0, dec_0`` (default 0) only add a constant
    deflection and are kept for lenstronomy compatibility.
    """

    name = "SHEAR"
    param_names = ("gamma1", "gamma2", "ra_0", "dec_0")
    defaults = {"ra_0": 0.0, "dec_0": 0.0}

    def _deflection(self, x, y, gamma1, gamma2, ra_0, dec_0):
        return _shear_deflection(x, y, gamma1, gamma2, ra_0, dec_0)

    def _potential(self, x, y, gamma1, gamma2, ra_0, dec_0):
        dx, dy = x - ra_0, y - dec_0
        return 0.5 * gamma1 * (dx * dx - dy * dy) + gamma2 * dx * dy

    def _convergence(self, x, y, gamma1, gamma2, ra_0, dec_0):
        return tf.zeros_like(x + y + gamma1 + gamma2 + ra_0 + dec_0)
