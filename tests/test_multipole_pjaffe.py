"""Multipoles (circular and elliptical) and the pseudo-Jaffe profile: lenstronomy
cross-checks over parameter grids, identities, analytic limits, gradients at the centre and
at zero amplitude, XLA, bad input."""

import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from conftest import lenstronomy_or_skip
from test_mass_basic import _fd_check, _grads, vec_rel_err

F64 = tf.float64
CENTRE = (0.1, -0.2)
PHI_M = np.array([0.0, 0.3, -1.1, 2.0])


def _points(rng, n=300):
    return rng.uniform(-2.5, 2.5, n), rng.uniform(-2.5, 2.5, n)


def _compare(prof, ref, kw, lkw, x, y, tol):
    """Batched over phi_m ([P, 1] parameters against [1, N] points) vs lenstronomy one
    phi_m at a time; relative to each field's largest value (deflection as a vector)."""
    bkw = dict(kw, phi_m=PHI_M[:, None]) if "phi_m" in kw else kw
    ax, ay = (t.numpy() for t in prof.deflection(x[None], y[None], **bkw))
    psi = prof.potential(x[None], y[None], **bkw).numpy()
    kappa = prof.convergence(x[None], y[None], **bkw).numpy()
    for i, phi in enumerate(PHI_M if "phi_m" in kw else [None]):
        lk = dict(lkw, phi_m=phi) if phi is not None else lkw
        lx, ly = ref.derivatives(x, y, **lk)
        f_xx, _, _, f_yy = ref.hessian(x, y, **lk)
        lkappa, lpsi = 0.5 * (f_xx + f_yy), ref.function(x, y, **lk)
        assert np.max(np.hypot(ax[i] - lx, ay[i] - ly)) < tol * np.max(np.hypot(lx, ly))
        assert np.max(np.abs(psi[i] - lpsi)) < tol * np.max(np.abs(lpsi))
        assert np.max(np.abs(kappa[i] - lkappa)) < tol * np.max(np.abs(lkappa))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_multipole_matches_lenstronomy(m, rng):
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.multipole import Multipole

    kw = dict(a_m=0.05, phi_m=0.3, center_x=CENTRE[0], center_y=CENTRE[1], r_E=1.2)
    _compare(tsl.Multipole(m=m, dtype=F64), Multipole(), kw, dict(kw, m=m),
             *_points(rng), tol=1e-13)


# q = 0.9995 is inside lenstronomy's circular switch for m = 4 (|1 - q^2|^2.5 < 1e-8) and
# outside it for m = 1; 0.99 shows the cancellation of the (1 - q^2)^-(m+1)/2 closed forms
@pytest.mark.parametrize("m", [1, 3, 4])
@pytest.mark.parametrize("q", [0.25, 0.6, 0.9, 0.99, 0.9995, 1.0])
def test_elliptical_multipole_matches_lenstronomy(m, q, rng):
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.multipole import EllipticalMultipole

    kw = dict(a_m=0.04, phi_m=0.3, q=q, center_x=CENTRE[0], center_y=CENTRE[1], r_E=1.1)
    # both codes evaluate the same closed forms in float64; near q = 1 their rounding,
    # amplified by (1 - q^2)^-(m+1)/2, sets the agreement
    tol = 1e-12 if q < 0.8 else 1e-10 if q < 0.95 else 1e-6
    _compare(tsl.EllipticalMultipole(m=m, dtype=F64), EllipticalMultipole(), kw, dict(kw, m=m),
             *_points(rng), tol=tol)


@pytest.mark.parametrize("ra,rs", [(0.05, 0.8), (0.8, 0.05), (0.001, 2.0), (0.4, 0.41)])
def test_pseudo_jaffe_matches_lenstronomy(ra, rs, rng):
    lenstronomy_or_skip()
    from lenstronomy.LensModel.Profiles.pseudo_jaffe import PseudoJaffe

    kw = dict(sigma0=0.9, Ra=ra, Rs=rs, center_x=CENTRE[0], center_y=CENTRE[1])
    _compare(tsl.PseudoJaffe(dtype=F64), PseudoJaffe(), kw, kw, *_points(rng), tol=1e-11)


