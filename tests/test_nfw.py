"""NFW and truncated NFW (TNFW) mass profiles.

Checks: lenstronomy over grids of (Rs, alpha_Rs, r_trunc) including r = 0, tiny r, r = Rs and
r = Rs (1 +- 1e-4), far out; a 40-digit mpmath evaluation of the textbook formulas at the
numerically hard points (where lenstronomy itself is approximate); analytic limits (alpha(Rs) =
alpha_Rs, TNFW -> NFW, TNFW total mass and far-field kappa); the identities alpha = grad psi and
div alpha = 2 kappa; finite and correct gradients; jit == eager; batching; bad input.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from tfstronglens.profiles import NFW, TNFW, get_profile

G1 = 1.0 - math.log(2.0)
RS_GRID = (0.05, 0.5, 2.0)
ALPHA_GRID = (0.01, 1.0)
TAU_GRID = (0.5, 1.0, 2.0, 5.0, 20.0, 100.0)
CENTER = (0.13, -0.21)


def _ring_points(Rs, X, n_angles=3, center=CENTER):
    """Points at r = X * Rs from ``center`` in a few directions (flattened)."""
    th = np.linspace(0.3, 0.3 + 2 * np.pi, n_angles, endpoint=False)
    r = np.outer(np.asarray(X, float) * Rs, np.ones_like(th))
    return (center[0] + r * np.cos(th)).ravel(), (center[1] + r * np.sin(th)).ravel()


def _exact_points(Rs, X):
    """Points around the origin at r = X Rs on the axes: r / Rs is exactly X in float64."""
    X = np.asarray(X, float)
    r = X * Rs
    return np.concatenate([r, -r, 0 * r]), np.concatenate([0 * r, 0 * r, r])


def _lenstronomy_points(Rs):
    """Test positions: exact r = 0, tiny r, Rs and Rs (1 +- 1e-4) about the origin
    (lenstronomy's X == 1 branch needs r / Rs to be exactly 1), plus a generic radial grid
    about an off-centre position out to 100 arcsec."""
    xe, ye = _exact_points(Rs, [0.0, 1e-5, 1e-4, 1.0, 1 - 1e-4, 1 + 1e-4])
    X = np.concatenate([np.geomspace(0.01, 100.0 / Rs, 60), [0.5, 0.95, 1.05, 2.0]])
    xg, yg = _ring_points(Rs, X)
    return (xe, ye, {}), (xg, yg, {"center_x": CENTER[0], "center_y": CENTER[1]})


def _rel_vec(ax, ay, bx, by):
    return np.hypot(np.asarray(ax) - bx, np.asarray(ay) - by) / np.maximum(np.hypot(bx, by), 1e-300)


# --------------------------------------------------------------------- lenstronomy


@pytest.mark.parametrize("Rs", RS_GRID)
@pytest.mark.parametrize("alpha_Rs", ALPHA_GRID)
def test_nfw_matches_lenstronomy(Rs, alpha_Rs):
    pytest.importorskip("lenstronomy")
    from lenstronomy.LensModel.Profiles.nfw import NFW as LNFW

    ref, prof = LNFW(), NFW(dtype=tf.float64)
    for x, y, c in _lenstronomy_points(Rs):
        kw = dict(Rs=Rs, alpha_Rs=alpha_Rs, **c)
        lx, ly = ref.derivatives(x.copy(), y.copy(), **kw)
        ax, ay = prof.deflection(x, y, **kw)
        r = np.hypot(x - c.get("center_x", 0.0), y - c.get("center_y", 0.0))
        nz = r > 0
        # lenstronomy's g = ln(X/2) + arccosh(1/X)/sqrt(1 - X^2) cancels at small X: its
        # relative error is ~2e-16 / X^2 (2e-6 at X = 1e-5; ours is exact, see
        # test_against_mpmath), hence the per-point tolerance.
        tol = np.maximum(1e-9, 1e-15 / np.maximum(r / Rs, 1e-100) ** 2)
        assert np.all(_rel_vec(ax, ay, lx, ly)[nz] <= tol[nz])
        np.testing.assert_array_equal(np.asarray(ax)[~nz], 0.0)  # alpha(0) = 0 exactly
        np.testing.assert_array_equal(np.asarray(ay)[~nz], 0.0)
        # lenstronomy's convergence is the trace of its hessian
        f = ref.hessian(x.copy(), y.copy(), **kw)
        lk = 0.5 * (f[0] + f[3])
        k = prof.convergence(x, y, **kw).numpy()
        # lenstronomy's (1 - A)/(X^2 - 1) loses ~1/|X^2 - 1| ulp near X = 1 (2e-9 at
        # X = 1 +- 1e-4; ours is exact to 1e-15 there, see test_against_mpmath)
        np.testing.assert_allclose(k[nz], lk[nz], rtol=1e-8)
        # at r = 0 kappa diverges; both codes floor the radius (at different values)
        assert np.all(np.isfinite(k)) and np.all(k[~nz] > k[nz].max())
        lp = ref.function(x.copy(), y.copy(), **kw)
        p = prof.potential(x, y, **kw).numpy()
        # same additive constant (psi(0) = 0); lenstronomy floors X at 1e-6 for psi, whence
        # the absolute floor, ~ psi(1e-6 Rs) = alpha_Rs Rs * 1e-11.
        np.testing.assert_allclose(p, lp, rtol=1e-9, atol=1e-10 * alpha_Rs * Rs)


@pytest.mark.parametrize("Rs", RS_GRID)
@pytest.mark.parametrize("alpha_Rs", ALPHA_GRID)
def test_tnfw_matches_lenstronomy(Rs, alpha_Rs):
    pytest.importorskip("lenstronomy")
    from lenstronomy.LensModel.Profiles.tnfw import TNFW as LTNFW

    ref, prof = LTNFW(), TNFW(dtype=tf.float64)
    taus = np.array(TAU_GRID)
    for x, y, c in _lenstronomy_points(Rs):
        # all truncation radii in one batched call: r_trunc has shape [n_tau, 1]
        kwb = dict(Rs=Rs, alpha_Rs=alpha_Rs, r_trunc=taus[:, None] * Rs, **c)
        ax, ay = (v.numpy() for v in prof.deflection(x, y, **kwb))
        k = prof.convergence(x, y, **kwb).numpy()
        p = prof.potential(x, y, **kwb).numpy()
        r = np.hypot(x - c.get("center_x", 0.0), y - c.get("center_y", 0.0))
        # lenstronomy floors r at 1e-3 Rs and its closed forms cancel catastrophically at
        # small r (relative error 1e-5 at r = 1e-3 Rs, 1e-10 at r = 1e-2 Rs, see
        # test_against_mpmath): compare at r >= 1e-2 Rs only.
        ok = r >= 0.01 * Rs * (1 - 1e-12)
        for i, tau in enumerate(TAU_GRID):
            kw = dict(Rs=Rs, alpha_Rs=alpha_Rs, r_trunc=tau * Rs, **c)
            lx, ly = ref.derivatives(x.copy(), y.copy(), **kw)
            np.testing.assert_allclose(_rel_vec(ax[i], ay[i], lx, ly)[ok], 0.0, atol=1e-8)
            np.testing.assert_array_equal(ax[i][r == 0], 0.0)
            f = ref.hessian(x.copy(), y.copy(), **kw)
            lk = 0.5 * (f[0] + f[3])
            # Far outside max(Rs, r_trunc) lenstronomy's closed form loses ~(r/Rs)^3 ulp
            # (kappa ~ r^-4 is left over from O(1/r) terms; we integrate there instead):
            # its absolute error stays below 1e-13 alpha_Rs / Rs, hence the atol.
            np.testing.assert_allclose(k[i][ok], lk[ok], rtol=1e-8, atol=1e-13 * alpha_Rs / Rs)
            lp = ref.function(x.copy(), y.copy(), **kw)
            # same additive constant: psi(0) = 0 in both codes
            scale = alpha_Rs * Rs
            np.testing.assert_allclose(p[i][ok], lp[ok], rtol=1e-8, atol=1e-12 * scale)
            assert np.all(np.abs(p[i][r == 0]) < 1e-14 * scale)


# ------------------------------------------------------------------ mpmath reference


def _mp_refs():
    mp = pytest.importorskip("mpmath")

    def A(X):
        if X < 1:
            return mp.acosh(1 / X) / mp.sqrt(1 - X**2)
        if X > 1:
            return mp.acos(1 / X) / mp.sqrt(X**2 - 1)
        return mp.mpf(1)

    def B(X):
        return mp.mpf(1) / 3 if X == 1 else (A(X) - 1) / (1 - X**2)

    def cosf(X):
        return -mp.acosh(1 / X) ** 2 if X < 1 else mp.acos(1 / X) ** 2

    @mp.workdps(40)
    def nfw(X):
        """(|alpha|, kappa, psi) for Rs = 1, alpha_Rs = 1 - ln 2 (so 4 rho0 Rs^2 = 1)."""
        X = mp.mpf(X)
        return (mp.log(X / 2) + A(X)) / X, B(X) / 2, (mp.log(X / 2) ** 2 + cosf(X)) / 2

    @mp.workdps(40)
    def tnfw(X, tau):
        """Baltz et al. (2009) in lenstronomy's form (its _g, _F, _h), same units."""
        X, tau = mp.mpf(X), mp.mpf(tau)
        t2 = tau**2
        R = mp.sqrt(t2 + X**2)
        L = mp.log(X / (tau + R))
        pref = t2 / (t2 + 1) ** 2
        g = pref * (
            (t2 + 1 + 2 * (X**2 - 1)) * A(X) + tau * mp.pi + (t2 - 1) * mp.log(tau)
            + R * (-mp.pi + L * (t2 - 1) / tau)
        )
        F = pref * ((t2 + 1) * B(X) + 2 * A(X) - mp.pi / R + (t2 - 1) * L / (tau * R))
        h = (t2 + 1) ** -2 * (
            2 * t2 * mp.pi * (tau - R + tau * mp.log(tau + R))
            + 2 * (t2 - 1) * tau * R * L
            + t2 * (t2 - 1) * L**2
            + 4 * t2 * (X**2 - 1) * A(X)
            + t2 * (t2 - 1) * cosf(X)
            + t2 * ((t2 - 1) * mp.log(tau) - t2 - 1) * mp.log(X**2)
            - t2 * ((t2 - 1) * mp.log(tau) * mp.log(4 * tau) + 2 * mp.log(tau / 2)
                    - 2 * tau * (tau - mp.pi) * mp.log(2 * tau))
        )
        return g / X, F / 2, h / 2

    return mp, nfw, tnfw


# hard points: tiny X, the series window's edges |1 - X^2| = 0.5, X = 1 and its
# neighbourhood, the TNFW far-field switch X = 1.5 max(1, tau), far out.
_HARD_X = [1e-12, 1e-9, 1e-6, 1e-4, 1e-3, 0.01, 0.3, 0.5**0.5 * (1 - 1e-9), 0.5**0.5 * (1 + 1e-9),
           0.99, 1 - 1e-4, 1 - 1e-8, 1.0, 1 + 1e-8, 1 + 1e-4, 1.01, 1.5**0.5 * (1 - 1e-9),
           1.5**0.5 * (1 + 1e-9), 2.0, 5.0, 30.0, 1e3, 1e5]


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
@pytest.mark.parametrize("tau", (None,) + TAU_GRID + (1e-3, 1e4))
def test_against_mpmath(dtype, tau):
    """Deflection, convergence and potential at the numerically hard points against the
    textbook closed forms evaluated with 40 significant digits."""
    mp, nfw_ref, tnfw_ref = _mp_refs()
    if tau is None:
        prof, extra, ref = NFW(dtype=dtype), {}, nfw_ref
        X = list(_HARD_X)
    else:
        prof, extra = TNFW(dtype=dtype), {"r_trunc": tau}
        ref = lambda X: tnfw_ref(X, tau)  # noqa: E731
        s = 1.5 * max(1.0, tau)
        X = list(_HARD_X) + [s * (1 - 1e-9), s * (1 + 1e-9), 50 * s]
    if dtype == tf.float32:
        # float32 floors r at 1e-8 arcsec (radius floor of safe_norm): test above it
        X = [v for v in X if v >= 1e-6]
    X = np.array(X, dtype.as_numpy_dtype)
    kw = dict(Rs=1.0, alpha_Rs=G1, **extra)
    zero = np.zeros_like(X)
    got = (
        prof.deflection(X, zero, **kw)[0].numpy(),
        prof.convergence(X, zero, **kw).numpy(),
        prof.potential(X, zero, **kw).numpy(),
    )
    # measured worst: 5e-15 (float64), 2e-6 (float32; the potential at X < 1e-3 is
    # O(X^2) and carries the absolute rounding of O(1) intermediate logs, hence atol)
    rtol = 2e-13 if dtype == tf.float64 else 1e-5
    atol = 1e-300 if dtype == tf.float64 else (0.0, 0.0, 1e-12)
    for i, Xi in enumerate(X):
        want = ref(float(Xi))
        for j, name in enumerate(("alpha", "kappa", "psi")):
            w = float(want[j])
            a = atol if np.isscalar(atol) else atol[j]
            assert abs(got[j][i] - w) <= rtol * abs(w) + a, (name, float(Xi), got[j][i], w)


# ------------------------------------------------------------------ analytic limits


@pytest.mark.parametrize("dtype,tol", [(tf.float64, 1e-14), (tf.float32, 1e-6)])
def test_nfw_alpha_Rs_is_deflection_at_Rs(dtype, tol):
    """|alpha(r = Rs)| = alpha_Rs for every (Rs, alpha_Rs) of the grid (the X = 1 point is
    evaluated by the series branch)."""
    prof = NFW(dtype=dtype)
    for Rs in RS_GRID:
        for alpha_Rs in ALPHA_GRID:
            x, y = _exact_points(Rs, [1.0])
            ax, ay = prof.deflection(x, y, Rs=Rs, alpha_Rs=alpha_Rs)
            np.testing.assert_allclose(np.hypot(ax, ay), alpha_Rs, rtol=tol)
            # and radial (along theta - c), with no tangential part
            np.testing.assert_allclose(ax * y - ay * x, 0.0, atol=tol * alpha_Rs * Rs)
            x, y = _ring_points(Rs, [1.0], n_angles=7)
            ax, ay = prof.deflection(x, y, Rs=Rs, alpha_Rs=alpha_Rs, center_x=CENTER[0],
                                     center_y=CENTER[1])
            np.testing.assert_allclose(np.hypot(ax, ay), alpha_Rs, rtol=4 * tol)


def test_tnfw_tends_to_nfw():
    """The relative difference falls as ~ ln(tau) / tau^2 (measured: x75-80 per decade of
    tau at r = Rs); at tau = 1e5 it is ~2e-9 for alpha and kappa."""
    nfw, tnfw = NFW(dtype=tf.float64), TNFW(dtype=tf.float64)
    X = np.array([0.1, 0.5, 1.0, 3.0])
    kw = dict(Rs=1.0, alpha_Rs=1.0)
    a0 = nfw.deflection(X, 0 * X, **kw)[0].numpy()
    k0 = nfw.convergence(X, 0 * X, **kw).numpy()
    p0 = nfw.potential(X, 0 * X, **kw).numpy()
    prev = None
    for tau in (1e3, 1e4, 1e5):
        da = np.abs(tnfw.deflection(X, 0 * X, r_trunc=tau, **kw)[0].numpy() / a0 - 1)
        dk = np.abs(tnfw.convergence(X, 0 * X, r_trunc=tau, **kw).numpy() / k0 - 1)
        dp = np.abs(tnfw.potential(X, 0 * X, r_trunc=tau, **kw).numpy() - p0)
        scaled = np.concatenate([da, dk, dp]) * tau**2 / math.log(tau)
        assert np.all(scaled < 20.0) and np.all(scaled > 1e-3)
        if prev is not None:
            # ln(tau)/tau^2 rate: the scaled difference stays put across decades
            np.testing.assert_allclose(scaled, prev, rtol=0.1)
        prev = scaled
    assert np.all(da < 5e-8) and np.all(dk < 5e-8)


@pytest.mark.parametrize("tau", TAU_GRID)
def test_tnfw_far_field(tau):
    """Total mass of Baltz et al. (2009): |alpha| r -> M / pi with
    M / (4 pi rho0 Rs^3) = tau^2/(tau^2+1)^2 [(tau^2-1) ln tau + pi tau - (tau^2+1)], and the
    convergence tends to the projection of rho ~ rho0 tau^2 (Rs/r)^5, kappa -> (4/3)
    rho0 Rs tau^2 / X^4. Checks the far-field forms independently of the closed forms."""
    prof = TNFW(dtype=tf.float64)
    t2 = tau * tau
    X = np.array([1e9, 3e9]) * max(1.0, tau)
    kw = dict(Rs=1.0, alpha_Rs=G1, r_trunc=tau)  # 4 rho0 Rs^2 = 1
    m = t2 / (t2 + 1) ** 2 * ((t2 - 1) * math.log(tau) + math.pi * tau - (t2 + 1))
    ax = prof.deflection(X, 0 * X, **kw)[0].numpy()
    np.testing.assert_allclose(ax * X, m, rtol=1e-6)
    k = prof.convergence(X, 0 * X, **kw).numpy()
    np.testing.assert_allclose(k * X**4, t2 / 3.0, rtol=1e-6)
    # the potential grows like (M / pi) ln r
    p = prof.potential(X, 0 * X, **kw).numpy()
    np.testing.assert_allclose((p[1] - p[0]) / math.log(3.0), m, rtol=1e-6)


# ------------------------------------------------------------------ identities


def _identity_points(Rs, rng):
    special = [0.5**0.5, 1.5**0.5, 1.0, 1 - 1e-6, 1 + 1e-6]  # window edges, X = 1
    X = np.concatenate([np.geomspace(0.01, 100.0, 80), special])
    th = rng.uniform(0, 2 * np.pi, X.size)
    return CENTER[0] + X * Rs * np.cos(th), CENTER[1] + X * Rs * np.sin(th)


@pytest.mark.parametrize("dtype,tol", [(tf.float64, 1e-11), (tf.float32, 2e-5)])
@pytest.mark.parametrize("name,extra", [("NFW", {}), ("TNFW", {"r_trunc": 0.35}),
                                        ("TNFW", {"r_trunc": 1.0}), ("TNFW", {"r_trunc": 40.0})])
def test_identities(name, extra, dtype, tol, rng):
    """alpha = grad psi and div alpha = 2 kappa (autodiff hessian), 0.01 Rs <= r <= 100 Rs,
    incl. r = Rs (1 +- 1e-6) and the series-window edges. Measured worst: 3e-15 and 3e-15
    (float64), 1.4e-6 and 1e-6 (float32)."""
    prof = get_profile(name, dtype=dtype)
    Rs = 0.5
    kw = dict(Rs=Rs, alpha_Rs=0.3, center_x=CENTER[0], center_y=CENTER[1], **extra)
    x, y = (tf.constant(v, dtype) for v in _identity_points(Rs, rng))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, y])
        psi = prof.potential(x, y, **kw)
    gx, gy = tape.gradient(psi, [x, y])
    ax, ay = prof.deflection(x, y, **kw)
    np.testing.assert_allclose(_rel_vec(gx, gy, ax, ay), 0.0, atol=tol)
    fxx, fxy, fyx, fyy = (v.numpy() for v in prof.hessian(x, y, **kw))
    kappa = prof.convergence(x, y, **kw).numpy()
    # relative to the size of the hessian: far outside r_trunc kappa ~ r^-4 is a small
    # difference of shear terms ~ r^-2
    size = np.maximum.reduce([np.abs(fxx), np.abs(fyy), np.abs(fxy), np.abs(kappa)])
    np.testing.assert_allclose((0.5 * (fxx + fyy) - kappa) / size, 0.0, atol=tol)
    np.testing.assert_allclose((fxy - fyx) / size, 0.0, atol=tol)


