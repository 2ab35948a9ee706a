"""The galaxy VAE (tfstronglens.models): ELBO, training, errors, serialization, export,
distribution, the VAESource light profile in the Simulator, train_vae and the CLI.

Models are tiny (16x16 stamps, a few filters, latent 2-4) so that the default tests stay
fast on a shared CPU; graph mode (no XLA) everywhere except where XLA is the point.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import tfstronglens as tsl
from tfstronglens import cli
from tfstronglens.models import VAE, VAESource, make_decoder, make_encoder, train_vae
from tfstronglens.models import _pretrained
from tfstronglens.models.training import within_noise_threshold

S = 16
TINY = dict(image_size=S, latent_dim=3, base_filters=4, max_filters=8)


def blobs(n, rng, size=S, sigma=0.1, width=2.0, vary_width=False):
    """Gaussian blobs of random amplitude (0.5-1.5) with Gaussian noise: (noisy, clean, sigma)."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    amp = rng.uniform(0.5, 1.5, n)[:, None, None]
    w = rng.uniform(1.5, 3.0, n)[:, None, None] if vary_width else width
    clean = (amp * np.exp(-(xx**2 + yy**2) / (2 * w**2))).astype(np.float32)
    noisy = (clean + sigma * rng.normal(size=clean.shape)).astype(np.float32)
    return noisy, clean, np.full(n, sigma, np.float32)


def feature_dataset(images, noise):
    n = len(images)
    return tf.data.Dataset.from_tensor_slices({
        "image": images, "noise_std": noise, "psf": np.ones([n, 3, 3], np.float32) / 9,
        "snr": np.ones(n, np.float32), "flux_scale": np.ones(n, np.float32),
        "mag": np.ones(n, np.float32), "id": np.arange(n, dtype=np.int64)})


def tiny_vae(**kw):
    keras.utils.set_random_seed(0)
    vae = VAE(**{**TINY, "seed": 0, **kw})
    vae.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    return vae


