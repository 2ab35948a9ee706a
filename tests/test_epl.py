"""EPL (elliptical power law): cross-checks against lenstronomy over a grid of axis ratios,
angles and slopes, analytic limits (SIE, power-law sphere), identities, gradients (custom,
checked against finite differences), float32 accuracy, XLA, batching and bad input."""

import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from conftest import lenstronomy_or_skip
from tfstronglens.profiles.epl import EPL, epl_series_terms

F64 = tf.float64

Q_GRID = [0.2, 0.35, 0.5, 0.7, 0.9, 0.99, 1.0]
PHI_GRID = [0.0, 0.7, -1.2, np.pi / 2]
GAMMA_GRID = [1.2, 1.5, 1.8, 2.0, 2.2, 2.5, 2.8]
CENTRE = (0.31, -0.22)
THETA_E = 1.27


def e_from_q_phi(q, phi):
    e = (1.0 - q) / (1.0 + q)
    return e * np.cos(2.0 * phi), e * np.sin(2.0 * phi)


def sample_points(rng, cx=CENTRE[0], cy=CENTRE[1], n=40, centre=True):
    """Random points in a 6" box, points 1e-6 .. 0.05" from the centre in several
    directions, far points (~100"), and (optionally) the centre itself."""
    x = list(rng.uniform(-3, 3, n))
    y = list(rng.uniform(-3, 3, n))
    for r in (1e-6, 1e-4, 1e-2):
        for ang in (0.0, 0.9, 2.0, -2.6, np.pi / 2):
            x.append(cx + r * np.cos(ang))
            y.append(cy + r * np.sin(ang))
    x += [100.0, -70.0, cx]
    y += [-80.0, 3.0, cy + 120.0]
    if centre:
        x.append(cx)
        y.append(cy)
    return np.array(x), np.array(y)


def lens_grid():
    """All (q, phi, gamma) combinations as flat arrays."""
    q, phi, gamma = (a.ravel() for a in np.meshgrid(Q_GRID, PHI_GRID, GAMMA_GRID,
                                                     indexing="ij"))
    e1, e2 = e_from_q_phi(q, phi)
    return q, e1, e2, gamma


def rel_err(a, b):
    """max |a - b| / |b| (0/0 counts as 0: both are exactly 0 at the lens centre)."""
    a, b = np.asarray(a), np.asarray(b)
    err = np.abs(a - b)
    scale = np.abs(b)
    return np.max(np.where(err == 0, 0.0, err / np.where(scale == 0, 1.0, scale)))


def vec_rel_err(ax, ay, bx, by):
    """max |a - b| / |b| over points, with vector norms (no 0/0 in single components)."""
    err = np.hypot(ax - bx, ay - by)
    scale = np.hypot(bx, by)
    return np.max(np.where(err == 0, 0.0, err / np.where(scale == 0, 1.0, scale)))


def np_(*ts):
    return [t.numpy() for t in ts]