# ------------------------------------------------------------------ gradients


def _param_sets():
    return [
        ("NFW", dict(Rs=0.7, alpha_Rs=0.4, center_x=0.1, center_y=-0.3)),
        ("TNFW", dict(Rs=0.7, alpha_Rs=0.4, r_trunc=0.35, center_x=0.1, center_y=-0.3)),
        ("TNFW", dict(Rs=0.7, alpha_Rs=0.4, r_trunc=70.0, center_x=0.1, center_y=-0.3)),
    ]


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("name,params", _param_sets())
def test_gradients_finite_at_centre_and_Rs(dtype, name, params):
    prof = get_profile(name, dtype=dtype)
    Rs, cx, cy = params["Rs"], params["center_x"], params["center_y"]
    # r = 0, r = Rs (exact on the axis), r = Rs (1 +- 1e-7), series-window edges, far out
    X = np.array([0.0, 1.0, 1 - 1e-7, 1 + 1e-7, 0.5**0.5, 1.5**0.5, 1e-5, 300.0])
    xs = tf.constant(cx + X * Rs, dtype)
    ys = tf.constant(np.full_like(X, cy), dtype)
    tparams = {k: tf.constant(v, dtype) for k, v in params.items()}
    for method in ("deflection", "convergence", "potential"):
        with tf.GradientTape() as tape:
            tape.watch([xs, ys, *tparams.values()])
            out = getattr(prof, method)(xs, ys, **tparams)
            out = tf.add_n([tf.reduce_sum(o) for o in tf.nest.flatten(out)])
        grads = tape.gradient(out, [xs, ys, *tparams.values()])
        for gname, g in zip(["x", "y", *tparams], grads):
            assert g is not None, (method, gname)
            assert np.all(np.isfinite(g.numpy())), (name, method, gname, g.numpy())
    # at the centre alpha = s(r) (theta - c) = 0: its derivatives w.r.t. the profile
    # parameters vanish, those w.r.t. the centre are -s(r_floor) (finite; s ~ ln(1/r))
    with tf.GradientTape() as tape:
        tape.watch(list(tparams.values()))
        ax, ay = prof.deflection(xs[:1], ys[:1], **tparams)
    assert float(ax[0]) == 0.0 and float(ay[0]) == 0.0
    grads = dict(zip(tparams, tape.gradient(ax, list(tparams.values()))))
    for k, g in grads.items():
        if k.startswith("center"):
            assert np.isfinite(float(g)) and (float(g) < 0 if k == "center_x" else g == 0)
        else:
            assert float(g) == 0.0, k


