"""Tests of tfstronglens.simulation (priors, rendering, writer), the ``simulate`` CLI
command and the ``lens_simulations`` TFDS builder.

Every compiled test uses the tiny builder config's simulation config with batch size 4,
so that the XLA-compiled batch function (about 10 s to compile on 2 cores) is traced
once for the whole module (generators sharing a config except for the seed share it).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfstronglens import Simulator
from tfstronglens.cli import main
from tfstronglens.io import read_fits
from tfstronglens.observation import LensCosmology, subhalo_lens_kwargs
from tfstronglens.simulation import (DEFAULT_PRIORS, LensDatasetGenerator, LensSimulationConfig,
                                     write_dataset)

BS = 4


@pytest.fixture(scope="module")
def tiny_sim_dict():
    from tfstronglens.datasets.lens_simulations import LensSimulations

    cfg = [c for c in LensSimulations.BUILDER_CONFIGS if c.name.endswith("-tiny")][0]
    return dict(cfg.simulation)


@pytest.fixture(scope="module")
def gen(tiny_sim_dict):
    return LensDatasetGenerator(LensSimulationConfig.from_dict(dict(tiny_sim_dict, seed=7)))


@pytest.fixture(scope="module")
def batch(gen):
    return gen.generate(0, BS)


# ----------------------------------------------------------------- config
def test_config_roundtrip_json(tmp_path):
    cfg = LensSimulationConfig(instrument="lsst_r", num_pix=48, subhalo_model="wdm",
                               priors={"theta_E": [1.0, 1.2]}, seed=5)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert LensSimulationConfig.from_dict(d) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert LensSimulationConfig.from_json(tmp_path / "c.json") == cfg
    assert cfg.priors["theta_E"] == (1.0, 1.2)
    assert cfg.priors["shear"] == DEFAULT_PRIORS["shear"]


@pytest.mark.parametrize("kwargs, field", [
    (dict(instrument="jwst_nope"), "instrument"),
    (dict(exposure_time=-5.0), "exposure_time"),
    (dict(z_lens=1.0, z_source=0.8), "z_source"),
    (dict(z_lens=1.0, z_source=1.0), "z_source"),
    (dict(m_min=1e9, m_max=1e8), "m_max"),
    (dict(m_min=-1.0), "m_min"),
    (dict(subhalo_model="wdm", m_hm=0.0), "m_hm"),
    (dict(subhalo_model="fuzzy"), "subhalo_model"),
    (dict(lens_model="nfw"), "lens_model"),
    (dict(num_pix=2), "num_pix"),
    (dict(priors={"theta_E": [1.5, 1.0]}), "priors.theta_E"),
    (dict(priors={"lens_q": [0.5, 1.5]}), "priors.lens_q"),
    (dict(priors={"source_snr": [0.0, 10.0]}), "priors.source_snr"),
    (dict(priors={"bogus": [0, 1]}), "priors"),
])
def test_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        LensSimulationConfig(**kwargs)


def test_from_dict_unknown_field():
    with pytest.raises(ValueError, match="unknown config field"):
        LensSimulationConfig.from_dict({"num_pixels": 64})


# ------------------------------------------------------------- generator
def test_shapes_dtypes_and_reproducibility(gen, batch, tiny_sim_dict):
    n, n_max = gen.config.num_pix, gen.config.n_max
    assert batch["image"].shape == (BS, n, n) and batch["image"].dtype == np.float32
    assert batch["model"].shape == (BS, n, n)
    assert set(batch["truths"]) == set(gen.truth_names)
    assert "lens.0.theta_E" in batch["truths"] and "lens.0.gamma" in batch["truths"]
    for v in batch["truths"].values():
        assert v.shape == (BS,) and v.dtype == np.float32 and np.all(np.isfinite(v))
    for k in ("mass", "center_x", "center_y"):
        assert batch["subhalos"][k].shape == (BS, n_max)
    assert batch["subhalos"]["mask"].dtype == bool
    # same seed and batch index -> identical; another batch or seed -> different
    again = gen.generate(0, BS)
    np.testing.assert_array_equal(again["image"], batch["image"])
    other = gen.generate(1, BS)
    assert not np.allclose(other["truths"]["lens.0.theta_E"], batch["truths"]["lens.0.theta_E"])
    gen2 = LensDatasetGenerator(LensSimulationConfig.from_dict(dict(tiny_sim_dict, seed=8)))
    b2 = gen2.generate(0, BS)
    assert not np.allclose(b2["image"], batch["image"])
    np.testing.assert_array_equal(LensDatasetGenerator(gen.config).generate(1, BS)["image"],
                                  other["image"])


def test_priors_respected(gen):
    pr = gen.config.priors
    t = gen.generate(2, BS)["truths"]
    b = {k: np.concatenate([t[k], gen.generate(3, BS)["truths"][k]]) for k in t}

    def inside(x, rng):
        assert np.all(x >= rng[0] - 1e-6) and np.all(x <= rng[1] + 1e-6), (x, rng)

    inside(b["lens.0.theta_E"], pr["theta_E"])
    inside(b["lens.0.gamma"], pr["gamma"])
    inside(b["lens.0.center_x"], pr["lens_center"])
    inside(np.hypot(b["lens.1.gamma1"], b["lens.1.gamma2"]), pr["shear"])
    e = np.hypot(b["lens.0.e1"], b["lens.0.e2"])
    inside((1 - e) / (1 + e), pr["lens_q"])
    inside(b["source.0.R_sersic"], pr["source_R_sersic"])
    inside(b["source.0.n_sersic"], pr["source_n_sersic"])
    inside(b["source.0.center_x"] - b["lens.0.center_x"], pr["source_offset"])
    inside(b["source_snr"], pr["source_snr"])
    inside(b["lens_light.0.R_sersic"], pr["lens_light_R_sersic"])
    np.testing.assert_array_equal(b["lens_light.0.center_x"], b["lens.0.center_x"])
    assert np.all(b["source.0.amp"] > 0) and np.all(b["lens_light.0.amp"] > 0)
    # the draws spread over the range (a constant or clipped prior would fail)
    assert np.ptp(b["lens.0.theta_E"]) > 0.2 * np.ptp(pr["theta_E"])


def _rerender(gen, b, with_source=True, with_light=True):
    """Eager re-rendering from the truths, subhalos included (no XLA)."""
    cfg, t, s = gen.config, b["truths"], b["subhalos"]
    sim0 = gen.simulator
    n_max = cfg.n_max
    sim = Simulator(sim0.grid, lens=list(sim0.lens) + ["TNFW"] * n_max,
                    source=sim0.source if with_source else [],
                    lens_light=sim0.lens_light if with_light else [], psf=sim0.psf,
                    jit_compile=False)
    p = lambda kind, i, prof: {k: t[f"{kind}.{i}.{k}"] for k in prof.param_names}  # noqa
    lens = [p("lens", i, prof) for i, prof in enumerate(sim0.lens)]
    te, cx, cy = t["lens.0.theta_E"], t["lens.0.center_x"], t["lens.0.center_y"]
    sub = subhalo_lens_kwargs({k: tf.constant(v) for k, v in s.items()},
                              LensCosmology(cfg.z_lens, cfg.z_source), "TNFW",
                              theta_E_host=te[:, None], host_center_x=cx[:, None],
                              host_center_y=cy[:, None], as_list=True)
    src = [p("source", 0, sim0.source[0])] if with_source else []
    light = [p("lens_light", 0, sim0.lens_light[0])] if with_light else []
    return sim(lens=lens + sub, source=src, lens_light=light).numpy()


def test_truths_reproduce_model_and_snr(gen, batch):
    src = _rerender(gen, batch, with_light=False)
    light = _rerender(gen, batch, with_source=False)
    model = src + light  # (rendering is linear in the components)
    # float32 XLA vs eager rendering of the same parameters
    np.testing.assert_allclose(model, batch["model"], atol=2e-4 * np.abs(model).max())
    snr = gen.observation.snr(src, lens_light=light).numpy()
    np.testing.assert_allclose(snr, batch["truths"]["source_snr"], rtol=2e-3)
    lo, hi = gen.config.priors["source_snr"]
    assert np.all((snr > lo * 0.99) & (snr < hi * 1.01))
    np.testing.assert_allclose(gen.observation.snr(light).numpy(),
                               batch["truths"]["lens_light_snr"], rtol=2e-3)
    # the noise: residual / sigma is standard normal
    r = (batch["image"] - batch["model"]) / batch["noise_sigma"]
    assert abs(r.mean()) < 0.1 and abs(r.std() - 1.0) < 0.05


def test_subhalo_masks(gen):
    cfg = gen.config
    b = [gen.generate(k, BS) for k in range(3)]
    mask = np.concatenate([x["subhalos"]["mask"] for x in b])
    mass = np.concatenate([x["subhalos"]["mass"] for x in b])
    sx = np.concatenate([x["subhalos"]["center_x"] for x in b])
    sy = np.concatenate([x["subhalos"]["center_y"] for x in b])
    te = np.concatenate([x["truths"]["lens.0.theta_E"] for x in b])
    cx = np.concatenate([x["truths"]["lens.0.center_x"] for x in b])
    cy = np.concatenate([x["truths"]["lens.0.center_y"] for x in b])
    n = mask.sum(1)
    assert n.sum() > 0  # kappa_sub = 0.01 gives several subhalos per lens
    # the real subhalos fill the first n slots; padded slots are zeros
    np.testing.assert_array_equal(mask, np.arange(cfg.n_max)[None] < n[:, None])
    assert np.all(mass[~mask] == 0) and np.all(sx[~mask] == 0)
    assert np.all((mass[mask] >= cfg.m_min * 0.999) & (mass[mask] <= cfg.m_max * 1.001))
    r = np.hypot(sx - cx[:, None], sy - cy[:, None])
    w = cfg.subhalo_annulus_width
    rr = np.broadcast_to(te[:, None], r.shape)
    assert np.all(r[mask] <= rr[mask] + w + 1e-4)
    assert np.all(r[mask] >= np.maximum(rr[mask] - w, 0) - 1e-4)


def test_no_subhalos_sie_no_lens_light():
    """subhalo_model='none': all slots masked and zero; SIE truths have no gamma; without
    lens light the S/N is that of the image itself."""
    cfg = LensSimulationConfig(instrument="euclid_vis", num_pix=16, supersample=1, n_max=3,
                               lens_light=False, priors={"theta_E": [0.3, 0.6]}, seed=3)
    g = LensDatasetGenerator(cfg)
    b = g.generate(0, 2)
    assert not b["subhalos"]["mask"].any() and b["subhalos"]["mask"].shape == (2, 3)
    assert not b["subhalos"]["mass"].any()
    assert "lens.0.gamma" not in b["truths"] and "lens_light_snr" not in b["truths"]
    np.testing.assert_allclose(g.observation.snr(b["model"]).numpy(),
                               b["truths"]["source_snr"], rtol=1e-3)


def test_as_dataset(gen, batch):
    ds = gen.as_dataset(BS, 2)
    items = list(ds)
    assert len(items) == 2
    img, truths = items[0]
    n = gen.config.num_pix
    assert img.shape == (BS, n, n, 1) and img.dtype == tf.float32
    np.testing.assert_array_equal(img.numpy()[..., 0], batch["image"])
    assert truths["lens.0.theta_E"].shape == (BS,)
    assert truths["subhalos.mask"].shape == (BS, gen.config.n_max)
    assert truths["subhalos.mask"].dtype == tf.bool
    img3, _ = next(iter(gen.as_dataset(BS, 1, channel_axis=False)))
    assert img3.shape == (BS, n, n)
    with pytest.raises(ValueError, match="batch_size"):
        gen.as_dataset(0, 1)


# ---------------------------------------------------------------- writer
def test_write_dataset(gen, tmp_path):
    out = tmp_path / "ds"
    paths = write_dataset(gen, 6, out, progress=False, batch_size=BS)
    names = sorted(os.listdir(out))
    assert names == [f"image_{i:05d}.fits" for i in range(6)] + ["truths.ecsv"]
    assert len(paths) == 7
    from astropy.io import fits
    from astropy.table import Table

    t = Table.read(out / "truths.ecsv")
    assert len(t) == 6
    assert "lens.0.theta_E" in t.colnames and "source_snr" in t.colnames
    assert t["subhalos.mass"].shape == (6, gen.config.n_max)
    assert t["subhalos.mask"].dtype == bool
    b1 = gen.generate(1, BS)
    img, hdr = read_fits(out / "image_00005.fits")
    np.testing.assert_array_equal(img, b1["image"][1])
    assert hdr["PIXSCALE"] == pytest.approx(gen.observation.pixel_scale)
    assert hdr["BUNIT"] == "electron/s"
    assert hdr["EXPTIME"] == pytest.approx(gen.observation.total_exposure_time)
    assert hdr["LENS0_THETA_E"] == pytest.approx(float(b1["truths"]["lens.0.theta_E"][1]))
    assert hdr["LENS0_THETA_E"] == pytest.approx(t["lens.0.theta_E"][5])
    assert hdr["NSUB"] == int(t["subhalos.mask"][5].sum())
    with fits.open(out / "image_00005.fits") as hdul:
        np.testing.assert_allclose(hdul["NOISE"].data, b1["noise_sigma"][1])
        assert hdul["PSF"].data.sum() == pytest.approx(1.0, rel=1e-5)
    # no temporary files left; refusal to write into a non-empty directory
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    before = (out / "image_00000.fits").read_bytes()
    with pytest.raises(FileExistsError, match="not empty"):
        write_dataset(gen, 2, out, progress=False, batch_size=BS)
    assert (out / "image_00000.fits").read_bytes() == before
    write_dataset(gen, 2, out, overwrite=True, progress=False, batch_size=BS)
    assert len(Table.read(out / "truths.ecsv")) == 2


def test_write_dataset_atomic_on_failure(gen, tmp_path, monkeypatch):
    import tfstronglens.simulation.writer as w

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(w.LensDatasetGenerator, "generate", boom)
    with pytest.raises(RuntimeError):
        write_dataset(gen, 2, tmp_path / "x", progress=False)
    assert os.listdir(tmp_path / "x") == []
    with pytest.raises(ValueError, match="n must"):
        write_dataset(gen, 0, tmp_path / "y", progress=False)


# ------------------------------------------------------------------- CLI
def test_cli_simulate(tiny_sim_dict, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(dict(tiny_sim_dict, seed=7)))
    out = tmp_path / "out"
    rc = main(["simulate", "--config", str(cfg), "--n", "3", "--out", str(out),
               "--batch-size", str(BS)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "simulating" in captured.err  # the tqdm progress bar
    assert "wrote 3 images" in captured.out
    assert len(os.listdir(out)) == 4
    # refusal, then --overwrite with another seed
    rc = main(["simulate", "--config", str(cfg), "--n", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    rc = main(["simulate", "--config", str(cfg), "--n", "2", "--out", str(out), "--overwrite",
               "--seed", "9", "--batch-size", str(BS), "--no-progress"])
    assert rc == 0
    from astropy.table import Table

    assert Table.read(out / "truths.ecsv").meta["config"]["seed"] == 9


def test_cli_simulate_overwrite_replaces_an_interrupted_dataset(tiny_sim_dict, tmp_path, capsys):
    """--overwrite into the folder of a killed run leaves exactly the new dataset (the stale
    images, the atomic writer's temporary file and an old staging folder are deleted, other
    files kept), with one truth-table row per image; without it the folder is refused."""
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(dict(tiny_sim_dict, seed=7)))
    out = tmp_path / "out"
    out.mkdir()
    stale = ["image_00000.fits", "image_00001.fits", "image_00007.fits",
             ".tmp-0123abcd-image_00008.fits", ".tmp-0123abcd-truths.ecsv"]
    for name in stale:
        (out / name).write_bytes(b"stale")
    (out / ".tmp-dataset-x1y2z3").mkdir()
    (out / ".tmp-dataset-x1y2z3" / "image_00009.fits").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    argv = ["simulate", "--config", str(cfg), "--n", "2", "--out", str(out), "--seed", "9",
            "--batch-size", str(BS), "--no-progress"]
    before = sorted(os.listdir(out))
    assert main(argv) == 2 and "not empty" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before
    assert main(argv + ["--overwrite"]) == 0, capsys.readouterr().err
    images = ["image_00000.fits", "image_00001.fits"]
    assert sorted(os.listdir(out)) == images + ["notes.txt", "truths.ecsv"]
    assert (out / "notes.txt").read_text() == "mine"
    from astropy.table import Table

    table = Table.read(out / "truths.ecsv")
    assert list(table["filename"]) == images and table.meta["config"]["seed"] == 9
    for row in table:
        _, hdr = read_fits(out / row["filename"])
        assert hdr["SIMSEED"] == 9
        assert hdr["LENS0_THETA_E"] == pytest.approx(row["lens.0.theta_E"])


def test_write_dataset_overwrite_failure_keeps_the_old_dataset(gen, tmp_path, monkeypatch):
    """A run with overwrite=True that fails midway (in its second batch) leaves the
    previous dataset as it was and no staging folder."""
    import tfstronglens.simulation.writer as w

    out = tmp_path / "ds"
    out.mkdir()
    for name in ("image_00000.fits", "truths.ecsv"):
        (out / name).write_text("old dataset")
    generate = w.LensDatasetGenerator.generate

    def fail_in_second_batch(self, k, batch_size):
        if k > 0:
            raise RuntimeError("disk full")
        return generate(self, k, batch_size)

    monkeypatch.setattr(w.LensDatasetGenerator, "generate", fail_in_second_batch)
    with pytest.raises(RuntimeError, match="disk full"):
        write_dataset(gen, BS + 1, out, overwrite=True, progress=False, batch_size=BS)
    assert sorted(os.listdir(out)) == ["image_00000.fits", "truths.ecsv"]
    assert (out / "truths.ecsv").read_text() == "old dataset"


@pytest.mark.parametrize("argv, msg", [
    (["--instrument", "nope"], "unknown instrument"),
    (["--config", "missing.json"], "not a file"),
    (["--n", "0"], "--n"),
])
def test_cli_simulate_errors(tmp_path, capsys, argv, msg):
    args = ["simulate", "--n", "2", "--out", str(tmp_path / "o")] + argv
    assert main(args) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_cli_bad_config_content(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"z_lens": 2.0, "z_source": 1.0}))
    assert main(["simulate", "--config", str(cfg), "--n", "1", "--out", str(tmp_path / "o")]) == 2
    assert "z_source" in capsys.readouterr().err
    cfg.write_text("{not json")
    assert main(["simulate", "--config", str(cfg), "--n", "1", "--out", str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# ------------------------------------------------------------------ TFDS
def test_tfds_builder(gen, tmp_path):
    import tensorflow_datasets as tfds

    import tfstronglens.datasets  # noqa: F401  (registers the builder)

    name = "lens_simulations/hst_acs_f814w-cdm-32-tiny"
    assert "lens_simulations" in tfds.list_builders()
    data = {}
    for d in ("a", "b"):
        b = tfds.builder(name, data_dir=str(tmp_path / d))
        b.download_and_prepare()
        assert b.info.splits["train"].num_examples == 8
        data[d] = tfds.as_numpy(b.as_dataset(split="train", shuffle_files=False))
        data[d] = sorted(data[d], key=lambda ex: ex["truths"]["lens_0_theta_E"])
    n = gen.config.num_pix
    for ea, eb in zip(data["a"], data["b"]):
        assert ea["image"].shape == (n, n, 1) and ea["image"].dtype == np.float32
        assert ea["subhalos"]["mask"].shape == (gen.config.n_max,)
        np.testing.assert_array_equal(ea["image"], eb["image"])
        np.testing.assert_array_equal(ea["subhalos"]["mass"], eb["subhalos"]["mass"])
    # the stored truths re-render the stored noise-free model; the noise is consistent
    ex = data["a"]
    from tfstronglens.datasets.lens_simulations import feature_name

    truths = {k: np.array([e["truths"][feature_name(k)] for e in ex]) for k in gen.truth_names}
    b = {"truths": truths,
         "subhalos": {k: np.stack([e["subhalos"][k] for e in ex]) for k in ex[0]["subhalos"]}}
    model = np.stack([e["model"] for e in ex])
    np.testing.assert_allclose(_rerender(gen, b), model, atol=2e-4 * np.abs(model).max())
    image = np.stack([e["image"][..., 0] for e in ex])
    r = (image - model) / np.sqrt(gen.observation.noise_variance(model).numpy())
    assert abs(r.std() - 1.0) < 0.05