def test_pseudo_jaffe_limits():
    """Ra -> 0 at fixed b = 2 sigma0 Ra is the truncated SIS of the gravitational-imaging
    papers, kappa = b/2 (1/R - 1/sqrt(R^2 + Rs^2)); the enclosed mass R alpha(R) tends to the
    total 2 sigma0 Ra Rs; Ra = Rs gives finite values equal to the nearby limit."""
    pj = tsl.PseudoJaffe(dtype=F64)
    R = np.array([0.01, 0.1, 0.5, 2.0])
    b, rs, ra = 0.03, 0.4, 1e-7
    kappa = pj.convergence(R, 0.0, sigma0=b / (2 * ra), Ra=ra, Rs=rs).numpy()
    np.testing.assert_allclose(kappa, 0.5 * b * (1 / R - 1 / np.sqrt(R**2 + rs**2)), rtol=1e-5)
    ax, _ = pj.deflection(np.array([1e4]), 0.0, sigma0=0.7, Ra=0.1, Rs=0.9)
    np.testing.assert_allclose(1e4 * ax.numpy(), 2 * 0.7 * 0.1 * 0.9, rtol=1e-4)
    psi = [pj.potential(R, 0.3, sigma0=0.7, Ra=0.3, Rs=rs).numpy()
           for rs in (0.3, 0.3 - 1e-4, 0.3 + 1e-4)]
    # the Ra = Rs branch is the limit: the symmetric neighbours' mean is O(1e-8) away
    np.testing.assert_allclose(psi[0], 0.5 * (psi[1] + psi[2]), rtol=0, atol=1e-7)


IDENTITY_CASES = [
    (tsl.Multipole(m=1, dtype=F64), dict(a_m=0.05, phi_m=0.4, center_x=0.1, center_y=-0.2)),
    (tsl.Multipole(m=4, dtype=F64), dict(a_m=0.03, phi_m=-0.4, center_x=0.1, center_y=-0.2)),
    (tsl.EllipticalMultipole(m=1), dict(a_m=0.05, phi_m=0.4, q=0.7, center_x=0.1)),
    (tsl.EllipticalMultipole(m=3), dict(a_m=0.05, phi_m=0.4, q=0.5, center_y=0.1)),
    (tsl.EllipticalMultipole(m=4, dtype=F64), dict(a_m=0.05, phi_m=0.4, q=0.8)),
    (tsl.PseudoJaffe(dtype=F64), dict(sigma0=0.7, Ra=0.05, Rs=0.6, center_x=0.1)),
]


@pytest.mark.parametrize("prof,kw", IDENTITY_CASES, ids=lambda v: getattr(v, "name", ""))
def test_alpha_is_grad_psi_and_div_alpha_is_two_kappa(prof, kw, rng):
    prof = tsl.get_profile(**{**prof.get_config(), "dtype": "float64"})
    x = tf.constant(rng.uniform(-2.5, 2.5, 200))
    y = tf.constant(rng.uniform(-2.5, 2.5, 200))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, y])
        psi = prof.potential(x, y, **kw)
        ax, ay = prof.deflection(x, y, **kw)
    gx, gy = tape.gradient(psi, [x, y])
    assert vec_rel_err(gx.numpy(), gy.numpy(), ax.numpy(), ay.numpy()) < 1e-9
    div = tape.gradient(ax, x).numpy() + tape.gradient(ay, y).numpy()
    kappa = prof.convergence(x, y, **kw).numpy()
    assert np.max(np.abs(0.5 * div - kappa)) < 1e-9 * np.max(np.abs(kappa))