@pytest.mark.parametrize("name,params", _param_sets())
def test_parameter_gradients_match_finite_differences(name, params):
    """Reverse-mode derivatives w.r.t. every parameter, at points including r = Rs and
    r = Rs (1 + 1e-4), agree with central differences (float64, h = 1e-6: truncation error
    ~1e-12). Each output is weighted by a random factor over its own size, so that every
    point and quantity contributes O(1) to the scalar that is differentiated."""
    prof = get_profile(name, dtype=tf.float64)
    Rs, cx, cy = params["Rs"], params["center_x"], params["center_y"]
    X = np.array([0.03, 1.0, 1 + 1e-4, 2.5, 40.0])
    x = cx + X * Rs * np.cos(0.4)
    y = cy + X * Rs * np.sin(0.4)

    def f(p):
        ax, ay = prof.deflection(x, y, **p)
        return tf.stack([ax, ay, prof.convergence(x, y, **p), prof.potential(x, y, **p)])

    base = f(params).numpy()
    weights = np.random.default_rng(7).uniform(0.5, 1.5, (3,) + base.shape) / np.abs(base)
    tp = {k: tf.constant(v, tf.float64) for k, v in params.items()}
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(list(tp.values()))
        out = f(tp)
        scalars = [tf.reduce_sum(out * w) for w in weights]
    # all perturbed parameter sets in one batched call: shape [n_params, 2, 1]
    h = 1e-6
    names = list(params)
    steps = np.array([-h, h])[None, :, None]
    pert = {
        k: params[k] + steps * (np.arange(len(names)) == i)[:, None, None]
        for i, k in enumerate(names)
    }
    outs = f(pert).numpy()  # [4, n_params, 2, n_points]
    grads = [tape.gradient(sc, [tp[k] for k in names]) for sc in scalars]
    for i, k in enumerate(names):
        fd = (outs[:, i, 1] - outs[:, i, 0]) / (2 * h)
        for w, g in zip(weights, grads):
            got, want = float(g[i]), float(np.sum(fd * w))
            assert abs(got - want) <= 1e-7 * (abs(want) + base.size), (k, got, want)


