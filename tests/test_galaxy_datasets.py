"""Tests of the galaxy datasets: the synthetic galaxy generator
(tfstronglens.simulation.galaxies) and the TFDS builders ``synthetic_galaxies`` and
``cosmos_galaxies`` (on a small RealGalaxyCatalog written here, and on GalSim's real AEGIS
stamps in ../shared/data/galsim_real when that folder exists)."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.special import gammainc

from tfstronglens.simulation.galaxies import (SyntheticGalaxyConfig, SyntheticGalaxyGenerator,
                                              sample_ellipticity, sersic_total_flux)

GALSIM_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "galsim_real"
FEATURES = {"image": np.float32, "noise_std": np.float32, "psf": np.float32, "snr": np.float32,
            "flux_scale": np.float32, "id": np.int64, "mag": np.float32}


@pytest.fixture(scope="module")
def gen():
    return SyntheticGalaxyGenerator(stamp_size=48, chunk_size=64)


@pytest.fixture(scope="module")
def sample(gen):
    return gen.sample(384, seed=3)


# ----------------------------------------------------------- the generator
def test_generator_sample_contract(gen, sample):
    n, S, P = 384, 48, 33
    assert sample["image"].shape == (n, S, S) and sample["image"].dtype == np.float32
    assert sample["psf"].shape == (n, P, P)
    for k in ("noise_std", "snr", "flux_scale", "mag"):
        assert sample[k].shape == (n,) and sample[k].dtype == np.float32
        assert np.all(np.isfinite(sample[k]))
    np.testing.assert_array_equal(sample["id"], np.arange(n))
    nf = sample["noise_free"]
    # the noise-free galaxy peaks at exactly 1, the image is it plus noise_std white noise
    np.testing.assert_allclose(nf.max(axis=(1, 2)), 1.0, rtol=1e-6)
    res = (sample["image"] - nf) / sample["noise_std"][:, None, None]
    assert abs(res.std() - 1.0) < 0.01 and abs(res.mean()) < 0.01
    # snr is the matched-filter S/N of the noise-free image, within the configured range
    snr = np.sqrt(np.sum(nf.astype(np.float64) ** 2, axis=(1, 2))) / sample["noise_std"]
    np.testing.assert_allclose(snr, sample["snr"], rtol=1e-4)
    assert sample["snr"].min() >= 15 and sample["snr"].max() <= 50
    assert stats.kstest((sample["snr"] - 15) / 35, "uniform").pvalue > 1e-3
    # centred: light-weighted centroid of the noise-free image at (S-1)/2 within a pixel
    w = nf.astype(np.float64)
    c = np.arange(S) - 0.5 * (S - 1)
    cx = (w.sum(axis=1) @ c) / w.sum(axis=(1, 2))
    cy = (w.sum(axis=2) @ c) / w.sum(axis=(1, 2))
    assert np.abs(cx).max() < 1 and np.abs(cy).max() < 1 and np.median(np.hypot(cx, cy)) < 0.05
    np.testing.assert_allclose(sample["psf"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
    # magnitude from the total flux (e-/s) and the F814W zero point
    np.testing.assert_allclose(sample["mag"], 25.94 - 2.5 * np.log10(sample["params"]["total_flux"]),
                               atol=1e-4)


def test_generator_is_reproducible_and_chunked(gen, sample):
    part = gen.sample(40, seed=3, start=50)       # crosses the chunk boundary at 64
    for k in ("image", "noise_std", "snr", "flux_scale", "mag", "id"):
        np.testing.assert_array_equal(part[k], sample[k][50:90])
    other = gen.sample(8, seed=4)
    assert not np.allclose(other["image"], sample["image"][:8])
    assert gen.sample(0, seed=3)["image"].shape == (0, 48, 48)


def test_sersic_rendering_matches_analytic_flux():
    """Pixel-integrated Sersic components hold the analytic flux inside the stamp:
    between the flux within the inscribed and the circumscribed circle."""
    g = SyntheticGalaxyGenerator(stamp_size=64, pixel_scale=0.03, chunk_size=4)
    r_e = np.array([0.05, 0.1, 0.05, 0.2])
    n = np.array([1.0, 4.0, 4.0, 1.0])
    e1 = np.array([0.0, 0.2, -0.1, 0.3])
    e2 = np.array([0.0, 0.1, 0.0, -0.2])
    flux = np.array([1.0, 2.0, 3.0, 0.5])
    img = g._sersic(np.arange(4), r_e, n, e1, e2, flux).astype(np.float64)
    total = img.sum(axis=(1, 2))
    b = g.config.pixel_scale
    half = 32 * b
    e = np.hypot(e1, e2)
    q = (1 - e) / (1 + e)
    # flux inside an ellipse of product-average radius R: F P(2n, b_n (R/R_e)^(1/n));
    # the square contains the ellipse of semi-major axis `half`, i.e. R = half sqrt(q), and
    # is inside the one of semi-minor axis sqrt(2) half, R = sqrt(2) half / sqrt(q)
    from tfstronglens.simulation.galaxies import sersic_b_n

    bn = sersic_b_n(n)
    lo = flux * gammainc(2 * n, bn * (half * np.sqrt(q) / r_e) ** (1 / n))
    hi = flux * gammainc(2 * n, bn * (math.sqrt(2) * half / np.sqrt(q) / r_e) ** (1 / n))
    assert np.all(total >= lo * (1 - 5e-3)) and np.all(total <= hi * (1 + 5e-3)), (lo, total, hi)
    # the n = 1, compact case: all the flux, to 0.5%
    np.testing.assert_allclose(total[0], 1.0, rtol=5e-3)
    # exponential: F = 2 pi amp R^2 e^b / b^2 with b_1 = 1.67835
    np.testing.assert_allclose(sersic_total_flux(1.0, 1.0, 1.0), 2 * np.pi * math.exp(1.67835) / 1.67835**2,
                               rtol=1e-4)


def test_noise_free_flux_is_conserved_through_the_psf():
    """Without arms/lopsidedness (flux-exact components only), compact galaxies keep their
    total flux: sum(noise_free) * flux_scale = total_flux (minus what falls off the stamp)."""
    g = SyntheticGalaxyGenerator(stamp_size=64, spiral_fraction=0.0, irregular_fraction=0.0,
                                 chunk_size=128)
    out = g.sample(128, seed=9)
    p = out["params"]
    ratio = out["noise_free"].sum(axis=(1, 2)) * out["flux_scale"] / p["total_flux"]
    compact = (p["disk_r_e"] < 0.15) & (p["bulge_r_e"] < 0.08)
    assert compact.sum() > 10
    assert np.all(ratio[compact] < 1.002) and np.all(ratio[compact] > 0.95)
    assert np.median(ratio[compact]) > 0.985


def test_morphology_distributions(sample):
    p = sample["params"]
    cfg = SyntheticGalaxyConfig(stamp_size=48)
    # half-light radii inside [r_min, stamp field / 6]
    r = np.where(p["type"] == 1, p["bulge_r_e"], p["disk_r_e"])
    assert r.min() >= cfg.r_min and r.max() <= cfg.r_max + 1e-12
    # disk ellipticities follow the Miller et al. (2013) prior (mean ~0.3)
    grid = np.linspace(0, 0.804, 4001)
    pdf = grid * (1 - np.exp((grid - 0.804) / 0.2539)) / ((1 + grid) * np.sqrt(grid**2 + 0.0256**2))
    mean_prior = np.sum(grid * pdf) / np.sum(pdf)
    e_disk = np.hypot(p["disk_e1"], p["disk_e2"])
    assert abs(e_disk.mean() - mean_prior) < 3 * e_disk.std() / math.sqrt(e_disk.size)
    # position angles uniform, shared by bulge and disk
    phi = 0.5 * np.arctan2(p["disk_e2"], p["disk_e1"]) % np.pi
    assert stats.kstest(phi / np.pi, "uniform").pvalue > 1e-3
    # morphology mix: irregulars among star-forming galaxies ~ 15%, early types have B/T >= 0.6
    late = p["type"] != 1
    frac_irr = np.mean(p["type"][late] == 2)
    assert abs(frac_irr - 0.15) < 4 * math.sqrt(0.15 * 0.85 / late.sum())
    assert np.all(p["bulge_fraction"][p["type"] == 1] >= 0.6)
    assert np.all(p["bulge_fraction"][p["type"] == 2] == 0)
    assert np.any(p["arm_amplitude"] > 0) and np.any(p["n_clumps"] > 0)


def test_ellipticity_priors():
    rng = np.random.default_rng(0)
    e = sample_ellipticity(rng, 20000, prior="rayleigh", sigma=0.2)
    assert e.max() <= 0.8
    assert abs(e.mean() - 0.2 * math.sqrt(math.pi / 2)) < 0.01
    bulge = sample_ellipticity(rng, 20000, "bulge")
    disk = sample_ellipticity(rng, 20000, "disk")
    assert bulge.mean() < disk.mean()       # bulges are rounder (Miller et al. 2013)


def test_moffat_and_small_config():
    g = SyntheticGalaxyGenerator(stamp_size=32, pixel_scale=0.06, psf="moffat", psf_fwhm=0.12,
                                 psf_size=17, chunk_size=16)
    out = g.sample(16, seed=1)
    assert out["image"].shape == (16, 32, 32) and out["psf"].shape == (16, 17, 17)
    np.testing.assert_allclose(out["psf"][0].sum(), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(out["image"]))


@pytest.mark.parametrize("kwargs, field", [
    (dict(psf_size=32), "psf_size"), (dict(snr_range=(50, 15)), "snr_range"),
    (dict(psf="airy"), "psf"), (dict(stamp_size=4), "stamp_size"),
    (dict(r_min=1.0), "r_min"), (dict(spiral_fraction=1.5), "spiral_fraction"),
    (dict(ellipticity_prior="flat"), "ellipticity_prior"),
])
def test_generator_config_errors(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticGalaxyGenerator(**kwargs)


def test_generator_sample_errors(gen):
    with pytest.raises(ValueError, match="seed"):
        gen.sample(2, seed=-1)
    with pytest.raises(ValueError, match="n must"):
        gen.sample(-2, seed=1)
    with pytest.raises(ValueError, match="unknown"):
        SyntheticGalaxyConfig.from_dict({"stamp_sise": 64})
    cfg = SyntheticGalaxyConfig(stamp_size=32, snr_range=(10, 20))
    assert SyntheticGalaxyConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------- TFDS helpers
def _build(builder_cls_or_name, data_dir, manual_dir=None, config=None):
    import tensorflow_datasets as tfds

    import tfstronglens.datasets  # noqa: F401  (registers the builders)

    if config is not None:
        b = builder_cls_or_name(config=config, data_dir=str(data_dir))
    else:
        b = tfds.builder(builder_cls_or_name, data_dir=str(data_dir))
    dl = tfds.download.DownloadConfig(manual_dir=str(manual_dir)) if manual_dir else None
    b.download_and_prepare(download_config=dl)
    return b


def _examples(builder):
    import tensorflow_datasets as tfds

    out = {}
    for split in builder.info.splits:
        exs = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
        out[split] = sorted(exs, key=lambda e: int(e["id"]))
    return out


def _check_examples(exs, S, P, snr_range, centre_tol=1.0, noise_tol=0.15):
    from tfstronglens.datasets.galaxies import border_noise_std, box_smooth3, light_centroid

    assert exs, "no examples"
    for ex in exs:
        assert set(ex) == set(FEATURES)
        for k, dt in FEATURES.items():
            assert ex[k].dtype == dt, (k, ex[k].dtype)
        assert ex["image"].shape == (S, S) and ex["psf"].shape == (P, P)
        for k in ("image", "noise_std", "psf", "snr", "flux_scale"):
            assert np.all(np.isfinite(ex[k])), k
        np.testing.assert_allclose(ex["psf"].sum(), 1.0, rtol=1e-5)
        assert snr_range[0] <= ex["snr"] <= snr_range[1]
        cy, cx = light_centroid(ex["image"], ex["noise_std"])
        assert abs(cy - (S - 1) / 2) <= centre_tol and abs(cx - (S - 1) / 2) <= centre_tol, (cy, cx)
        meas = border_noise_std(ex["image"])
        assert abs(meas / ex["noise_std"] - 1) < noise_tol, (ex["id"], meas, ex["noise_std"])
    return [box_smooth3(ex["image"]).max() for ex in exs]


# ---------------------------------------------------- synthetic_galaxies
def test_synthetic_galaxies_tfds(tmp_path):
    data = {}
    for d in ("a", "b"):
        b = _build("synthetic_galaxies/tiny", tmp_path / d)
        assert {k: v.num_examples for k, v in b.info.splits.items()} == \
            {"train": 16, "validation": 8, "test": 8}
        data[d] = _examples(b)
    for split in ("train", "validation", "test"):
        for ea, eb in zip(data["a"][split], data["b"][split]):
            for k in FEATURES:
                np.testing.assert_array_equal(ea[k], eb[k])
    exs = data["a"]["train"]
    # the noise-free peak is 1; the smoothed noisy image peaks near it
    peaks = _check_examples(exs, 32, 15, (15, 50), noise_tol=0.3)
    assert 0.6 < np.median(peaks) < 1.4
    # the stored examples are the generator's
    from tfstronglens.datasets.synthetic_galaxies import SPLIT_SEEDS, SyntheticGalaxies

    cfg = [c for c in SyntheticGalaxies.BUILDER_CONFIGS if c.name == "tiny"][0]
    ref = SyntheticGalaxyGenerator(cfg.generator_config()).sample(16, SPLIT_SEEDS["train"])
    np.testing.assert_array_equal(np.stack([e["image"] for e in exs]), ref["image"])
    np.testing.assert_array_equal(np.array([e["id"] for e in exs]), np.arange(16))


# ------------------------------------------------------- cosmos_galaxies
def _sersic_stamp(shape, r_e_pix, n, centre, q=0.7, phi=0.3):
    yy, xx = np.indices(shape, dtype=np.float64)
    dx, dy = xx - centre[1], yy - centre[0]
    u = math.cos(phi) * dx + math.sin(phi) * dy
    v = -math.sin(phi) * dx + math.cos(phi) * dy
    r = np.sqrt(q * u * u + v * v / q)
    from tfstronglens.simulation.galaxies import sersic_b_n

    b = sersic_b_n(n)
    img = np.exp(-b * ((np.maximum(r, 0.3) / r_e_pix) ** (1 / n) - 1))
    return img


def write_test_catalog(directory, pixel_scale=None, noise_variance=True, n=10, sigma=0.01):
    """A small RealGalaxyCatalog: Sersic stamps of S/N 5-300 plus white noise in two image
    files, even-sized float64 PSFs (sum 0.9, off-centre), PIXEL_SCALE/NOISE_VARIANCE/MAG
    columns optional. Returns ``{ident: true S/N}``."""
    from astropy.io import fits

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    target_snr = np.array([5, 20, 30, 40, 300, 25, 45, 10, 35, 28][:n], float)
    rows, gal_hdus, psf_hdus, truth = [], [[], []], [[], []], {}
    yy, xx = np.indices((20, 20))
    for i in range(n):
        shape = (int(rng.integers(50, 90)), int(rng.integers(50, 90)))
        centre = (shape[0] / 2 + rng.uniform(-4, 4), shape[1] / 2 + rng.uniform(-4, 4))
        model = _sersic_stamp(shape, rng.uniform(2, 5), rng.choice([1.0, 2.5]), centre)
        model *= target_snr[i] * sigma / np.sqrt(np.sum(model**2))
        img = (model + rng.normal(0, sigma, shape)).astype(np.float32)
        f = i % 2
        psf = np.exp(-0.5 * ((xx - 10.3) ** 2 + (yy - 9.8) ** 2) / 1.5**2)
        gal_hdus[f].append(img)
        psf_hdus[f].append(0.9 * psf / psf.sum())              # float64
        ident = 1000 + 7 * i
        truth[ident] = target_snr[i]
        rows.append((ident, f"gal_{f}.fits", len(gal_hdus[f]) - 1, f"psf_{f}.fits", len(psf_hdus[f]) - 1))
    for f in (0, 1):
        fits.HDUList([fits.PrimaryHDU(gal_hdus[f][0])] + [fits.ImageHDU(a) for a in gal_hdus[f][1:]]
                     ).writeto(directory / f"gal_{f}.fits", overwrite=True)
        fits.HDUList([fits.PrimaryHDU(psf_hdus[f][0])] + [fits.ImageHDU(a) for a in psf_hdus[f][1:]]
                     ).writeto(directory / f"psf_{f}.fits", overwrite=True)
    cols = [fits.Column("IDENT", "K", array=[r[0] for r in rows]),
            fits.Column("GAL_FILENAME", "20A", array=[r[1] for r in rows]),
            fits.Column("GAL_HDU", "K", array=[r[2] for r in rows]),
            fits.Column("PSF_FILENAME", "20A", array=[r[3] for r in rows]),
            fits.Column("PSF_HDU", "K", array=[r[4] for r in rows])]
    if pixel_scale is not None:
        cols.append(fits.Column("PIXEL_SCALE", "D", array=[pixel_scale] * n))
    if noise_variance:
        cols.append(fits.Column("NOISE_VARIANCE", "D", array=[sigma**2] * n))
        cols.append(fits.Column("MAG", "D", array=np.linspace(22, 25, n)))
    fits.BinTableHDU.from_columns(cols).writeto(directory / "real_galaxy_catalog_test.fits",
                                                overwrite=True)
    return truth


def _cosmos_config(**kw):
    from tfstronglens.datasets.cosmos_galaxies import CosmosGalaxiesConfig

    base = dict(name="test", stamp_size=32, psf_size=15, snr_range=(15.0, 60.0),
                validation_fraction=0.3)
    base.update(kw)
    return CosmosGalaxiesConfig(**base)


def test_cosmos_galaxies_from_written_catalog(tmp_path):
    """Equal pixel scales, no PIXEL_SCALE / NOISE_VARIANCE / MAG columns: integer-pixel
    centring, noise from the border MAD; S/N cut; reproducible builds."""
    from tfstronglens.datasets.cosmos_galaxies import CosmosGalaxies

    truth = write_test_catalog(tmp_path / "manual", pixel_scale=None, noise_variance=False)
    cfg = _cosmos_config()
    data = {}
    for d in ("a", "b"):
        b = _build(CosmosGalaxies, tmp_path / d, tmp_path / "manual", config=cfg)
        data[d] = _examples(b)
    assert set(data["a"]) == {"train", "validation"}
    for split in data["a"]:
        assert len(data["a"][split]) == len(data["b"][split])
        for ea, eb in zip(data["a"][split], data["b"][split]):
            for k in FEATURES:
                np.testing.assert_array_equal(ea[k], eb[k])
    exs = data["a"]["train"] + data["a"]["validation"]
    ids = {int(e["id"]) for e in exs}
    # true S/N 5, 10 and 300 are cut; those well inside 15-60 are kept
    assert ids.isdisjoint({k for k, v in truth.items() if v in (5, 10, 300)})
    assert {k for k, v in truth.items() if 20 <= v <= 45} <= ids
    peaks = _check_examples(exs, 32, 15, (15, 60), centre_tol=1.0)
    np.testing.assert_allclose(peaks, 1.0, rtol=1e-5)
    assert all(np.isnan(e["mag"]) for e in exs)
    # the stored S/N estimates the true one (true values 20-45; estimator scatter ~ +-3)
    for e in exs:
        assert abs(e["snr"] - truth[int(e["id"])]) < 6
    # the PSF was re-centred from the even 20x20 off-centre float64 image
    psf = exs[0]["psf"].astype(np.float64)
    c = np.arange(15) - 7
    assert abs(psf.sum(axis=0) @ c) < 0.05 and abs(psf.sum(axis=1) @ c) < 0.05


def test_cosmos_galaxies_resampled_and_degraded(tmp_path):
    """PIXEL_SCALE 0.045" -> 0.03" (spline resampling, propagated noise) with S/N
    degradation: every galaxy above the range is brought into it."""
    from tfstronglens.datasets.cosmos_galaxies import CosmosGalaxies

    truth = write_test_catalog(tmp_path / "manual", pixel_scale=0.045, noise_variance=True)
    cfg = _cosmos_config(name="test_resampled", degrade_snr=True, snr_range=(15.0, 50.0))
    b = _build(CosmosGalaxies, tmp_path / "d", tmp_path / "manual", config=cfg)
    exs = sum(_examples(b).values(), [])
    ids = {int(e["id"]) for e in exs}
    assert {k for k, v in truth.items() if v >= 20} <= ids      # 300 degraded, not cut
    assert ids.isdisjoint({k for k, v in truth.items() if v in (5, 10)})
    # centred before the degradation noise; measured on the noisier stamp it scatters more
    peaks = _check_examples(exs, 32, 15, (15, 50), centre_tol=1.5)
    np.testing.assert_allclose(peaks, 1.0, rtol=1e-5)
    assert all(np.isfinite(e["mag"]) for e in exs)


def test_process_psf_resampling():
    from tfstronglens.datasets.cosmos_galaxies import process_psf

    yy, xx = np.indices((20, 20))
    sigma = 2.0                                                       # pixels of 0.03"
    psf = np.exp(-0.5 * ((xx - 9.5) ** 2 + (yy - 9.5) ** 2) / sigma**2)
    for scale_out, size in ((0.03, 21), (0.06, 11), (0.02, 33)):
        k = process_psf(psf, 0.03, scale_out, size).astype(np.float64)
        assert k.shape == (size, size)
        np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-6)
        c = (np.arange(size) - size // 2) * scale_out
        var_x = k.sum(axis=0) @ c**2
        expect = (sigma * 0.03) ** 2 + (scale_out**2 / 12 if scale_out > 0.03 else 0.0)
        assert abs(math.sqrt(var_x) / math.sqrt(expect) - 1) < 0.06, (scale_out, var_x, expect)
        assert abs(k.sum(axis=0) @ c) < 1e-3 * scale_out * size


def test_cosmos_missing_files(tmp_path):
    from tfstronglens.datasets.cosmos_galaxies import CosmosGalaxies, find_catalog, read_catalog

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="real_galaxy_catalog"):
        find_catalog(empty)
    (empty / "notes.txt").write_text("not a catalog")   # TFDS itself rejects an empty manual_dir
    with pytest.raises(FileNotFoundError, match="real_galaxy_catalog"):
        _build(CosmosGalaxies, tmp_path / "d", empty, config=_cosmos_config())
    write_test_catalog(tmp_path / "m", pixel_scale=0.03)
    (tmp_path / "m" / "gal_1.fits").unlink()
    (tmp_path / "m" / "psf_0.fits").unlink()
    with pytest.raises(FileNotFoundError, match=r"gal_1\.fits, psf_0\.fits"):
        read_catalog(find_catalog(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="AEGIS_F814w_catalog.fits"):
        find_catalog(tmp_path / "m", "AEGIS_F814w_catalog.fits")
    with pytest.raises(ValueError, match="psf_size"):
        _cosmos_config(psf_size=32)


# ------------------------------------------------- real AEGIS stamps (GalSim)
@pytest.mark.parametrize("band", ["f814w", "f606w"])
def test_cosmos_galaxies_real_aegis(tmp_path, band):
    if not (GALSIM_REAL / f"AEGIS_{band.upper()[0]}{band[1:4]}w_catalog.fits").exists():
        pytest.skip(f"GalSim's real AEGIS test data not found in {GALSIM_REAL}")
    import tensorflow_datasets as tfds

    from tfstronglens.datasets.cosmos_galaxies import CosmosGalaxies

    catalog = f"AEGIS_F{band[1:4]}w_catalog.fits"
    # every galaxy, at native S/N: all 5 pass, centred, the catalog noise matches the border
    cfg = _cosmos_config(name=f"aegis_{band}_all", catalog=catalog, stamp_size=64, psf_size=33,
                         snr_range=(0.0, 1e5))
    b = _build(CosmosGalaxies, tmp_path / "all", GALSIM_REAL, config=cfg)
    exs = sum(_examples(b).values(), [])
    assert sorted(int(e["id"]) for e in exs) == [9024, 14886, 17038, 23409, 24216]
    peaks = _check_examples(exs, 64, 33, (0.0, 1e5), centre_tol=1.0, noise_tol=0.15)
    np.testing.assert_allclose(peaks, 1.0, rtol=1e-5)
    assert min(e["snr"] for e in exs) > 50                   # bright: all above the default cut
    # the registered config (degraded to S/N 15-50)
    b = tfds.builder(f"cosmos_galaxies/aegis_{band}-64", data_dir=str(tmp_path / "deg"))
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(GALSIM_REAL)))
    exs = sum(_examples(b).values(), [])
    assert len(exs) >= 4
    # noisier now: the centroid of a S/N ~ 15 stamp scatters by ~ a pixel
    _check_examples(exs, 64, 33, (15, 50), centre_tol=2.0, noise_tol=0.15)