# ------------------------------------------------------------------- vs lenstronomy
@pytest.fixture(scope="module")
def grid_results():
    """EPL (float64 and float32) and lenstronomy on every (q, phi, gamma) of the grid and
    every sample point; our profile is evaluated in one batched call per dtype
    (parameters [L, 1] against points [1, N])."""
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.epl import EPL as LEPL

    rng = np.random.default_rng(7)
    x, y = sample_points(rng)
    q, e1, e2, gamma = lens_grid()
    kw = dict(theta_E=THETA_E, gamma=gamma[:, None], e1=e1[:, None], e2=e2[:, None],
              center_x=CENTRE[0], center_y=CENTRE[1])
    out = {"x": x, "y": y, "q": q, "gamma": gamma}

    def evaluate(dtype, kw, x, y):
        epl = EPL(dtype=dtype)
        return dict(
            alpha=np_(*epl.deflection(x[None], y[None], **kw)),
            kappa=epl.convergence(x[None], y[None], **kw).numpy(),
            psi=epl.potential(x[None], y[None], **kw).numpy(),
        )

    out["float64"] = evaluate(F64, kw, x, y)
    out["float32"] = evaluate(tf.float32, kw, x, y)
    # float64 at the float32-rounded inputs: the reference for float32 arithmetic (near
    # the centre, rounding x = 0.31 + 1e-6 to float32 alone changes r by ~3%)
    r32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    out["float64_r32"] = evaluate(F64, {k: r32(v) for k, v in kw.items()}, r32(x), r32(y))
    ref = LEPL()
    ax, ay, kappa, psi = [], [], [], []
    for i in range(len(q)):
        lkw = dict(theta_E=THETA_E, gamma=gamma[i], e1=e1[i], e2=e2[i],
                   center_x=CENTRE[0], center_y=CENTRE[1])
        lx, ly = ref.derivatives(x, y, **lkw)
        f_xx, _, _, f_yy = ref.hessian(x, y, **lkw)
        ax.append(lx)
        ay.append(ly)
        kappa.append(0.5 * (f_xx + f_yy))
        psi.append(ref.function(x, y, **lkw))
    out["ref"] = dict(alpha=[np.array(ax), np.array(ay)], kappa=np.array(kappa),
                      psi=np.array(psi))
    return out


def test_deflection_matches_lenstronomy(grid_results):
    """7 axis ratios (0.2 .. 1) x 4 angles x 7 slopes (1.2 .. 2.8), at random points, at
    1e-6 .. 1e-2 from the centre, far away and at the centre (where both give 0).
    Measured: ~5e-15."""
    r = grid_results
    ax, ay = r["float64"]["alpha"]
    bx, by = r["ref"]["alpha"]
    assert vec_rel_err(ax, ay, bx, by) < 1e-12


def test_convergence_and_potential_match_lenstronomy(grid_results):
    """Same grid (the centre excluded for kappa: it is infinite there, and the two codes
    floor the radius differently). Measured: ~5e-15."""
    r = grid_results
    kappa = r["float64"]["kappa"][:, :-1]
    assert rel_err(kappa, r["ref"]["kappa"][:, :-1]) < 1e-12
    assert rel_err(r["float64"]["psi"], r["ref"]["psi"]) < 1e-12


def test_float32_accuracy(grid_results):
    """float32 against float64 (at the same, float32-rounded, inputs) on the whole grid
    (the centre excluded for kappa).

    Tolerance 5e-6 relative; measured 2.4e-6, at 1e-6" from the centre and ~100" out:
    (b/R)^t = exp(t log(b/R)) turns the float32 rounding (6e-8) of log(b/R) ~ 14 into
    ~t * 14 * 6e-8 relative (any float32 power law does); 1.4e-6 for 1e-3 < r < 50"."""
    r = grid_results
    a32, a64 = r["float32"], r["float64_r32"]
    assert vec_rel_err(*a32["alpha"], *a64["alpha"]) < 5e-6
    assert rel_err(a32["kappa"][:, :-1], a64["kappa"][:, :-1]) < 5e-6
    assert rel_err(a32["psi"], a64["psi"]) < 5e-6
    for k in ("alpha", "kappa", "psi"):
        assert np.all(np.isfinite(a32[k]))


def test_smaller_q_min_reaches_flatter_lenses():
    """q = 0.12 needs EPL(q_min=0.1) (more series terms); still exact vs lenstronomy."""
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.epl import EPL as LEPL

    rng = np.random.default_rng(3)
    x, y = sample_points(rng, centre=False)
    e1, e2 = e_from_q_phi(0.12, 0.4)
    epl = EPL(dtype=F64, q_min=0.1)
    assert epl.n_terms > EPL(dtype=F64).n_terms
    for gamma in (1.3, 2.7):
        kw = dict(theta_E=0.8, gamma=gamma, e1=e1, e2=e2)
        ax, ay = np_(*epl.deflection(x, y, **kw))
        bx, by = LEPL().derivatives(x, y, **kw)
        assert vec_rel_err(ax, ay, bx, by) < 1e-12