# ------------------------------------------------------------------ jit, batching


@pytest.mark.parametrize(
    "dtype,rtol,with_hessian",
    [
        (tf.float32, 2e-5, False),
        # the autodiff hessians triple the XLA compile time (~30 s CPU): opt-in
        pytest.param(tf.float32, 2e-5, True, marks=pytest.mark.slow),
        pytest.param(tf.float64, 1e-12, True, marks=pytest.mark.slow),
    ],
)
def test_jit_matches_eager(dtype, rtol, with_hessian):
    """One XLA-compiled function (both profiles, all methods), run for several parameter
    sets (one trace): compiled results equal eager ones, centre and r = Rs included."""
    nfw, tnfw = NFW(dtype=dtype), TNFW(dtype=dtype)
    g = np.linspace(-2.0, 2.0, 17)  # includes points on the centre's axes
    xx, yy = np.meshgrid(g + 0.1, g - 0.3)  # centre (0.1, -0.3) is a grid point
    xx, yy = tf.constant(xx, dtype), tf.constant(yy, dtype)

    def run(x, y, p):
        outs = []
        for prof, q in ((nfw, {k: v for k, v in p.items() if k != "r_trunc"}), (tnfw, p)):
            outs += list(prof.deflection(x, y, **q))
            outs += [prof.convergence(x, y, **q), prof.potential(x, y, **q)]
            if with_hessian:
                outs += list(prof.hessian(x, y, **q))
        return outs

    jitted = tf.function(run, jit_compile=True)
    for params in (
        dict(Rs=0.5, alpha_Rs=0.4, r_trunc=0.25, center_x=0.1, center_y=-0.3),  # r = Rs on grid
        dict(Rs=0.7, alpha_Rs=0.01, r_trunc=70.0, center_x=0.1, center_y=-0.3),
    ):
        p = {k: tf.constant(v, dtype) for k, v in params.items()}
        eager = run(xx, yy, p)
        for e, j in zip(eager, jitted(xx, yy, p)):
            e, j = e.numpy(), j.numpy()
            assert np.all(np.isfinite(j))
            np.testing.assert_allclose(j, e, rtol=rtol, atol=rtol * np.max(np.abs(e)))
    assert jitted.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("name", ["NFW", "TNFW"])
