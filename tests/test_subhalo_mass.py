"""Profile-robust subhalo masses: analytic limits of the enclosed mass and perturbation
radius, and a fit showing that the aperture mass agrees across subhalo profiles where the
fitted M200 does not."""

import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from tfstronglens.inference import LensModel, find_map
from tfstronglens.lensing import Simulator
from tfstronglens.observation import LensCosmology
from tfstronglens.observation.subhalo_mass import (effective_lensing_mass, enclosed_mass,
                                                   perturbation_radius)

LC = LensCosmology(0.5, 2.0)


def test_perturbation_radius_and_enclosed_mass_analytic_limits():
    b = tf.constant([0.01, 0.02, 0.05], tf.float64)
    sis = {"theta_E": b}
    # SIS: alpha = b, so r_p = sqrt(b theta_E / (gamma - 1)); M(<r) = pi b r Sigma_crit
    for slope in (2.0, 2.3):
        np.testing.assert_allclose(perturbation_radius("SIS", sis, 1.2, slope),
                                   np.sqrt(b * 1.2 / (slope - 1.0)), rtol=1e-9)
    np.testing.assert_allclose(enclosed_mass("SIS", sis, 0.3, LC),
                               np.pi * b * 0.3 * LC.sigma_crit_angle, rtol=1e-9)
    # point mass: alpha = b^2 / r, r_p = (b^2 theta_E)^(1/3); M(<r) = M at every r
    pm = {"theta_E": LC.point_mass_theta_E(tf.constant([1e8, 1e9], tf.float64))}
    r_p, m = effective_lensing_mass("POINT_MASS", pm, 1.0, LC)
    np.testing.assert_allclose(r_p, np.cbrt(np.asarray(pm["theta_E"]) ** 2), rtol=1e-9)
    np.testing.assert_allclose(m, [1e8, 1e9], rtol=1e-9)
    np.testing.assert_allclose(enclosed_mass("POINT_MASS", pm, 0.01, LC), [1e8, 1e9], rtol=1e-9)
    # pseudo-Jaffe: the enclosed mass tends to the total 2 pi sigma0 Ra Rs Sigma_crit
    pj = {k: tf.constant(v, tf.float64) for k, v in
          dict(sigma0=50.0, Ra=1e-3, Rs=0.2, center_x=0.3, center_y=-0.1).items()}
    total = 2 * np.pi * 50.0 * 1e-3 * 0.2 * LC.sigma_crit_angle
    assert float(enclosed_mass("PJAFFE", pj, 1e4, LC)) == pytest.approx(total, rel=1e-4)
    assert float(enclosed_mass("PJAFFE", pj, 0.1, LC)) < 0.7 * total
    with pytest.raises(ValueError, match="circularly symmetric subhalo profile"):
        enclosed_mass("SIE", {"theta_E": 0.1, "e1": 0.1, "e2": 0.0}, 0.1)


OBS = tsl.Observation(60, 0.05, 2000.0, background_rms=0.01, psf=tsl.GaussianPSF(0.08))
MACRO = {"lens.0.theta_E": 1.0, "lens.0.e1": 0.1, "lens.0.e2": -0.05, "lens.0.center_x": 0.0,
         "lens.0.center_y": 0.0, "lens.1.gamma1": 0.02, "lens.1.gamma2": 0.01}
SOURCE = {"source.0.amp": 100.0, "source.0.R_sersic": 0.15, "source.0.n_sersic": 1.5,
          "source.0.e1": 0.1, "source.0.e2": 0.0, "source.0.center_x": 0.05,
          "source.0.center_y": 0.03}
POSITION = {"center_x": 0.1, "center_y": 1.0}  # on the Einstein ring


def _kwargs(prefix):
    return {k.split(".")[-1]: v for k, v in {**MACRO, **SOURCE}.items() if k.startswith(prefix)}