# --------------------------------------------------------------------- the ELBO
def test_elbo_identity_against_numpy(rng):
    """elbo_terms = log N(x; D(mu + s eps), sigma) and KL(N(mu, s) || N(0, 1)), from scipy."""
    vae = tiny_vae()
    x, _, _ = blobs(5, rng)
    sigma = rng.uniform(0.05, 0.2, 5).astype(np.float32)  # a different noise per stamp
    eps = rng.normal(size=(5, 3)).astype(np.float32)
    loglik, kl, chi2 = vae.elbo_terms(x, sigma[:, None, None], eps=eps)

    params = vae.encoder(x).numpy().astype(np.float64)
    mu, s = params[:, :3], np.logaddexp(0.0, params[:, 3:]) + 1e-4  # softplus + 1e-4
    z = (mu + s * eps).astype(np.float32)
    mean = vae.decoder(z).numpy().astype(np.float64)
    loglik_np = stats.norm.logpdf(x, mean, sigma[:, None, None]).sum(axis=(1, 2))
    kl_np = 0.5 * np.sum(s**2 + mu**2 - 1.0 - 2.0 * np.log(s), axis=1)
    recon = vae.decoder(mu.astype(np.float32)).numpy()
    chi2_np = np.mean(((x - recon) / sigma[:, None, None]) ** 2, axis=(1, 2))
    np.testing.assert_allclose(loglik.numpy(), loglik_np, rtol=1e-5)
    np.testing.assert_allclose(kl.numpy(), kl_np, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(chi2.numpy(), chi2_np, rtol=1e-4)
    # the test step reports loss = -mean(loglik - beta KL), elbo = mean(loglik - KL)
    vae2 = tiny_vae(beta=0.5)
    logs = vae2.test_step((x, sigma))
    k = vae2.elbo_terms(x, sigma[:, None, None])[1].numpy()
    # (each call draws another eps: compare the analytic KL and the identities between metrics)
    np.testing.assert_allclose(logs["kl"].numpy(), k.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["elbo"].numpy(), logs["log_likelihood"].numpy() - k.mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(logs["loss"].numpy(),
                               -(logs["log_likelihood"].numpy() - 0.5 * k.mean()), rtol=1e-5)


def test_kl_warmup_is_linear():
    vae = VAE(**TINY, beta=2.0, kl_warmup_steps=10)
    np.testing.assert_allclose([float(vae.kl_weight(t)) for t in (0, 4, 9, 50)],
                               [0.2, 1.0, 2.0, 2.0], rtol=1e-6)
    assert float(VAE(**TINY, beta=0.3).kl_weight(0)) == pytest.approx(0.3)


# -------------------------------------------------------------------- training
def test_training_reaches_the_noise_level(rng):
    """On blobs of random amplitude the reconstruction chi2/pixel goes to ~1 (the noise)."""
    x, clean, sigma = blobs(512, rng)
    vae = tiny_vae(latent_dim=2, base_filters=8, max_filters=16)
    ds = feature_dataset(x, sigma).shuffle(512, seed=0).batch(32, drop_remainder=True)
    hist = vae.fit(ds, epochs=8, verbose=0, shuffle=False).history
    assert hist["loss"][-1] < hist["loss"][0] - 100
    assert hist["chi2"][0] > 2.0
    # held-out stamps (new noise): the decoded posterior mean is within the noise
    xt, cleant, sigmat = blobs(256, rng)
    recon = vae.reconstruct(xt).numpy()
    chi2 = np.mean(((xt - recon) / sigmat[:, None, None]) ** 2)
    assert chi2 < 1.1
    # ... and closer to the truth than the noise: |recon - clean| << sigma
    assert np.sqrt(np.mean((recon - cleant) ** 2)) < 0.5 * sigmat[0]


def test_mirrored_strategy_train_step(rng):
    strategy = tf.distribute.MirroredStrategy()
    x, _, sigma = blobs(32, rng)
    with strategy.scope():
        vae = tiny_vae()
    assert vae.distribute_strategy is strategy
    w0 = [w.numpy().copy() for w in vae.trainable_weights]
    hist = vae.fit(feature_dataset(x, sigma).batch(16), epochs=1, verbose=0, shuffle=False).history
    assert all(np.isfinite(v[-1]) for v in hist.values())
    changed = [not np.allclose(a, b.numpy()) for a, b in zip(w0, vae.trainable_weights)]
    assert all(changed)
    assert int(vae.optimizer.iterations.numpy()) == 2


@pytest.mark.slow
def test_xla_train_step_matches_graph_mode(rng):
    """jit_compile=True (TPU-style static shapes) gives the same step as graph mode."""
    x, _, sigma = blobs(16, rng)
    ds = feature_dataset(x, sigma).batch(8, drop_remainder=True)
    losses = []
    for jit in (False, True):
        vae = tiny_vae()
        vae.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=jit)
        losses.append(vae.fit(ds, epochs=2, verbose=0, shuffle=False).history["chi2"])
        assert vae.jit_compile is jit
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)


# ---------------------------------------------------------------------- errors
def test_input_errors(rng):
    vae = tiny_vae()
    x, _, sigma = blobs(4, rng)
    with pytest.raises(ValueError, match=r"\[batch, 16, 16\].*got \[4, 32, 32\]"):
        vae(np.zeros([4, 32, 32], np.float32))
    with pytest.raises(ValueError, match=r"\[batch, 16, 16\]"):
        vae(np.zeros([16, 16], np.float32))
    with pytest.raises(ValueError, match=r"floating-point.*int32"):
        vae(np.zeros([4, 16, 16], np.int32))
    with pytest.raises(ValueError, match="noise_std"):
        vae.train_step({"image": x})
    with pytest.raises(ValueError, match="'image' key"):
        vae.train_step({"noise_std": sigma})
    assert vae(x[..., None]).shape == (4, 16, 16)  # a channel axis of 1 is accepted
    for bad in (48, 8, 16.0, True):
        with pytest.raises(ValueError, match="image_size must be a power of two >= 16"):
            VAE(image_size=bad)
    with pytest.raises(ValueError, match="latent_dim"):
        make_encoder(16, latent_dim=0)
    with pytest.raises(ValueError, match="normalization"):
        make_decoder(16, normalization="instance")
    with pytest.raises(ValueError, match="beta"):
        VAE(**TINY, beta=-1.0)
    with pytest.raises(ValueError, match="both encoder and decoder"):
        VAE(encoder=make_encoder(16, 3))


