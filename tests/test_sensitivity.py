"""Subhalo sensitivity maps: the batched refit statistic against a full nonlinear refit,
its physics (more mass, more signal; the arcs are where subhalos show), and the CLI."""

import json

import numpy as np
import pytest
import tensorflow as tf
from astropy.io import fits

import tfstronglens as tsl
from tfstronglens.cli import main
from tfstronglens.inference import LensModel, detection_threshold, find_map, sensitivity_map

OBS = tsl.Observation(40, 0.05, 2000.0, background_rms=0.05, psf=tsl.GaussianPSF(0.1))
TRUTH = {"lens.0.theta_E": 0.6, "lens.0.e1": 0.1, "lens.0.e2": -0.05, "lens.0.center_x": 0.0,
         "lens.0.center_y": 0.0, "lens.1.gamma1": 0.02, "lens.1.gamma2": 0.01,
         "source.0.amp": 100.0, "source.0.R_sersic": 0.12, "source.0.n_sersic": 1.5,
         "source.0.e1": 0.1, "source.0.e2": 0.0, "source.0.center_x": 0.03,
         "source.0.center_y": 0.02}
MASSES = np.array([1e8, 1e9, 1e10])


@pytest.fixture(scope="module")
def problem():
    model = LensModel(OBS, "sie+shear", "sersic", amp_scale=10.0, subhalo_profile="PJAFFE",
                      jit_compile=False)
    data = model.simulate({k: tf.constant([v]) for k, v in TRUTH.items()}, seed=3)[0]
    res = sensitivity_map(model, data, masses=MASSES, grid=4, num_starts=4, map_steps=150,
                          progress=False)
    return model, data, res


def test_threshold_is_five_sigma_for_three_parameters():
    assert detection_threshold() == pytest.approx(33.24, abs=0.01)
    # one degree of freedom: chi2_1 = z^2 of a two-sided Gaussian tail
    from scipy import stats
    for s in (2.0, 3.0, 5.0):
        z = stats.norm.isf(stats.norm.sf(s) / 2)
        assert detection_threshold(s, 1) == pytest.approx(z * z, rel=1e-9)


def test_batched_refit_matches_a_full_nonlinear_refit(problem):
    """At a position on the arc, Delta chi^2 of the map equals that of a full Levenberg-
    Marquardt refit of every smooth parameter to the mock within 5%, and is far below the
    value without any refit (which a map that skipped the refit would report)."""
    model, data, res = problem
    i, (row, col) = 1, np.unravel_index(np.argmax(res.delta_chi2[1]), res.delta_chi2[1].shape)
    stat = res.delta_chi2[i, row, col]
    assert 20.0 < stat < 5000.0, stat
    best = {k: tf.reshape(v, [1]) for k, v in res.smooth_fit.params.items()}
    m1 = model.replace(num_subhalos=1)
    sub = {"subhalo.0.mass": tf.constant([MASSES[i]]),
           "subhalo.0.center_x": tf.constant([res.x[col]]),
           "subhalo.0.center_y": tf.constant([res.y[row]])}
    mock = m1.render({**best, **sub})[0]
    base = model.render(best)[0]
    sigma = model.pixel_sigma(base)
    fixed_noise = model.replace(noise_map=sigma.numpy())
    no_refit = float(tf.reduce_sum(((mock - base) / sigma) ** 2))
    fit = find_map(fixed_noise, mock, num_starts=1, num_steps=1, learning_rate=1e-4,
                   init={k: v[0] for k, v in best.items()}, objective="likelihood",
                   lm_steps=30, progress=False)
    # log L = -chi^2/2 + const with the noise fixed: const from the chi^2 at the smooth fit
    const = float(fixed_noise.log_likelihood(best, mock)[0]) + 0.5 * no_refit
    full = -2.0 * (fit.objective - const)
    assert stat == pytest.approx(full, rel=0.05), (stat, full, no_refit)
    assert no_refit > 1.5 * stat
    assert res.delta_chi2_linear[i, row, col] == pytest.approx(stat, rel=0.1)


def test_map_physics(problem):
    """More mass, more signal everywhere; the most sensitive positions lie on the Einstein
    ring (0.6") rather than at the field's corners; the map is the interpolated crossing."""
    _, _, res = problem
    assert np.all(np.diff(res.delta_chi2, axis=0) > 0)
    xx, yy = np.meshgrid(res.x, res.y)
    ring = np.abs(np.hypot(xx, yy) - 0.6) < 0.3
    lm = np.where(np.isfinite(res.log10_min_mass), res.log10_min_mass, 99.0)
    assert lm[ring].min() < lm[~ring].min()
    p = np.flatnonzero(np.isfinite(res.log10_min_mass.ravel()) & ~res.below_range.ravel())[0]
    stat = res.delta_chi2.reshape(3, -1)[:, p]
    k = np.flatnonzero(stat >= res.threshold)[0]
    assert np.log10(MASSES[k - 1]) <= res.log10_min_mass.ravel()[p] <= np.log10(MASSES[k])
    assert np.all(np.isfinite(res.log10_min_mass_aperture[np.isfinite(res.log10_min_mass)]))


def test_sensitivity_cli_writes_the_map(tmp_path, problem):
    _, data, _ = problem
    image = tmp_path / "lens.fits"
    tsl.io.write_fits(str(image), np.asarray(data, np.float32), pixel_scale=0.05)
    out = tmp_path / "sens"
    args = ["sensitivity", str(image), "--lens", "sie+shear", "--source", "sersic",
            "--noise-rms", "0.05", "--exposure", "2000", "--psf-fwhm", "0.1",
            "--subhalo-profile", "PJAFFE", "--masses", "1e8:1e10:2", "--grid", "2",
            "--num-starts", "1", "--map-steps", "20", "--refit-steps", "1",
            "--no-xla", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    with fits.open(out / "sensitivity.fits") as hdul:
        assert hdul[0].data.shape == (2, 2) and hdul["DCHI2"].data.shape == (2, 2, 2)
        assert hdul[0].header["GRID"] == 2
    doc = json.load(open(out / "sensitivity.json"))
    assert doc["threshold_delta_chi2"] == pytest.approx(33.24, abs=0.01)
    assert doc["settings"]["subhalo_profile"] == "PJAFFE"
    assert (out / "sensitivity.png").stat().st_size > 1000
    assert main(args[:-2] + ["--masses", "1e9:1e7:2", "--out", str(tmp_path / "x")]) == 2
