"""SIS, SIE, Shear and PointMass: cross-checks against lenstronomy, identities, limits,
gradients, XLA and batching."""

import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from conftest import lenstronomy_or_skip

F64 = tf.float64

# q grid of the task; 0.9803 and 0.9805 put |e| just above and below the 1e-2 switch
# between the closed form and the Taylor series of atanh(sqrt(u))/sqrt(u) in sie.py.
Q_GRID = [0.2, 0.3, 0.5, 0.8, 0.9803, 0.9805, 0.99, 1.0]
PHI_GRID = [0.0, 0.3, 1.2, -0.7, np.pi / 2]
CENTRE = (0.31, -0.22)


def e_from_q_phi(q, phi):
    e = (1.0 - q) / (1.0 + q)
    return e * np.cos(2.0 * phi), e * np.sin(2.0 * phi)


def sample_points(rng, cx=CENTRE[0], cy=CENTRE[1], n=120):
    """Random points in a 6" box, points at 1e-6 .. 1e-3 from the centre in several
    directions, and far points (100")."""
    x = list(rng.uniform(-3, 3, n))
    y = list(rng.uniform(-3, 3, n))
    for r in (1e-6, 1e-4, 1e-3, 0.05):
        for ang in (0.0, 0.9, 2.0, -2.6, np.pi / 2):
            x.append(cx + r * np.cos(ang))
            y.append(cy + r * np.sin(ang))
    x += [100.0, -70.0, cx]
    y += [-80.0, 3.0, cy + 120.0]
    return np.array(x), np.array(y)


def vec_rel_err(ax, ay, bx, by):
    """max |a - b| / |b| over points (vector norm: avoids 0/0 in single components)."""
    return np.max(np.hypot(ax - bx, ay - by) / np.hypot(bx, by))


def rel_err(a, b):
    return np.max(np.abs(a - b) / np.abs(b))


def np_(*ts):
    return [t.numpy() for t in ts]


# ----------------------------------------------------------------------------- SIE
@pytest.mark.parametrize("q", Q_GRID)
def test_sie_matches_lenstronomy_epl_gamma2(q, rng):
    """lenstronomy's EPL at gamma = 2 is the exact SIE (same theta_E and e1, e2 conventions).

    All position angles are evaluated in one batched call: parameters [P, 1] against
    points [1, N] (this also exercises broadcasting)."""
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.epl import EPL

    e1, e2 = e_from_q_phi(q, np.array(PHI_GRID))
    kw = dict(theta_E=1.27, center_x=CENTRE[0], center_y=CENTRE[1])
    x, y = sample_points(rng)
    ref = EPL()
    sie = tsl.SIE(dtype=F64)
    bkw = dict(kw, e1=e1[:, None], e2=e2[:, None])
    ax, ay = np_(*sie.deflection(x[None], y[None], **bkw))
    kappa = sie.convergence(x[None], y[None], **bkw).numpy()
    psi = sie.potential(x[None], y[None], **bkw).numpy()
    hess = np_(*sie.hessian(x[None], y[None], **bkw))
    for i in range(len(PHI_GRID)):
        lkw = dict(kw, e1=e1[i], e2=e2[i], gamma=2.0)
        lx, ly = ref.derivatives(x, y, **lkw)
        assert vec_rel_err(ax[i], ay[i], lx, ly) < 1e-10
        f_xx, f_xy, f_yx, f_yy = ref.hessian(x, y, **lkw)
        assert rel_err(kappa[i], 0.5 * (f_xx + f_yy)) < 1e-10
        assert rel_err(psi[i], ref.function(x, y, **lkw)) < 1e-10
        # autodiff hessian vs lenstronomy's analytic one (scale: the diagonal, since f_xy
        # vanishes along the axes)
        scale = np.abs(f_xx) + np.abs(f_yy)
        for mine, theirs in zip(hess, (f_xx, f_xy, f_yx, f_yy)):
            assert np.max(np.abs(mine[i] - theirs) / scale) < 1e-9


