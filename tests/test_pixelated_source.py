"""Tests of the pixelated (interpolated-image) source profile."""

import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from tfstronglens.profiles import PixelatedSource, get_profile
from tfstronglens.profiles.pixelated_source import interpolation_kernel

F64 = tf.float64
INTERPS = ("bilinear", "bicubic")


def node_coords(n, s, cx=0.0, cy=0.0):
    c = (np.arange(n) - 0.5 * (n - 1)) * s
    xx, yy = np.meshgrid(c + cx, c + cy)
    return xx, yy


# ----------------------------------------------------------------- interpolation
@pytest.mark.parametrize("interp", INTERPS)
@pytest.mark.parametrize("n", [1, 4, 7])
def test_reproduces_pixel_values_at_centres(rng, interp, n):
    s, cx, cy, amp = 0.07, 0.13, -0.21, 1.7
    img = rng.normal(size=(n, n))
    prof = PixelatedSource(n, s, interpolation=interp, dtype=F64)
    xx, yy = node_coords(n, s, cx, cy)
    out = prof.surface_brightness(xx, yy, image=img, amp=amp, center_x=cx, center_y=cy).numpy()
    np.testing.assert_allclose(out, amp * img, rtol=0, atol=1e-12)


def test_exact_for_linear_functions_inside(rng):
    n, s, cx, cy = 9, 0.1, 0.3, -0.2
    a, b, c = 0.7, -1.3, 2.1
    xx, yy = node_coords(n, s, cx, cy)
    img = a + b * xx + c * yy
    prof = PixelatedSource(n, s, dtype=F64)
    half = 0.5 * (n - 1) * s
    x = rng.uniform(-half, half, 500) + cx
    y = rng.uniform(-half, half, 500) + cy
    out = prof.surface_brightness(x, y, image=img, center_x=cx, center_y=cy).numpy()
    np.testing.assert_allclose(out, a + b * x + c * y, rtol=0, atol=1e-12)
    # bilinear is the tensor product: the xy term is reproduced too
    img2 = xx * yy
    out2 = prof.surface_brightness(x, y, image=img2, center_x=cx, center_y=cy).numpy()
    np.testing.assert_allclose(out2, x * y, rtol=0, atol=1e-12)


def test_bicubic_exact_for_quadratics_two_pixels_in(rng):
    n, s = 10, 0.1
    xx, yy = node_coords(n, s)
    f = lambda x, y: 0.3 + x - 2 * y + 1.5 * x * x - 0.8 * x * y + 2.0 * y * y  # noqa: E731
    prof = PixelatedSource(n, s, interpolation="bicubic", dtype=F64)
    inner = (0.5 * (n - 1) - 1.0) * s  # taps need the neighbours on both sides
    x, y = rng.uniform(-inner, inner, (2, 500))
    out = prof.surface_brightness(x, y, image=f(xx, yy)).numpy()
    np.testing.assert_allclose(out, f(x, y), rtol=0, atol=1e-12)
    # and bilinear is *not* exact for quadratics (so the test above can fail)
    lin = PixelatedSource(n, s, dtype=F64).surface_brightness(x, y, image=f(xx, yy)).numpy()
    assert np.abs(lin - f(x, y)).max() > 1e-4


@pytest.mark.parametrize("interp", INTERPS)
def test_zero_outside_support_and_continuous_at_its_edge(rng, interp):
    n, s = 6, 0.2
    h = {"bilinear": 1, "bicubic": 2}[interp]
    prof = PixelatedSource(n, s, interpolation=interp, dtype=F64)
    img = rng.uniform(1, 2, (n, n))
    edge = (0.5 * (n - 1) + h) * s
    x = np.concatenate([rng.uniform(edge, 10, 200), -rng.uniform(edge, 10, 200), [1e8, -1e8]])
    y = rng.uniform(-10, 10, x.size)
    for xs, ys in ((x, y), (y, x)):
        out = prof.surface_brightness(xs, ys, image=img).numpy()
        np.testing.assert_array_equal(out, 0.0)
    # approaching the edge of the support the value goes to 0 continuously
    eps = 1e-6 * s
    near = prof.surface_brightness(np.array([edge - eps, -edge + eps]), 0.0, image=img).numpy()
    assert np.all(np.abs(near) < 1e-5)
    inside = prof.surface_brightness(np.array([edge - 0.5 * s]), 0.0, image=img).numpy()
    assert np.all(np.abs(inside) > 1e-2)


