"""Sersic, SersicEllipse, Gaussian: lenstronomy cross-checks, half-light radius, flux,
limits, gradients and XLA."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import gamma as gamma_fn
from scipy.special import gammainc, gammaincinv

import tfstronglens as tsl
from conftest import lenstronomy_or_skip
from tfstronglens.profiles.light import sersic_b_n

F64 = tf.float64
CENTRE = (0.12, -0.31)


def sample_points(rng, cx=CENTRE[0], cy=CENTRE[1]):
    x = list(rng.uniform(-3, 3, 150))
    y = list(rng.uniform(-3, 3, 150))
    # the exact centre, inside and just outside the 1e-4 smoothing radius, and far away
    for r in (0.0, 5e-5, 2e-4, 1e-2):
        for ang in (0.0, 1.0, -2.0):
            x.append(cx + r * np.cos(ang))
            y.append(cy + r * np.sin(ang))
    x += [cx + 20.0]
    y += [cy - 15.0]
    return np.array(x), np.array(y)


def rel_err(a, b):
    return np.max(np.abs(a - b) / np.abs(b))


def e_from_q_phi(q, phi):
    e = (1.0 - q) / (1.0 + q)
    return e * np.cos(2.0 * phi), e * np.sin(2.0 * phi)


# ------------------------------------------------------------------ vs lenstronomy
@pytest.mark.parametrize("n_sersic", [0.5, 1.0, 2.3, 4.0, 7.0])
def test_sersic_matches_lenstronomy(n_sersic, rng):
    lenstronomy_or_skip()
    from lenstronomy.LightModel.Profiles.sersic import Sersic as LSersic

    x, y = sample_points(rng)
    prof = tsl.Sersic(b_n="lenstronomy", dtype=F64)
    for R_sersic, amp in [(0.08, 3.0), (0.7, 1.0), (2.5, 0.2)]:
        kw = dict(amp=amp, R_sersic=R_sersic, n_sersic=n_sersic, center_x=CENTRE[0],
                  center_y=CENTRE[1])
        ref = LSersic().function(x, y, **kw)
        mine = prof.surface_brightness(x, y, **kw).numpy()
        ok = ref > 1e-250  # far points can underflow to 0 in both
        assert rel_err(mine[ok], ref[ok]) < 1e-12
        assert np.all(mine[~ok] < 1e-250)


@pytest.mark.parametrize("q", [0.2, 0.5, 0.8, 0.99, 1.0])
def test_sersic_ellipse_matches_lenstronomy(q, rng):
    lenstronomy_or_skip()
    from lenstronomy.LightModel.Profiles.sersic import SersicElliptic

    x, y = sample_points(rng)
    prof = tsl.SersicEllipse(b_n="lenstronomy", dtype=F64)
    for phi in (0.0, 0.4, -1.1, np.pi / 2):
        for n_sersic in (0.7, 1.0, 4.0):
            e1, e2 = e_from_q_phi(q, phi)
            kw = dict(amp=2.0, R_sersic=0.6, n_sersic=n_sersic, e1=e1, e2=e2,
                      center_x=CENTRE[0], center_y=CENTRE[1])
            ref = SersicElliptic().function(x, y, **kw)
            mine = prof.surface_brightness(x, y, **kw).numpy()
            ok = ref > 1e-250
            assert rel_err(mine[ok], ref[ok]) < 1e-12


def test_gaussian_matches_lenstronomy(rng):
    lenstronomy_or_skip()
    from lenstronomy.LightModel.Profiles.gaussian import Gaussian as LGaussian

    x, y = sample_points(rng)
    prof = tsl.Gaussian(dtype=F64)
    for sigma, amp in [(0.05, 1.0), (0.5, 7.0), (2.0, 0.3)]:
        kw = dict(amp=amp, sigma=sigma, center_x=CENTRE[0], center_y=CENTRE[1])
        ref = LGaussian().function(x, y, **kw)
        mine = prof.surface_brightness(x, y, **kw).numpy()
        ok = ref > 1e-250
        assert rel_err(mine[ok], ref[ok]) < 1e-12


# -------------------------------------------------------------------------- b_n
N_GRID = np.concatenate([[0.05, 0.1, 0.2, 0.3, 0.35, 0.3599, 0.3601, 0.4],
                         np.geomspace(0.5, 10.0, 25), [15.0, 20.0]])


def test_b_n_gives_half_light_radius():
    """gamma(2n, b_n) = Gamma(2n) / 2 for 0.05 <= n <= 20, including n < 0.36 where a
    polynomial fit (errors up to 1%) used to be the answer; float64 to 1e-10 (b_n is
    Hermite-interpolated from an exact table: ~1e-11 below n = 20, and the Ciotti & Bertin
    series reaches 1e-10 at n = 20; far below any photometric need and float32 rounding),
    float32 to ~float32 rounding."""
    b64 = sersic_b_n(tf.constant(N_GRID, F64)).numpy()
    assert np.max(np.abs(gammainc(2 * N_GRID, b64) - 0.5)) < 1e-10
    assert rel_err(b64, gammaincinv(2 * N_GRID, 0.5)) < 1e-10
    b32 = sersic_b_n(tf.constant(N_GRID, tf.float32)).numpy().astype(np.float64)
    assert rel_err(b32, gammaincinv(2 * N_GRID, 0.5)) < 3e-6
    # the lenstronomy option is its linear law
    bl = sersic_b_n(tf.constant(N_GRID, F64), "lenstronomy").numpy()
    np.testing.assert_allclose(bl, np.maximum(1.9992 * N_GRID - 0.3271, 1e-5), rtol=1e-15)
    with pytest.raises(ValueError, match="approximation"):
        sersic_b_n(tf.constant(1.0), "sersic")


def test_b_n_gradient_is_implicit_derivative():
    """db/dn through the Newton steps equals the derivative of the exact root."""
    n = tf.constant(N_GRID, F64)
    with tf.GradientTape() as tape:
        tape.watch(n)
        b = sersic_b_n(n)
    g = tape.gradient(b, n).numpy()
    h = 1e-6
    fd = (gammaincinv(2 * (N_GRID + h), 0.5) - gammaincinv(2 * (N_GRID - h), 0.5)) / (2 * h)
    assert rel_err(g, fd) < 1e-7  # finite-difference accuracy, h^2 and 1e-16/h


@pytest.mark.slow
def test_b_n_gradient_under_xla():
    """igamma and its derivative in its first argument compile with XLA (~10 s)."""
    n = tf.constant(N_GRID, F64)
    with tf.GradientTape() as tape:
        tape.watch(n)
        b = sersic_b_n(n)
    g = tape.gradient(b, n).numpy()
    jit_g = tf.function(lambda n: tf.gradients(sersic_b_n(n), n)[0], jit_compile=True)(n)
    np.testing.assert_allclose(jit_g.numpy(), g, rtol=1e-10)


def _gauss_log_nodes(lo, hi, panels=40, order=30):
    """Gauss-Legendre nodes/weights in u = ln r on [lo, hi] (panels of `order` nodes)."""
    xs, ws = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    u, w = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        u.append(0.5 * (b - a) * xs + 0.5 * (a + b))
        w.append(0.5 * (b - a) * ws)
    return np.concatenate(u), np.concatenate(w)


@pytest.mark.parametrize("n_sersic", [0.2, 0.5, 1.0, 4.0, 10.0])
def test_round_sersic_half_light_flux(n_sersic):
    """Flux inside R_sersic, integrated numerically from the profile (2 pi r^2 I dln r), is
    half the total, and the total equals 2 pi n R^2 amp e^b Gamma(2n) / b^(2n)."""
    R, amp = 0.8, 1.7
    prof = tsl.Sersic(dtype=F64, smoothing=1e-30)  # no core: test the pure profile

    def flux(lo, hi):
        u, w = _gauss_log_nodes(lo, hi)
        r = np.exp(u)
        sb = prof.surface_brightness(r, 0.0, amp=amp, R_sersic=R, n_sersic=n_sersic).numpy()
        return np.sum(w * 2 * np.pi * r * r * sb)

    inner = flux(np.log(R) - 40.0, np.log(R))
    # the tail of n = 10 extends to ~1e10 R_sersic
    outer = flux(np.log(R), np.log(R) + 30.0)
    total = inner + outer
    b = gammaincinv(2 * n_sersic, 0.5)
    analytic = 2 * np.pi * n_sersic * R**2 * amp * np.exp(b) * gamma_fn(2 * n_sersic) / b ** (
        2 * n_sersic)
    assert abs(total / analytic - 1) < 1e-10
    assert abs(inner / total - 0.5) < 1e-10


def test_elliptical_sersic_flux_independent_of_q():
    """R is the product-average radius, so the total flux does not depend on q (pixel sum
    on a fine grid; n = 1 to keep the tail inside the box)."""
    c = np.linspace(-6, 6, 1201)
    x, y = np.meshgrid(c, c)
    prof = tsl.SersicEllipse(dtype=F64)
    fluxes = []
    for q, phi in [(1.0, 0.0), (0.6, 0.3), (0.3, -1.0)]:
        e1, e2 = e_from_q_phi(q, phi)
        sb = prof.surface_brightness(x, y, amp=1.0, R_sersic=0.5, n_sersic=1.0, e1=e1, e2=e2)
        fluxes.append(np.sum(sb.numpy()) * (c[1] - c[0]) ** 2)
    b = gammaincinv(2.0, 0.5)
    analytic = 2 * np.pi * 0.25 * np.exp(b) / b**2
    np.testing.assert_allclose(fluxes, analytic, rtol=1e-5)  # midpoint rule, cusp at 0


def test_gaussian_total_flux_is_amp():
    c = np.linspace(-3, 3, 601)
    x, y = np.meshgrid(c, c)
    sb = tsl.Gaussian(dtype=F64).surface_brightness(x, y, amp=2.5, sigma=0.3, center_x=0.1)
    # midpoint rule on a smooth function sampled at sigma/30: error far below 1e-10
    assert abs(np.sum(sb.numpy()) * (c[1] - c[0]) ** 2 / 2.5 - 1) < 1e-10


def test_elliptical_sersic_at_zero_e_equals_round(rng):
    x, y = sample_points(rng)
    kw = dict(amp=1.3, R_sersic=0.4, n_sersic=2.5, center_x=CENTRE[0], center_y=CENTRE[1])
    for b_n in ("ciotti_bertin", "lenstronomy"):
        r = tsl.Sersic(b_n=b_n, dtype=F64).surface_brightness(x, y, **kw).numpy()
        e = tsl.SersicEllipse(b_n=b_n, dtype=F64).surface_brightness(x, y, e1=0.0, e2=0.0, **kw)
        np.testing.assert_allclose(e.numpy(), r, rtol=1e-14, atol=0)


# ------------------------------------------------------------------------ gradients
LIGHT_CASES = [
    ("SERSIC", dict(amp=1.3, R_sersic=0.4, n_sersic=2.5, center_x=0.1, center_y=-0.2), {}),
    ("SERSIC", dict(amp=1.3, R_sersic=0.4, n_sersic=0.3, center_x=0.1, center_y=-0.2), {}),
    ("SERSIC_ELLIPSE", dict(amp=1.3, R_sersic=0.4, n_sersic=2.5, e1=0.0, e2=0.0,
                            center_x=0.1, center_y=-0.2), {}),
    ("SERSIC_ELLIPSE", dict(amp=1.3, R_sersic=0.4, n_sersic=1.0, e1=0.2, e2=-0.1,
                            center_x=0.1, center_y=-0.2), {"b_n": "lenstronomy"}),
    ("GAUSSIAN", dict(amp=1.3, sigma=0.3, center_x=0.1, center_y=-0.2), {}),
]


def _sb_and_grads(prof, px, py, kw, dtype):
    x, y = tf.constant(px, dtype), tf.constant(py, dtype)
    p = {k: tf.constant(np.full(len(px), v), dtype) for k, v in kw.items()}
    names, ts = ["x", "y", *p], [x, y, *p.values()]
    with tf.GradientTape() as tape:
        tape.watch(ts)
        sb = prof.surface_brightness(x, y, **dict(zip(names[2:], ts[2:])))
    return sb, dict(zip(names, tape.gradient(sb, ts, unconnected_gradients="zero")))


@pytest.mark.parametrize("dtype", [tf.float32, F64])
@pytest.mark.parametrize("name,kw,opts", LIGHT_CASES)
def test_gradients_finite(name, kw, opts, dtype):
    prof = tsl.get_profile(name, dtype=dtype, **opts)
    px = kw["center_x"] + np.array([0.0, 5e-5, 0.3, 0.0, -1.0, 3.0])
    py = kw["center_y"] + np.array([0.0, 0.0, 0.0, -0.2, 0.5, 2.0])
    sb, grads = _sb_and_grads(prof, px, py, kw, dtype)
    assert np.all(np.isfinite(sb.numpy()))
    for n, g in grads.items():
        assert np.all(np.isfinite(g.numpy())), (name, n, g.numpy())


@pytest.mark.parametrize("name,kw,opts", LIGHT_CASES)
def test_gradients_match_finite_differences(name, kw, opts):
    """Away from the centre, including e1 = e2 = 0 and through b_n(n) (igamma)."""
    prof = tsl.get_profile(name, dtype=F64, **opts)
    px = kw["center_x"] + np.array([0.3, 0.0, -0.5, 0.25])
    py = kw["center_y"] + np.array([0.0, -0.2, 0.5, 0.6])
    _, grads = _sb_and_grads(prof, px, py, kw, F64)
    h = 1e-6
    for n in grads:
        def f(d):
            q = {k: np.full(len(px), v) for k, v in kw.items()}
            xx, yy = px, py
            if n == "x":
                xx = px + d
            elif n == "y":
                yy = py + d
            else:
                q[n] = q[n] + d
            return prof.surface_brightness(xx, yy, **q).numpy()

        fd = (f(h) - f(-h)) / (2 * h)
        g = grads[n].numpy()
        assert np.all(np.abs(g - fd) <= 1e-7 * (1 + np.abs(fd))), (n, g, fd)


def test_jit_equals_eager(rng):
    x = tf.constant(rng.uniform(-1, 1, (6, 7)))
    y = tf.constant(rng.uniform(-1, 1, (6, 7)))
    profs = [tsl.get_profile(name, dtype=F64, **opts) for name, _, opts in LIGHT_CASES]

    def f(x, y):
        return [p.surface_brightness(x, y, **kw) for p, (_, kw, _) in zip(profs, LIGHT_CASES)]

    for a, b in zip(f(x, y), tf.function(f, jit_compile=True)(x, y)):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12)


def test_batched_parameters_equal_loop(rng):
    x, y = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 8))
    prof = tsl.SersicEllipse(dtype=F64)
    n = np.array([0.3, 1.0, 4.0])
    e1 = np.array([0.0, 0.1, -0.3])
    out = prof.surface_brightness(x, y, amp=1.0, R_sersic=0.5, n_sersic=n[:, None, None],
                                  e1=e1[:, None, None], e2=0.05)
    assert out.shape == (3, 8, 9)
    for i in range(3):
        ref = prof.surface_brightness(x, y, amp=1.0, R_sersic=0.5, n_sersic=n[i], e1=e1[i],
                                      e2=0.05)
        np.testing.assert_allclose(out[i].numpy(), ref.numpy(), rtol=1e-14)


def test_bad_input():
    with pytest.raises(ValueError, match="R_sersic"):
        tsl.Sersic().surface_brightness(0.0, 0.0, amp=1.0, R_sersic=0.0, n_sersic=1.0)
    with pytest.raises(ValueError, match="n_sersic"):
        tsl.Sersic().surface_brightness(0.0, 0.0, amp=1.0, R_sersic=1.0, n_sersic=-1.0)
    with pytest.raises(ValueError, match="amp"):
        tsl.Sersic().surface_brightness(0.0, 0.0, amp=float("nan"), R_sersic=1.0, n_sersic=1.0)
    with pytest.raises(ValueError, match="sigma"):
        tsl.Gaussian().surface_brightness(0.0, 0.0, amp=1.0, sigma=0.0)
    with pytest.raises(ValueError, match="e1"):
        tsl.SersicEllipse().surface_brightness(0.0, 0.0, amp=1.0, R_sersic=1.0, n_sersic=1.0,
                                               e2=0.0)
    with pytest.raises(ValueError, match="b_n"):
        tsl.Sersic(b_n="exact")
    with pytest.raises(ValueError, match="smoothing"):
        tsl.Sersic(smoothing=0.0)
