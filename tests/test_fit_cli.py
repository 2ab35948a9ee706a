"""The fit pipeline's edges: reading observed images, ``fit_lens``, output files, the
``fit`` and ``demo`` commands."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from astropy.io import fits

import tfstronglens as tsl
from tfstronglens.cli import main
from tfstronglens.inference import LensModel, fit_lens, write_fit_outputs
from tfstronglens.io import load_lens_image, pixel_scale_from_header, write_fits

N = 24
PIX = 0.1


def _model(jit=False, **kw):
    obs = tsl.Observation(N, PIX, 1000.0, background_rms=0.05, psf=tsl.GaussianPSF(0.15))
    return LensModel(obs, "sie+shear", "sersic", amp_scale=20.0, supersample=1,
                     jit_compile=jit, **kw)


TRUTH = {"lens.0.theta_E": 0.8, "lens.0.e1": 0.05, "lens.0.e2": -0.03, "lens.0.center_x": 0.0,
         "lens.0.center_y": 0.02, "lens.1.gamma1": 0.01, "lens.1.gamma2": -0.01,
         "source.0.amp": 20.0, "source.0.R_sersic": 0.15, "source.0.n_sersic": 1.5,
         "source.0.e1": 0.05, "source.0.e2": 0.0, "source.0.center_x": 0.05,
         "source.0.center_y": -0.03}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    model = _model()
    params = {k: tf.constant([v], model.dtype) for k, v in TRUTH.items()}
    data = np.asarray(model.simulate(params, seed=3))[0]
    path = tmp_path_factory.mktemp("img") / "lens.fits"
    kernel = np.asarray(tsl.GaussianPSF(0.15).kernel(PIX))
    write_fits(path, data.astype(np.float32), pixel_scale=PIX,
               header={"BKGRMS": 0.05, "EXPTIME": 1000.0}, PSF=kernel.astype(np.float32))
    return model, data, str(path)


# ------------------------------------------------------------------ reading images
def test_load_lens_image_reads_header_psf_and_noise(simulated):
    _, data, path = simulated
    img = load_lens_image(path)
    np.testing.assert_allclose(img.data, data, rtol=1e-6)
    obs = img.observation
    assert obs.pixel_scale == pytest.approx(PIX)
    assert obs.background_rms == pytest.approx(0.05)
    assert obs.exposure_time == pytest.approx(1000.0)
    assert isinstance(obs.psf, tsl.PixelPSF)
    assert img.noise_map is None
    assert any("PSF extension" in n for n in img.notes)


def test_load_lens_image_overrides_and_errors(tmp_path, simulated):
    _, data, path = simulated
    img = load_lens_image(path, noise_rms=0.2, pixel_scale=0.05, psf_fwhm=0.1,
                          psf=None)
    assert img.observation.pixel_scale == 0.05
    assert img.observation.background_rms == 0.2
    # no exposure anywhere: Gaussian background only, as a constant noise map
    bare = tmp_path / "bare.fits"
    write_fits(bare, data, pixel_scale=PIX)
    img = load_lens_image(bare, noise_rms=0.07)
    np.testing.assert_allclose(img.noise_map, 0.07)
    with pytest.raises(ValueError, match="noise"):
        load_lens_image(bare)
    noscale = tmp_path / "noscale.fits"
    write_fits(noscale, data)
    with pytest.raises(ValueError, match="pixel scale"):
        load_lens_image(noscale, noise_rms=0.1)
    rect = tmp_path / "rect.fits"
    write_fits(rect, np.zeros((4, 6)), pixel_scale=PIX)
    with pytest.raises(ValueError, match="square"):
        load_lens_image(rect, noise_rms=0.1)
    nmap = tmp_path / "nmap.fits"
    write_fits(nmap, np.ones((3, 3)))
    with pytest.raises(ValueError, match="shape"):
        load_lens_image(path, noise_map=nmap)
    with pytest.raises(FileNotFoundError):
        load_lens_image(tmp_path / "missing.fits", noise_rms=0.1)
    with pytest.raises(ValueError, match="pixel_scale"):
        load_lens_image(path, pixel_scale=-1.0)


def test_pixel_scale_from_wcs():
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CDELT1"], h["CDELT2"] = -0.05 / 3600, 0.05 / 3600
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    assert pixel_scale_from_header(h) == pytest.approx(0.05)
    h2 = fits.Header()
    h2["CTYPE1"], h2["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h2["CD1_1"], h2["CD1_2"], h2["CD2_1"], h2["CD2_2"] = -0.03 / 3600, 0.0, 0.0, 0.03 / 3600
    assert pixel_scale_from_header(h2) == pytest.approx(0.03)
    assert pixel_scale_from_header(fits.Header()) is None


# ------------------------------------------------------------------ fit_lens + outputs
@pytest.fixture(scope="module")
def map_fit(simulated):
    # (the sampling tests below start from this MAP: map_result=)
    model, data, _ = simulated
    return fit_lens(model, data, method="map", num_starts=32, map_steps=300, seed=1,
                    num_samples=500, progress=False)


def test_fit_lens_map_recovers_truth_and_writes_outputs(tmp_path, simulated, map_fit):
    model, data, _ = simulated
    res = map_fit
    assert res.samples.shape == (500, 1, len(model.param_names))
    s = res.summary
    # the Einstein radius is measured to far better than 0.02" at this S/N
    assert s["lens.0.theta_E"]["mean"] == pytest.approx(TRUTH["lens.0.theta_E"], abs=0.02)
    assert s["lens.0.theta_E"]["p16"] <= s["lens.0.theta_E"]["p50"] <= s["lens.0.theta_E"]["p84"]
    # the MAP is in the truth's mode: its log posterior is near the truth's (a wrong mode
    # of this 14-parameter problem is hundreds below). 32 starts x 300 Adam steps alone
    # ended tens below; the Levenberg-Marquardt polish reaches the maximum (up to the
    # log|J| of the unconstrained coordinates, which the MAP includes).
    lp_truth = float(model.log_posterior({k: tf.constant(v) for k, v in TRUTH.items()}, data))
    assert res.map.log_posterior >= lp_truth - 5.0
    assert res.settings["map_polish_steps"] == 30
    paths = write_fit_outputs(res, tmp_path, truths=TRUTH)
    summary = json.load(open(paths["summary"]))
    assert set(summary["parameters"]) == set(model.param_names)
    for key in ("mean", "std", "p16", "p50", "p84"):
        assert np.isfinite(summary["parameters"]["lens.0.theta_E"][key])
    assert summary["method"] == "map" and summary["timings"]["total"] > 0
    npz = np.load(paths["npz"])
    assert npz["lens.0.theta_E"].shape == (500, 1)
    for kind in ("fit", "corner"):
        assert os.path.getsize(paths[kind]) > 1000
    with pytest.raises(FileExistsError):
        write_fit_outputs(res, tmp_path)
    with pytest.raises(ValueError, match="method"):
        fit_lens(model, data, method="mcmc")


def test_fit_lens_chees_hmc_summary_has_convergence_diagnostics(tmp_path, simulated,
                                                                map_fit):
    # The MAP -> LM -> VI -> ChEES-HMC pipeline on the small lens, from the MAP stage of
    # map_fit (32 starts x 300 steps + LM: 16 starts x 150 steps can all miss the truth's
    # mode: a second mode with the lens centre 0.1" off and e1 of the opposite sign is 6
    # nats below it): the chains converge (rank-normalised R-hat), the truths lie within
    # the sampled posterior, and R-hat and ESS reach summary.json.
    model, data, _ = simulated
    res = fit_lens(model, data, method="hmc", hmc_kernel="chees", map_result=map_fit.map,
                   vi_steps=100, num_chains=16, num_burnin=150, num_results=100, seed=2,
                   progress=False)
    assert res.mcmc.kernel == "chees" and res.samples.shape == (100, 16, 14)
    assert res.settings["hmc_kernel"] == "chees" and res.settings["target_accept"] == 0.651
    assert res.settings["map_reused"] and res.map is map_fit.map
    assert res.timings["map"] < 1.0 and not map_fit.settings["map_reused"]
    s = res.summary
    assert max(v["r_hat"] for v in s.values()) < 1.05
    assert min(v["ess_bulk"] for v in s.values()) > 200
    for name in ("lens.0.theta_E", "lens.0.e1", "lens.0.e2", "lens.1.gamma1"):
        assert abs(s[name]["mean"] - TRUTH[name]) < 4.0 * s[name]["std"], (name, s[name])
    assert int(np.sum(res.mcmc.num_divergences)) == 0
    paths = write_fit_outputs(res, tmp_path)
    summary = json.load(open(paths["summary"]))
    assert summary["parameters"]["lens.0.theta_E"]["r_hat"] < 1.05
    with pytest.raises(ValueError, match="hmc_kernel"):
        fit_lens(model, data, method="hmc", hmc_kernel="mala")
    with pytest.raises(ValueError, match="map_result must be a MAPResult of this model"):
        fit_lens(model.replace(lens="epl+shear"), data, map_result=map_fit.map)


def test_fit_lens_neutra_samples_the_posterior_through_the_flow(simulated, map_fit):
    # NeuTra-HMC: ChEES in the base space of the IAF surrogate, x = T(z). The chains must
    # sample the posterior itself, not the flow: the draws' log density lies ~D/2 below
    # its value at the MAP (a chi^2_D / 2 deficit for a near-Gaussian posterior of
    # D = 14; a flow with a wrong log-determinant sampled a posterior ~0.6x too narrow,
    # deficit ~2), the chains converge, and the truths lie within the posterior.
    model, data, _ = simulated
    res = fit_lens(model, data, method="hmc", hmc_kernel="chees", vi_surrogate="iaf",
                   neutra=True, map_result=map_fit.map, vi_steps=100, num_chains=16,
                   num_burnin=150, num_results=100, seed=2, progress=False)
    assert res.settings["neutra"] is True
    z, x = res.mcmc.base_samples, res.mcmc.samples
    assert z.shape == x.shape == (100, 16, 14)
    flow = res.vi.surrogate.bijector
    np.testing.assert_allclose(flow.forward(tf.constant(z[-1])).numpy(), x[-1], rtol=1e-5,
                               atol=1e-6)
    target = model.target_log_prob_fn(data)  # unconstrained log density, as sampled
    lp = target(tf.constant(x.reshape(-1, 14))).numpy()
    deficit = float(target(tf.constant(res.map.x[None], model.dtype))[0]) - np.mean(lp)
    assert 0.6 * 7.0 < deficit < 1.5 * 7.0, deficit
    s = res.summary
    assert max(v["r_hat"] for v in s.values()) < 1.05
    assert min(v["ess_bulk"] for v in s.values()) > 200
    for name in ("lens.0.theta_E", "lens.0.e1", "lens.0.e2", "lens.1.gamma1"):
        assert abs(s[name]["mean"] - TRUTH[name]) < 4.0 * s[name]["std"], (name, s[name])
    with pytest.raises(ValueError, match="neutra=True needs vi_surrogate='iaf'"):
        fit_lens(model, data, method="hmc", neutra=True)
    with pytest.raises(ValueError, match="neutra must be"):
        fit_lens(model, data, method="hmc", neutra="yes")


# ------------------------------------------------------------------ CLI
SPEC = {"lens": [{"profile": "SIE"}, {"profile": "SHEAR"}],
        "source": [{"profile": "SERSIC_ELLIPSE"}],  # as "sersic", but given as components
        "priors": {"lens.0.theta_E": {"uniform": [0.3, 1.5]}}}


@pytest.mark.parametrize("how", ["shorthand", "spec"])
def test_fit_cli_map(tmp_path, simulated, capsys, how):
    _, _, path = simulated
    out = tmp_path / "fit"
    if how == "spec":
        json.dump(SPEC, open(tmp_path / "model.json", "w"))
        what = ["--model", str(tmp_path / "model.json")]
    else:
        what = ["--lens", "sie+shear", "--source", "sersic"]
    args = [
        "fit", path, *what, "--method", "map",
        "--num-starts", "8", "--map-steps", "100", "--map-polish-steps", "3", "--out",
        str(out), "--no-progress", "--no-xla",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "lens.0.theta_E" in printed
    summary = json.load(open(out / "summary.json"))
    if how == "spec":
        assert summary["settings"]["model"]["priors"] == SPEC["priors"]
        assert summary["settings"]["source"] == SPEC["source"]
        assert 0.3 <= summary["parameters"]["lens.0.theta_E"]["mean"] <= 1.5
    else:
        assert summary["settings"]["lens"] == "sie+shear"
    assert summary["settings"]["pixel_scale"] == pytest.approx(PIX)
    assert summary["settings"]["map_polish_steps"] == 3
    assert "lens.0.theta_E" in summary["parameters"]
    assert (out / "fit.png").exists() and (out / "corner.png").exists()
    # a non-empty output directory is refused without --overwrite
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err


def test_fit_cli_model_spec_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lens": "sie+shear", "subhalos": 1}))
    base = ["fit", "x.fits", "--out", str(tmp_path / "o"), "--noise-rms", "0.1"]
    assert main(base + ["--model", str(bad)]) == 2
    assert "needs z_lens and z_source" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"lens": "sie+shear"}))
    assert main(base + ["--model", str(good), "--source", "sersic"]) == 2
    assert "drop ['--source']" in capsys.readouterr().err
    assert main(base + ["--model", str(good), "--lens", "sie+shear"]) == 2  # exclusive
    assert "not allowed with" in capsys.readouterr().err
    assert main(base + ["--lens", "sie+shear"]) == 2
    assert "--source is required" in capsys.readouterr().err


def test_fit_cli_bad_input(tmp_path, capsys):
    assert main(["fit", "x.fits", "--lens", "nfw", "--source", "sersic", "--out", "o"]) == 2
    assert main(["fit", "x.fits", "--lens", "sie+shear", "--source", "sersic", "--out", "o",
                 "--noise-rms", "-1"]) == 2


# ---------------------------------------------------------- fit: input checks, reruns
# A 16 x 16 MAP run of 2 starts x 5 Adam steps without XLA: a few seconds.
TINY_MAP = ["--lens", "sie+shear", "--source", "sersic", "--method", "map", "--num-starts",
            "2", "--map-steps", "5", "--map-polish-steps", "0", "--no-xla", "--no-progress"]


def _run(argv):
    """``main(argv)`` in this process: ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 16 x 16 image of an Einstein ring (noise rms 0.05 in the header, a Gaussian PSF
    extension) and that PSF as a file of its own: ``(image path, psf path)``."""
    d = tmp_path_factory.mktemp("tiny")
    x = (np.arange(16) - 7.5) * PIX
    r = np.hypot(*np.meshgrid(x, x))
    ring = 2.0 * np.exp(-0.5 * ((r - 0.5) / 0.1) ** 2)
    ring += np.random.default_rng(0).normal(0.0, 0.05, ring.shape)
    kernel = np.asarray(tsl.GaussianPSF(0.15).kernel(PIX), np.float32)
    write_fits(d / "ring.fits", ring.astype(np.float32), pixel_scale=PIX,
               header={"BKGRMS": 0.05}, PSF=kernel)
    write_fits(d / "psf.fits", kernel)
    return str(d / "ring.fits"), str(d / "psf.fits")


@pytest.fixture(scope="module")
def rerun(tiny, tmp_path_factory):
    """``fit --overwrite`` into the folder of an earlier run, which left its summary and an
    HMC checkpoint of other settings there, beside a file of the user's:
    ``(folder, exit code, stdout, stderr)``."""
    out = tmp_path_factory.mktemp("rerun") / "fit"
    out.mkdir()
    config = {"version": 0, "mass_matrix_digest": "of the earlier run"}
    np.savez(out / "hmc_checkpoint.npz", config=np.array(json.dumps(config)),
             step=np.array(100))
    (out / "summary.json").write_text('{"earlier": true}')
    (out / "notes.txt").write_text("mine")
    return (out, *_run(["fit", tiny[0], *TINY_MAP, "--out", str(out), "--overwrite"]))


def test_fit_cli_overwrite_starts_a_fresh_run(rerun):
    # --overwrite deletes the earlier run's outputs when the run starts: its HMC checkpoint,
    # which a sampling run would otherwise try to resume (and refuse: other settings), and
    # its summary; other files stay. --help says so.
    out, code, _, err = rerun
    assert code == 0, err
    assert not (out / "hmc_checkpoint.npz").exists()
    assert "parameters" in json.load(open(out / "summary.json"))
    assert (out / "notes.txt").read_text() == "mine"
    # every file the run wrote is one that the next --overwrite deletes
    from tfstronglens.inference import FIT_OUTPUT_FILES

    assert set(os.listdir(out)) - {"notes.txt"} <= set(FIT_OUTPUT_FILES)
    code, text, _ = _run(["fit", "--help"])
    text = " ".join(text.split())
    assert code == 0
    assert "start a fresh run in DIR" in text and "hmc_checkpoint.npz) are deleted" in text


def test_fit_cli_summary_table_has_one_std_column(rerun):
    _, code, printed, err = rerun
    assert code == 0, err
    header = next(line for line in printed.splitlines() if line.startswith("param"))
    assert header.split() == ["param", "mean", "std", "p16", "p50", "p84"]


def test_fit_cli_refuses_a_source_in_front_of_the_lens(tiny, tmp_path):
    out = tmp_path / "o"
    base = ["fit", tiny[0], *TINY_MAP, "--out", str(out)]
    code, _, err = _run(base + ["--z-lens", "1.0", "--z-source", "0.5"])
    assert code == 2
    assert "behind the lens: --z-source 0.5 is not larger than --z-lens 1" in err, err
    code, _, err = _run(base + ["--z-lens", "3"])
    assert code == 2
    assert "--z-source 2 (the default) is not larger than --z-lens 3" in err, err
    assert not out.exists()


def test_fit_cli_refuses_a_psf_with_negative_pixels(tiny, tmp_path):
    image, psf = tiny
    kernel = np.asarray(load_lens_image(image, psf=psf).observation.psf.kernel(PIX))
    negative = kernel.copy()
    negative[0, :] = -0.02  # a ring of over-subtracted background: 2% per pixel
    bad = tmp_path / "negative_psf.fits"
    write_fits(bad, negative)
    out = tmp_path / "o"
    code, _, err = _run(["fit", image, *TINY_MAP, "--out", str(out), "--psf", str(bad)])
    assert code == 2
    assert f"--psf {str(bad)!r}: the PSF kernel has {kernel.shape[1]} negative pixels" in err
    assert not out.exists()
    # a negative total below 1% of the flux is noise: set to zero, and said so
    noisy = kernel.copy()
    noisy[0, 0] = -1e-4
    write_fits(tmp_path / "noisy_psf.fits", noisy)
    img = load_lens_image(image, psf=str(tmp_path / "noisy_psf.fits"))
    assert img.observation.psf.kernel(PIX).min() == 0.0
    assert "1 negative PSF pixels (0.01% of the flux) set to zero" in img.notes


def test_fit_cli_refuses_psf_and_psf_fwhm_together(tiny, tmp_path):
    image, psf = tiny
    out = tmp_path / "o"
    code, _, err = _run(["fit", image, *TINY_MAP, "--out", str(out), "--psf", psf,
                         "--psf-fwhm", "0.1"])
    assert code == 2 and "argument --psf-fwhm: not allowed with argument --psf" in err, err
    assert not out.exists()
    with pytest.raises(ValueError, match="not both"):
        load_lens_image(image, psf=psf, psf_fwhm=0.1)
    # --psf-fwhm replaces the image file's PSF extension
    img = load_lens_image(image, psf_fwhm=0.3)
    assert isinstance(img.observation.psf, tsl.GaussianPSF)
    assert not any("PSF extension" in n for n in img.notes)


def test_fit_cli_failed_validation_leaves_no_out_folder(tiny, tmp_path):
    image, _ = tiny
    bare = tmp_path / "bare.fits"  # no noise level in the header
    write_fits(bare, np.ones((16, 16), np.float32), pixel_scale=PIX)
    out = tmp_path / "o"
    for argv in (["fit", str(bare), *TINY_MAP],
                 ["fit", image, *TINY_MAP, "--init", "cnn", "--init-model",
                  str(tmp_path / "no_cnn")],
                 ["fit", image, *TINY_MAP, "--noise-map", str(tmp_path / "no_map.fits")]):
        code, _, err = _run(argv + ["--out", str(out)])
        assert code == 2, err
        assert not out.exists(), argv
    # a run that fails before it wrote anything (e.g. no CNN draw inside the prior with
    # --init cnn) removes the folder it created, and only that
    from tfstronglens.cli_fit import _run_folder

    for existed in (False, True):
        if existed:
            out.mkdir()
        with pytest.raises(ValueError, match="failed"):
            with _run_folder(str(out), overwrite=False):
                assert out.is_dir()
                raise ValueError("the run failed")
        assert out.exists() == existed


def test_fit_cli_missing_input_file_is_a_usage_error(tiny, tmp_path):
    # exit code 2 (bad arguments), not 1 (writing failed), and one line naming the file
    image, _ = tiny
    missing = str(tmp_path / "nope.fits")
    base = ["fit", image, *TINY_MAP, "--out", str(tmp_path / "o")]
    for argv, option in ((["fit", missing, *TINY_MAP, "--out", str(tmp_path / "o")], "image"),
                         (base + ["--psf", missing], "--psf"),
                         (base + ["--noise-map", missing], "--noise-map")):
        code, _, err = _run(argv)
        assert code == 2, err
        assert err == (f"tfstronglens fit: error: {option} {missing!r} does not exist or is "
                       "not a file\n")
    code, _, err = _run(["fit", image, "--model", missing, "--out", str(tmp_path / "o")])
    assert code == 2 and f"--model {missing!r} does not exist" in err, err


def test_fit_cli_errors_name_the_cli_flags(tiny, tmp_path):
    image, _ = tiny
    out = tmp_path / "o"
    base = ["fit", image, "--lens", "sie+shear", "--source", "sersic", "--out", str(out),
            "--no-xla", "--no-progress"]
    code, _, err = _run(base + ["--method", "hmc", "--neutra"])
    assert code == 2 and "--neutra" in err and "needs --surrogate iaf, got --surrogate " \
        "full_rank" in err and "neutra=" not in err, err
    code, _, err = _run(base + ["--method", "map", "--neutra", "--surrogate", "iaf"])
    assert code == 2 and "--neutra applies to --method hmc, not --method map" in err, err
    empty = tmp_path / "empty.fits"
    write_fits(empty, np.zeros((16, 16), np.float32), pixel_scale=PIX, header={"BKGRMS": 0.05})
    code, _, err = _run(["fit", str(empty), *base[2:], "--method", "map"])
    assert code == 2 and f"the image {str(empty)!r} has no positive signal" in err, err
    assert "amp_scale" not in err
    code, _, err = _run(["fit", image, "--lens", "sie+shear+m3m4", "--source", "rim",
                         "--method", "map", "--out", str(out)])
    assert code == 2 and "--lens sie+shear+m3m4 gives ['MULTIPOLE'] other settings" in err, err
    assert "RIMSource" not in err
    code, _, err = _run(base + ["--max-tree-depth", "31"])
    assert code == 2 and "argument --max-tree-depth: must be an integer from 1 to 30" in err
    code, _, err = _run(base + ["--method", "map", "--null-simulations", "5"])
    assert code == 2 and "--null-simulations 5 calibrates the subhalo detection: it needs " \
        "--subhalos 1 or more" in err, err
    assert not out.exists()


def test_hmc_draws_that_all_diverged_are_reported(capsys):
    # Chains that never moved (every transition diverged): R-hat is NaN. fit_lens's
    # problems say so, summary.json does not look like a good result, and the command
    # says so at its end, naming the options to change.
    from tfstronglens.cli_fit import _warn_problems
    from tfstronglens.inference import FitResult, MCMCResult, summarize
    from tfstronglens.inference.pipeline import _hmc_problems, _summary_json

    def mcmc(samples, diverging):
        n, c, _ = samples.shape
        stats = {"diverging": diverging, "acceptance_rate": np.zeros((n, c)),
                 "n_steps": np.ones((n, c))}
        return MCMCResult(samples=samples, log_prob=np.zeros((n, c)), sample_stats=stats,
                          trace={}, warmup_stats={}, step_size=np.full(c, 0.5),
                          kernel="chees", timing={})

    rng = np.random.default_rng(1)
    names = ["lens.0.theta_E", "lens.0.e1"]
    stuck = np.repeat(rng.normal(size=(1, 4, 2)), 50, axis=0)
    with np.errstate(all="ignore"):
        summary = summarize(stuck, names=names)
    stuck_run = mcmc(stuck, np.ones((50, 4), bool))
    problems = _hmc_problems(stuck_run, summary)
    assert problems[:2] == ["all of the 200 HMC draws diverged",
                            "R-hat is undefined (NaN) for 2 of the 2 parameters: the chains "
                            "did not move"]
    mixed = rng.normal(size=(500, 4, 2))
    assert _hmc_problems(mcmc(mixed, np.zeros((500, 4), bool)),
                         summarize(mixed, names=names)) == []

    result = FitResult(method="hmc", param_names=names, samples=stuck, problems=problems,
                       summary=summary, mcmc=stuck_run, best_fit={}, settings={}, timings={},
                       model=None, subhalo_masses={}, map=None, laplace=None, vi=None,
                       detection=None, data=None)
    written = json.loads(json.dumps(_summary_json(result), allow_nan=False))
    assert written["problems"] == problems
    assert written["sampler"]["converged"] is False
    assert written["sampler"]["max_r_hat"] is None  # NaN: not a finite, good-looking value
    _warn_problems(result, "fit")
    err = capsys.readouterr().err
    assert err.startswith("tfstronglens fit: warning: the HMC draws did not converge: all "
                          "of the 200 HMC draws diverged; R-hat is undefined")
    assert "--num-burnin" in err and "--num-results" in err


def test_demo_problem_is_consistent():
    from tfstronglens.inference.demo import DEMO_TRUTH, demo_problem

    model, truth, data = demo_problem(num_pix=48)
    assert len(model.param_names) == 77
    assert set(DEMO_TRUTH) <= set(truth)
    assert data.shape == (48, 48)
    # the data are the truth plus noise: chi^2 at the truth is N^2 within a few sigma
    params = {k: tf.constant(v, model.dtype) for k, v in truth.items()}
    img = np.asarray(model.render(params))[0]
    sigma = np.sqrt(np.asarray(model.observation._variance(tf.constant(img))))
    chi2 = float(np.sum(((data - img) / sigma) ** 2))
    assert abs(chi2 - 48 * 48) < 5 * np.sqrt(2 * 48 * 48)
    # the matched-filter S/N of the lensed source is the demo's
    lensed = model.replace(num_subhalos=0).render(
        {k: v for k, v in params.items() if not k.startswith("subhalo.")})
    assert float(model.observation.snr(lensed)[0]) == pytest.approx(80.0, rel=1e-3)
    assert model.subhalo_profile == "POINT_MASS"
    # the 75-parameter variant of the validation test: EPL + shear, no subhalo
    m75, t75, _ = demo_problem(num_pix=32, lens="epl+shear", num_subhalos=0, snr=50.0)
    assert m75.num_params == 75 and sorted(t75) == sorted(m75.param_names)
    assert t75["lens.0.gamma"] == 2.0


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "subhalo detection" in printed
    summary = json.load(open(tmp_path / "demo" / "summary.json"))
    truth = summary["truths"]
    # the Einstein radius and the source position are recovered within their 68% intervals
    # widened to 2 sigma
    for name in ("lens.0.theta_E", "source.0.center_x", "source.0.center_y"):
        s = summary["parameters"][name]
        assert abs(s["mean"] - truth[name]) < 2 * s["std"] + 1e-3, name
    det = summary["subhalo_detection"]
    for key in ("delta_log_likelihood", "significance_sigma", "mass_msun"):
        assert np.isfinite(det[key])
    # The compact 1e10 M_sun subhalo is detected (recorded run: delta log L 171.6,
    # 18.2 sigma, 9.8e9 M_sun at (0.793, 0.753) for the truth at (0.80, 0.75)).
    assert det["significance_sigma"] > 5.0, det
    assert 0.5 < det["mass_msun"] / truth["subhalo.0.mass"] < 2.0, det
    assert np.hypot(det["center_x"] - truth["subhalo.0.center_x"],
                    det["center_y"] - truth["subhalo.0.center_y"]) < 0.1, det