def test_sie_vs_lenstronomy_sie_nie():
    """lenstronomy's own ``SIE`` is an NIE with core s = 1e-10 (in its scaled units),
    evaluated through the Kormann/Keeton formulae: it agrees with the singular SIE to
    ~1e-4 relative in kappa at r ~ 1e-6 and far better away from the centre."""
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.sie import SIE as LSIE

    sie = tsl.SIE(dtype=F64)
    ref = LSIE()
    r = np.array([1e-2, 0.1, 0.5, 1.0, 2.0, 5.0])
    ang = np.linspace(0, 2 * np.pi, 7)[:-1]
    rr, aa = np.meshgrid(r, ang)
    x, y = (rr * np.cos(aa)).ravel() + 0.1, (rr * np.sin(aa)).ravel() - 0.05
    for q, phi in [(0.5, 0.3), (0.8, -1.0), (1.0, 0.0)]:
        e1, e2 = e_from_q_phi(q, phi)
        kw = dict(theta_E=1.1, e1=e1, e2=e2, center_x=0.1, center_y=-0.05)
        ax, ay = np_(*sie.deflection(x, y, **kw))
        lx, ly = ref.derivatives(x, y, **kw)
        assert vec_rel_err(ax, ay, lx, ly) < 1e-6
        f_xx, _, _, f_yy = ref.hessian(x, y, **kw)
        assert rel_err(sie.convergence(x, y, **kw).numpy(), 0.5 * (f_xx + f_yy)) < 1e-4


def test_sie_reduces_to_sis(rng):
    x, y = sample_points(rng)
    kw = dict(theta_E=0.93, center_x=CENTRE[0], center_y=CENTRE[1])
    sis, sie = tsl.SIS(dtype=F64), tsl.SIE(dtype=F64)
    ref = [np_(*sis.deflection(x, y, **kw)), sis.convergence(x, y, **kw).numpy(),
           sis.potential(x, y, **kw).numpy()]
    for e1, e2 in [(0.0, 0.0), (1e-8, 0.0), (0.0, -1e-8), (7e-9, 7e-9)]:
        ax, ay = np_(*sie.deflection(x, y, e1=e1, e2=e2, **kw))
        # e = 1e-8 changes alpha at O(e) = 1e-8 relative
        tol = 1e-14 if e1 == e2 == 0 else 3e-8
        assert vec_rel_err(ax, ay, *ref[0]) < tol
        assert rel_err(sie.convergence(x, y, e1=e1, e2=e2, **kw).numpy(), ref[1]) < tol
        assert rel_err(sie.potential(x, y, e1=e1, e2=e2, **kw).numpy(), ref[2]) < tol


def test_sie_float32_close_to_float64(rng):
    """The float32 path (its own atan polynomial) agrees with float64 to ~1e-6."""
    x, y = sample_points(rng)
    x, y = x[:-3], y[:-3]
    for q, phi in [(0.3, 0.4), (0.9803, 1.0), (0.99, 2.0), (1.0, 0.0)]:
        e1, e2 = e_from_q_phi(q, phi)
        kw = dict(theta_E=1.2, e1=e1, e2=e2, center_x=CENTRE[0], center_y=CENTRE[1])
        a64 = np_(*tsl.SIE(dtype=F64).deflection(x, y, **kw))
        a32 = np_(*tsl.SIE().deflection(x.astype(np.float32), y.astype(np.float32), **kw))
        # float32 coordinates of points at 1e-6 .. 1e-3 from the centre carry ~3e-8/1e-6
        # relative position error, so compare on points further than 1e-2 only
        far = np.hypot(x - CENTRE[0], y - CENTRE[1]) > 1e-2
        assert vec_rel_err(a32[0][far], a32[1][far], a64[0][far], a64[1][far]) < 2e-6


# ------------------------------------------------------------------ SIS, PM, SHEAR
@pytest.mark.parametrize("theta_E", [0.05, 1.0, 2.7])
@pytest.mark.parametrize("centre", [(0.0, 0.0), CENTRE, (-1.5, 2.0)])
def test_sis_matches_lenstronomy(theta_E, centre, rng):
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.sis import SIS as LSIS

    x, y = sample_points(rng, *centre)
    kw = dict(theta_E=theta_E, center_x=centre[0], center_y=centre[1])
    ref, sis = LSIS(), tsl.SIS(dtype=F64)
    assert vec_rel_err(*np_(*sis.deflection(x, y, **kw)), *ref.derivatives(x, y, **kw)) < 1e-12
    assert rel_err(sis.potential(x, y, **kw).numpy(), ref.function(x, y, **kw)) < 1e-12
    f_xx, f_xy, f_yx, f_yy = ref.hessian(x, y, **kw)
    assert rel_err(sis.convergence(x, y, **kw).numpy(), 0.5 * (f_xx + f_yy)) < 1e-12
    scale = np.abs(f_xx) + np.abs(f_yy)
    for mine, theirs in zip(np_(*sis.hessian(x, y, **kw)), (f_xx, f_xy, f_yx, f_yy)):
        assert np.max(np.abs(mine - theirs) / scale) < 1e-10