def test_kernel_properties():
    s = tf.constant(np.linspace(-3, 3, 60001), F64)
    ds = 6 / 60000
    for interp in INTERPS:
        k = interpolation_kernel(s, interp).numpy()
        # integral 1 (trapezoid rule on a piecewise polynomial with fine steps)
        np.testing.assert_allclose(np.trapezoid(k, dx=ds), 1.0, atol=1e-8)
        ints = interpolation_kernel(tf.constant([-2.0, -1.0, 0.0, 1.0, 2.0], F64), interp).numpy()
        np.testing.assert_array_equal(ints, [0, 0, 1, 0, 0])
        # partition of unity
        t = np.linspace(0, 1, 11)
        tot = sum(interpolation_kernel(tf.constant(t - j, F64), interp).numpy() for j in range(-3, 4))
        np.testing.assert_allclose(tot, 1.0, atol=1e-14)


# ------------------------------------------------------------------ lenstronomy
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_matches_lenstronomy_interpol(rng, n):
    pytest.importorskip("lenstronomy")
    from lenstronomy.LightModel.light_model import LightModel

    lm = LightModel(["INTERPOL"])
    worst = 0.0
    for s in (0.03, 0.1, 0.4):
        for cx, cy, phi in ((0.0, 0.0, 0.0), (0.11, -0.37, 0.0), (0.11, -0.37, 0.7),
                            (-0.2, 0.05, -2.5)):
            for amp in (1.0, 3.3):
                img = rng.uniform(0, 5, (n, n))
                prof = PixelatedSource(n, s, dtype=F64)
                reach = (0.5 * n + 2) * s
                x = rng.uniform(-reach, reach, 400) + cx
                y = rng.uniform(-reach, reach, 400) + cy
                kw = dict(image=img, amp=amp, center_x=cx, center_y=cy)
                ours = prof.surface_brightness(x, y, phi_G=phi, **kw).numpy()
                lm.func_list[0].delete_cache()
                ref = lm.surface_brightness(x, y, [dict(kw, scale=s, phi_G=phi)])
                worst = max(worst, np.abs(ours - ref).max() / np.abs(ref).max())
                # same total flux definition
                np.testing.assert_allclose(
                    prof.total_flux(img, amp).numpy(),
                    lm.total_flux([dict(kw, scale=s, phi_G=0.0)])[0], rtol=1e-14)
    assert worst < 1e-12, worst


# ------------------------------------------------------------ flux conservation
def _render_unlensed(prof, image, grid, **kw):
    sim = tsl.Simulator(grid, source=[prof], jit_compile=False)  # XLA is tested elsewhere
    return sim(source=[dict(image=image, **kw)]).numpy()


def test_flux_conservation_bilinear_exact(rng):
    # Fine pixels (s/4) whose edges fall on the source's pixel centres: each fine pixel
    # lies inside one bilinear cell, where the midpoint rule is exact, so the rendered
    # total flux must equal amp s^2 sum(image) to rounding.
    n, s, amp = 8, 0.1, 2.5
    img = rng.uniform(0, 3, (3, n, n))
    prof = PixelatedSource(n, s, dtype=F64)
    grid = tsl.PixelGrid(40, s / 4, dtype=F64)
    out = _render_unlensed(prof, img, grid, amp=amp)
    expected = amp * s**2 * img.sum(axis=(-2, -1))
    np.testing.assert_allclose(out.sum(axis=(-2, -1)), expected, rtol=1e-12)
    np.testing.assert_allclose(prof.total_flux(img, amp).numpy(), expected, rtol=1e-14)


@pytest.mark.parametrize("interp", INTERPS)
def test_flux_conservation_misaligned_grid(rng, interp):
    # Off-grid centre and a grid not aligned with the source pixels: the supersampled
    # midpoint rule converges as (sub-pixel / source pixel)^2 ~ (1/12)^2 at the kinks, so
    # 2e-4 is a comfortable bound (the error of the first-order bias in the flux would be
    # O(1)). Larger than the source, so no flux falls outside.
    n, s = 6, 0.15
    img = rng.uniform(0, 1, (n, n))
    prof = PixelatedSource(n, s, interpolation=interp, dtype=F64)
    grid = tsl.PixelGrid(41, 0.037, supersample=3, dtype=F64)
    out = _render_unlensed(prof, img, grid, center_x=0.0123, center_y=-0.031)
    np.testing.assert_allclose(out.sum(), s**2 * img.sum(), rtol=2e-4)