@pytest.mark.parametrize("dtype", [tf.float32, F64])
@pytest.mark.parametrize("prof,kw", [
    (tsl.Multipole(m=4), dict(a_m=0.0, phi_m=0.3, center_x=0.2, center_y=-0.1)),
    (tsl.Multipole(m=1), dict(a_m=0.02, phi_m=0.3, center_x=0.2, center_y=-0.1)),
    (tsl.EllipticalMultipole(m=4), dict(a_m=0.0, phi_m=0.3, q=0.7, center_x=0.2,
                                        center_y=-0.1)),
    (tsl.EllipticalMultipole(m=3), dict(a_m=0.02, phi_m=0.3, q=1.0, center_x=0.2,
                                        center_y=-0.1)),
    (tsl.PseudoJaffe(), dict(sigma0=0.5, Ra=0.01, Rs=0.3, center_x=0.2, center_y=-0.1)),
], ids=lambda v: getattr(v, "name", ""))
def test_gradients_finite_at_centre_and_zero_amplitude(prof, kw, dtype):
    prof = tsl.get_profile(**{**prof.get_config(), "dtype": dtype})
    px = kw["center_x"] + np.array([0.0, 0.5, 0.0, -1.0, 1e-6])
    py = kw["center_y"] + np.array([0.0, 0.0, -0.7, 0.0, 0.0])
    p = {k: tf.constant(np.full(len(px), v), dtype) for k, v in kw.items()}
    outs, grads = _grads(prof, tf.constant(px, dtype), tf.constant(py, dtype), p)
    for i, (o, g) in enumerate(zip(outs, grads)):
        assert np.all(np.isfinite(o.numpy())), i
        for n, gv in g.items():
            assert np.all(np.isfinite(gv.numpy())), (i, n, gv.numpy())


def test_gradients_match_finite_differences():
    """Away from the centre, autodiff derivatives w.r.t. every parameter (incl. at a_m = 0
    and the elliptical multipole's q) equal central differences."""
    px, py = np.array([1.3, -0.2, 0.1, -1.1]), np.array([0.4, -0.9, 1.0, -0.2])
    _fd_check(tsl.Multipole(m=4, dtype=F64), dict(a_m=0.0, phi_m=0.3, center_x=0.1,
                                                  center_y=-0.2), px, py)
    _fd_check(tsl.EllipticalMultipole(m=4, dtype=F64), dict(a_m=0.03, phi_m=0.3, q=0.7,
                                                            center_x=0.1), px, py, rtol=1e-6)
    _fd_check(tsl.PseudoJaffe(dtype=F64), dict(sigma0=0.6, Ra=0.05, Rs=0.5, center_x=0.1),
              px, py)


def test_float32_close_to_float64_and_xla(rng):
    """float32 multipoles and pseudo-Jaffe agree with float64 to float32 rounding,
    and a Simulator with an SIE + m = 4 multipole renders the same under XLA and eagerly."""
    x, y = _points(rng, 200)
    for prof, kw in IDENTITY_CASES[1:2] + IDENTITY_CASES[-2:]:
        p32 = tsl.get_profile(**{**prof.get_config(), "dtype": "float32"})
        a32 = np.hypot(*(t.numpy() for t in p32.deflection(x, y, **kw)))
        a64 = np.hypot(*(t.numpy() for t in prof.deflection(x, y, **kw)))
        assert np.max(np.abs(a32 - a64)) < 1e-6 * np.max(a64)
    grid = tsl.PixelGrid(32, 0.1)
    sim = tsl.Simulator(grid, lens=["SIE", tsl.Multipole(m=4)], source=["SERSIC_ELLIPSE"],
                        jit_compile=True)
    lens = [dict(theta_E=1.0, e1=0.1, e2=0.0), dict(a_m=0.05, phi_m=0.2)]
    src = [dict(amp=10.0, R_sersic=0.2, n_sersic=1.5, e1=0.0, e2=0.0, center_x=0.05,
                center_y=0.0)]
    xla = sim.simulate(lens=lens, source=src).numpy()
    eager = tsl.Simulator(grid, lens=["SIE", tsl.Multipole(m=4)], source=["SERSIC_ELLIPSE"],
                          jit_compile=False).simulate(lens=lens, source=src).numpy()
    without = sim.simulate(lens=[lens[0], dict(a_m=0.0, phi_m=0.2)], source=src).numpy()
    np.testing.assert_allclose(xla, eager, rtol=1e-4, atol=1e-4 * xla.max())
    assert np.max(np.abs(xla - without)) > 0.05 * xla.max()  # the multipole is rendered


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="m .*integer >= 1.*0"):
        tsl.Multipole(m=0)
    with pytest.raises(ValueError, match=r"m .*one of \[1, 3, 4\].*2"):
        tsl.EllipticalMultipole(m=2)
    with pytest.raises(ValueError, match="q must be at most 1.*1.2"):
        tsl.EllipticalMultipole(m=4).deflection(1.0, 0.0, a_m=0.1, phi_m=0.0, q=1.2)
    with pytest.raises(ValueError, match="Ra must be positive"):
        tsl.PseudoJaffe().deflection(1.0, 0.0, sigma0=0.1, Ra=0.0, Rs=0.3)
    with pytest.raises(ValueError, match="unknown parameter.*'m'"):
        tsl.Multipole().deflection(1.0, 0.0, a_m=0.1, phi_m=0.0, m=4)


