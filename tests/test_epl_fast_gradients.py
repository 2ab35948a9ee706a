"""The EPL's hand-written gradient in the Simulator's layout (per-image parameters
``[B, 1, 1]``, rays ``[R, C]``: the pixel sums of ``sum_pixels``, with the ``d F / d gamma``
series summed in its own loop) against autodiff through a plain series, float64; the
pixel-sum helper with ``expensive`` terms; the Simulator's ray layout."""

import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from tfstronglens.lensing.simulator import _ray_layout
from tfstronglens.profiles._geometry import sum_pixels
from tfstronglens.profiles.epl import EPL

F64 = tf.float64
PARAMS = ("theta_E", "gamma", "e1", "e2", "center_x", "center_y")


def _plain_deflection(x, y, theta_E, gamma, e1, e2, center_x, center_y, n=120):
    """Tessore & Metcalf deflection with the series summed term by term (Horner), no
    custom gradient: the autodiff reference."""
    t = gamma - 1.0
    dx, dy = x - center_x, y - center_y
    vr = dx - (e1 * dx + e2 * dy)
    vi = dy - (e2 * dx - e1 * dy)
    v2 = tf.maximum(vr * vr + vi * vi, 1e-30)
    w2r, w2i = (vr * vr - vi * vi) / v2, 2.0 * vr * vi / v2
    ur, ui = -(e1 * w2r + e2 * w2i), e2 * w2r - e1 * w2i
    c = [tf.ones_like(t)]
    for k in range(1, n + 1):
        c.append(c[-1] * (2 * k - 2 + t) / (2 * k + 2 - t))
    fr, fi = c[-1] + 0.0 * ur, 0.0 * ui
    for a in reversed(c[:-1]):
        fr, fi = a + ur * fr - ui * fi, ur * fi + ui * fr
    s = theta_E * tf.sqrt(1.0 - e1 * e1 - e2 * e2)
    rho_t = tf.exp(t * (tf.math.log(s) - 0.5 * tf.math.log(v2)))
    kr, ki = rho_t * vr, rho_t * vi
    return kr * fr - ki * fi, kr * fi + ki * fr


def _batch():
    """(q, gamma) grid: q in {0.2, 0.55, 1}, gamma in {1.2, 1.6, 2, 2.4, 2.8}, position
    angles varied, centres on and off the grid."""
    rows = []
    for i, (q, gamma) in enumerate([(q, g) for q in (0.2, 0.55, 1.0)
                                    for g in (1.2, 1.6, 2.0, 2.4, 2.8)]):
        e = (1 - q) / (1 + q)
        phi = 0.37 * i
        rows.append(dict(theta_E=0.8 + 0.05 * i, gamma=gamma, e1=e * np.cos(2 * phi),
                         e2=e * np.sin(2 * phi), center_x=0.0 if i % 2 else 0.013,
                         center_y=0.0 if i % 2 else -0.021))
    return {k: tf.constant(np.array([r[k] for r in rows])[:, None, None], F64) for k in PARAMS}


@pytest.mark.parametrize("jit", [False, True])
def test_epl_gradient_in_simulator_layout_matches_plain_autodiff(jit):
    """Value and all six parameter gradients of a weighted sum of the deflection, with
    per-image parameters [15, 1, 1] on an 8 x 16 grid that contains the lens centre:
    equal to autodiff through the plain series to 1e-9 relative (1e-10 absolute), for
    q = 0.2 ... 1 and gamma = 1.2 ... 2.8."""
    rng = np.random.default_rng(11)
    x1 = np.linspace(-1.4, 1.4, 16)
    y1 = np.linspace(-1.05, 1.05, 8) - (np.linspace(-1.05, 1.05, 8)[3])  # row 3 at y = 0
    x1 = x1 - x1[7]  # column 7 at x = 0: the centre of the odd-numbered lenses
    x, y = (tf.constant(a, F64) for a in np.meshgrid(x1, y1))
    p = _batch()
    wx, wy = (tf.constant(rng.normal(size=(15, 8, 16)), F64) for _ in range(2))
    # the exact centre: the custom gradient and the floored autodiff differ there (both
    # finite); compare with zero weight on that pixel, check finiteness with weight
    centre = np.zeros((15, 8, 16))
    centre[1::2, 3, 7] = 1.0
    keep = tf.constant(1.0 - centre, F64)
    epl = EPL(dtype=F64)

    def loss_fast(p, keep):
        ax, ay = epl._deflection(x, y, **p)
        return tf.reduce_sum(keep * (wx * ax + wy * ay))

    def value_and_grads(fn, p, keep):
        with tf.GradientTape() as tape:
            tape.watch(p)
            v = fn(p, keep)
        return v, tape.gradient(v, p)

    fast = lambda p, keep: value_and_grads(loss_fast, p, keep)  # noqa: E731
    if jit:
        fast = tf.function(fast, jit_compile=True)
    v1, g1 = fast(p, keep)
    v0, g0 = value_and_grads(
        lambda p, keep: tf.reduce_sum(keep * (wx * tf.stack(_plain_deflection(x, y, **p))[0]
                                              + wy * tf.stack(_plain_deflection(x, y, **p))[1])),
        p, keep)
    np.testing.assert_allclose(v1.numpy(), v0.numpy(), rtol=1e-11)
    for k in PARAMS:
        a, b = g1[k].numpy(), g0[k].numpy()
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10 * np.max(np.abs(b)), err_msg=k)
    # with the centre pixels weighted: finite everywhere
    _, g2 = fast(p, tf.ones_like(keep))
    for k in PARAMS:
        assert np.all(np.isfinite(g2[k].numpy())), k