def test_series_is_converged_at_q_min():
    """The static number of terms (a bound on the tail) is enough: at q = q_min = 0.2
    twice as many terms change nothing beyond roundoff, in float64 and float32; and too
    few terms do change the result (so the comparison can fail). float32 tolerance 1e-6:
    the two sums are grouped differently, so they differ by roundoff (measured 2e-7)."""
    rng = np.random.default_rng(5)
    x, y = rng.uniform(-2, 2, (2, 400))
    e1, e2 = e_from_q_phi(0.2, 0.3)
    kw = dict(theta_E=1.1, gamma=np.array([[1.2], [2.0], [2.8]]), e1=e1, e2=e2)
    for dtype, tol in ((F64, 1e-14), (tf.float32, 1e-6)):
        n = epl_series_terms(0.2, dtype)
        a = np_(*EPL(dtype=dtype).deflection(x, y, **kw))
        b = np_(*EPL(dtype=dtype, n_terms=2 * n).deflection(x, y, **kw))
        c = np_(*EPL(dtype=dtype, n_terms=n // 2).deflection(x, y, **kw))
        assert vec_rel_err(*a, *b) < tol
        assert vec_rel_err(*c, *b) > 10 * tol
    assert epl_series_terms(0.2, tf.float32) == 44
    assert epl_series_terms(0.2, F64) == 94
    assert epl_series_terms(1.0, F64) == 2


# ------------------------------------------------------------------ analytic limits
@pytest.mark.parametrize("q", [0.2, 0.5, 0.9, 1.0])
def test_gamma_2_is_sie(q, rng):
    x, y = sample_points(rng)
    e1, e2 = e_from_q_phi(q, np.array(PHI_GRID))
    kw = dict(theta_E=THETA_E, e1=e1[:, None], e2=e2[:, None], center_x=CENTRE[0],
              center_y=CENTRE[1])
    sie, epl = tsl.SIE(dtype=F64), EPL(dtype=F64)
    a = np_(*epl.deflection(x[None], y[None], gamma=2.0, **kw))
    b = np_(*sie.deflection(x[None], y[None], **kw))
    assert vec_rel_err(*a, *b) < 1e-13
    assert rel_err(epl.potential(x[None], y[None], gamma=2.0, **kw),
                   sie.potential(x[None], y[None], **kw)) < 1e-13
    assert rel_err(epl.convergence(x[None], y[None], gamma=2.0, **kw)[:, :-1],
                   sie.convergence(x[None], y[None], **kw)[:, :-1]) < 1e-13


@pytest.mark.parametrize("gamma", GAMMA_GRID)
def test_sphere_is_analytic_power_law(gamma, rng):
    """e = 0: alpha = theta_E^(gamma-1) r^(2-gamma) (x/r), kappa = (3-gamma)/2
    (theta_E/r)^(gamma-1), psi = theta_E^(gamma-1) r^(3-gamma) / (3-gamma)."""
    x, y = sample_points(rng, centre=False)
    dx, dy = x - CENTRE[0], y - CENTRE[1]
    r = np.hypot(dx, dy)
    kw = dict(theta_E=THETA_E, gamma=gamma, e1=0.0, e2=0.0, center_x=CENTRE[0],
              center_y=CENTRE[1])
    epl = EPL(dtype=F64)
    amp = THETA_E ** (gamma - 1.0) * r ** (2.0 - gamma)
    assert vec_rel_err(*np_(*epl.deflection(x, y, **kw)), amp * dx / r, amp * dy / r) < 1e-13
    assert rel_err(epl.convergence(x, y, **kw),
                   0.5 * (3.0 - gamma) * (THETA_E / r) ** (gamma - 1.0)) < 1e-13
    assert rel_err(epl.potential(x, y, **kw), amp * r / (3.0 - gamma)) < 1e-13


def test_einstein_radius_encloses_mean_convergence_one():
    """For every q and gamma the mean convergence inside the elliptical critical curve of
    the circularised profile is 1 (theta_E is the circularised Einstein radius): the
    flux of alpha through the ellipse R = b equals 2 * (its area) (Gauss)."""
    epl = EPL(dtype=F64)
    phi = np.linspace(0.0, 2 * np.pi, 4001)[:-1]
    for q in (0.3, 0.7, 1.0):
        for gamma in (1.4, 2.0, 2.6):
            b = THETA_E * np.sqrt(q)
            # ellipse q^2 x^2 + y^2 = b^2 (major axis along x for e2 = 0, e1 > 0)
            xe, ye = b / q * np.cos(phi), b * np.sin(phi)
            e1, _ = e_from_q_phi(q, 0.0)
            ax, ay = np_(*epl.deflection(xe, ye, theta_E=THETA_E, gamma=gamma, e1=e1, e2=0.0))
            # outward normal times arc length: (dy/dphi, -dx/dphi) dphi
            nx, ny = b * np.cos(phi), b / q * np.sin(phi)
            flux = np.sum(ax * nx + ay * ny) * (2 * np.pi / len(phi))
            area = np.pi * b * b / q
            assert abs(flux / (2 * area) - 1.0) < 1e-10


# ---------------------------------------------------------------------- identities
@pytest.mark.parametrize("q,gamma", [(0.2, 1.3), (0.5, 2.0), (0.8, 2.7), (1.0, 1.7)])
def test_alpha_is_grad_psi_and_div_alpha_is_2kappa(q, gamma, rng):
    """Autodiff (the hand-written gradient of the deflection) away from the centre:
    grad(psi) = alpha, div(alpha) = 2 kappa, symmetric hessian, and the full hessian equals
    lenstronomy's analytic one."""
    x, y = rng.uniform(-2.5, 2.5, (2, 200))
    e1, e2 = e_from_q_phi(q, 0.6)
    kw = dict(theta_E=THETA_E, gamma=gamma, e1=e1, e2=e2, center_x=CENTRE[0],
              center_y=CENTRE[1])
    epl = EPL(dtype=F64)
    xt, yt = tf.constant(x), tf.constant(y)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([xt, yt])
        psi = epl.potential(xt, yt, **kw)
    gx, gy = tape.gradient(psi, [xt, yt])
    ax, ay = np_(*epl.deflection(x, y, **kw))
    assert vec_rel_err(gx.numpy(), gy.numpy(), ax, ay) < 1e-12
    f_xx, f_xy, f_yx, f_yy = np_(*epl.hessian(x, y, **kw))
    kappa = epl.convergence(x, y, **kw).numpy()
    assert rel_err(0.5 * (f_xx + f_yy), kappa) < 1e-12
    np.testing.assert_allclose(f_xy, f_yx, rtol=1e-12, atol=1e-12 * np.max(np.abs(kappa)))
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.epl import EPL as LEPL

    ref = LEPL().hessian(x, y, **kw)
    scale = np.max(np.abs(kappa))
    for a, b in zip((f_xx, f_xy, f_yx, f_yy), ref):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12 * scale)


# ----------------------------------------------------------------------- gradients
PARAMS = ("theta_E", "gamma", "e1", "e2", "center_x", "center_y")


def _losses(epl, x, y, p, wx, wy):
    """One scalar loss per row of a batch (parameters [K, 1], points [K or 1, N])."""
    ax, ay = epl.deflection(x, y, **p)
    psi = epl.potential(x, y, **p)
    kappa = epl.convergence(x, y, **p)
    return tf.reduce_sum(wx * ax + wy * ay + 0.3 * psi + 0.2 * kappa, axis=-1)


@pytest.mark.parametrize("base", [
    dict(theta_E=1.3, gamma=1.7, e1=0.3, e2=-0.4, center_x=0.1, center_y=-0.2),
    dict(theta_E=0.9, gamma=2.0, e1=-0.5, e2=0.1, center_x=0.0, center_y=0.0),
    dict(theta_E=1.1, gamma=2.6, e1=0.0, e2=0.0, center_x=-0.2, center_y=0.3),
    dict(theta_E=1.4, gamma=1.25, e1=0.05, e2=0.6, center_x=0.0, center_y=0.1),
])
def test_gradients_match_finite_differences(base, rng):
    """The hand-written gradient (deflection, and through it potential; convergence by
    autodiff) w.r.t. every parameter and both coordinates, against central differences
    (float64, h = 1e-6: agreement ~1e-9, limited by the differences themselves).
    Includes e1 = e2 = 0 exactly (alpha is smooth in (e1, e2) there) and gamma = 2.
    All perturbed evaluations run as one batch (rows)."""
    epl = EPL(dtype=F64)
    n = 60
    x0, y0 = rng.uniform(-2, 2, (2, n))
    wx, wy = rng.normal(size=(2, n))
    p = {k: tf.constant(v, F64) for k, v in base.items()}
    xt, yt = tf.constant(x0), tf.constant(y0)
    with tf.GradientTape() as tape:
        tape.watch([p, xt, yt])
        loss = tf.reduce_sum(_losses(epl, xt, yt, p, wx, wy))
    g, gx, gy = tape.gradient(loss, [p, xt, yt])
    h = 1e-6
    rows = []  # (parameter overrides, dx, dy)
    for k in PARAMS:
        rows += [({k: base[k] + h}, None), ({k: base[k] - h}, None)]
    points = (0, 17, 42)
    for i in points:
        for coord in (0, 1):
            for sign in (1, -1):
                d = np.zeros((2, n))
                d[coord, i] = sign * h
                rows.append(({}, d))
    batch = {k: np.array([[r[0].get(k, base[k])] for r in rows]) for k in PARAMS}
    dxy = np.array([r[1] if r[1] is not None else np.zeros((2, n)) for r in rows])
    vals = _losses(epl, x0 + dxy[:, 0], y0 + dxy[:, 1], batch, wx, wy).numpy()
    fd = (vals[0::2] - vals[1::2]) / (2 * h)
    auto = [g[k].numpy() for k in PARAMS]
    auto += [gr.numpy()[i] for i in points for gr in (gx, gy)]
    for name, a, f in zip(list(PARAMS) + [f"x/y[{i}]" for i in points for _ in (0, 1)],
                          auto, fd):
        assert abs(a - f) <= 1e-7 * max(1.0, abs(f)), name


def test_second_derivatives_through_custom_gradient():
    """The hand-written gradient is itself differentiable: d(hessian)/d(params) matches
    finite differences of the hessian (e.g. for likelihoods using magnifications).
    (n_terms=30 is converged for |e| = 0.22 and keeps this eager test fast.)"""
    epl = EPL(dtype=F64, n_terms=30)
    x = np.array([0.7, -1.1, 0.3])
    y = np.array([0.4, 0.2, -1.5])
    base = dict(theta_E=1.2, gamma=2.3, e1=0.2, e2=-0.1, center_x=0.05, center_y=0.0)

    def f(p):
        f_xx, f_xy, _, f_yy = epl.hessian(x, y, **p)
        return tf.reduce_sum(f_xx + 2.0 * f_xy + 3.0 * f_yy, axis=-1)

    p = {k: tf.constant(v, F64) for k, v in base.items()}
    with tf.GradientTape() as tape:
        tape.watch(p)
        val = f(p)
    g = tape.gradient(val, p)
    h = 1e-5
    batch = {k: np.array([[base[k] + (h if k == j else 0.0) * s] for j in PARAMS
                          for s in (1, -1)]) for k in PARAMS}
    vals = f(batch).numpy()
    fd = (vals[0::2] - vals[1::2]) / (2 * h)
    for k, v in zip(PARAMS, fd):
        assert abs(g[k].numpy() - v) <= 1e-7 * max(1.0, abs(v)), k


@pytest.mark.parametrize("dtype", [tf.float32, F64])
def test_gradients_finite_at_centre_round_lens_and_isothermal(dtype):
    """Gradients of deflection, potential and convergence w.r.t. every parameter and the
    coordinates stay finite at the centre, next to it, at e1 = e2 = 0 and gamma = 2
    (rows: gamma in {1.2, 2, 2.8} x e in {0, (0.3, -0.2)})."""
    epl = EPL(dtype=dtype)
    gam, e = np.meshgrid([1.2, 2.0, 2.8], [0.0, 1.0], indexing="ij")
    rows = dict(theta_E=np.full((6, 1), 1.1), gamma=gam.reshape(6, 1),
                e1=0.3 * e.reshape(6, 1), e2=-0.2 * e.reshape(6, 1),
                center_x=np.zeros((6, 1)), center_y=np.zeros((6, 1)))
    p = {k: tf.constant(v, dtype) for k, v in rows.items()}
    x = tf.constant([[0.0, 1e-7, 1e-3, 0.8]], dtype)
    y = tf.constant([[0.0, 0.0, -1e-3, 0.5]], dtype)
    with tf.GradientTape() as tape:
        tape.watch([p, x, y])
        ax, ay = epl.deflection(x, y, **p)
        loss = tf.reduce_sum(ax + ay + epl.potential(x, y, **p) + epl.convergence(x, y, **p))
    grads = tape.gradient(loss, [p, x, y])
    for gr in tf.nest.flatten(grads):
        assert gr is not None and np.all(np.isfinite(gr.numpy()))
    assert np.all(ax.numpy()[:, 0] == 0.0) and np.all(ay.numpy()[:, 0] == 0.0)
    assert np.isfinite(loss.numpy())


# ----------------------------------------------------------------- XLA and batching
def test_jit_equals_eager_and_batch_equals_loop(rng):
    """A batch of lenses ([B, 1, 1] parameters) on an [H, W] grid, inside
    tf.function(jit_compile=True), equals eager evaluation lens by lens; value and
    gradient compile too. (q_min = 0.5, i.e. fewer terms, keeps compilation short.)"""
    epl = EPL(dtype=F64, q_min=0.5)
    n = 24
    xs = np.linspace(-2.0, 2.0, n)
    gx, gy = np.meshgrid(xs, xs)
    B = 4
    params = dict(theta_E=rng.uniform(0.8, 1.5, (B, 1, 1)),
                  gamma=rng.uniform(1.3, 2.7, (B, 1, 1)),
                  e1=rng.uniform(-0.2, 0.2, (B, 1, 1)), e2=rng.uniform(-0.2, 0.2, (B, 1, 1)),
                  center_x=rng.uniform(-0.1, 0.1, (B, 1, 1)),
                  center_y=rng.uniform(-0.1, 0.1, (B, 1, 1)))
    params["e1"][0] = params["e2"][0] = 0.0
    params["gamma"][1] = 2.0
    tp = {k: tf.constant(v) for k, v in params.items()}

    @tf.function(jit_compile=True)
    def run(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            ax, ay = epl.deflection(gx, gy, **p)
            loss = tf.reduce_sum(ax * ax + ay * ay)
        return ax, ay, epl.potential(gx, gy, **p), epl.convergence(gx, gy, **p), \
            tape.gradient(loss, p)

    ax, ay, psi, kappa, grads = run(tp)
    assert ax.shape == (B, n, n)
    for b in range(B):
        pb = {k: float(v[b, 0, 0]) for k, v in params.items()}
        ex, ey = np_(*epl.deflection(gx, gy, **pb))
        np.testing.assert_allclose(ax[b], ex, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ay[b], ey, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(psi[b], epl.potential(gx, gy, **pb), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(kappa[b], epl.convergence(gx, gy, **pb), rtol=1e-12)
        pt = {k: tf.constant(v, F64) for k, v in pb.items()}
        with tf.GradientTape() as tape:
            tape.watch(pt)
            qx, qy = epl.deflection(gx, gy, **pt)
            loss = tf.reduce_sum(qx * qx + qy * qy)
        gb = tape.gradient(loss, pt)
        for k in PARAMS:
            np.testing.assert_allclose(grads[k][b, 0, 0], gb[k], rtol=1e-10, atol=1e-10)


def test_float32_jit_matches_eager(rng):
    epl = EPL()
    x, y = rng.uniform(-2, 2, (2, 50)).astype(np.float32)
    kw = dict(theta_E=1.2, gamma=2.3, e1=0.25, e2=-0.3)
    ex, ey = np_(*epl.deflection(x, y, **kw))
    jx, jy = np_(*tf.function(lambda: epl.deflection(x, y, **kw), jit_compile=True)())
    assert ex.dtype == np.float32
    # XLA may fuse multiply-adds differently: a few float32 ulps
    assert vec_rel_err(jx, jy, ex, ey) < 2e-6


def test_in_simulator_and_registry():
    """Registered by name, config round trip, and usable in the Simulator (XLA)."""
    epl = tsl.get_profile("EPL", dtype="float64")
    assert isinstance(epl, EPL) and epl.dtype == F64
    cfg = EPL(q_min=0.3, n_terms=30).get_config()
    again = tsl.get_profile(**cfg)
    assert again.q_min == 0.3 and again.n_terms == 30
    grid = tsl.PixelGrid(20, 0.1, supersample=2)
    sim = tsl.Simulator(grid, lens=[tsl.EPL(), tsl.Shear()], source=[tsl.SersicEllipse()])
    img = sim(lens=[dict(theta_E=np.full([3], 0.7), gamma=np.array([1.8, 2.0, 2.3]),
                         e1=0.1, e2=np.zeros(3)), dict(gamma1=0.02, gamma2=-0.01)],
              source=[dict(amp=10.0, R_sersic=0.2, n_sersic=1.5, e1=0.0, e2=0.1)])
    assert img.shape == (3, 20, 20) and np.all(np.isfinite(img.numpy()))


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("gamma", [1.0, 3.0, 0.5, 3.5, [2.0, 3.2]])
def test_gamma_out_of_range(gamma):
    with pytest.raises(ValueError, match="gamma"):
        EPL().deflection(1.0, 0.5, theta_E=1.0, gamma=gamma, e1=0.0, e2=0.0)


def test_bad_parameters_raise_named_errors():
    epl = EPL()
    ok = dict(theta_E=1.0, gamma=2.1, e1=0.1, e2=0.0)
    with pytest.raises(ValueError, match="slope"):
        epl.deflection(1.0, 0.5, **dict(ok, slope=2.0))
    with pytest.raises(ValueError, match="theta_E"):
        epl.deflection(1.0, 0.5, gamma=2.0, e1=0.0, e2=0.0)
    with pytest.raises(ValueError, match="theta_E"):
        epl.convergence(1.0, 0.5, **dict(ok, theta_E=-1.0))
    with pytest.raises(ValueError, match="theta_E"):
        epl.potential(1.0, 0.5, **dict(ok, theta_E=np.nan))
    with pytest.raises(ValueError, match="gamma"):
        epl.deflection(1.0, 0.5, **dict(ok, gamma=np.nan))
    with pytest.raises(ValueError, match=r"^x must be finite"):
        epl.deflection(np.nan, 0.5, **ok)
    with pytest.raises(ValueError, match="e1, e2.*q_min"):
        epl.deflection(1.0, 0.5, **dict(ok, e1=0.7))  # q = 0.18 < q_min = 0.2
    with pytest.raises(ValueError, match="q_min"):
        EPL(q_min=0.0)
    with pytest.raises(ValueError, match="n_terms"):
        EPL(n_terms=1)
    with pytest.raises(ValueError, match="dtype"):
        EPL(dtype=tf.int32)