@pytest.mark.parametrize("profile", ["PJAFFE", "SIS"])
def test_pjaffe_and_sis_subhalos_carry_their_stated_mass(profile):
    """subhalo_lens_kwargs: a PJAFFE subhalo of mass M has total projected mass M (R alpha(R)
    -> b r_t far away); an SIS one has M inside its tidal radius r_t = sqrt(b theta_E_host);
    both have the same b; masked slots deflect nothing. A LensModel with such subhalos
    renders them."""
    from tfstronglens.observation import subhalo_lens_kwargs

    lc = tsl.LensCosmology(0.5, 2.0)
    masses = np.array([1e8, 2e9, 5e10, 1e9])
    sample = {"mass": masses, "center_x": np.zeros(4), "center_y": np.zeros(4),
              "mask": np.array([True, True, True, False])}
    kw = subhalo_lens_kwargs(sample, lc, profile, theta_E_host=1.2, as_list=True)
    prof = tsl.get_profile(profile, dtype=F64)
    for k, m in enumerate(masses):
        p = {n: float(v) for n, v in kw[k].items()}
        if profile == "PJAFFE":
            b, rt, R = 2 * p["sigma0"] * p["Ra"], p["Rs"], 1e5
        else:
            b = p["theta_E"]
            R = rt = np.sqrt(b * 1.2)
        ax = prof.deflection(np.array([R]), 0.0, **p)[0].numpy()[0]
        if k == 3:
            assert abs(ax) < 1e-12
            continue
        np.testing.assert_allclose(float(lc.point_mass_mass(np.sqrt(R * ax))), m, rtol=1e-4)
        np.testing.assert_allclose(rt, np.sqrt(b * 1.2), rtol=1e-6)
    obs = tsl.Observation(32, 0.05, 2000.0, background_rms=0.05)
    from tfstronglens.inference import LensModel

    model = LensModel(obs, "sie+shear", "sersic", num_subhalos=1, subhalo_profile=profile,
                      amp_scale=10.0, jit_compile=False)
    params = model.sample_prior(1, seed=2)
    params.update({"source.0.amp": tf.constant([30.0]), "source.0.center_x": tf.constant([0.0]),
                   "source.0.center_y": tf.constant([0.0]),
                   "lens.0.theta_E": tf.constant([0.5]),
                   "subhalo.0.center_x": tf.constant([0.5]),
                   "subhalo.0.center_y": tf.constant([0.0])})
    heavy = model.render({**params, "subhalo.0.mass": tf.constant([1e10])}).numpy()
    light = model.render({**params, "subhalo.0.mass": tf.constant([1e7])}).numpy()
    assert np.all(np.isfinite(heavy)) and np.max(np.abs(heavy - light)) > 0.01 * heavy.max()
