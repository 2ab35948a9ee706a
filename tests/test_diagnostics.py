"""R-hat / ESS (Vehtari et al. 2021) against analytic values and ArviZ; summaries; saving."""

import os
import warnings

import numpy as np
import pytest

from tfstronglens.inference.diagnostics import (
    effective_sample_size,
    format_summary,
    potential_scale_reduction,
    save_samples,
    summarize,
)


def ar1(rng, rho, shape, n):
    """AR(1) chains ``x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t`` started in stationarity."""
    x = np.empty((n,) + shape)
    x[0] = rng.normal(size=shape)
    e = rng.normal(size=(n,) + shape) * np.sqrt(1 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + e[t]
    return x


def arviz_or_skip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("arviz")


def test_ess_of_ar1_matches_analytic(rng):
    # tau = (1 + rho) / (1 - rho): ESS = N (1 - rho) / (1 + rho). Averaged over 40
    # parameters, the estimator's own scatter (~10% each) averages down to ~2%.
    n, chains = 2000, 4
    for rho in (0.0, 0.5, 0.9):
        x = ar1(rng, rho, (chains, 40), n)
        expected = n * chains * (1 - rho) / (1 + rho)
        for method in ("bulk", "mean"):
            ess = effective_sample_size(x, method=method)
            assert ess.shape == (40,)
            assert np.mean(ess) == pytest.approx(expected, rel=0.08), (rho, method)
        # The tail ESS of an AR(1) is larger than the bulk one (indicators decorrelate
        # faster) but of the same order.
        tail = effective_sample_size(x, method="tail")
        assert np.all(tail > 0.3 * expected) and np.all(tail < 3 * n * chains)


def test_ess_of_antithetic_chain_exceeds_draws(rng):
    x = ar1(rng, -0.5, (4, 20), 2000)
    ess = effective_sample_size(x, method="mean")
    assert np.mean(ess) == pytest.approx(8000 * 1.5 / 0.5, rel=0.15)  # tau = 1/3


def test_rhat_iid_near_one_and_shifted_chains_large(rng):
    x = rng.normal(size=(1000, 4, 10))
    r = potential_scale_reduction(x)
    assert r.shape == (10,)
    assert np.all(np.abs(r - 1) < 0.01)
    shifted = x.copy()
    shifted[:, 0] += 2.0  # one chain elsewhere
    assert np.all(potential_scale_reduction(shifted) > 1.3)
    # A chain with a different scale but the same mean: only the folded R-hat sees it.
    scaled = x.copy()
    scaled[:, 0] *= 4.0
    r_scale = potential_scale_reduction(scaled)
    assert np.all(r_scale > 1.05)
    z_bulk_only = potential_scale_reduction(scaled, method="split")
    assert np.mean(r_scale) > np.mean(z_bulk_only)
    # A trend within each chain is caught by splitting the chains.
    trend = x + np.linspace(-3, 3, 1000)[:, None, None]
    assert np.all(potential_scale_reduction(trend) > 1.3)
    assert np.all(potential_scale_reduction(trend, method="identity") < 1.02)


def test_rank_normalisation_handles_cauchy(rng):
    x = rng.standard_cauchy(size=(1000, 4, 5))
    assert np.all(np.abs(potential_scale_reduction(x) - 1) < 0.01)
    ess = effective_sample_size(x, method="bulk")
    assert np.all(ess > 2500)


def test_matches_arviz(rng):
    az = arviz_or_skip()
    x = ar1(rng, 0.8, (4, 3), 500)
    x[:, 0, 1] += 1.0
    x[:, :, 2] = rng.standard_cauchy(size=(500, 4))
    ds = az.convert_to_dataset(np.swapaxes(x, 0, 1))  # ArviZ: (chain, draw, ...)
    np.testing.assert_allclose(potential_scale_reduction(x), az.rhat(ds)["x"].values, rtol=1e-10)
    for method in ("bulk", "tail", "mean"):
        np.testing.assert_allclose(
            effective_sample_size(x, method=method), az.ess(ds, method=method)["x"].values,
            rtol=1e-8, err_msg=method)
    for method, az_method in (("split", "split"), ("identity", "identity")):
        np.testing.assert_allclose(potential_scale_reduction(x, method=method),
                                   az.rhat(ds, method=az_method)["x"].values, rtol=1e-10)


def test_constant_and_nonfinite_parameters(rng):
    x = rng.normal(size=(100, 2, 3))
    x[:, :, 0] = 1.5
    x[5, 1, 2] = np.nan
    r = potential_scale_reduction(x)
    assert np.isnan(r[0]) and np.isfinite(r[1]) and np.isnan(r[2])
    ess = effective_sample_size(x)
    assert ess[0] == 200 and np.isnan(ess[2])


def test_summarize_array_and_dict(rng):
    x = rng.normal(loc=[0.0, 3.0], scale=[1.0, 0.5], size=(2000, 4, 2))
    s = summarize(x, names=["a", "b"])
    assert list(s) == ["a", "b"]
    assert s["b"]["mean"] == pytest.approx(3.0, abs=4 * s["b"]["mcse_mean"])
    assert s["b"]["sd"] == pytest.approx(0.5, rel=0.03)
    # Normal percentiles: 16/84 at mean -/+ sd, 5/95 at -/+ 1.645 sd.
    assert s["b"]["p16"] == pytest.approx(3.0 - 0.5, abs=0.03)
    assert s["b"]["p95"] == pytest.approx(3.0 + 1.645 * 0.5, abs=0.04)
    assert s["a"]["p5"] < s["a"]["p16"] < s["a"]["p50"] < s["a"]["p84"] < s["a"]["p95"]
    assert abs(s["a"]["r_hat"] - 1) < 0.01 and s["a"]["ess_bulk"] > 5000
    d = summarize({"theta": x[..., 0], "z": x})
    assert list(d) == ["theta", "z[0]", "z[1]"]
    assert d["theta"] == pytest.approx(d["z[0]"])
    assert list(summarize({"theta": x[..., 0], "z": x}, names=["z"])) == ["z[0]", "z[1]"]
    table = format_summary(s)
    assert table.splitlines()[0].split()[:3] == ["param", "mean", "sd"]
    assert len(table.splitlines()) == 3


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="samples"):
        potential_scale_reduction(np.zeros(10))
    with pytest.raises(ValueError, match="at least 4 draws"):
        effective_sample_size(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="method"):
        effective_sample_size(np.zeros((10, 2)), method="median")
    with pytest.raises(ValueError, match="method"):
        potential_scale_reduction(np.zeros((10, 2)), method="bulk")
    with pytest.raises(ValueError, match="prob"):
        effective_sample_size(np.zeros((10, 2)), method="tail", prob=(0.0, 1.2))
    with pytest.raises(ValueError, match="names"):
        summarize(np.zeros((10, 2, 3)), names=["a", "b"])
    with pytest.raises(ValueError, match="names"):
        summarize({"a": np.zeros((10, 2))}, names=["b"])
    with pytest.raises(ValueError, match="samples\\['b'\\]"):
        summarize({"a": np.zeros((10, 2)), "b": np.zeros((12, 2))})