def test_aperture_mass_agrees_across_subhalo_profiles_where_m200_does_not():
    """Images with a subhalo of another profile than the model's (TNFW of 4x the default
    concentration and another truncation, a pseudo-Jaffe, a point mass), fitted with the
    default TNFW subhalo (macro model and source fixed at the truth): the projected mass
    inside 0.5" is recovered within a factor 1.5 in each case (measured: 0.95, 0.90, 1.32),
    while the fitted M200 (or total mass) is off by more than a factor of 2 (measured: 5.3,
    12, 15)."""
    Rs, alpha_Rs = LC.nfw_physical2angle(1e9, 48.0)
    truths = {  # name: (profile, kwargs, its mass in the model's sense: M200 or total)
        "TNFW c=48": ("TNFW", dict(Rs=float(Rs), alpha_Rs=float(alpha_Rs), r_trunc=0.5), 1e9),
        "PJAFFE": ("PJAFFE", dict(sigma0=100.0, Ra=1e-4, Rs=0.25),
                   2 * np.pi * 100.0 * 1e-4 * 0.25 * LC.sigma_crit_angle),
        "POINT_MASS": ("POINT_MASS", dict(theta_E=float(LC.point_mass_theta_E(2e8))), 2e8),
    }
    model = LensModel(OBS, "sie+shear", "sersic", num_subhalos=1, subhalo_mass_range=(1e6, 1e13),
                      fixed={**MACRO, **SOURCE}, jit_compile=False)
    rng = np.random.default_rng(1)
    for name, (prof, kw, mass) in truths.items():
        kw = dict(kw, **POSITION)
        sim = Simulator(OBS.grid(2), lens=["SIE", "SHEAR", prof], source=["SERSIC_ELLIPSE"],
                        psf=OBS.psf)
        img = np.asarray(sim(lens=[_kwargs("lens.0"), _kwargs("lens.1"), kw],
                             source=[_kwargs("source.0")]))
        data = img + rng.normal(size=img.shape) * np.sqrt(OBS.noise_variance(img))
        fit = find_map(model, data, num_starts=2, num_steps=150, learning_rate=0.05,
                       lm_steps=10, init={"subhalo.0.mass": 1e9, **{
                           f"subhalo.0.{k}": v for k, v in POSITION.items()}},
                       init_jitter=0.05, seed=1, progress=False)
        best = {k: float(v) for k, v in fit.summary().items()}
        assert abs(best["subhalo.0.center_x"] - 0.1) < 0.05, name
        robust = model.subhalo_masses({k: tf.constant([v]) for k, v in best.items()})
        truth_ap = float(enclosed_mass(prof, {k: tf.constant(v) for k, v in kw.items()},
                                       model.subhalo_aperture, LC))
        ratio_ap = float(robust["subhalo.0.mass_aperture"][0]) / truth_ap
        ratio_m = best["subhalo.0.mass"] / mass
        assert 1 / 1.5 < ratio_ap < 1.5, (name, ratio_ap, ratio_m)
        assert not 0.5 < ratio_m < 2.0, (name, ratio_ap, ratio_m)


def test_model_subhalo_masses_without_a_host_einstein_radius():
    """Point-mass subhalos behind an NFW main deflector (no theta_E, so no critical-curve
    radius): the aperture mass is reported, and equals the point masses exactly."""
    model = LensModel(tsl.Observation(20, 0.1, 2000.0, background_rms=0.05), ["NFW"],
                      num_subhalos=2, subhalo_profile="POINT_MASS", jit_compile=False)
    draws = model.sample_prior(3, seed=1)
    masses = model.subhalo_masses(draws)
    assert set(masses) == {"subhalo.0.mass_aperture", "subhalo.1.mass_aperture"}
    for k in range(2):
        np.testing.assert_allclose(masses[f"subhalo.{k}.mass_aperture"],
                                   draws[f"subhalo.{k}.mass"], rtol=1e-4)