@pytest.mark.parametrize("theta_E", [0.01, 0.4, 1.5])
@pytest.mark.parametrize("centre", [(0.0, 0.0), CENTRE])
def test_point_mass_matches_lenstronomy(theta_E, centre, rng):
    """Deflection, potential (both theta_E^2 ln r: no additive offset) and hessian."""
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.point_mass import PointMass as LPM

    x, y = sample_points(rng, *centre)
    kw = dict(theta_E=theta_E, center_x=centre[0], center_y=centre[1])
    ref, pm = LPM(), tsl.PointMass(dtype=F64)
    assert vec_rel_err(*np_(*pm.deflection(x, y, **kw)), *ref.derivatives(x, y, **kw)) < 1e-12
    # ln r changes sign at r = 1: compare with an absolute tolerance scaled by theta_E^2
    psi = pm.potential(x, y, **kw).numpy()
    np.testing.assert_allclose(psi, ref.function(x, y, **kw), rtol=1e-12, atol=1e-13 * theta_E**2)
    f_xx, f_xy, f_yx, f_yy = ref.hessian(x, y, **kw)
    scale = np.abs(f_xx) + np.abs(f_yy)
    for mine, theirs in zip(np_(*pm.hessian(x, y, **kw)), (f_xx, f_xy, f_yx, f_yy)):
        assert np.max(np.abs(mine - theirs) / scale) < 1e-10
    # kappa = 0 off the centre; the autodiff trace of the hessian agrees
    assert np.all(pm.convergence(x, y, **kw).numpy() == 0.0)
    f_xx, _, _, f_yy = np_(*pm.hessian(x, y, **kw))
    assert np.max(np.abs(f_xx + f_yy) / scale) < 1e-12


@pytest.mark.parametrize("gamma1,gamma2", [(0.0, 0.0), (0.05, 0.0), (0.0, -0.08), (0.03, 0.11)])
@pytest.mark.parametrize("ra_0,dec_0", [(0.0, 0.0), (0.4, -1.1)])
def test_shear_matches_lenstronomy(gamma1, gamma2, ra_0, dec_0, rng):
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.shear import Shear as LShear

    x, y = sample_points(rng)
    kw = dict(gamma1=gamma1, gamma2=gamma2, ra_0=ra_0, dec_0=dec_0)
    ref, sh = LShear(), tsl.Shear(dtype=F64)
    ax, ay = np_(*sh.deflection(x, y, **kw))
    lx, ly = ref.derivatives(x, y, **kw)
    np.testing.assert_allclose(ax, lx, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(ay, ly, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(sh.potential(x, y, **kw).numpy(), ref.function(x, y, **kw),
                               rtol=1e-13, atol=1e-15)
    for mine, theirs in zip(np_(*sh.hessian(x, y, **kw)), ref.hessian(x, y, **kw)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-13, atol=1e-15)
    assert np.all(sh.convergence(x, y, **kw).numpy() == 0.0)


# ------------------------------------------------------------------------ identities
MASS_CASES = [
    ("SIS", dict(theta_E=1.1, center_x=0.2, center_y=-0.1)),
    ("POINT_MASS", dict(theta_E=0.7, center_x=0.2, center_y=-0.1)),
    ("SHEAR", dict(gamma1=0.04, gamma2=-0.07, ra_0=0.3, dec_0=0.5)),
    ("SIE", dict(theta_E=1.1, e1=0.2, e2=-0.15, center_x=0.2, center_y=-0.1)),
    ("SIE", dict(theta_E=1.1, e1=0.0, e2=0.0, center_x=0.2, center_y=-0.1)),
    ("SIE", dict(theta_E=1.1, e1=0.004, e2=0.002, center_x=0.2, center_y=-0.1)),
    ("SIE", dict(theta_E=0.8, e1=-0.5, e2=0.3, center_x=0.2, center_y=-0.1)),
]


@pytest.mark.parametrize("name,kw", MASS_CASES)
def test_alpha_is_grad_psi_and_div_alpha_is_two_kappa(name, kw, rng):
    prof = tsl.get_profile(name, dtype=F64)
    x = tf.constant(rng.uniform(-2.5, 2.5, 300))
    y = tf.constant(rng.uniform(-2.5, 2.5, 300))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, y])
        psi = prof.potential(x, y, **kw)
    gx, gy = tape.gradient(psi, [x, y])
    ax, ay = np_(*prof.deflection(x, y, **kw))
    assert vec_rel_err(gx.numpy(), gy.numpy(), ax, ay) < 1e-12
    f_xx, f_xy, f_yx, f_yy = np_(*prof.hessian(x, y, **kw))
    kappa = prof.convergence(x, y, **kw).numpy()
    scale = np.abs(f_xx) + np.abs(f_yy)
    assert np.max(np.abs(0.5 * (f_xx + f_yy) - kappa) / scale) < 1e-12
    assert np.max(np.abs(f_xy - f_yx) / scale) < 1e-12