def test_save_samples_npz_and_netcdf(tmp_path, rng):
    x = rng.normal(size=(50, 3, 4))
    stats = {"lp": rng.normal(size=(50, 3)), "diverging": np.zeros((50, 3), bool)}
    path = str(tmp_path / "run.npz")
    out = save_samples(path, {"theta": x[..., 0], "z": x}, stats)
    assert out["npz"] == path
    with np.load(path) as f:
        np.testing.assert_array_equal(f["z"], x)
        np.testing.assert_array_equal(f["sample_stats/lp"], stats["lp"])
    with pytest.raises(FileExistsError):
        save_samples(path, {"z": x})
    with pytest.raises(ValueError, match="sample_stats\\['lp'\\]"):
        save_samples(str(tmp_path / "other.npz"), {"z": x}, {"lp": np.zeros((49, 3))})
    with pytest.raises(FileNotFoundError):
        save_samples(str(tmp_path / "missing" / "run.npz"), {"z": x})
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    az = arviz_or_skip()
    assert out["netcdf"] == str(tmp_path / "run.nc")
    idata = az.from_netcdf(out["netcdf"])
    np.testing.assert_allclose(idata.posterior["z"].values, np.swapaxes(x, 0, 1))
    assert idata.posterior["z"].shape == (3, 50, 4)
    np.testing.assert_allclose(idata.sample_stats["lp"].values, stats["lp"].T)
    # ArviZ's own diagnostics on the file agree with ours on the same draws.
    np.testing.assert_allclose(az.ess(idata, var_names=["theta"])["theta"].values,
                               effective_sample_size(x[..., 0]), rtol=1e-8)
