"""Subhalo detection: the Wilks statistic, the nested limit, and end-to-end tests (slow)."""

import numpy as np
import pytest
from scipy import stats

import tfstronglens as tsl
from tfstronglens.inference import LensModel, detect_subhalo, wilks_significance

TRUTH = {"lens.0.theta_E": 0.7, "lens.0.e1": 0.1, "lens.0.e2": -0.05, "lens.0.center_x": 0.02,
         "lens.0.center_y": -0.03, "lens.1.gamma1": 0.03, "lens.1.gamma2": 0.01,
         "source.0.amp": 20.0, "source.0.R_sersic": 0.15, "source.0.n_sersic": 1.5,
         "source.0.e1": 0.1, "source.0.e2": 0.2, "source.0.center_x": 0.05,
         "source.0.center_y": 0.02}
SUB = {"subhalo.0.mass": 1e10, "subhalo.0.center_x": -0.55, "subhalo.0.center_y": 0.45}


def test_wilks_significance_values():
    # boundary mixture 1/2 chi2_3: 5 sigma (one-sided p = 2.87e-7) needs TS = 31.81
    ts5 = stats.chi2.isf(2 * stats.norm.sf(5.0), 3)
    sigma, p = wilks_significance(ts5 / 2.0)
    assert sigma == pytest.approx(5.0, abs=1e-6)
    assert p == pytest.approx(stats.norm.sf(5.0), rel=1e-6)
    # without the boundary factor the same TS is less significant
    s2, p2 = wilks_significance(ts5 / 2.0, boundary=False)
    assert p2 == pytest.approx(2 * p) and s2 < sigma
    # dof = 1 without boundary: sigma = sqrt(TS) two-sided <-> norm.isf(p) one-sided
    s1, p1 = wilks_significance(8.0, dof=1, boundary=False)
    assert p1 == pytest.approx(2 * stats.norm.sf(4.0))
    # no improvement: no significance; arrays work
    assert wilks_significance(-3.0) == (0.0, 0.5)
    s, _ = wilks_significance(np.array([0.0, 5.0, 20.0]))
    assert s.shape == (3,) and np.all(np.diff(s) > 0)
    with pytest.raises(ValueError, match="dof"):
        wilks_significance(1.0, dof=0)
    with pytest.raises(ValueError, match="finite"):
        wilks_significance(np.nan)


def _obs():
    return tsl.Observation(40, 0.05, 2000.0, background_rms=0.05, psf=tsl.GaussianPSF(0.1))


def test_nested_limit_and_signal_size():
    m1 = LensModel(_obs(), amp_scale=10.0, supersample=1, num_subhalos=1,
                   subhalo_profile="POINT_MASS", jit_compile=False)
    m0 = m1.replace(num_subhalos=0)
    img0 = m0.render(TRUTH)[0]
    var = m1.observation.noise_variance(img0).numpy()
    lo = m1.render({**TRUTH, **SUB, "subhalo.0.mass": 1e7})[0]
    hi = m1.render({**TRUTH, **SUB})[0]
    # H0 is the m -> m_min limit of H1 (chi^2 distance << 1) ...
    assert np.sum((lo.numpy() - img0.numpy()) ** 2 / var) < 0.05
    # ... and the test's 1e10 M_sun point mass is a strong signal
    assert np.sum((hi.numpy() - img0.numpy()) ** 2 / var) > 200


@pytest.mark.slow
def test_detects_massive_subhalo():
    m1 = LensModel(_obs(), amp_scale=10.0, supersample=1, num_subhalos=1,
                   subhalo_profile="POINT_MASS", compile_batch_size=25)
    data = m1.simulate({**TRUTH, **SUB}, seed=3)[0]
    det = detect_subhalo(m1, data, num_starts=25, num_steps=300, seed=1, progress=False)
    assert det.significance_sigma > 5.0, det
    assert np.hypot(det.center_x + 0.55, det.center_y - 0.45) < 0.1, det
    assert 2e9 < det.mass < 5e10, det
    # with half its starts at the best cells of the linear-response scan, 4 starts
    # instead of 25 find the same maximum (100 steps did not: Delta log L 13.8 at the
    # right place)
    fast = detect_subhalo(m1, data, num_starts=4, num_steps=300, seed=1, scan_grid=16,
                          fit_without=det.fit_without, progress=False)
    assert fast.delta_log_likelihood > det.delta_log_likelihood - 1.0, (fast, det)
    assert np.hypot(fast.center_x + 0.55, fast.center_y - 0.45) < 0.1, fast
    # no subhalo in the data: not a detection
    m0 = m1.replace(num_subhalos=0)
    data0 = m0.simulate(TRUTH, seed=4)[0]
    det0 = detect_subhalo(m1, data0, num_starts=25, num_steps=300, seed=1, progress=False)
    assert det0.significance_sigma < 3.0, det0


