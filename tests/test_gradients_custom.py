"""The hand-written gradients of the Sersic profiles and the shear (issue #2: fast value and
gradient on CPU) against autodiff of the same formulas and finite differences, float64."""

import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from tfstronglens.profiles._geometry import sum_pixels
from tfstronglens.profiles.light import elliptical_radius_sq, sersic_b_n

F64 = tf.float64


def _sersic_autodiff(x, y, amp, R_sersic, n_sersic, e1, e2, center_x, center_y, b_n,
                     smoothing=1e-4):
    """The Sersic formula with plain TF ops (autodiff gradients)."""
    dx, dy = x - center_x, y - center_y
    r_sq = dx * dx + dy * dy if e1 is None else elliptical_radius_sq(dx, dy, e1, e2)
    bn = sersic_b_n(n_sersic, b_n)
    frac = tf.exp(tf.math.log(tf.maximum(r_sq, smoothing**2)) * (0.5 / n_sersic)
                  - tf.math.log(R_sersic) / n_sersic)
    return amp * tf.exp(bn - bn * frac)


def _grads(fn, x, y, params, jit):
    def f(x, y, params):
        with tf.GradientTape() as tape:
            tape.watch([x, y, params])
            v = fn(x, y, params)
            loss = tf.reduce_sum(tf.sin(3.0 * v) * (1.0 + x * y))
        return v, tape.gradient(loss, [x, y, params])

    if jit:
        f = tf.function(f, jit_compile=True)
    return f(x, y, params)


def _batch_params(rng, batch, elliptical, centre_on_pixel=None):
    p = dict(amp=rng.uniform(1, 3, (batch, 1, 1)), R_sersic=rng.uniform(0.2, 0.6, (batch, 1, 1)),
             n_sersic=rng.uniform(0.7, 4.0, (batch, 1, 1)),
             center_x=rng.uniform(-0.1, 0.1, (batch, 1, 1)),
             center_y=rng.uniform(-0.1, 0.1, (batch, 1, 1)))
    if elliptical:
        p["e1"] = rng.uniform(-0.3, 0.3, (batch, 1, 1))
        p["e2"] = rng.uniform(-0.3, 0.3, (batch, 1, 1))
        p["e1"][0] = p["e2"][0] = 0.0  # q = 1
    if centre_on_pixel is not None:  # a centre exactly on a pixel: the smoothed cusp
        p["center_x"][-1], p["center_y"][-1] = centre_on_pixel
    return {k: tf.constant(v) for k, v in p.items()}


@pytest.mark.parametrize("cls", ["Sersic", "SersicEllipse"])
@pytest.mark.parametrize("jit", [False, True])
def test_sersic_gradient_matches_autodiff(cls, jit):
    """Values identical and all gradients (parameters and positions) equal to autodiff of
    the same formula to rounding, including q = 1 and a centre on a pixel."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(-1, 1, (4, 12, 10)))
    y = tf.constant(rng.uniform(-1, 1, (4, 12, 10)))
    elliptical = cls == "SersicEllipse"
    params = _batch_params(rng, 4, elliptical, (x[-1, 3, 4].numpy(), y[-1, 3, 4].numpy()))
    for b_n in ("ciotti_bertin", "lenstronomy"):
        prof = getattr(tsl, cls)(b_n=b_n, dtype=F64)
        v1, g1 = _grads(lambda x, y, p: prof._surface_brightness(x, y, **p), x, y, params, jit)
        v0, g0 = _grads(lambda x, y, p: _sersic_autodiff(
            x, y, p["amp"], p["R_sersic"], p["n_sersic"], p.get("e1"), p.get("e2"),
            p["center_x"], p["center_y"], b_n), x, y, params, jit)
        np.testing.assert_allclose(v1, v0, rtol=1e-13)
        for a, b in zip(tf.nest.flatten(g1), tf.nest.flatten(g0)):
            assert np.all(np.isfinite(a))
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.max(np.abs(b)))


def test_sersic_gradient_matches_finite_differences_and_broadcasting():
    """Unbatched positions with scalar and batched parameters mixed (the generic
    broadcasting path of the reductions): central finite differences agree."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(-1, 1, (9, 7)))
    y = tf.constant(rng.uniform(-1, 1, (9, 7)))
    prof = tsl.SersicEllipse(dtype=F64)
    p0 = dict(amp=np.array(2.0), R_sersic=np.array([[[0.4]], [[0.3]]]), n_sersic=np.array(1.7),
              e1=np.array([[[0.1]], [[-0.2]]]), e2=np.array(0.15), center_x=np.array(0.05),
              center_y=np.array([[[0.02]], [[-0.03]]]))

    def loss(p):
        v = prof._surface_brightness(x, y, **{k: tf.constant(a) for k, a in p.items()})
        return tf.reduce_sum(tf.sin(v) * x)

    params = {k: tf.constant(v) for k, v in p0.items()}
    with tf.GradientTape() as tape:
        tape.watch(params)
        val = tf.reduce_sum(tf.sin(prof._surface_brightness(x, y, **params)) * x)
    grads = tape.gradient(val, params)
    h = 1e-6
    for k, v in p0.items():
        fd = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            up, dn = dict(p0), dict(p0)
            up[k] = v.copy()
            dn[k] = v.copy()
            up[k][idx] += h
            dn[k][idx] -= h
            fd[idx] = (loss(up) - loss(dn)).numpy() / (2 * h)
        assert grads[k].shape == v.shape, k
        np.testing.assert_allclose(grads[k], fd, rtol=1e-6, atol=1e-8, err_msg=k)