# ------------------------------------------------------------------------- gradients
GRAD_CASES = [
    ("SIS", dict(theta_E=1.1, center_x=0.2, center_y=-0.1)),
    ("POINT_MASS", dict(theta_E=0.7, center_x=0.2, center_y=-0.1)),
    ("SHEAR", dict(gamma1=0.0, gamma2=0.0, ra_0=0.2, dec_0=-0.1)),
    ("SHEAR", dict(gamma1=0.03, gamma2=-0.02, ra_0=0.2, dec_0=-0.1)),
    ("SIE", dict(theta_E=1.1, e1=0.0, e2=0.0, center_x=0.2, center_y=-0.1)),
    ("SIE", dict(theta_E=1.1, e1=0.003, e2=0.0, center_x=0.2, center_y=-0.1)),
    ("SIE", dict(theta_E=1.1, e1=0.2, e2=0.0, center_x=0.2, center_y=-0.1)),
    ("SIE", dict(theta_E=1.1, e1=0.2, e2=-0.1, center_x=0.2, center_y=-0.1)),
]


def _outputs(prof, x, y, p):
    ax, ay = prof.deflection(x, y, **p)
    return [ax, ay, prof.potential(x, y, **p), prof.convergence(x, y, **p)]


def _grads(prof, x, y, p):
    """Values of the 4 outputs and, for each, d/d(x, y, params): x, y and every parameter
    have the same shape [P], so each gradient entry is that point's own derivative."""
    names = ["x", "y", *p]
    ts = [x, y, *p.values()]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(ts)
        outs = _outputs(prof, x, y, dict(zip(names[2:], ts[2:])))
    grads = [dict(zip(names, tape.gradient(o, ts, unconnected_gradients="zero"))) for o in outs]
    return outs, grads


@pytest.mark.parametrize("dtype", [tf.float32, F64])
@pytest.mark.parametrize("name,kw", GRAD_CASES)
def test_gradients_finite_at_centre_and_symmetric_points(name, kw, dtype):
    """Values and gradients w.r.t. every parameter and x, y are finite at the exact centre
    (also for e = 0 and zero shear), on the symmetry axes of the ellipse and elsewhere."""
    prof = tsl.get_profile(name, dtype=dtype)
    cx = kw.get("center_x", kw.get("ra_0"))
    cy = kw.get("center_y", kw.get("dec_0"))
    px = cx + np.array([0.0, 0.5, 0.0, -1.0, 1.0, 1e-6])
    py = cy + np.array([0.0, 0.0, -0.7, 0.0, 0.3, 0.0])
    P = len(px)
    x, y = tf.constant(px, dtype), tf.constant(py, dtype)
    p = {k: tf.constant(np.full(P, v), dtype) for k, v in kw.items()}
    outs, grads = _grads(prof, x, y, p)
    for i, (o, g) in enumerate(zip(outs, grads)):
        assert np.all(np.isfinite(o.numpy())), (name, i)
        for n, gv in g.items():
            assert np.all(np.isfinite(gv.numpy())), f"{name} output {i} d/d{n}: {gv.numpy()}"
    assert all(np.all(np.isfinite(t.numpy())) for t in prof.hessian(x, y, **p))