def test_detection_reports_robust_masses_and_a_null_calibration():
    """A short detection run and one bootstrap image: beside M200, the aperture and
    effective masses, consistent with LensModel.subhalo_masses at the best fit; the null
    calibration of the same search, its empirical p-value one of {1/2, 1}, in the
    summary.json object."""
    from tfstronglens.inference import calibrate_null
    from tfstronglens.inference.pipeline import detection_summary

    m1 = LensModel(tsl.Observation(24, 0.08, 2000.0, background_rms=0.05,
                                   psf=tsl.GaussianPSF(0.1)),
                   "sie+shear", amp_scale=10.0, supersample=1, num_subhalos=1,
                   subhalo_profile="PJAFFE", jit_compile=False)
    data = m1.simulate({**TRUTH, **SUB}, seed=3)[0]
    search = dict(num_starts=4, num_steps=8)
    det = detect_subhalo(m1, data, seed=1, progress=False, **search)
    best = {k: np.asarray(v)[None] for k, v in det.fit_with.params.items()}
    robust = m1.subhalo_masses(best)
    assert det.mass_aperture == pytest.approx(float(robust["subhalo.0.mass_aperture"][0]))
    assert det.aperture == 0.5 and det.r_pert > 0 and 0 < det.mass_eff < det.mass
    with pytest.raises(AttributeError):
        det.mass = 1.0  # a frozen result
    cal = calibrate_null(m1, det, num_simulations=1, seed=5, h0_starts=2, progress=False,
                         **search)
    assert cal.num_simulations == 1 and cal.null_test_statistics[0] >= 0
    assert cal.test_statistic == det.test_statistic and cal.p_value in (0.5, 1.0)
    saved = detection_summary(det, cal)["null_calibration"]
    assert saved["num_simulations"] == 1 and saved["p_value"] == cal.p_value
    assert "null_calibration" not in detection_summary(det)
    with pytest.raises(ValueError, match="num_simulations"):
        calibrate_null(m1, det, num_simulations=0)
    with pytest.raises(ValueError, match="fit_without cannot be given"):
        calibrate_null(m1, det, fit_without=det.fit_without)


def test_fit_null_distribution_recovers_a_known_mixture():
    """The fitted ``w_0 delta_0 + (1 - w_0) chi^2_k`` recovers the mixture it is fed, tells
    chi^2_3 from chi^2_5, and its tail p-value matches the true one."""
    from tfstronglens.inference import fit_null_distribution

    rng = np.random.default_rng(0)
    n = 3000
    ts = np.where(rng.uniform(size=n) < 0.3, 0.0, rng.chisquare(5, size=n))
    w0, k = fit_null_distribution(ts)
    assert w0 == pytest.approx(0.3, abs=0.03) and k == pytest.approx(5.0, abs=0.25)
    fitted_p = (1 - w0) * stats.chi2.sf(20.0, k)
    assert fitted_p == pytest.approx(0.7 * stats.chi2.sf(20.0, 5), rel=0.3)
    _, k3 = fit_null_distribution(rng.chisquare(3, size=n))
    assert k3 == pytest.approx(3.0, abs=0.2)
    assert np.isnan(fit_null_distribution([0.0, 0.0, 1.0])[1])
    for bad in ([], [1.0, -1.0], [np.nan]):
        with pytest.raises(ValueError, match="test_statistics"):
            fit_null_distribution(bad)