def test_normalization_options_build():
    for norm in ("group", "batch", "layer"):
        vae = VAE(**TINY, normalization=norm)
        assert vae.decode(np.zeros([2, 3], np.float32)).shape == (2, S, S)
    # the default model is small enough to ship: < 1.5 M parameters (6 MB of float32)
    assert make_encoder().count_params() + make_decoder().count_params() < 1.5e6


# ------------------------------------------------------- saving and exporting
def test_save_load_round_trip(tmp_path, rng):
    vae = tiny_vae(kl_warmup_steps=7, beta=0.5)
    x, _, sigma = blobs(8, rng)
    vae.fit(feature_dataset(x, sigma).batch(4), epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / "v.keras")
    vae.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, VAE)
    assert (loaded.latent_dim, loaded.beta, loaded.kl_warmup_steps) == (3, 0.5, 7)
    assert int(loaded.optimizer.iterations.numpy()) == 2
    np.testing.assert_array_equal(loaded(x).numpy(), vae(x).numpy())
    np.testing.assert_array_equal(loaded.encode(x).numpy(), vae.encode(x).numpy())


def test_export_loads_in_plain_tensorflow(tmp_path, rng):
    vae = tiny_vae()
    x, _, _ = blobs(3, rng)
    out = vae.export(str(tmp_path / "exported"))
    with pytest.raises(FileExistsError):
        vae.export(out)
    z = rng.normal(size=(5, 3)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        dec = tf.saved_model.load({os.path.join(out, "decoder")!r})
        enc = tf.saved_model.load({os.path.join(out, "encoder")!r})
        z = np.load({str(tmp_path / "z.npy")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "dec.npy")!r}, dec.serve(z).numpy())
        np.save({str(tmp_path / "dec_sig.npy")!r},
                list(dec.signatures["serving_default"](tf.constant(z)).values())[0].numpy())
        np.save({str(tmp_path / "mean.npy")!r}, enc.serve(x)["mean"].numpy())
        assert not any(m.startswith("tfstronglens") for m in sys.modules), "tfstronglens imported"
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "dec.npy"), vae.decode(z).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "dec_sig.npy"), vae.decode(z).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "mean.npy"), vae.encode(x).numpy(),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- the VAE source
def _source_vae():
    keras.utils.set_random_seed(3)
    return VAE(**TINY)