def test_batched_params_match_loop(name):
    prof = get_profile(name, dtype=tf.float64)
    g = np.linspace(-1.5, 1.5, 9)
    xx, yy = np.meshgrid(g, g)
    batch = {
        "Rs": np.array([0.05, 0.5, 2.0]),
        "alpha_Rs": np.array([0.01, 1.0, 0.3]),
        "center_x": np.array([0.0, 0.2, -0.4]),
        "center_y": np.array([0.0, -0.1, 0.3]),
    }
    if name == "TNFW":
        batch["r_trunc"] = np.array([0.025, 10.0, 4.0])
    bp = {k: v[:, None, None] for k, v in batch.items()}
    out = [prof.deflection(xx, yy, **bp), prof.convergence(xx, yy, **bp),
           prof.potential(xx, yy, **bp)]
    assert out[1].shape == (3, 9, 9)
    for b in range(3):
        p = {k: float(v[b]) for k, v in batch.items()}
        ax, ay = prof.deflection(xx, yy, **p)
        np.testing.assert_allclose(out[0][0][b], ax, rtol=1e-14, atol=0)
        np.testing.assert_allclose(out[0][1][b], ay, rtol=1e-14, atol=0)
        np.testing.assert_allclose(out[1][b], prof.convergence(xx, yy, **p), rtol=1e-14)
        np.testing.assert_allclose(out[2][b], prof.potential(xx, yy, **p), rtol=1e-14)