def test_empirical_p_value_is_exact_under_the_null():
    from tfstronglens.inference import empirical_p_value

    assert empirical_p_value(2.5, [1, 2, 3]) == 0.5
    assert empirical_p_value(10.0, [1, 2, 3]) == 0.25  # floored at 1 / (B + 1)
    assert empirical_p_value(0.0, [1, 2, 3]) == 1.0
    # observation and 19 null draws from one distribution: P(p <= 1/20) = 1/20 exactly
    rng = np.random.default_rng(1)
    draws = rng.chisquare(4, size=(4000, 20))
    p = np.array([empirical_p_value(d[0], d[1:]) for d in draws])
    rate = np.mean(p <= 0.05)
    assert abs(rate - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 4000), rate
    # ... and a shifted observation is rejected far more often (the test has power)
    shifted = np.array([empirical_p_value(d[0] + 15.0, d[1:]) for d in draws[:500]])
    assert np.mean(shifted <= 0.05) > 0.5
    with pytest.raises(ValueError, match="null_samples"):
        empirical_p_value(1.0, [])


def test_null_calibration_summary():
    from tfstronglens.inference import NullCalibration

    rng = np.random.default_rng(2)
    null = rng.chisquare(5, size=200)
    cal = NullCalibration.from_statistics(60.0, null)
    assert cal.p_value == pytest.approx(1 / 201) and cal.num_simulations == 200
    # beyond the bootstrap's floor, the fitted tail extrapolates: ~6 sigma for TS = 60
    assert cal.significance_sigma_fitted > 5.0 > cal.significance_sigma
    assert cal.null_dof == pytest.approx(5.0, abs=1.0)
    weak = NullCalibration.from_statistics(4.0, null)
    assert weak.p_value > 0.3 and weak.significance_sigma_fitted < 1.0
    d = cal.to_dict()
    assert d["num_simulations"] == 200 and len(d["null_test_statistics"]) == 200
    with pytest.raises(AttributeError):
        cal.p_value = 0.5


def test_scan_points_at_an_injected_subhalo_and_not_at_noise():
    """The linear-response scan (scan_subhalo) around the maximum-likelihood fit without a
    subhalo: on an image with a 1e10 M_sun point mass its best cell is the one holding
    the subhalo and its gain is large; on the same lens without one (the same noise) no
    cell gains more than a few units of log L. (The detection that starts at its best
    cells: test_detects_massive_subhalo, slow.)"""
    from tfstronglens.inference import find_map, scan_subhalo, subhalo_point

    m1 = LensModel(_obs(), amp_scale=10.0, supersample=1, num_subhalos=1,
                   subhalo_profile="POINT_MASS", jit_compile=False, compile_batch_size=100)
    m0 = m1.replace(num_subhalos=0)
    noise = m0.simulate(TRUTH, seed=4)[0] - m0.render(TRUTH)[0]
    gains = {}
    for name, clean in (("subhalo", m1.render({**TRUTH, **SUB})[0]),
                        ("none", m0.render(TRUTH)[0])):
        data = clean + noise
        fit0 = find_map(m0, data, num_starts=1, num_steps=10, learning_rate=0.005,
                        init=TRUTH, objective="likelihood", progress=False)
        scan = scan_subhalo(m1, fit0, data, grid=10, masses=[1e8, 1e9, 1e10, 1e11])
        assert scan.delta_log_likelihood.shape == (4, 10, 10)
        gains[name] = scan.best_map.max()
        if name == "subhalo":
            mass, x, y = scan.best_cells(3)[0]
            cell = (m1.subhalo_region[1] - m1.subhalo_region[0]) / 10
            assert abs(x - SUB["subhalo.0.center_x"]) <= cell and \
                abs(y - SUB["subhalo.0.center_y"]) <= cell, scan.best_cells(3)
            assert mass in (1e9, 1e10, 1e11)
    assert gains["subhalo"] > 50.0 and gains["none"] < 8.0, gains
    with pytest.raises(ValueError, match="fit_without"):
        scan_subhalo(m1, None, data)
    with pytest.raises(ValueError, match="x_without"):
        subhalo_point(m1, np.zeros(3), 1e9, 0.0, 0.0)