def _fd_check(prof, kw, px, py, names=None, h=1e-6, rtol=1e-7):
    """Autodiff derivatives at points (px, py) [P] vs central differences (float64)."""
    P = len(px)
    x, y = tf.constant(px, F64), tf.constant(py, F64)
    p = {k: tf.constant(np.full(P, v), F64) for k, v in kw.items()}
    _, grads = _grads(prof, x, y, p)
    for n in names or ["x", "y", *kw]:
        def f(delta):
            q = dict(p)
            xx, yy = x, y
            if n == "x":
                xx = x + delta
            elif n == "y":
                yy = y + delta
            else:
                q[n] = p[n] + delta
            return np.array([o.numpy() for o in _outputs(prof, xx, yy, q)])

        fd = (f(h) - f(-h)) / (2 * h)
        ad = np.array([g[n].numpy() for g in grads])
        # central differences, h = 1e-6 in float64: truncation ~h^2, rounding ~1e-10
        assert np.all(np.abs(ad - fd) <= rtol * (1.0 + np.abs(fd))), (n, ad, fd)


PTS_X = np.array([1.3, -0.2, 0.1, 0.1, -1.1, 0.9])
PTS_Y = np.array([0.4, -0.9, 1.0, -1.2, -0.2, -0.2])  # includes points on both axes of (0.1, -0.2)


def test_sie_gradient_correct_at_round_limit():
    """At e1 = e2 = 0 the autodiff derivatives w.r.t. e1, e2 (and the others) equal central
    finite differences (the function is smooth in e there; only |e| is not)."""
    prof = tsl.SIE(dtype=F64)
    kw = dict(theta_E=1.1, e1=0.0, e2=0.0, center_x=0.1, center_y=-0.2)
    _fd_check(prof, kw, PTS_X, PTS_Y)
    # and the e-derivatives at e = 0 are not trivially zero
    _, grads = _grads(prof, tf.constant(PTS_X), tf.constant(PTS_Y),
                      {k: tf.constant(np.full(len(PTS_X), v), F64) for k, v in kw.items()})
    assert np.all(np.abs(grads[0]["e1"].numpy()) + np.abs(grads[1]["e1"].numpy()) > 1e-3)


def test_shear_gradient_correct_at_zero_shear():
    kw = dict(gamma1=0.0, gamma2=0.0, ra_0=0.1, dec_0=-0.2)
    _fd_check(tsl.Shear(dtype=F64), kw, PTS_X, PTS_Y)


@pytest.mark.parametrize("name,kw", MASS_CASES[:2] + [MASS_CASES[3], MASS_CASES[5]] + [
    ("SIE", dict(theta_E=1.1, e1=0.3, e2=0.0, center_x=0.1, center_y=-0.2))])
def test_gradient_matches_finite_difference(name, kw):
    """Including points on the major and minor axes of an SIE (u on the real axis)."""
    _fd_check(tsl.get_profile(name, dtype=F64), kw, PTS_X, PTS_Y)


# ------------------------------------------------------------------- XLA and batching
def _jit_vs_eager(cases, fn_names, rng):
    """One XLA compilation for all cases (each compilation costs seconds)."""
    x = tf.constant(rng.uniform(-2, 2, (7, 9)))
    y = tf.constant(rng.uniform(-2, 2, (7, 9)))

    def all_out(x, y):
        out = []
        for name, kw in cases:
            prof = tsl.get_profile(name, dtype=F64)
            for fn in fn_names(name):
                r = getattr(prof, fn)(x, y, **kw)
                out += list(r) if isinstance(r, tuple) else [r]
        return out

    eager = all_out(x, y)
    jitted = tf.function(all_out, jit_compile=True)(x, y)
    assert len(eager) == len(jitted)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-14)


def test_jit_equals_eager(rng):
    """deflection, potential, convergence of all four profiles (SIE at e != 0, e = 0 and
    on the series branch) and the base-class autodiff hessian (for the SIS; the SIE's
    takes ~10 s to compile: slow test below)."""
    def fns(name):
        base = ["deflection", "potential", "convergence"]
        return base + ["hessian"] if name == "SIS" else base

    # the SIE cases as one batch [3, 1, 1] (one compiled graph serves all values)
    sie = {k: np.array([c[k] for _, c in MASS_CASES[3:6]])[:, None, None]
           for k in MASS_CASES[3][1]}
    _jit_vs_eager(MASS_CASES[:3] + [("SIE", sie)], fns, rng)


@pytest.mark.slow
def test_jit_equals_eager_sie_hessian(rng):
    _jit_vs_eager([MASS_CASES[3]], lambda name: ["hessian"], rng)