@pytest.mark.parametrize("dtype,rtol", [(F64, 1e-9), (tf.float32, 2e-4)])
def test_sie_hand_written_gradient_matches_plain_autodiff(dtype, rtol):
    """The SIE (the EPL's hand-written gradient at t = 1 with the closed-form
    hypergeometric function) against autodiff through the plain series at gamma = 2,
    float64: values to 1e-11 (float32: 2e-5) and the gradients in all five parameters and
    in the ray positions to ``rtol``, under XLA, for q = 0.2 ... 1 with lens centres on a
    ray (where only finiteness is checked) and off; |u| spans both sides of the closed
    form's series threshold (|u| = |e|: 0, 0.02, 0.29, 0.67)."""
    from tfstronglens.profiles import SIE

    rng = np.random.default_rng(3)
    x1 = np.linspace(-1.4, 1.4, 16)
    x1 = x1 - x1[7]
    y1 = np.linspace(-1.05, 1.05, 8)
    y1 = y1 - y1[3]
    xy = [tf.constant(a, F64) for a in np.meshgrid(x1, y1)]
    rows = []
    for i, q in enumerate((1.0, 0.96, 0.55, 0.2, 0.55, 0.2)):
        e, phi = (1 - q) / (1 + q), 0.37 * i + 0.1
        rows.append(dict(theta_E=0.9 + 0.05 * i, e1=e * np.cos(2 * phi), e2=e * np.sin(2 * phi),
                         center_x=0.0 if i % 2 else 0.013, center_y=0.0 if i % 2 else -0.021))
    names = ("theta_E", "e1", "e2", "center_x", "center_y")
    p64 = {k: tf.constant(np.array([r[k] for r in rows])[:, None, None], F64) for k in names}
    w = [tf.constant(rng.normal(size=(6, 8, 16)), F64) for _ in range(2)]
    keep = np.ones((6, 8, 16))
    keep[1::2, 3, 7] = 0.0  # the exact centre: compared for finiteness only
    keep = tf.constant(keep, F64)
    sie = SIE(dtype=dtype)

    def value_and_grads(deflection, p, xy, w, keep):
        with tf.GradientTape() as tape:
            tape.watch((p, xy))
            ax, ay = deflection(xy[0], xy[1], **p)
            v = tf.reduce_sum(keep * (w[0] * ax + w[1] * ay))
        return v, tape.gradient(v, (p, xy))

    cast = lambda t: tf.nest.map_structure(lambda a: tf.cast(a, dtype), t)  # noqa: E731
    fast = tf.function(lambda *a: value_and_grads(sie._deflection, *a), jit_compile=True)
    v1, (g1, gxy1) = fast(*cast((p64, xy, w, keep)))
    v0, (g0, gxy0) = value_and_grads(
        lambda x, y, **p: _plain_deflection(x, y, gamma=tf.constant(2.0, F64), **p),
        p64, xy, w, keep)
    np.testing.assert_allclose(v1, v0, rtol=1e-11 if dtype == F64 else 2e-5)
    for k in names:
        b = g0[k].numpy()
        np.testing.assert_allclose(g1[k], b, rtol=rtol, atol=rtol * np.max(np.abs(b)), err_msg=k)
    for a, b in zip(gxy1, gxy0):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b.numpy())))
    _, (g2, gxy2) = fast(*cast((p64, xy, w, tf.ones_like(keep))))
    assert all(np.all(np.isfinite(g)) for g in list(g2.values()) + list(gxy2))


def test_sum_pixels_expensive_terms_match_reduce_sum():
    """Terms passed as ``expensive`` (summed rows-first in their own loop) come back after
    the ordinary ones and equal reduce_sum, eagerly and under XLA, also when there is a
    single ordinary term or none."""
    rng = np.random.default_rng(5)
    gs = [tf.constant(rng.normal(size=(4, 24, 32))) for _ in range(4)]
    shape = tf.TensorShape([4, 1, 1])
    for n_cheap in (0, 1, 3):
        for jit in (False, True):
            fn = lambda g: sum_pixels(g[:n_cheap], shape, expensive=g[n_cheap:])  # noqa: E731
            out = tf.function(fn, jit_compile=True)(gs) if jit else fn(gs)
            assert len(out) == len(gs)
            for o, g in zip(out, gs):
                assert o.shape == shape
                np.testing.assert_allclose(o, tf.reduce_sum(g, [-1, -2], keepdims=True),
                                           rtol=1e-12)


def test_simulator_ray_layout_is_a_reshape_with_vector_rows():
    """The Simulator evaluates the rays in rows whose length is a multiple of 16 when one
    divides their number (same order, so binning is unchanged); otherwise as the grid
    gives them."""
    assert _ray_layout([240, 60]) == [15, 960]
    assert _ray_layout([4 * 45 * 45 // 45, 45]) == [180, 45]  # 8100 rays: no multiple of 16
    for n, s in ((60, 2), (16, 1), (45, 2)):
        grid = tsl.PixelGrid(n, 0.05, supersample=s)
        sim = tsl.Simulator(grid, lens_light=[tsl.Gaussian()])
        x, y = grid.ray_coordinates()
        assert sim.rays[0].shape.num_elements() == x.shape.num_elements()
        np.testing.assert_array_equal(np.ravel(sim.rays[0]), np.ravel(x))
        np.testing.assert_array_equal(np.ravel(sim._y), np.ravel(y))
        img = sim(lens_light=[dict(amp=2.0, sigma=0.3)], convolve_psf=False)
        ref = grid.bin_rays(2.0 / (2 * np.pi * 0.09) * tf.exp(-(x * x + y * y) / 0.18)) \
            * grid.pixel_area
        np.testing.assert_allclose(img[0], ref, rtol=1e-5, atol=1e-7)
