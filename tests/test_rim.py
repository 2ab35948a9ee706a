"""The RIM source reconstructor, its lensing operator, its training loop and the source
reconstruction methods: exactness of the physics, serialization round trips, resume, and
one clear error per kind of bad input."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from tfstronglens.lensing import SourceOperator
from tfstronglens.models import RIM, load_rim, source_error
from tfstronglens.models.rim_training import rim_dataset
from tfstronglens.simulation import LensDatasetGenerator, LensSimulationConfig

LENS = [dict(theta_E=1.0, e1=0.1, e2=-0.05, center_x=0.02, center_y=-0.01),
        dict(gamma1=0.02, gamma2=0.01)]
SMALL = dict(num_pix=32, pixel_scale=0.08, supersample=2, source_num_pix=32,
             source_pixel_scale=0.05, steps=3, filters=(4, 4, 8), psf_size=7)


def _gaussian_source(n=32, scale=0.05, x0=0.1, y0=-0.05, width=0.15):
    c = (np.arange(n) - 0.5 * (n - 1)) * scale
    xx, yy = np.meshgrid(c, c)
    return np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / width**2).astype(np.float32)


@pytest.fixture(scope="module")
def operator():
    return SourceOperator(tsl.PixelGrid(32, 0.08, 2), ["SIE", "SHEAR"], 32, 0.05)


@pytest.fixture(scope="module")
def psf():
    k = tsl.GaussianPSF(0.12).kernel(0.08)
    return (k / k.sum()).astype(np.float32)


def test_operator_is_the_simulator_and_its_adjoint_is_exact(operator, psf):
    rng = np.random.default_rng(0)
    lens = operator.pack(LENS)
    rays = operator.trace(tf.constant(lens))
    s = tf.constant(rng.uniform(0, 1, (2, 32, 32)), tf.float32)
    img = operator.forward(s, rays, tf.constant(psf))
    # the same image from the Simulator with a PixelatedSource
    sim = tsl.Simulator(tsl.PixelGrid(32, 0.08, 2), lens=["SIE", "SHEAR"],
                        source=[tsl.PixelatedSource(32, 0.05)], psf=tsl.PixelPSF(psf),
                        jit_compile=False)
    ref = sim(lens=LENS, source=[dict(image=s)])
    np.testing.assert_allclose(img.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    # dot-product test: <A s, r> = <s, A^T r>
    r = tf.constant(rng.normal(size=(2, 32, 32)), tf.float32)
    lhs = tf.reduce_sum(img * r).numpy()
    rhs = tf.reduce_sum(s * operator.adjoint(r, rays, tf.constant(psf))).numpy()
    assert abs(lhs - rhs) < 1e-4 * abs(lhs)


def test_rim_shapes_serialization_and_export(tmp_path, psf):
    tf.keras.utils.set_random_seed(1)
    rim = RIM(**SMALL)
    lens = rim.pack_lens([dict(theta_E=[1.0, 1.1], e1=0.1, e2=0.0), dict(gamma1=0.01, gamma2=0)])
    rng = np.random.default_rng(1)
    inputs = {"image": rng.uniform(0, 1, (2, 32, 32)).astype("float32"),
              "noise": np.full((2, 32, 32), 0.1, "float32"),
              "psf": np.tile(psf[None], (2, 1, 1)), "lens": lens}
    out = rim(inputs)
    assert out.shape == (2, 3, 32, 32) and np.all(np.isfinite(out))
    # linear physics, normalised network inputs: scaling the data scales the source
    scaled = rim(dict(inputs, image=3 * inputs["image"], noise=3 * inputs["noise"]))
    np.testing.assert_allclose(scaled.numpy(), 3 * out.numpy(), rtol=2e-4, atol=1e-4)
    path = tmp_path / "rim.keras"
    rim.save(path)
    again = load_rim(str(path))
    np.testing.assert_allclose(again(inputs).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)
    other = rim.with_observation(lens_models=["EPL", "SHEAR"])
    assert other.lens_param_names[1] == "lens.0.gamma"
    export = rim.export(str(tmp_path / "saved"))
    loaded = tf.saved_model.load(export)  # (keep a reference: it owns the variables)
    served = loaded.serve(**{k: tf.constant(v) for k, v in inputs.items()})
    np.testing.assert_allclose(served.numpy(), out.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(FileExistsError):
        rim.export(str(tmp_path / "saved"))


@pytest.mark.parametrize("bad, match", [
    (dict(image=np.zeros((2, 30, 30), "float32")), "image must have shape"),
    (dict(lens=np.zeros((2, 3), "float32")), "lens must have shape"),
    (dict(psf=np.zeros((2, 4, 4), "float32")), "psf must have shape"),
])
def test_rim_refuses_inputs_of_the_wrong_shape(bad, match, psf):
    rim = RIM(**SMALL)
    inputs = {"image": np.zeros((2, 32, 32), "float32"), "noise": np.ones((2, 32, 32), "float32"),
              "psf": np.tile(psf[None], (2, 1, 1)), "lens": np.zeros((2, 9), "float32")}
    with pytest.raises(ValueError, match=match):
        rim(dict(inputs, **bad))


def test_load_rim_refuses_what_is_not_a_rim(tmp_path):
    with pytest.raises(ValueError, match="holds no rim.keras"):
        load_rim(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_rim(str(tmp_path / "missing.keras"))
    vae = tsl.models.VAE(image_size=16, latent_dim=2, base_filters=4, max_filters=4)
    vae.save(tmp_path / "vae.keras")
    with pytest.raises(ValueError, match="not a RIM"):
        load_rim(str(tmp_path / "vae.keras"))


def test_galaxy_sources_truth_renders_the_simulated_image():
    cfg = LensSimulationConfig(instrument="hst_acs_f814w", num_pix=32, supersample=1,
                               lens_light=False, source="galaxies", galaxy_count=8, seed=4)
    gen = LensDatasetGenerator(cfg)
    out = gen.generate(0, 4)
    t = out["truths"]
    assert out["source_image"].shape == (4, 64, 64)
    # rotations are drawn, mirror images too, and the image is the stored truth
    assert len(set(np.round(t["source.0.phi_G"], 4))) == 4
    sim = gen.simulator
    lens = [{k: t[f"lens.0.{k}"] for k in ("theta_E", "e1", "e2", "center_x", "center_y")},
            {k: t[f"lens.1.{k}"] for k in ("gamma1", "gamma2")}]
    src = [dict(image=out["source_image"], center_x=t["source.0.center_x"],
                center_y=t["source.0.center_y"], phi_G=t["source.0.phi_G"])]
    np.testing.assert_allclose(sim(lens=lens, source=src).numpy(), out["model"],
                               rtol=1e-4, atol=1e-4 * out["model"].max())
    # the source on another grid is the same light: total flux agrees
    grid = gen.source_on_grid(out, 48, 0.04).numpy()
    flux_grid = grid.sum(axis=(1, 2)) * 0.04**2
    flux_img = out["source_image"].sum(axis=(1, 2)) * gen.source_pixel_scale**2
    np.testing.assert_allclose(flux_grid, flux_img, rtol=0.02)


def test_train_on_stream_learns_and_resumes(tmp_path):
    from tfstronglens.models.rim_training import train_rim

    sim = dict(instrument="hst_acs_f814w", num_pix=32, supersample=1, lens_light=False,
               source="galaxies", galaxy_count=16, lens_model="sie+shear")
    kw = dict(simulation=sim, batch_size=4, rim_steps=2, filters=(4, 4, 8), source_num_pix=32,
              source_pixel_scale=0.05, steps_per_checkpoint=2, num_heldout=4, progress=False)
    out = tmp_path / "run"
    train_rim(out, steps=2, **kw)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    report = train_rim(out, steps=4, **kw)  # resumes from step 2
    assert report["steps"] == 4 and [h["step"] for h in report["history"]] == [2, 4]
    assert {"rim.keras", "report.json", "reconstructions.png", "saved_model"} <= set(
        os.listdir(out))
    with pytest.raises(ValueError, match="other settings"):
        train_rim(out, steps=6, **dict(kw, batch_size=8))
    # the same loop under a tf.distribute strategy (one CPU replica here): same steps, the
    # loss scaled per replica, a checkpoint that resumes
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    report = train_rim(tmp_path / "mirrored", steps=2, strategy=strategy, **kw)
    assert report["steps"] == 2 and np.isfinite(report["history"][-1]["loss"])


def test_pixelated_inversion_recovers_a_smooth_source(operator, psf):
    from tfstronglens.inference.reconstruction import pixelated_inversion

    truth = 5.0 * _gaussian_source()
    lens = operator.pack(LENS)
    rays = operator.trace(tf.constant(lens))
    clean = operator.forward(tf.constant(truth[None]), rays, tf.constant(psf)).numpy()[0]
    sigma = 0.01 * clean.max()
    noisy = clean + sigma * np.random.default_rng(2).normal(size=clean.shape)
    source, details = pixelated_inversion(operator, noisy, np.full_like(noisy, sigma), psf, lens)
    chi2 = details["chi2_per_pixel_by_lambda"][f"{details['lambda_relative']:.3g}"]
    assert abs(chi2 - 1.0) < 0.15, details
    assert float(source_error(source, truth)) < 0.05, float(source_error(source, truth))
    # a source that is not there is not recovered: the error of zeros is 1
    assert float(source_error(np.zeros_like(truth), truth)) == pytest.approx(1.0)


def test_reconstruct_cli_bad_input_writes_nothing(tmp_path):
    from tfstronglens.cli import main
    from tfstronglens.io import write_fits

    img = np.random.default_rng(3).normal(size=(32, 32)).astype("float32")
    write_fits(tmp_path / "lens.fits", img, pixel_scale=0.08, header={"BKGRMS": 1.0})
    nan = img.copy()
    nan[3, 4] = np.nan
    write_fits(tmp_path / "nan.fits", nan, pixel_scale=0.08, header={"BKGRMS": 1.0})
    good = tmp_path / "lens.json"
    good.write_text(json.dumps(LENS))
    (tmp_path / "missing.json").write_text(json.dumps([{"theta_E": 1.0}, {}]))
    (tmp_path / "unknown.json").write_text(json.dumps([dict(LENS[0], gamma=2.0), LENS[1]]))
    (tmp_path / "notarim").mkdir()
    base = ["reconstruct", str(tmp_path / "lens.fits"), "--lens", "sie+shear", "--psf-fwhm",
            "0.12", "--method", "pixelated"]
    cases = [
        (["--lens-params", str(tmp_path / "missing.json")], "lacks"),
        (["--lens-params", str(tmp_path / "unknown.json")], "unknown parameter"),
        (["--lens-params", str(tmp_path / "nope.json")], "does not exist"),
        (["--lens-params", str(good), "--method", "rim", "--model",
          str(tmp_path / "notarim")], "not a RIM"),
    ]
    for extra, match in cases:
        out = tmp_path / "out"
        code = main(base + extra + ["--out", str(out)])
        assert code == 2 and not out.exists(), (extra, match)
    code = main(["reconstruct", str(tmp_path / "nan.fits"), "--lens", "sie+shear", "--psf-fwhm",
                 "0.12", "--lens-params", str(good), "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()


def test_rim_source_fits_the_lens_alone():
    """A LensModel with the shipped RIM as source has only lens parameters; its likelihood
    prefers the true lens, and its gradient points back to it."""
    from tfstronglens.inference import build_model
    from tfstronglens.models.rim import RIMSource
    from tfstronglens.models.rim_training import DEFAULT_RIM_SIMULATION

    cfg = LensSimulationConfig.from_dict(dict(
        DEFAULT_RIM_SIMULATION, seed=7, galaxy_split="validation", galaxy_count=8,
        priors={"source_snr": [45.0, 50.0], "theta_E": [1.2, 1.3]}))
    gen = LensDatasetGenerator(cfg)
    out = gen.generate(0, 1)
    model = build_model(gen.observation, out["image"][0], lens="sie+shear", source=RIMSource(),
                        noise_map=out["noise_sigma"][0], jit_compile=False)
    names = ["lens.0.theta_E", "lens.0.e1", "lens.0.e2", "lens.0.center_x", "lens.0.center_y",
             "lens.1.gamma1", "lens.1.gamma2"]
    assert model.param_names == names
    truth = {n: float(out["truths"][n][0]) for n in names}
    off = dict(truth, **{"lens.0.theta_E": truth["lens.0.theta_E"] * 1.05})
    shifted = dict(truth, **{"lens.0.center_x": truth["lens.0.center_x"] + 0.05})
    ll = {k: float(model.log_likelihood(p)) for k, p in
          (("truth", truth), ("off", off), ("shifted", shifted))}
    assert ll["truth"] > ll["off"] + 10 and ll["truth"] > ll["shifted"] + 10, ll
    _, grad = model.value_and_gradient(model.to_flat(off), objective="likelihood")
    grad = np.asarray(grad).ravel()
    assert np.all(np.isfinite(grad)) and grad[0] < 0  # theta_E too large: pulled down


def test_fit_cli_refuses_rim_where_it_does_not_apply(tmp_path):
    from tfstronglens.cli import main
    from tfstronglens.io import write_fits

    img = np.random.default_rng(5).normal(size=(32, 32)).astype("float32")
    write_fits(tmp_path / "lens.fits", img, pixel_scale=0.05, header={"BKGRMS": 1.0})
    base = ["fit", str(tmp_path / "lens.fits"), "--lens", "sie+shear", "--psf-fwhm", "0.1"]
    for extra in (["--source", "rim", "--method", "hmc"],
                  ["--source", "sersic", "--source-init", "rim"],
                  ["--source", "vae", "--source-init", "rim", "--lens-light", "sersic"]):
        out = tmp_path / "out"
        assert main(base + extra + ["--out", str(out)]) == 2 and not out.exists(), extra


GALSIM_REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "galsim_real")


def test_rim_on_real_aegis_galaxies(tmp_path):
    """The shipped RIM on the five real AEGIS F814W galaxies (GalSim's test data) lensed by
    SIE + shear lenses: the reconstructions fit the data to the noise."""
    if not os.path.isfile(os.path.join(GALSIM_REAL, "AEGIS_F814w_catalog.fits")):
        pytest.skip(f"GalSim's real AEGIS test data not found in {GALSIM_REAL}")
    import tensorflow_datasets as tfds

    from tfstronglens.datasets.cosmos_galaxies import CosmosGalaxies, CosmosGalaxiesConfig
    from tfstronglens.models.rim_training import DEFAULT_RIM_SIMULATION, evaluate_rim
    from tfstronglens.simulation.sources import GalaxyStampSampler

    cfg = CosmosGalaxiesConfig(name="aegis_native", catalog="AEGIS_F814w_catalog.fits",
                               stamp_size=64, psf_size=33, snr_range=(0.0, 1e5),
                               validation_fraction=0.0)
    b = CosmosGalaxies(config=cfg, data_dir=str(tmp_path))
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=GALSIM_REAL))
    stamps = np.stack([np.asarray(e["image"], np.float32).reshape(64, 64)
                       for e in tfds.as_numpy(b.as_dataset(split="train"))])
    assert len(stamps) == 5
    sim = LensSimulationConfig.from_dict(dict(DEFAULT_RIM_SIMULATION, seed=51, galaxy_count=5))
    gen = LensDatasetGenerator(sim, source_sampler=GalaxyStampSampler(sim, stamps=stamps,
                                                                      pixel_scale=0.03))
    out = gen.generate(0, 2)
    # the custom stamps are what is lensed (peak-normalised, mirrored or not)
    src = out["source_image"] / out["truths"]["source.0.amp"][:, None, None]
    assert any(np.allclose(src[0], s / s.max(), atol=1e-6) or
               np.allclose(src[0], (s / s.max())[:, ::-1], atol=1e-6) for s in stamps)
    ev = evaluate_rim(load_rim(), gen, 16, batch_size=16)
    assert 0.95 < np.median(ev["chi2_per_pixel"]) < 1.05, ev["chi2_per_pixel"]
    assert np.median(ev["source_error"]) < 0.3, ev["source_error"]
