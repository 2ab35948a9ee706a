"""Subhalo-population inference with a learned likelihood ratio: the population prior, the
joint ratio and joint score the differentiable simulator provides (their defining
identities), the grid posterior of many lenses and its calibration (coverage that must
also reject an overconfident likelihood), and the ratio network's round trip."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfstronglens.inference.population import (ensemble_coverage, grid_points,
                                               population_posterior)
from tfstronglens.models.ratio import PopulationRatioEstimator
from tfstronglens.simulation import LensDatasetGenerator, LensSimulationConfig
from tfstronglens.simulation.population import (POPULATION_PARAMETERS, PopulationPairSimulator,
                                                PopulationPrior)


def _generator(**kw):
    cfg = dict(instrument="hst_acs_f814w", num_pix=16, supersample=1, lens_light=False,
               subhalo_model="wdm", n_max=40)
    cfg.update(kw)
    return LensDatasetGenerator(LensSimulationConfig(**cfg))


def test_prior_table_and_validation():
    prior = PopulationPrior.from_names("kappa_sub,log10_m_hm", {"kappa_sub": (0.005, 0.03)})
    assert prior.names == ("kappa_sub", "log10_m_hm")
    assert prior.to_dict() == {"kappa_sub": [0.005, 0.03], "log10_m_hm": [7.0, 10.0]}
    assert PopulationPrior.from_dict(prior.to_dict()) == prior
    u = prior.standardize([[0.005, 7.0], [0.03, 10.0]]).numpy()
    np.testing.assert_allclose(u, [[-1, -1], [1, 1]], atol=1e-6)
    pop = prior.to_population(tf.constant([[0.01, 8.0]]))
    assert set(pop) == {"kappa_sub", "m_hm"}
    np.testing.assert_allclose(pop["m_hm"].numpy(), [1e8], rtol=1e-5)
    draws = prior.sample(2000, seed=[1, 2]).numpy()
    assert prior.contains(draws).all()
    for bad, match in ((("kappa_sub", "fsub"), "unknown population parameter"),
                       (("kappa_sub", "kappa_sub"), "distinct")):
        with pytest.raises(ValueError, match=match):
            PopulationPrior(bad, (0, 0), (1, 1))
    with pytest.raises(ValueError, match="kappa_sub.*leaves"):
        PopulationPrior.from_names(["kappa_sub"], {"kappa_sub": (-0.01, 0.02)})
    with pytest.raises(ValueError, match="low < high"):
        PopulationPrior.from_names(["subhalo_beta"], {"subhalo_beta": (-1.5, -2.5)})
    with pytest.raises(ValueError, match="not in names"):
        PopulationPrior.from_names(["kappa_sub"], {"subhalo_beta": (-2, -1)})
    with pytest.raises(ValueError, match="subhalo_model"):
        PopulationPairSimulator(_generator(subhalo_model="none"), prior)
    with pytest.raises(ValueError, match="wdm"):
        PopulationPairSimulator(_generator(subhalo_model="cdm"), prior)
    assert set(POPULATION_PARAMETERS) == {"kappa_sub", "subhalo_beta", "log10_m_hm"}


def test_joint_ratio_and_score_identities():
    """Under z ~ p(z | theta_1): E[exp log r(z | theta_0, theta_1)] = 1 (the joint ratio
    is a likelihood ratio) and E[t(z | theta_1)] = 0 (the score has mean zero); the score
    equals central differences of log p. A score or ratio missing a term (e.g. the
    Poisson number's) fails the first two; a wrong sign or scale the third."""
    gen = _generator()
    prior = PopulationPrior.from_names("kappa_sub,subhalo_beta,log10_m_hm")
    sim = PopulationPairSimulator(gen, prior)
    n = 4000
    lens = {"lens.0.theta_E": tf.fill([n], 1.2), "lens.0.center_x": tf.zeros([n]),
            "lens.0.center_y": tf.zeros([n])}
    theta_1 = tf.constant([[0.01, -1.9, 8.0]] * n)
    theta_0 = tf.constant([[0.012, -2.0, 8.2]] * n)
    z = gen.subhalo_population(lens["lens.0.theta_E"], lens["lens.0.center_x"],
                               lens["lens.0.center_y"], prior.to_population(theta_1)).sample(
        seed=[3, 4])
    out = {"truths": lens, "subhalos": z}
    log_r = (sim.log_prob_subhalos(out, theta_0) - sim.log_prob_subhalos(out, theta_1)).numpy()
    w = np.exp(log_r.astype(np.float64))
    assert abs(w.mean() - 1.0) < 4 * w.std() / np.sqrt(n), (w.mean(), w.std())
    t = sim.joint_score(out, theta_1).numpy().astype(np.float64)
    se = t.std(0) / np.sqrt(n)
    assert np.all(np.abs(t.mean(0)) < 4 * se), (t.mean(0), se)
    # central differences on a few lenses, in float64 arithmetic of the float32 model
    m = 6
    sub = {"truths": {k: v[:m] for k, v in lens.items()},
           "subhalos": {k: v[:m] for k, v in z.items()}}
    th = theta_1.numpy()[:m]
    t6 = sim.joint_score(sub, th).numpy()
    for j, h in enumerate((2e-4, 2e-3, 2e-3)):
        e = np.zeros(3, np.float32)
        e[j] = h
        fd = (sim.log_prob_subhalos(sub, th + e).numpy()
              - sim.log_prob_subhalos(sub, th - e).numpy()) / (2 * h)
        np.testing.assert_allclose(t6[:, j], fd, rtol=0.02, atol=0.05 * np.abs(fd).max())


def test_pair_batches_are_consistent():
    """A compiled batch of pairs: images at the picked point, the joint ratio equals the
    difference of the population's log densities, and the seed makes it reproducible."""
    gen = _generator(n_max=24)
    prior = PopulationPrior.from_names("kappa_sub,log10_m_hm")
    sim = PopulationPairSimulator(gen, prior)
    b = sim.batch(0, 16)
    assert b["image"].shape == (16, 16, 16) and b["joint_score"].shape == (16, 2)
    y = b["y"].numpy()
    assert 0 < y.sum() < 16
    np.testing.assert_array_equal(b["theta"].numpy(),
                                  np.where(y[:, None] > 0, b["theta_0"], b["theta_1"]))
    assert np.all(np.isfinite(b["joint_log_ratio"].numpy()))
    np.testing.assert_array_equal(sim.batch(0, 16)["image"].numpy(), b["image"].numpy())
    assert not np.array_equal(sim.batch(1, 16)["image"].numpy(), b["image"].numpy())
    # given subhalos: the same seed renders the same lenses; with the batch's own subhalos
    # the same images, without subhalos other ones
    seed = tf.constant([5, 6])
    own = gen.simulate(seed, 4, {"kappa_sub": tf.fill([4], 0.005)})
    again = gen.simulate(seed, 4, subhalos=own["subhalos"])
    np.testing.assert_allclose(again["model"].numpy(), own["model"].numpy(), rtol=1e-6)
    none = {k: tf.zeros_like(v) for k, v in own["subhalos"].items()}
    smooth = gen.simulate(seed, 4, subhalos=none)["model"].numpy()
    has = own["subhalos"]["mask"].numpy().any(1)
    assert has.any()
    diff = np.abs(smooth - own["model"].numpy()).max((1, 2))
    assert np.all(diff[has] > 0) and np.all(diff[~has] == 0)
    # more subhalos at larger kappa_sub: the count follows the picked point
    n = b["num_subhalos"].numpy()
    np.testing.assert_allclose(b["latent_summary"].numpy()[:, 0] * np.sqrt(24), n, rtol=1e-5)
    k = b["theta"].numpy()[:, 0]
    assert stats.spearmanr(k, n).statistic > 0.3


class _GaussianToy:
    """x_i ~ N(theta, sigma^2 I) per lens: an exact log-likelihood on the grid."""

    def __init__(self, prior, sigma):
        self.prior, self.sigma = prior, np.asarray(sigma, float)

    def log_ratios(self, x, axes, scale=1.0):
        g = grid_points(axes)
        return scale * stats.norm.logpdf(x[:, None, :], g[None], self.sigma).sum(-1)


@pytest.mark.parametrize("names", [("kappa_sub",), ("kappa_sub", "subhalo_beta")])
def test_grid_posterior_is_calibrated_and_rejects_overconfidence(names, rng):
    """Coverage of the HPD regions over 300 ensembles of 5 lenses with theta from the
    prior, with the exact likelihood: 68% and 95% at their nominal rates; with the same
    likelihood sharpened by 2 (an overconfident ratio estimator) far below them."""
    prior = PopulationPrior.from_names(list(names))
    toy = _GaussianToy(prior, 0.3 * (np.array(prior.high) - np.array(prior.low)))
    est = types.SimpleNamespace(prior=prior)
    axes = prior.grid(61 if len(names) == 1 else 31)
    levels, sharp = [], []
    for _ in range(300):
        theta = rng.uniform(prior.low, prior.high)
        x = theta + toy.sigma * rng.standard_normal((5, len(names)))
        post = population_posterior(est, log_ratios=toy.log_ratios(x, axes), axes=axes)
        levels.append(post.hpd_level(theta))
        sharp.append(population_posterior(est, log_ratios=toy.log_ratios(x, axes, 2.0),
                                          axes=axes).hpd_level(theta))
    cov = ensemble_coverage(levels)
    for lv, c in cov.items():
        assert abs(c["coverage"] - lv) < 3.5 * c["stderr"] + 0.01, (lv, c)
    bad = ensemble_coverage(sharp)
    assert bad[0.68]["coverage"] < 0.68 - 4 * bad[0.68]["stderr"]
    # the summary of one posterior against the analytic (truncated normal) one
    theta = np.array([(lo + hi) / 2 for lo, hi in zip(prior.low, prior.high)])
    x = theta + toy.sigma * rng.standard_normal((5, len(names)))
    fine = prior.grid(401 if len(names) == 1 else 101)
    post = population_posterior(est, log_ratios=toy.log_ratios(x, fine), axes=fine)
    s = post.summary()[names[0]]
    mu, sd = x[:, 0].mean(), toy.sigma[0] / np.sqrt(5)
    a, b = (prior.low[0] - mu) / sd, (prior.high[0] - mu) / sd
    ref = stats.truncnorm(a, b, loc=mu, scale=sd)
    tol = 0.01 * sd if len(names) == 1 else 0.03 * sd
    assert abs(s["mean"] - ref.mean()) < tol and abs(s["std"] - ref.std()) < 2 * tol
    assert abs(s["p16"] - ref.ppf(0.16)) < 2 * tol and abs(s["p97.5"] - ref.ppf(0.975)) < 2 * tol


def test_ratio_network_round_trip_and_bad_input(tmp_path):
    prior = PopulationPrior.from_names("kappa_sub,log10_m_hm")
    net = PopulationRatioEstimator(prior.names, prior.low, prior.high, num_pix=16,
                                   filters=(4, 8), features=8, hidden=(16,),
                                   simulation={"num_pix": 16})
    rng = np.random.default_rng(0)
    inputs = {"image": rng.normal(size=(3, 16, 16)).astype(np.float32),
              "noise": np.ones(3, np.float32)}
    t0 = prior.sample(3, seed=[1, 1])
    t1 = prior.sample(3, seed=[2, 2])
    r01 = net.log_ratio(inputs, t0, t1).numpy()
    np.testing.assert_allclose(r01, -net.log_ratio(inputs, t1, t0).numpy(), atol=1e-6)
    grid = np.concatenate([t0.numpy(), t1.numpy()])
    f = net.log_ratio_grid(inputs, grid, batch_size=2)
    assert f.shape == (3, 6)
    np.testing.assert_allclose(f[np.arange(3), np.arange(3)] - f[np.arange(3), 3 + np.arange(3)],
                               r01, atol=1e-5)
    path = str(tmp_path / "ratio.keras")
    net.save(path)
    back = keras.models.load_model(path)
    assert isinstance(back, PopulationRatioEstimator) and back.simulation == {"num_pix": 16}
    np.testing.assert_allclose(back.log_ratio_grid(inputs, grid), f, atol=1e-5)
    with pytest.raises(ValueError, match=r"image must be \[batch, 16, 16\]"):
        net.log_ratio_grid({"image": np.zeros((1, 8, 8)), "noise": np.ones(1)}, grid)
    with pytest.raises(ValueError, match="grid must be"):
        net.log_ratio_grid(inputs, grid[:, :1])
    with pytest.raises(ValueError, match="loss must be one of"):
        PopulationRatioEstimator(prior.names, prior.low, prior.high, loss="rascal")
    with pytest.raises(ValueError, match="no lenses"):
        population_posterior(net, log_ratios=np.zeros((0, 41 * 41)))


def _run(argv):
    import contextlib
    import io

    from tfstronglens import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_show_config_simulate_infer_round_trip_and_bad_input(tmp_path):
    """``infer-population --show-config`` prints a config that ``simulate --config`` reads;
    the images it writes go into ``infer-population``, which writes the posterior summary;
    images of another configuration, an empty folder and unknown parameter names are one
    clear error each."""
    import json

    sim = dict(instrument="hst_acs_f814w", num_pix=16, supersample=1, lens_light=False,
               subhalo_model="wdm", n_max=8, m_min=1e9, m_max=1e11)
    prior = PopulationPrior.from_names("kappa_sub,log10_m_hm")
    net = PopulationRatioEstimator(prior.names, prior.low, prior.high, num_pix=16,
                                   pixel_scale=0.05, filters=(4, 8), features=8, hidden=(16,),
                                   simulation=sim)
    model = str(tmp_path / "ratio.keras")
    net.save(model)
    code, stdout, stderr = _run(["infer-population", "--show-config", "--model", model])
    assert code == 0 and "kappa_sub in [0.002, 0.02]" in stderr
    cfg = json.loads(stdout)
    assert cfg["num_pix"] == 16 and cfg["subhalo_model"] == "wdm"
    (tmp_path / "cfg.json").write_text(stdout)
    code, _, stderr = _run(["simulate", "--config", str(tmp_path / "cfg.json"), "--n", "3",
                            "--out", str(tmp_path / "images"), "--no-progress"])
    assert code == 0, stderr
    out = tmp_path / "post"
    code, stdout, stderr = _run(["infer-population", str(tmp_path / "images"), "--model", model,
                                 "--points", "11", "--out", str(out)])
    assert code == 0, stderr
    post = json.loads((out / "posterior.json").read_text())
    assert post["num_lenses"] == 3 and len(post["files"]) == 3
    assert set(post["summary"]) == {"kappa_sub", "log10_m_hm"}
    assert np.asarray(post["log_posterior"]).shape == (11, 11)
    assert np.isclose(np.exp(np.asarray(post["log_posterior"])).sum(), 1.0)
    s = post["summary"]["log10_m_hm"]
    assert 7.0 <= s["p2.5"] <= s["p16"] <= s["p50"] <= s["p84"] <= s["p97.5"] <= 10.0
    assert (out / "posterior.png").stat().st_size > 1000
    # bad input: another image size, an empty folder, unknown parameter names
    from tfstronglens.io import write_fits

    (tmp_path / "big").mkdir()
    write_fits(str(tmp_path / "big" / "a.fits"), np.ones((20, 20), np.float32),
               pixel_scale=0.05, header={"BKGRMS": 0.01})
    (tmp_path / "empty").mkdir()
    for argv, needle in (
            ([str(tmp_path / "big"), "--model", model], "20x20 pixels, but the estimator was "
                                                        "trained on 16x16"),
            ([str(tmp_path / "empty"), "--model", model], "holds no .fits files"),
            ([str(tmp_path / "images"), "--model", str(tmp_path / "nothing.keras")],
             "does not exist")):
        code, _, stderr = _run(["infer-population"] + argv + ["--out", str(tmp_path / "x")])
        assert code == 2 and needle in stderr, stderr
        assert not (tmp_path / "x").exists()
    code, _, stderr = _run(["train-ratio", "--params", "kappa_sub,f_sub", "--out",
                            str(tmp_path / "t")])
    assert code == 2 and "f_sub" in stderr and not (tmp_path / "t").exists()
    code, _, stderr = _run(["train-ratio", "--params", "kappa_sub", "--prior", "kappa_sub=0.1",
                            "--out", str(tmp_path / "t")])
    assert code == 2 and "NAME=LOW:HIGH" in stderr


def test_calibration_scale_recovers_a_temperature_and_ignores_noise(rng):
    """Logits of a calibrated classifier, sharpened 3x, are rescaled by about 1/3; logits
    that carry no information are shrunk (towards a flat posterior), never stretched."""
    from tfstronglens.models.ratio_training import calibration_curve, fit_calibration

    true = rng.normal(0.0, 1.5, 20000)
    y = (rng.uniform(size=true.size) < 1 / (1 + np.exp(-true))).astype(float)
    assert abs(fit_calibration(3.0 * true, y) - 1 / 3) < 0.02
    assert calibration_curve(true, y)["ece"] < 0.02
    assert calibration_curve(3.0 * true, y)["ece"] > 0.1
    for width in (0.01, 1.0):
        noise = rng.normal(0.0, width, 20000)
        assert fit_calibration(noise, rng.integers(0, 2, 20000).astype(float)) <= 1.0