@pytest.mark.parametrize("jit", [False, True])
def test_shear_gradient_matches_autodiff(jit):
    """Shear deflection gradients (parameters and positions), including zero shear."""
    rng = np.random.default_rng(2)
    x = tf.constant(rng.uniform(-1, 1, (3, 8, 6)))
    y = tf.constant(rng.uniform(-1, 1, (3, 8, 6)))
    p = {"gamma1": tf.constant([[[0.0]], [[0.03]], [[-0.05]]], F64),
         "gamma2": tf.constant([[[0.0]], [[-0.02]], [[0.04]]], F64),
         "ra_0": tf.constant(0.1, F64), "dec_0": tf.constant([[[0.0]], [[0.2]], [[0.0]]], F64)}
    shear = tsl.Shear(dtype=F64)

    def ref(x, y, p):
        dx, dy = x - p["ra_0"], y - p["dec_0"]
        return p["gamma1"] * dx + p["gamma2"] * dy, p["gamma2"] * dx - p["gamma1"] * dy

    out = []
    for fn in (lambda x, y, p: shear._deflection(x, y, **p), ref):
        out.append(_grads(lambda x, y, p: tf.stack(fn(x, y, p)), x, y, p, jit))
    (v1, g1), (v0, g0) = out
    np.testing.assert_allclose(v1, v0, rtol=1e-15)
    for a, b in zip(tf.nest.flatten(g1), tf.nest.flatten(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_sum_pixels_matches_reduce_sum():
    """The matmul reduction equals reduce_sum for the Simulator layout, and falls back to
    plain sums for other shapes."""
    rng = np.random.default_rng(3)
    gs = [tf.constant(rng.normal(size=(5, 16, 12))) for _ in range(3)]
    shape = tf.TensorShape([5, 1, 1])
    for jit in (False, True):
        fn = (lambda g: sum_pixels(g, shape))
        out = tf.function(fn, jit_compile=True)(gs) if jit else fn(gs)
        for o, g in zip(out, gs):
            np.testing.assert_allclose(o, tf.reduce_sum(g, [-1, -2], keepdims=True), rtol=1e-12)
    out = sum_pixels(gs, tf.TensorShape([1, 12]))  # not the per-image layout
    for o, g in zip(out, gs):
        np.testing.assert_allclose(o, tf.reduce_sum(g, [0, 1])[None], rtol=1e-12)


def test_simulator_gradients_float32_close_to_float64():
    """The whole benchmark-style likelihood gradient (EPL + shear, Sersic source and lens
    light, PSF) in float32 under XLA agrees with float64, and is finite at q = 1 and zero
    shear. (Centres exactly on a sub-pixel give finite but huge derivatives that depend on
    the radius floor of the dtype, as before: not compared here.)"""
    grids = {dt: tsl.PixelGrid(16, 0.1, supersample=2, dtype=dt) for dt in ("float32", "float64")}
    rng = np.random.default_rng(4)
    raw = [[dict(theta_E=[1.0, 0.9], gamma=[2.0, 2.2], e1=[0.0, 0.1], e2=[0.0, -0.1],
                 center_x=[0.0, 0.01], center_y=[0.0, -0.02]),
            dict(gamma1=[0.0, 0.03], gamma2=[0.0, -0.02])],
           [dict(amp=[20.0, 10.0], R_sersic=[0.2, 0.3], n_sersic=[1.5, 2.5], e1=[0.0, 0.1],
                 e2=[0.0, 0.05], center_x=[0.05, -0.05], center_y=[0.0, 0.05])],
           [dict(amp=[3.0, 4.0], R_sersic=[0.6, 0.8], n_sersic=[3.0, 2.0], e1=[0.1, 0.0],
                 e2=[-0.1, 0.0], center_x=[0.0, 0.01], center_y=[0.0, 0.0])]]
    data = rng.normal(size=(2, 16, 16))
    res = {}
    for dt, grid in grids.items():
        sim = tsl.Simulator(grid, lens=[tsl.EPL(dtype=dt), tsl.Shear(dtype=dt)],
                            source=[tsl.SersicEllipse(dtype=dt)],
                            lens_light=[tsl.SersicEllipse(b_n="lenstronomy", dtype=dt)],
                            psf=tsl.GaussianPSF(0.15, size=5))
        params = [[{k: tf.constant(v, dt) for k, v in d.items()} for d in pl] for pl in raw]

        @tf.function(jit_compile=True)
        def vg(*p):
            with tf.GradientTape() as tape:
                tape.watch(p)
                loss = tf.reduce_sum(tf.square(sim(*p) - tf.constant(data, dt)))
            return tape.gradient(loss, p)

        res[dt] = [t.numpy().astype(np.float64) for t in tf.nest.flatten(vg(*params))]
    for a, b in zip(res["float32"], res["float64"]):
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * np.max(np.abs(b)))


def test_simulator_forward_mode_equals_reverse_mode():
    """Forward-mode derivatives (tf.autodiff.ForwardAccumulator, which transposes the
    backward pass, so the custom gradients (EPL, Sersic, shear) and the XLA barriers must
    be differentiable again) agree with reverse mode: u . (J v) = (J^T u) . v, float64,
    under XLA."""
    dt, mass = "float64", "EPL"
    grid = tsl.PixelGrid(16, 0.1, supersample=2, dtype=dt)
    sim = tsl.Simulator(grid, lens=[tsl.get_profile(mass, dtype=dt), tsl.Shear(dtype=dt)],
                        source=[tsl.SersicEllipse(dtype=dt)], psf=tsl.GaussianPSF(0.15, size=5))
    lens = dict(theta_E=1.0, gamma=2.1, e1=0.1, e2=-0.05, center_x=0.01, center_y=-0.02)
    names = [("lens", 0, k) for k in lens] + [("lens", 1, "gamma1"), ("lens", 1, "gamma2")] + [
        ("source", 0, k) for k in ("amp", "R_sersic", "n_sersic", "e1", "e2", "center_x",
                                   "center_y")]
    x0 = tf.constant(list(lens.values()) + [0.03, -0.02, 20.0, 0.2, 1.5, 0.1, 0.05, 0.05, 0.0],
                     tf.float64)

    def render(x):
        kw = {"lens": [{}, {}], "source": [{}]}
        for (part, i, k), v in zip(names, tf.unstack(x)):
            kw[part][i][k] = v[None]
        return sim(lens=kw["lens"], source=kw["source"])[0]

    rng = np.random.default_rng(5)
    v = tf.constant(rng.normal(size=x0.shape), tf.float64)
    u = tf.constant(rng.normal(size=(16, 16)), tf.float64)

    @tf.function(jit_compile=True)
    def both(x):
        with tf.autodiff.ForwardAccumulator(x, v) as acc:
            img = render(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            back = tf.reduce_sum(u * render(x))
        return tf.reduce_sum(u * acc.jvp(img)), tf.reduce_sum(tape.gradient(back, x) * v)

    fwd, rev = (float(t) for t in both(x0))
    assert abs(fwd) > 1.0 and fwd == pytest.approx(rev, rel=1e-9)
