"""External shear."""

from __future__ import annotations

import tensorflow as tf

from .base import MassProfile


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
        dx, dy = x - ra_0, y - dec_0
        return gamma1 * dx + gamma2 * dy, gamma2 * dx - gamma1 * dy

    def _potential(self, x, y, gamma1, gamma2, ra_0, dec_0):
        dx, dy = x - ra_0, y - dec_0
        return 0.5 * gamma1 * (dx * dx - dy * dy) + gamma2 * dx * dy

    def _convergence(self, x, y, gamma1, gamma2, ra_0, dec_0):
        return tf.zeros_like(x + y + gamma1 + gamma2 + ra_0 + dec_0)