@pytest.mark.parametrize("name,kw", MASS_CASES[:4])
def test_batched_parameters_equal_loop(name, kw, rng):
    """Parameters [B, 1, 1] against an [H, W] grid give [B, H, W] equal to a loop."""
    prof = tsl.get_profile(name, dtype=F64)
    x, y = np.meshgrid(np.linspace(-2, 2, 11), np.linspace(-1.5, 1.5, 8))
    B = 3
    batch = {k: v + rng.uniform(0.0, 0.1, B) for k, v in kw.items()}
    batched = {k: v[:, None, None] for k, v in batch.items()}
    outs = [*prof.deflection(x, y, **batched), prof.potential(x, y, **batched),
            prof.convergence(x, y, **batched), *prof.hessian(x, y, **batched)]
    for b in range(B):
        single = {k: v[b] for k, v in batch.items()}
        ref = [*prof.deflection(x, y, **single), prof.potential(x, y, **single),
               prof.convergence(x, y, **single), *prof.hessian(x, y, **single)]
        for o, r in zip(outs, ref):
            assert o.shape == (B, 8, 11)
            np.testing.assert_allclose(o[b].numpy(), r.numpy(), rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------------- bad input
def test_bad_parameters_raise_value_error_naming_them():
    sie = tsl.SIE()
    with pytest.raises(ValueError, match="theta_E"):
        sie.deflection(1.0, 0.0, theta_E=-1.0, e1=0.0, e2=0.0)
    with pytest.raises(ValueError, match="theta_E"):
        tsl.SIS().deflection(1.0, 0.0, theta_E=0.0)
    with pytest.raises(ValueError, match="e2"):
        sie.deflection(1.0, 0.0, theta_E=1.0, e1=0.0)
    with pytest.raises(ValueError, match="gamma"):
        tsl.Shear().deflection(1.0, 0.0, gamma1=0.0, gamma2=0.0, gamma=2.0)
    with pytest.raises(ValueError, match="center_x"):
        tsl.PointMass().potential(1.0, 0.0, theta_E=1.0, center_x=float("nan"))
    with pytest.raises(ValueError, match="x"):
        tsl.SIS().deflection(np.array([np.inf]), 0.0, theta_E=1.0)
    with pytest.raises(ValueError, match="e1"):
        sie.deflection(np.zeros(3), 0.0, theta_E=1.0, e1=np.zeros(2), e2=0.0)


def test_sie_refuses_ellipticity_of_at_least_one():
    """|e| >= 1 (q <= 0) gave NaN deflections; it is refused like EPL's q < q_min, naming
    e1, e2 and |e|, in every method, in a batch and through the Simulator; graph tensors
    (tf.function/XLA) are not checked, and |e| just below 1 stays finite."""
    sie = tsl.SIE()
    ok = dict(theta_E=1.0, e1=0.1, e2=0.0)
    for method in (sie.deflection, sie.potential, sie.convergence):
        with pytest.raises(ValueError, match=r"e1, e2 = \(0\.8, 0\.6\) give \|e\| = 1;.*< 1"):
            method(1.0, 0.5, **dict(ok, e1=0.8, e2=0.6))
    with pytest.raises(ValueError, match=r"SIE\.deflection: e1, e2 = \(-0\.9, 0\.5\)"):
        sie.deflection(1.0, 0.5, **dict(ok, e1=np.array([0.1, -0.9]), e2=0.5))
    with pytest.raises(ValueError, match=r"e1, e2 = \(1\.2, 0\.0\)"):
        sie.deflection(1.0, 0.5, **dict(ok, e1=tf.constant(1.2, tf.float64), e2=0.0))
    sim = tsl.Simulator(tsl.PixelGrid(8, 0.2), lens=[tsl.SIE()], source=[tsl.SersicEllipse()],
                        jit_compile=False)
    src = dict(amp=1.0, R_sersic=0.2, n_sersic=1.0, e1=0.0, e2=0.0)
    with pytest.raises(ValueError, match=r"SIE\.__call__: e1, e2 = \(0\.0, 1\.5\)"):
        sim(lens=[dict(theta_E=1.0, e1=0.0, e2=1.5)], source=[src])
    assert np.isfinite(np_(*sie.deflection(1.0, 0.5, **dict(ok, e1=0.99)))).all()
    graph = tf.function(lambda e1: sie.deflection(1.0, 0.5, theta_E=1.0, e1=e1, e2=0.0)[0])
    assert np.isfinite(graph(tf.constant(0.3)).numpy())