# --------------------------------------------------------------------- lensing
def _sie_images(theta_E, e1, e2, beta, guesses, lens):
    """Solve beta = theta - alpha(theta) by Newton's method from the given guesses (all at
    once); return image positions [K, 2] and magnifications 1 / det(A) from the autodiff
    hessian."""

    @tf.function
    def step(x, y):
        kw = dict(theta_E=theta_E, e1=e1, e2=e2, center_x=0.0, center_y=0.0)
        kw = {k: tf.constant(v, F64) for k, v in kw.items()}
        ax, ay = lens._deflection(x, y, **kw)
        fxx, fxy, fyx, fyy = lens._hessian(x, y, **kw)
        return ax, ay, fxx, fxy, fyx, fyy

    theta = np.array(guesses, dtype=np.float64)
    for _ in range(12):
        out = step(tf.constant(theta[:, 0]), tf.constant(theta[:, 1]))
        ax, ay, fxx, fxy, fyx, fyy = [t.numpy() for t in out]
        A = np.stack([np.stack([1 - fxx, -fxy], -1), np.stack([-fyx, 1 - fyy], -1)], -2)
        resid = beta - (theta - np.stack([ax, ay], -1))
        theta = theta + np.linalg.solve(A, resid[..., None])[..., 0]
    assert np.abs(resid).max() < 1e-12
    return theta, 1.0 / np.linalg.det(A)


def test_lensed_flux_equals_flux_times_magnification():
    # A compact (sigma = 0.02") pixelated source at beta, two images; the lensed flux is
    # sum_k |mu_k| times the source flux up to the variation of the magnification across
    # the source, second order in (source size / distance to the critical curve): the
    # measured offset is 0.19% (unchanged with 2x finer image pixels), so rtol 5e-3.
    # Forgetting surface brightness conservation would be off by the total magnification
    # (~4.6).
    theta_E, e1, e2 = 1.0, 0.08, -0.05
    beta = np.array([0.35, 0.2])
    lens = tsl.SIE(dtype=F64)
    bhat = beta / np.linalg.norm(beta)
    thetas, mus = _sie_images(theta_E, e1, e2, beta,
                              [bhat * (np.linalg.norm(beta) + theta_E),
                               bhat * (np.linalg.norm(beta) - theta_E)], lens)
    mu_tot = np.abs(mus).sum()
    assert np.linalg.norm(thetas[0] - thetas[1]) > 1.0 and mu_tot > 3

    n, s = 16, 0.01
    xx, yy = node_coords(n, s)
    img = np.exp(-0.5 * (xx**2 + yy**2) / 0.02**2)
    src = PixelatedSource(n, s, dtype=F64)
    src_flux = src.total_flux(img).numpy()

    grid = tsl.PixelGrid(150, 0.02, supersample=3, dtype=F64)
    sim = tsl.Simulator(grid, lens=[lens], source=[src], jit_compile=False)
    out = sim(lens=[dict(theta_E=theta_E, e1=e1, e2=e2)],
              source=[dict(image=img, center_x=beta[0], center_y=beta[1])]).numpy()
    np.testing.assert_allclose(out.sum(), mu_tot * src_flux, rtol=5e-3)


# ------------------------------------------------------------ batching and jit
def test_batch_equals_loop_and_shapes(rng):
    n, s, B = 5, 0.12, 3
    prof = PixelatedSource(n, s, dtype=F64)
    imgs = rng.uniform(0, 1, (B, n, n))
    cx = rng.uniform(-0.1, 0.1, B)
    amp = rng.uniform(0.5, 2, B)
    x, y = rng.uniform(-0.5, 0.5, (2, 4, 6))
    batched = prof.surface_brightness(x, y, image=imgs, amp=amp[:, None, None],
                                      center_x=cx[:, None, None]).numpy()
    assert batched.shape == (B, 4, 6)
    for b in range(B):
        single = prof.surface_brightness(x, y, image=imgs[b], amp=amp[b], center_x=cx[b]).numpy()
        np.testing.assert_allclose(batched[b], single, rtol=0, atol=1e-14)
    # per-batch points [B, H, W] with an [B, n, n] image: image b sees points b
    xb, yb = rng.uniform(-0.5, 0.5, (2, B, 4, 6))
    out = prof.surface_brightness(xb, yb, image=imgs).numpy()
    for b in range(B):
        np.testing.assert_allclose(out[b], prof.surface_brightness(xb[b], yb[b], image=imgs[b]).numpy(),
                                   rtol=0, atol=1e-14)
    # 1D points [P] with a batch of images -> [B, P]; one image with [B, H, W] points
    assert prof.surface_brightness(x[0], y[0], image=imgs).shape == (B, 6)
    assert prof.surface_brightness(xb, yb, image=imgs[0]).shape == (B, 4, 6)
    # two batch dims
    imgs2 = rng.uniform(0, 1, (2, B, n, n))
    assert prof.surface_brightness(x, y, image=imgs2).shape == (2, B, 4, 6)