# ------------------------------------------------------------------ API and bad input


def test_registered_and_exported():
    assert tsl.NFW is NFW and tsl.TNFW is TNFW
    assert isinstance(get_profile("nfw"), NFW) and isinstance(get_profile("TNFW"), TNFW)
    assert TNFW().param_names == ("Rs", "alpha_Rs", "r_trunc", "center_x", "center_y")
    ax, ay = NFW().deflection([2.0], [0.0], Rs=2.0, alpha_Rs=0.5)
    assert ax.dtype == tf.float32
    np.testing.assert_allclose(ax.numpy(), [0.5], rtol=1e-6)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("NFW", dict(Rs=-1.0, alpha_Rs=1.0), r"\bRs must be positive, got -1"),
        ("NFW", dict(Rs=0.0, alpha_Rs=1.0), r"\bRs must be positive"),
        ("NFW", dict(Rs=1.0, alpha_Rs=float("nan")), "alpha_Rs must be finite"),
        ("NFW", dict(Rs=1.0, alpha_Rs=-0.1), "alpha_Rs must be non-negative"),
        ("NFW", dict(Rs=1.0, alpha_Rs=1.0, center_x=float("inf")), "center_x must be finite"),
        ("NFW", dict(Rs=1.0, alpha_Rs=1.0, r_trunc=3.0), r"unknown parameter.*r_trunc"),
        ("NFW", dict(Rs=1.0), r"missing required parameter.*alpha_Rs"),
        ("TNFW", dict(Rs=1.0, alpha_Rs=1.0, r_trunc=0.0), "r_trunc must be positive, got 0"),
        ("TNFW", dict(Rs=1.0, alpha_Rs=1.0, r_trunc=-2.0), "r_trunc must be positive"),
        ("TNFW", dict(Rs=1.0, alpha_Rs=1.0, r_trunc=float("nan")), "r_trunc must be finite"),
        ("TNFW", dict(Rs=np.array([1.0, -1.0]), alpha_Rs=1.0, r_trunc=2.0),
         r"\bRs must be positive, got -1"),
        ("TNFW", dict(Rs=1.0, alpha_Rs=1.0), r"missing required parameter.*r_trunc"),
        ("TNFW", dict(Rs=1.0, alpha_Rs=1.0, r_trunc=2.0, theta_E=1.0),
         r"unknown parameter.*theta_E"),
    ],
)
def test_bad_input(name, params, match):
    prof = get_profile(name)
    for method in ("deflection", "convergence", "potential"):
        with pytest.raises(ValueError, match=match):
            getattr(prof, method)([0.5], [0.2], **params)


def test_bad_coordinates():
    with pytest.raises(ValueError, match="^x must be finite"):
        TNFW().deflection([float("nan")], [0.0], Rs=1.0, alpha_Rs=1.0, r_trunc=2.0)
    with pytest.raises(ValueError, match="^y must be finite"):
        NFW().potential([0.0], [float("inf")], Rs=1.0, alpha_Rs=1.0)
