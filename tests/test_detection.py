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
    # no subhalo in the data: not a detection
    m0 = m1.replace(num_subhalos=0)
    data0 = m0.simulate(TRUTH, seed=4)[0]
    det0 = detect_subhalo(m1, data0, num_starts=25, num_steps=300, seed=1, progress=False)
    assert det0.significance_sigma < 3.0, det0


def test_detection_reports_profile_robust_masses():
    """A short detection run reports, beside M200,
    the aperture and effective masses, consistent with LensModel.subhalo_masses at its best
    fit."""
    m1 = LensModel(tsl.Observation(24, 0.08, 2000.0, background_rms=0.05,
                                   psf=tsl.GaussianPSF(0.1)),
                   "sie+shear", amp_scale=10.0, supersample=1, num_subhalos=1,
                   subhalo_profile="PJAFFE", jit_compile=False)
    data = m1.simulate({**TRUTH, **SUB}, seed=3)[0]
    det = detect_subhalo(m1, data, num_starts=4, num_steps=8, seed=1, progress=False)
    best = {k: np.asarray(v)[None] for k, v in det.fit_with.params.items()}
    robust = m1.subhalo_masses(best)
    assert det.mass_aperture == pytest.approx(float(robust["subhalo.0.mass_aperture"][0]))
    assert det.aperture == 0.5 and det.r_pert > 0 and 0 < det.mass_eff < det.mass
    with pytest.raises(AttributeError):
        det.mass = 1.0  # a frozen result