def test_simulator_batch_equals_loop(rng):
    n, B = 8, 3
    src = PixelatedSource(n, 0.08, dtype=F64)
    imgs = rng.uniform(0, 1, (B, n, n))
    theta_E = rng.uniform(0.6, 0.9, B)
    grid = tsl.PixelGrid(20, 0.1, supersample=2, dtype=F64)
    sim = tsl.Simulator(grid, lens=[tsl.SIE(dtype=F64)], source=[src], psf=tsl.GaussianPSF(0.15),
                        jit_compile=False)
    batched = sim(lens=[dict(theta_E=theta_E, e1=0.1, e2=0.02)], source=[dict(image=imgs)]).numpy()
    assert batched.shape == (B, 20, 20) and batched.sum() > 0
    for b in range(B):
        # batches of one (same shapes for every b: a single retrace)
        one = sim(lens=[dict(theta_E=theta_E[b:b + 1], e1=0.1, e2=0.02)],
                  source=[dict(image=imgs[b:b + 1])]).numpy()
        np.testing.assert_allclose(batched[b], one[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("interp", INTERPS)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_jit_equals_eager(rng, interp, dtype):
    n, B = 6, 2
    prof = PixelatedSource(n, 0.1, interpolation=interp, dtype=dtype)
    imgs = tf.constant(rng.uniform(0, 1, (B, n, n)), dtype)
    x, y = [tf.constant(v, dtype) for v in rng.uniform(-0.6, 0.6, (2, B, 10, 10))]
    cx = tf.constant([0.02, -0.03], dtype)[:, None, None]

    def f(imgs, x, y, cx):
        return prof._surface_brightness(x, y, image=imgs, amp=tf.constant(1.3, dtype),
                                        center_x=cx, center_y=tf.constant(0.01, dtype))

    eager = f(imgs, x, y, cx).numpy()
    jitted = tf.function(f, jit_compile=True)(imgs, x, y, cx).numpy()
    assert jitted.dtype == dtype.as_numpy_dtype
    tol = 1e-12 if dtype == tf.float64 else 1e-5
    np.testing.assert_allclose(jitted, eager, rtol=tol, atol=tol)
    # float32 agrees with float64
    if dtype == tf.float32:
        p64 = PixelatedSource(n, 0.1, interpolation=interp, dtype=F64)
        ref = p64.surface_brightness(x.numpy().astype(np.float64), y.numpy().astype(np.float64),
                                     image=imgs.numpy().astype(np.float64), amp=1.3,
                                     center_x=cx.numpy().astype(np.float64), center_y=0.01).numpy()
        np.testing.assert_allclose(eager, ref, atol=1e-5)


# ------------------------------------------------------------------- gradients
@pytest.mark.parametrize("interp", INTERPS)
def test_gradients_finite_and_correct(rng, interp):
    n, s = 6, 0.1
    prof = PixelatedSource(n, s, interpolation=interp, dtype=F64)
    img = tf.constant(rng.uniform(0, 1, (n, n)), F64)
    xx, yy = node_coords(n, s)
    # generic points, pixel centres, the support edge and far outside
    x = np.concatenate([rng.uniform(-0.4, 0.4, 50), xx.ravel(), [0.35, 0.45, 5.0, -1e6]])
    y = np.concatenate([rng.uniform(-0.4, 0.4, 50), yy.ravel(), [0.0, 0.0, 0.0, 0.0]])
    x, y = tf.constant(x, F64), tf.constant(y, F64)
    amp, cx, cy = [tf.constant(v, F64) for v in (1.2, 0.01, -0.02)]

    @tf.function(jit_compile=True)
    def grads(img, x, y, amp, cx, cy):
        with tf.GradientTape() as tape:
            tape.watch([img, x, y, amp, cx, cy])
            sb = prof._surface_brightness(x, y, image=img, amp=amp, center_x=cx, center_y=cy)
            loss = tf.reduce_sum(sb)
        return sb, tape.gradient(loss, [img, x, y, amp, cx, cy])

    sb, g = grads(img, x, y, amp, cx, cy)
    for gi in g:
        assert np.all(np.isfinite(gi.numpy()))
    gi, gx, gy, gamp, gcx, gcy = [v.numpy() for v in g]
    assert gx[-1] == 0.0 and gx[-2] == 0.0
    # linear in the image: d(sum sb)/d image = weights; checking via sum(img * grad) = sum(sb)
    np.testing.assert_allclose((gi * img.numpy()).sum(), sb.numpy().sum(), rtol=1e-12)
    np.testing.assert_allclose(gamp, sb.numpy().sum() / 1.2, rtol=1e-12)
    # translation invariance: d/dcenter = -d/dx summed
    np.testing.assert_allclose(gcx, -gx.sum(), rtol=1e-10)
    np.testing.assert_allclose(gcy, -gy.sum(), rtol=1e-10)
    # central finite differences at the generic points (they lie strictly inside a cell,
    # where even the bilinear interpolant is smooth)
    h = 1e-7
    kw = dict(image=img, amp=amp, center_x=cx, center_y=cy)
    xg, yg = x[:50], y[:50]
    fd_x = (prof.surface_brightness(xg + h, yg, **kw) - prof.surface_brightness(xg - h, yg, **kw)) / (2 * h)
    fd_y = (prof.surface_brightness(xg, yg + h, **kw) - prof.surface_brightness(xg, yg - h, **kw)) / (2 * h)
    np.testing.assert_allclose(gx[:50], fd_x.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gy[:50], fd_y.numpy(), rtol=1e-5, atol=1e-6)


def test_gradient_through_simulator(rng):
    n = 6
    src = PixelatedSource(n, 0.1)
    grid = tsl.PixelGrid(12, 0.1)
    sim = tsl.Simulator(grid, lens=[tsl.SIE(), tsl.Shear()], source=[src], jit_compile=False)
    img = tf.constant(rng.uniform(0, 1, (2, n, n)), tf.float32)
    theta_E = tf.constant([0.3, 0.35], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([img, theta_E])
        out = sim(lens=[dict(theta_E=theta_E, e1=0.0, e2=0.0), dict(gamma1=0.0, gamma2=0.0)],
                  source=[dict(image=img)])
        loss = tf.reduce_sum(out**2)
    gi, gt = tape.gradient(loss, [img, theta_E])
    assert np.all(np.isfinite(gi.numpy())) and np.all(np.isfinite(gt.numpy()))
    assert np.abs(gi.numpy()).sum() > 0 and np.all(gt.numpy() != 0)


# ------------------------------------------------------------------ bad input
def test_bad_input():
    with pytest.raises(ValueError, match="pixel_scale"):
        PixelatedSource(8, 0.0)
    with pytest.raises(ValueError, match="pixel_scale"):
        PixelatedSource(8, -0.1)
    with pytest.raises(ValueError, match="pixel_scale"):
        PixelatedSource(8, float("nan"))
    with pytest.raises(ValueError, match="num_pix"):
        PixelatedSource(0, 0.1)
    with pytest.raises(ValueError, match="num_pix"):
        PixelatedSource(8.0, 0.1)
    with pytest.raises(ValueError, match="interpolation"):
        PixelatedSource(8, 0.1, interpolation="nearest")
    prof = PixelatedSource(8, 0.1)
    with pytest.raises(ValueError, match=r"image must have shape \[\.\.\., 8, 8\].*\[7, 8\]"):
        prof.surface_brightness(0.0, 0.0, image=np.zeros((7, 8)))
    with pytest.raises(ValueError, match="image must have at least 2"):
        prof.surface_brightness(0.0, 0.0, image=np.zeros(8))
    with pytest.raises(ValueError, match="image must be finite"):
        prof.surface_brightness(0.0, 0.0, image=np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="missing.*image"):
        prof.surface_brightness(0.0, 0.0)
    sim = tsl.Simulator(tsl.PixelGrid(10, 0.1), source=[prof])
    with pytest.raises(ValueError, match=r"image must have shape"):
        sim(source=[dict(image=np.zeros((2, 9, 9)))])


def test_registry_and_config():
    prof = PixelatedSource(12, 0.05, interpolation="bicubic", dtype=F64)
    again = get_profile(**prof.get_config())
    assert isinstance(again, PixelatedSource)
    assert again.get_config() == prof.get_config()
    assert again.dtype == F64 and again.interpolation == "bicubic"
    assert tsl.PixelatedSource is PixelatedSource
    assert tsl.profiles.PROFILE_REGISTRY["PIXELATED"] is PixelatedSource
    assert isinstance(get_profile("pixelated", num_pix=2, pixel_scale=1.0), PixelatedSource)