def test_vae_source_matches_decoder_and_errors():
    vae = _source_vae()
    src = VAESource(vae.decoder, pixel_scale=0.1)
    assert (src.num_pix, src.latent_dim) == (S, 3)
    z = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    # exact at the pixel centres: amp * D(z)
    c = (np.arange(S) - (S - 1) / 2) * 0.1
    x, y = np.meshgrid(c, c)
    sb = src.surface_brightness(x, y, z=z, amp=2.0)  # [2, S, S]
    np.testing.assert_allclose(sb.numpy(), 2.0 * vae.decode(z).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(src.total_flux(z, amp=2.0).numpy(),
                               2.0 * 0.01 * vae.decode(z).numpy().sum(axis=(1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match=r"z must have shape \[\.\.\., 3\]"):
        src.surface_brightness(x, y, z=np.zeros([2, 4], np.float32))
    with pytest.raises(ValueError, match="missing required parameter"):
        src.surface_brightness(x, y, amp=1.0)
    with pytest.raises(ValueError, match="pixel_scale"):
        VAESource(vae.decoder, pixel_scale=-1.0)
    with pytest.raises(FileNotFoundError):
        VAESource("/nonexistent/model.keras", pixel_scale=0.1)
    with pytest.raises(ValueError, match="pretrained model name"):
        VAESource("not_a_model", pixel_scale=0.1)


def test_vae_source_config_round_trip(tmp_path):
    vae = _source_vae()
    path = str(tmp_path / "vae.keras")
    vae.save(path)
    src = VAESource(path, pixel_scale=0.05, interpolation="bicubic")
    cfg = src.get_config()
    assert cfg == {"name": "VAE", "dtype": "float32", "decoder": path, "pixel_scale": 0.05,
                   "interpolation": "bicubic", "normalize_flux": False}
    again = tsl.get_profile(**cfg)
    z = np.ones([1, 3], np.float32)
    np.testing.assert_array_equal(again.decode(z).numpy(), src.decode(z).numpy())
    # the source decodes with the sub-pixel clone: the VAE's images up to float rounding
    np.testing.assert_allclose(again.decode(z).numpy(), vae.decode(z).numpy(), rtol=1e-4,
                               atol=1e-6)
    assert VAESource(vae, pixel_scale=0.05).get_config()["decoder"] is None


def test_flux_normalised_vae_source_puts_the_flux_in_amp_alone():
    """With ``normalize_flux`` the latents set the morphology and ``amp`` the flux: every
    latent vector with a decoded mean above the floor gives total flux ``amp s^2 n^2 m0``,
    the image is the raw one rescaled, and the floor keeps faint draws finite."""
    raw = VAESource("synthetic_galaxies_64", pixel_scale=0.03)
    src = VAESource("synthetic_galaxies_64", pixel_scale=0.03, normalize_flux=True)
    z = np.random.default_rng(3).normal(size=(64, 64)).astype(np.float32)
    img_raw, img = raw.decode(z).numpy(), src.decode(z).numpy()
    mean_raw = img_raw.mean(axis=(1, 2))
    m0 = src._reference_mean
    above = mean_raw > m0 / 20
    assert above.sum() > 50 and np.ptp(mean_raw[above]) > 2 * m0  # fluxes differ raw
    flux = src.total_flux(z, amp=2.0).numpy()
    np.testing.assert_allclose(flux[above], 2.0 * 0.03**2 * 64**2 * m0, rtol=1e-4)
    scale = m0 / np.maximum(mean_raw, m0 / 20)
    np.testing.assert_allclose(img, img_raw * scale[:, None, None], rtol=1e-4,
                               atol=1e-5 * np.abs(img).max())
    assert np.all(np.isfinite(img)) and np.all(flux[~above] < flux[above].min() * 1.0001)
    cfg = src.get_config()
    assert cfg["normalize_flux"] is True
    np.testing.assert_array_equal(tsl.get_profile(**cfg).decode(z[:2]).numpy(), img[:2])
    with pytest.raises(ValueError, match="normalize_flux"):
        VAESource("synthetic_galaxies_64", pixel_scale=0.03, normalize_flux="yes")


def test_vae_source_in_simulator_with_gradients():
    vae = _source_vae()
    src = VAESource(vae.decoder, pixel_scale=0.08)
    sim = tsl.Simulator(tsl.PixelGrid(12, 0.1, supersample=2), lens=[tsl.SIE(), tsl.Shear()],
                        source=[src], psf=tsl.GaussianPSF(0.1), jit_compile=False)
    z = tf.Variable(np.random.default_rng(2).normal(size=(3, 3)).astype(np.float32))
    lens = [dict(theta_E=0.5, e1=0.1, e2=-0.05), dict(gamma1=0.02, gamma2=0.0)]
    with tf.GradientTape() as tape:
        img = sim(lens=lens, source=[dict(z=z, amp=3.0, center_x=0.02)])
        loss = tf.reduce_sum(img**2)
    assert img.shape == (3, 12, 12)
    grad = tape.gradient(loss, z).numpy()
    assert np.all(np.isfinite(grad)) and np.all(np.abs(grad).sum(axis=1) > 0)
    # batch member b uses z[b]: rendering one z alone gives the same image
    one = sim(lens=lens, source=[dict(z=z[1:2], amp=3.0, center_x=0.02)])
    np.testing.assert_allclose(one.numpy()[0], img.numpy()[1], rtol=1e-5, atol=1e-6)


def test_vae_source_gradient_matches_finite_differences_float64():
    vae = _source_vae()
    dec64 = make_decoder(**TINY, dtype="float64")
    dec64.set_weights([w.astype(np.float64) for w in vae.decoder.get_weights()])
    src = VAESource(dec64, pixel_scale=0.08, dtype=tf.float64)
    sim = tsl.Simulator(tsl.PixelGrid(12, 0.1, dtype=tf.float64), lens=[tsl.SIE(dtype=tf.float64)],
                        source=[src], jit_compile=False)
    weights = np.random.default_rng(4).normal(size=(12, 12))
    lens = [dict(theta_E=0.4, e1=0.05, e2=0.0)]

    def f(z):
        return tf.reduce_sum(sim(lens=lens, source=[dict(z=z, amp=2.0)]) * weights)

    z0 = np.random.default_rng(5).normal(size=(1, 3))
    zt = tf.constant(z0)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        val = f(zt)
    grad = tape.gradient(val, zt).numpy()[0]
    h = 1e-6
    fd = [(f(z0 + h * e).numpy() - f(z0 - h * e).numpy()) / (2 * h) for e in np.eye(3)[:, None]]
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert np.all(np.abs(grad) > 0)


def test_vae_source_in_xla_simulator():
    vae = _source_vae()
    src = VAESource(vae.decoder, pixel_scale=0.08)
    grid = tsl.PixelGrid(20, 0.06)
    kw = dict(lens=[dict(theta_E=0.5, e1=0.1, e2=-0.05)],
              source=[dict(z=np.ones([2, 3], np.float32))])
    xla = tsl.Simulator(grid, lens=[tsl.SIE()], source=[src], jit_compile=True)(**kw)
    ref = tsl.Simulator(grid, lens=[tsl.SIE()], source=[src], jit_compile=False)(**kw)
    np.testing.assert_allclose(xla.numpy(), ref.numpy(), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------- train_vae and CLI
def test_train_vae_cli_report_and_resume(tmp_path, rng, capsys):
    """`tfstronglens train-vae` trains one epoch and writes everything; train_vae resumes
    the run from its checkpoint (epoch 1 -> 2) and a finished run is left alone."""
    x, _, sigma = blobs(40, rng, vary_width=True)
    data = str(tmp_path / "data")
    feature_dataset(x, sigma).save(data)  # a saved tf.data directory is a valid --dataset
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    out = str(tmp_path / "run")
    args = ["train-vae", "--dataset", data, "--out", str(foreign), "--epochs", "1",
            "--batch-size", "8", "--latent-dim", "2", "--kl-warmup-steps", "4",
            "--no-progress", "--seed", "1"]
    assert cli.main(args) == 2
    assert "not a train-vae checkpoint directory" in capsys.readouterr().err
    assert os.listdir(foreign) == ["notes.txt"]
    args[4] = out
    assert cli.main(args) == 0
    assert "chi2/pixel median" in capsys.readouterr().out
    for name in ("vae.keras", "report.json", "reconstructions.png", "prior_samples.png",
                 "saved_model/encoder/saved_model.pb", "saved_model/decoder/saved_model.pb",
                 "checkpoint/state.json", "checkpoint/ckpt-0001.keras"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    with open(os.path.join(out, "report.json")) as fh:
        report = json.load(fh)
    # 40 examples, 10% (4) held out; 36 for training: 4 full batches of 8 per epoch
    assert (report["epochs"], report["num_train"], report["num_heldout"]) == (1, 36, 4)
    chi2 = report["chi2_per_pixel"]
    assert chi2["p16"] <= chi2["median"] == chi2["p50"] <= chi2["p84"]
    assert report["within_noise_threshold"] == pytest.approx(1 + 3 * np.sqrt(2 / 256))
    assert 0.0 <= report["fraction_within_noise"] <= 1.0

    # the library call on the same directory: refused without resume, else resumed
    kw = dict(batch_size=8, latent_dim=2, progress=False, kl_warmup_steps=4, seed=1)
    with pytest.raises(FileExistsError, match="checkpoint"):
        train_vae(data, out, epochs=2, resume=False, **kw)
    with pytest.raises(ValueError, match="latent_dim"):
        train_vae(data, out, epochs=2, **{**kw, "latent_dim": 3})
    report2 = train_vae(data, out, epochs=2, **kw)
    assert [h["epoch"] for h in report2["history"]] == [1, 2]
    assert report2["history"][0] == report["history"][0]  # epoch 1 was not redone
    vae = keras.models.load_model(os.path.join(out, "vae.keras"))
    assert int(vae.optimizer.iterations.numpy()) == 2 * 4  # continued: 2 epochs of 4 steps
    assert sorted(os.listdir(os.path.join(out, "checkpoint"))) == ["ckpt-0002.keras",
                                                                  "state.json"]
    # finished: the CLI (resumable directory) and the library do nothing more
    args[args.index("--epochs") + 1] = "2"
    assert cli.main(args) == 0
    assert train_vae(data, out, epochs=2, **kw) == dict(report2, already_complete=True)
    with pytest.raises(FileExistsError, match="not empty"):
        train_vae(data, str(foreign), epochs=1, **kw)
    assert cli.main(["train-vae", "--dataset", "mnist", "--out", str(tmp_path / "x")]) == 2
    assert within_noise_threshold(100) == pytest.approx(1 + 3 * np.sqrt(0.02))


def test_train_vae_argument_errors(tmp_path, rng):
    x, _, sigma = blobs(8, rng)
    with pytest.raises(ValueError, match="dataset must be one of"):
        train_vae("mnist", str(tmp_path / "a"), progress=False)
    batched = feature_dataset(x, sigma).batch(4)
    with pytest.raises(ValueError, match="unbatch"):
        train_vae(batched, str(tmp_path / "b"), progress=False)
    no_noise = tf.data.Dataset.from_tensor_slices({"image": x})
    with pytest.raises(ValueError, match="noise_std"):
        train_vae(no_noise, str(tmp_path / "c"), progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train_vae(feature_dataset(x, sigma), str(tmp_path / "d"), epochs=0)
    with pytest.raises(ValueError, match="validation fraction"):
        train_vae(feature_dataset(x, sigma), str(tmp_path / "e"), validation=1.5, progress=False)


@pytest.fixture(scope="module")
def tiny_vae_run(tmp_path_factory):
    """A finished one-epoch `train-vae` run on 20 blobs (18 for training: two batches of 8)
    with 3 base and 5 max filters; returns its CLI arguments and output directory."""
    x, _, sigma = blobs(20, np.random.default_rng(3))
    root = tmp_path_factory.mktemp("tiny_vae_run")
    data = str(root / "data")
    feature_dataset(x, sigma).save(data)
    out = str(root / "run")
    args = ["train-vae", "--dataset", data, "--out", out, "--epochs", "1", "--batch-size", "8",
            "--latent-dim", "2", "--base-filters", "3", "--max-filters", "5",
            "--kl-warmup-steps", "4", "--no-progress", "--seed", "1"]
    assert cli.main(args) == 0
    return args, out


def _tree_state(out):
    """``{relative path: (size, mtime_ns)}`` of every file under ``out``."""
    found = {}
    for root, _, files in os.walk(out):
        for name in files:
            st = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), out)] = (st.st_size, st.st_mtime_ns)
    return found


def test_train_vae_cli_filter_options_reach_the_model(tiny_vae_run, capsys):
    """--base-filters/--max-filters set the convolution widths and are recorded in the
    checkpoint's settings; bad values are refused naming the option."""
    args, out = tiny_vae_run
    vae = keras.models.load_model(os.path.join(out, "vae.keras"))
    # 16x16 stamps: two stride-2 blocks of 3 and min(6, 5) = 5 filters, projected from 4x4x5
    assert [vae.encoder.get_layer(f"conv_{i}").filters for i in (0, 1)] == [3, 5]
    assert [vae.decoder.get_layer(f"deconv_{i}").filters for i in (0, 1)] == [3, 3]
    assert vae.decoder.get_layer("project").units == 4 * 4 * 5
    with open(os.path.join(out, "checkpoint", "state.json")) as fh:
        arch = json.load(fh)["arch"]
    assert (arch["base_filters"], arch["max_filters"]) == (3, 5)
    capsys.readouterr()
    for extra, msg in [(["--max-filters", "2"], "--max-filters (2) must be >= --base-filters (3)"),
                       (["--base-filters", "0"], "--base-filters"),
                       (["--max-filters", "x"], "--max-filters")]:
        assert cli.main(args + extra) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_train_vae_cli_resume_refuses_changed_settings(tiny_vae_run, tmp_path, capsys):
    """Resuming (--epochs 2) with another --learning-rate, --beta, --batch-size or
    --base-filters is refused, naming the option and both values, and changes nothing."""
    args, out = tiny_vae_run
    run = str(tmp_path / "run")
    shutil.copytree(out, run)
    args = list(args)
    args[args.index("--out") + 1] = run
    args[args.index("--epochs") + 1] = "2"
    before = _tree_state(run)
    capsys.readouterr()
    for option, old, new in [("--learning-rate", "0.001", "0.01"), ("--beta", "1.0", "2.0"),
                             ("--batch-size", "8", "4"), ("--base-filters", "3", "4")]:
        assert cli.main(args + [option, new]) == 2, option
        err = capsys.readouterr().err
        assert f"({option}): checkpoint {old}, now {new}" in err, err
        assert len(err.strip().splitlines()) == 1
    assert _tree_state(run) == before


def test_train_vae_cli_complete_run_says_so(tiny_vae_run, capsys):
    """Rerunning a finished run trains and writes nothing and says so, not "wrote"."""
    args, out = tiny_vae_run
    before = _tree_state(out)
    capsys.readouterr()
    assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert "already holds a complete run" in stdout and "nothing was trained or written" in stdout
    assert "wrote" not in stdout
    assert _tree_state(out) == before


def test_pretrained_readme_cli_line_is_its_train_vae_call():
    """The pretrained VAE's README gives a train_vae call and a train-vae command line said
    to be exactly equivalent: every train_vae argument that is a CLI option gets the same
    value from both (the call's value, else the function's default)."""
    import ast
    import inspect
    import re
    import shlex

    path = os.path.join(os.path.dirname(tsl.__file__), "models", "pretrained", "README.md")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    section = text.split("## `synthetic_galaxies_64.keras`")[1].split("\n## ")[0]
    (python,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (command,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    call = [n for n in ast.walk(ast.parse(python)) if isinstance(n, ast.Call)][0]
    given = {k.arg: k.value.id if isinstance(k.value, ast.Name) else ast.literal_eval(k.value)
             for k in call.keywords}
    given["dataset"], given["out_dir"] = (ast.literal_eval(a) for a in call.args)
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[0] == "tfstronglens"
    parsed = vars(cli.build_parser().parse_args(argv[1:]))
    parsed["out_dir"] = parsed.pop("out")
    compared = 0
    for name, param in inspect.signature(train_vae).parameters.items():
        if name in parsed:
            assert parsed[name] == given.get(name, param.default), name
            compared += 1
    assert compared >= 15 and {"base_filters", "max_filters"} <= set(given)


@pytest.mark.slow
def test_cli_train_vae_on_tfds_tiny(tmp_path):
    out = str(tmp_path / "run")
    rc = cli.main(["train-vae", "--dataset", "synthetic_galaxies", "--config", "tiny",
                   "--data-dir", str(tmp_path / "tfds"), "--out", out, "--epochs", "1",
                   "--batch-size", "8", "--latent-dim", "4", "--no-progress"])
    assert rc == 0
    with open(os.path.join(out, "report.json")) as fh:
        report = json.load(fh)
    assert report["image_size"] == 32 and report["num_train"] == 16
    assert report["num_heldout"] == 8  # the validation split


# ---------------------------------------------------------------- pretrained
def test_load_pretrained_vae(tmp_path, monkeypatch):
    monkeypatch.setattr(_pretrained, "PRETRAINED_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train-vae"):
        tsl.models.load_pretrained_vae()
    with pytest.raises(ValueError, match="unknown pretrained VAE"):
        tsl.models.load_pretrained_vae("nope")
    vae = _source_vae()
    vae.save(str(tmp_path / "synthetic_galaxies_64.keras"))
    loaded = tsl.models.load_pretrained_vae("synthetic_galaxies_64")
    z = np.zeros([1, 3], np.float32)
    np.testing.assert_array_equal(loaded.decode(z).numpy(), vae.decode(z).numpy())
    src = VAESource("synthetic_galaxies_64", pixel_scale=0.03)
    assert src.get_config()["decoder"] == "synthetic_galaxies_64"


def test_subpixel_transposed_convolution_is_the_same_map():
    """The loop-friendly decoder (models/_subpixel.py) computes the same images, latent
    gradients and forward-mode derivatives as the decoder it was cloned from, with and
    without XLA; other (transposed) convolutions keep TensorFlow's implementation."""
    import keras

    from tfstronglens.models import load_pretrained_vae
    from tfstronglens.models._subpixel import (FrozenConv2D, SubpixelConv2DTranspose,
                                               loop_friendly)

    rng = np.random.default_rng(0)
    y = tf.constant(rng.normal(size=(3, 8, 8, 5)), tf.float32)
    for kwargs, adjoint in ((dict(kernel_size=3, padding="same"), True),
                            (dict(kernel_size=5, padding="same"), True),
                            (dict(kernel_size=2, padding="same"), False),
                            (dict(kernel_size=3, padding="same", strides=2), False),
                            (dict(kernel_size=3, padding="valid"), False)):
        ref = keras.layers.Conv2D(4, activation="tanh", **kwargs)
        ref.build(y.shape)
        layer = FrozenConv2D.from_config(ref.get_config())
        layer.build(y.shape)
        layer.set_weights([rng.normal(size=w.shape).astype(np.float32)
                           for w in ref.get_weights()])
        ref.set_weights(layer.get_weights())
        layer.freeze()
        assert layer.is_adjoint_friendly is adjoint
        assert (layer._frozen is not None) is adjoint
        for xla in (False, True):
            def value_and_input_gradient(conv):
                with tf.GradientTape() as tape:
                    tape.watch(y)
                    out = conv(y)
                    val = tf.reduce_sum(out * tf.cos(out))
                return out, tape.gradient(val, y)
            got = tf.function(lambda: value_and_input_gradient(layer), jit_compile=xla)()
            want = value_and_input_gradient(ref)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=0,
                                           atol=1e-5 * np.abs(w.numpy()).max())
    for kwargs, subpixel in ((dict(strides=2, padding="same"), True),
                             (dict(strides=1, padding="same"), False),
                             (dict(strides=2, padding="valid"), False)):
        ref = keras.layers.Conv2DTranspose(6, 4, activation="relu", **kwargs)
        out_ref = ref(y)
        layer = SubpixelConv2DTranspose.from_config(ref.get_config())
        layer.build(y.shape)
        layer.set_weights([rng.normal(size=w.shape).astype(np.float32)
                           for w in ref.get_weights()])
        ref.set_weights(layer.get_weights())
        assert layer.is_subpixel is subpixel
        np.testing.assert_allclose(layer(y).numpy(), ref(y).numpy(), rtol=1e-5, atol=1e-5)
        assert out_ref.shape == layer(y).shape

    decoder = load_pretrained_vae().decoder
    fast = loop_friendly(decoder)
    assert fast is not decoder
    assert sum(isinstance(layer, SubpixelConv2DTranspose) for layer in fast.layers) == 4
    assert sum(isinstance(layer, FrozenConv2D) for layer in fast.layers) == 1
    z = tf.constant(rng.normal(size=(4, 64)), tf.float32)

    def image_and_gradient(model):
        with tf.GradientTape() as tape:
            tape.watch(z)
            img = model(z, training=False)
            val = tf.reduce_sum(img * tf.sin(img))
        return img.numpy(), tape.gradient(val, z).numpy()

    (a, ga), (b, gb) = image_and_gradient(decoder), image_and_gradient(fast)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    np.testing.assert_allclose(gb, ga, rtol=0, atol=1e-4 * np.abs(ga).max())
    # forward mode (Jacobian-vector products) goes through the custom input gradients
    direction = tf.constant(rng.normal(size=(4, 64)), tf.float32)

    def jvp(model):
        with tf.autodiff.ForwardAccumulator(z, direction) as acc:
            img = model(z, training=False)
        return acc.jvp(img).numpy()

    ja, jb = jvp(decoder), jvp(fast)
    np.testing.assert_allclose(jb, ja, rtol=0, atol=1e-4 * np.abs(ja).max())
