"""LensModel: names, priors, bijector and Jacobian, likelihood against hand-written maths."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfstronglens as tsl
from tfstronglens.inference import LensModel, build_model
from tfstronglens.observation.subhalos import subhalo_lens_kwargs
from tfstronglens.profiles.base import LightProfile

tfd = tfp.distributions

TRUTH = {"lens.0.theta_E": 0.7, "lens.0.e1": 0.1, "lens.0.e2": -0.05, "lens.0.center_x": 0.02,
         "lens.0.center_y": -0.03, "lens.1.gamma1": 0.03, "lens.1.gamma2": 0.01,
         "source.0.amp": 20.0, "source.0.R_sersic": 0.15, "source.0.n_sersic": 1.5,
         "source.0.e1": 0.1, "source.0.e2": 0.2, "source.0.center_x": 0.05,
         "source.0.center_y": 0.02}


def _obs(n=24):
    return tsl.Observation(n, 0.08, 2000.0, background_rms=0.05, psf=tsl.GaussianPSF(0.12))


def _model(**kw):
    kw.setdefault("amp_scale", 10.0)
    kw.setdefault("supersample", 1)
    kw.setdefault("jit_compile", False)
    return LensModel(_obs(), **kw)


class LatentSource(LightProfile):
    """A toy 'decoder': a round Gaussian blob whose size and flux depend on a latent z."""

    name = ""
    param_names = ("z", "amp", "center_x", "center_y")
    defaults = {"center_x": 0.0, "center_y": 0.0}
    param_event_ndims = {"z": 1}
    latent_dim = 3

    def _surface_brightness(self, x, y, z, amp, center_x, center_y):
        s = 0.1 * tf.exp(0.2 * z[..., 0])[..., None, None]
        w = (1.0 + 0.1 * tf.tanh(z[..., 1] + z[..., 2]))[..., None, None]
        r2 = (x - center_x) ** 2 + (y - center_y) ** 2
        return amp * w * tf.exp(-0.5 * r2 / s**2)


def test_parameter_names():
    m = _model()
    assert m.param_names == list(TRUTH)
    m2 = _model(lens="epl+shear", lens_light="sersic", num_subhalos=2)
    assert m2.param_names[:2] == ["lens.0.theta_E", "lens.0.gamma"]
    assert "lens_light.0.R_sersic" in m2.param_names
    assert m2.param_names[-6:] == ["subhalo.0.mass", "subhalo.0.center_x", "subhalo.0.center_y",
                                   "subhalo.1.mass", "subhalo.1.center_x", "subhalo.1.center_y"]
    assert m2.num_params == 28
    m3 = _model(source=LatentSource())
    assert [n for n in m3.param_names if n.startswith("source")] == [
        "source.z.0", "source.z.1", "source.z.2", "source.0.amp", "source.0.center_x",
        "source.0.center_y"]
    assert isinstance(m3.prior.model["source.z.1"], tfd.Normal)
    m4 = _model(source="pixelated", source_num_pix=6)
    assert m4.parameters[-1] == "source.0.image"
    assert m4.param_names[-36:] == [f"source.0.image.{k}" for k in range(36)]


def test_round_trip_and_support():
    m = _model(lens="epl+shear", lens_light="sersic", num_subhalos=1)
    p = m.sample_prior(5, seed=1)
    x = m.to_flat(p)
    assert x.shape == (5, m.num_params)
    back = m.from_flat(x)
    for k in p:
        np.testing.assert_allclose(back[k], p[k], rtol=2e-5, atol=1e-5, err_msg=k)
    # the TFP bijector agrees with from_flat, and arbitrary x lands in the support
    xr = tf.random.stateless_normal([7, m.num_params], [1, 2]) * 3.0
    a = m.from_flat(xr)
    b = m.bijector.forward(xr)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)
    assert np.all(np.isfinite(m.log_prior(a).numpy()))
    lo, hi = m.subhalo_mass_range
    assert np.all((a["subhalo.0.mass"].numpy() >= lo) & (a["subhalo.0.mass"].numpy() <= hi))
    assert np.all(np.abs(a["lens.0.e1"].numpy()) < 0.45)
    # batched over several leading dimensions
    x3 = tf.reshape(xr[:6], [2, 3, m.num_params])
    p3 = m.from_flat(x3)
    assert p3["lens.0.theta_E"].shape == (2, 3)
    np.testing.assert_allclose(m.to_flat(p3), x3, rtol=1e-4, atol=1e-4)


def test_log_posterior_is_prior_plus_likelihood_by_hand():
    m = _model()
    truth = {k: np.float32(v) for k, v in TRUTH.items()}
    data = m.simulate(truth, seed=3)[0]
    model_img = m.render(truth)[0]
    # the likelihood by hand: independent Gaussians with the Observation's variance
    var = 0.05**2 + np.maximum(model_img.numpy().astype(np.float64), 0) / 2000.0
    r = data.numpy().astype(np.float64) - model_img.numpy()
    ll_hand = np.sum(-0.5 * r**2 / var - 0.5 * np.log(2 * np.pi * var))
    np.testing.assert_allclose(float(m.log_likelihood(truth, data)), ll_hand, rtol=1e-5)
    lp_hand = sum(float(m.prior.model[k].log_prob(v)) for k, v in truth.items())
    lp_hand2 = (tfd.Uniform(0.05 * 24 * 0.08, 0.5 * 24 * 0.08).log_prob(0.7)
                + tfd.TruncatedNormal(0.0, 0.2, -0.45, 0.45).log_prob(0.1)
                + tfd.Normal(0.0, 0.05).log_prob(0.03))
    lp3 = sum(float(m.prior.model[k].log_prob(truth[k]))
              for k in ("lens.0.theta_E", "lens.0.e1", "lens.1.gamma1"))
    np.testing.assert_allclose(lp3, float(lp_hand2), rtol=1e-6)
    np.testing.assert_allclose(float(m.log_prior(truth)), lp_hand, rtol=1e-6)
    np.testing.assert_allclose(float(m.prior.log_prob(truth)), lp_hand, rtol=1e-6)  # the JD
    np.testing.assert_allclose(float(m.log_posterior(truth, data)), lp_hand + ll_hand,
                               rtol=1e-5)
    # a given noise map and a mask
    sigma = np.full((24, 24), 0.07)
    mask = np.zeros((24, 24), bool)
    mask[4:20, 4:20] = True
    mn = _model(noise_map=sigma, mask=mask)
    ll_n = np.sum((-0.5 * r**2 / 0.07**2 - np.log(0.07) - 0.5 * np.log(2 * np.pi))[mask])
    np.testing.assert_allclose(float(mn.log_likelihood(truth, data)), ll_n, rtol=1e-5)


def test_unconstrained_density_jacobian():
    # everything fixed but theta_E: the unconstrained prior density integrates to 1
    fixed = {k: v for k, v in TRUTH.items() if k != "lens.0.theta_E"}
    m = _model(fixed=fixed, priors={"lens.0.theta_E": tsl.inference.log_uniform(0.3, 2.0)})
    assert m.param_names == ["lens.0.theta_E"]
    x = np.linspace(-25, 25, 20001, dtype=np.float32)[:, None]
    p = m.from_flat(x)
    dens = np.exp(m.log_prior(p).numpy().astype(np.float64)
                  + m.bijector.forward_log_det_jacobian(x, event_ndims=1).numpy())
    np.testing.assert_allclose(np.trapezoid(dens, x[:, 0]), 1.0, rtol=2e-3)
    # and the full model agrees with TFP's TransformedDistribution of the prior
    m2 = _model()
    data = m2.simulate(m2.sample_prior(1, seed=5), seed=6)[0]
    xr = tf.random.stateless_normal([4, m2.num_params], [3, 4])
    unc = m2.unconstrained_log_posterior(xr, data, jit_compile=False)
    ll = m2.log_likelihood(m2.from_flat(xr), data)
    pushed = tfd.TransformedDistribution(m2.prior, tfp.bijectors.Invert(m2.bijector))
    np.testing.assert_allclose((unc - ll).numpy(), pushed.log_prob(xr).numpy(), rtol=1e-4,
                               atol=1e-2)
    # objective="likelihood" is the likelihood alone
    np.testing.assert_allclose(
        m2.unconstrained_log_posterior(xr, data, objective="likelihood", jit_compile=False),
        ll, rtol=1e-6)


def test_target_in_tf_function_and_gradient_finite():
    # (XLA compilation of the same code is exercised by the MAP/VI tests)
    m = LensModel(_obs(16), amp_scale=10.0, supersample=1, num_subhalos=1, jit_compile=False,
                  fixed={k: v for k, v in TRUTH.items() if k.startswith("source")})
    data = m.simulate(m.sample_prior(1, seed=2), seed=1)[0]
    target = tf.function(m.target_log_prob_fn(data))
    x = m.sample_unconstrained_prior(3, seed=4)
    with tf.GradientTape() as tape:
        tape.watch(x)
        v = target(x)
    g = tape.gradient(v, x)
    np.testing.assert_allclose(v, m.unconstrained_log_posterior(x, data, jit_compile=False),
                               rtol=1e-4)
    assert np.all(np.isfinite(g.numpy()))


def test_subhalo_rendering_matches_simulator_and_nested_limit():
    lc = tsl.LensCosmology(0.5, 2.0)
    m = _model(num_subhalos=1, lens_cosmology=lc, subhalo_mass_range=(1e6, 1e11))
    p = {**TRUTH, "subhalo.0.mass": 3e9, "subhalo.0.center_x": -0.4, "subhalo.0.center_y": 0.5}
    img = m.render(p)[0]
    sample = {"mass": tf.constant([3e9]), "center_x": tf.constant([-0.4]),
              "center_y": tf.constant([0.5]), "mask": tf.constant([True])}
    kw = subhalo_lens_kwargs(sample, lc, "TNFW", theta_E_host=0.7, host_center_x=0.02,
                             host_center_y=-0.03, as_list=True)
    sim = tsl.Simulator(m.simulator.grid, lens=[tsl.SIE(), tsl.Shear(), tsl.TNFW()],
                        source=[tsl.SersicEllipse()], psf=_obs().psf)
    ref = sim(lens=[dict(theta_E=0.7, e1=0.1, e2=-0.05, center_x=0.02, center_y=-0.03),
                    dict(gamma1=0.03, gamma2=0.01), kw[0]],
              source=[dict(amp=20.0, R_sersic=0.15, n_sersic=1.5, e1=0.1, e2=0.2,
                           center_x=0.05, center_y=0.02)])[0]
    np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-6)
    # H0 is nested: at the smallest mass the image is the no-subhalo image to << noise
    m0 = m.replace(num_subhalos=0)
    img_min = m.render({**p, "subhalo.0.mass": 1e6})[0]
    img0 = m0.render(TRUTH)[0]
    chi2 = float(tf.reduce_sum((img_min - img0) ** 2 / m.observation.noise_variance(img0)))
    assert chi2 < 1e-3
    # a point mass renders too, with theta_E from the mass
    mp = _model(num_subhalos=1, subhalo_profile="POINT_MASS")
    assert np.all(np.isfinite(mp.render(p).numpy()))


def test_latent_and_pixelated_sources_render():
    m = _model(source=LatentSource())
    p = m.sample_prior(2, seed=1)
    img = m.render(p)
    assert img.shape == (2, 24, 24) and np.all(np.isfinite(img.numpy()))
    z = m.from_flat(m.to_flat(p))
    np.testing.assert_allclose(z["source.z.2"], p["source.z.2"], rtol=1e-5, atol=1e-6)
    for prior in ("gaussian", "smooth"):
        mp = _model(source="pixelated", source_num_pix=8, source_prior=prior)
        pp = mp.sample_prior(2, seed=2)
        assert pp["source.0.image"].shape == (2, 8, 8)
        assert mp.render(pp).shape == (2, 24, 24)
        np.testing.assert_allclose(mp.from_flat(mp.to_flat(pp))["source.0.image"],
                                   pp["source.0.image"], rtol=1e-4, atol=1e-4)
    # the smoothness prior correlates neighbouring pixels positively
    ms = _model(source="pixelated", source_num_pix=8, source_prior="smooth",
                source_smoothness=4.0)
    img = ms.sample_prior(400, seed=3)["source.0.image"].numpy()
    c = np.corrcoef(img[:, 3, 3], img[:, 3, 4])[0, 1]
    assert c > 0.5


def test_build_model_sets_amplitude_scale():
    obs = _obs()
    data = np.zeros((24, 24))
    data[10:13, 10:13] = 6.4 * obs.pixel_area   # 9 bright pixels (> 0.5% of 576)
    m = build_model(obs, data, supersample=1, jit_compile=False)
    assert m.amp_scale == pytest.approx(6.4)
    assert m.data is not None


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown parameter name"):
        _model(priors={"lens.0.theta_e": tfd.Normal(1.0, 0.1)})
    with pytest.raises(ValueError, match="must be a tfp.distributions"):
        _model(priors={"lens.0.theta_E": 1.0})
    with pytest.raises(ValueError, match="scalar distribution"):
        _model(priors={"lens.0.theta_E": tfd.Normal([1.0, 1.0], 0.1)})
    with pytest.raises(ValueError, match="dtype"):
        _model(priors={"lens.0.theta_E": tfd.Normal(tf.constant(1.0, tf.float64), 0.1)})
    with pytest.raises(ValueError, match="both a prior and a fixed"):
        _model(priors={"lens.0.e1": tfd.Normal(0.0, 0.1)}, fixed={"lens.0.e1": 0.0})
    with pytest.raises(ValueError, match="lens must be one of"):
        _model(lens="nfw")
    with pytest.raises(ValueError, match="source must be one of"):
        _model(source="shapelets")
    with pytest.raises(ValueError, match="noise_map"):
        _model(noise_map=np.zeros((24, 24)))
    with pytest.raises(ValueError, match="subhalo_mass_range"):
        _model(num_subhalos=1, subhalo_mass_range=(1e9, 1e8))
    m = _model()
    with pytest.raises(ValueError, match="missing"):
        m.log_prior({"lens.0.theta_E": 1.0})
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 14\]"):
        m.from_flat(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no data"):
        m.unconstrained_log_posterior(np.zeros((1, 14)))
    with pytest.raises(ValueError, match="data must have shape"):
        m.log_likelihood(TRUTH, np.zeros((10, 10)))
    with pytest.raises(ValueError, match="objective"):
        m.unconstrained_log_posterior(np.zeros((1, 14)), np.zeros((24, 24)), objective="ml")


def test_objective_binds_the_data_and_matches_the_model():
    """model.objective(data): value, value_and_gradient (compiled) and log_density (plain)
    agree with unconstrained_log_posterior; "likelihood" drops prior and Jacobian; the
    parameter blocks tile x in param_names order."""
    obs = tsl.Observation(24, 0.08, 2000.0, background_rms=0.05, psf=tsl.GaussianPSF(0.1))
    model = LensModel(obs, "sie+shear", "sersic", amp_scale=10.0, jit_compile=False)
    x = model.sample_unconstrained_prior(3, seed=1)
    data = model.simulate(model.from_flat(x[:1]), seed=2)[0]
    obj = model.objective(data)
    want = model.unconstrained_log_posterior(x, data, jit_compile=False).numpy()
    np.testing.assert_allclose(obj.value(x), want, rtol=1e-5)
    val, grad = obj.value_and_gradient(x)
    np.testing.assert_allclose(val, want, rtol=1e-5)
    np.testing.assert_allclose(obj.log_density(x), want, rtol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        lp = tf.reduce_sum(model.unconstrained_log_posterior(x, data, jit_compile=False))
    # compared row-wise in norm: at prior draws far from the data a gradient reaches 1e7,
    # and float32 sums of another order differ by ~3e-5 of that in single components
    want_grad = tape.gradient(lp, x).numpy()
    err = np.linalg.norm(grad.numpy() - want_grad, axis=1) / np.linalg.norm(want_grad, axis=1)
    assert np.all(err < 2e-4), err
    like = model.objective(data, "likelihood").value(x).numpy()
    np.testing.assert_allclose(like, model.log_likelihood(model.from_flat(x), data), rtol=1e-5)
    assert obj.render(x).shape == (3, 24, 24)
    blocks = model.parameter_blocks
    assert [b.name for b in blocks] == model.param_names
    assert [b.offset for b in blocks] == list(range(model.num_params))
    with pytest.raises(ValueError, match="objective must be one of"):
        model.objective(data, "evidence")
