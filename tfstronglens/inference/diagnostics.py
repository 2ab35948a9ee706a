"""Convergence diagnostics for MCMC output: rank-normalised split R-hat, bulk/tail ESS.

Post-processing in numpy (it runs once, on the host, after sampling). The definitions are
those of Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021, Bayesian Analysis 16, 667;
arXiv:1903.08008), the ones Stan, ArviZ and posterior use, and the numbers agree with
ArviZ (tested where ArviZ is installed).

Array layout: draws first, as :func:`tfstronglens.inference.mcmc.sample_hmc` and
``tfp.mcmc`` return them: ``samples[num_draws, num_chains, *event_shape]``. Every
statistic is computed independently for each element of ``event_shape``.

#### Mathematical details

*Split chains.* Each of the ``M`` chains of ``N`` draws is cut into its first and last
``floor(N/2)`` draws (the middle draw is dropped when ``N`` is odd), giving ``2M`` chains
of ``n = floor(N/2)`` draws; a chain whose first and second halves differ (a trend, no
stationarity) then shows up as between-chain variance.

*Rank normalisation.* All ``S = 2 M n`` draws are replaced by their (average) ranks
``r`` in the pooled sample and mapped to normal scores
``z = Phi^{-1}((r - 3/8) / (S + 1/4))`` (Blom 1958). This makes R-hat and ESS well
defined for heavy tails (a Cauchy has no variance; its ranks do).

*R-hat.* For chains ``theta_{jm}`` (draw ``j``, chain ``m``) with chain means
``theta_m``, within-chain variance ``W = mean_m s_m^2`` and between-chain variance
``B = n var_m(theta_m)`` (``ddof = 1`` for both),

    var+ = (n - 1)/n W + B/n,        R-hat = sqrt(var+ / W).

The rank-normalised split R-hat is ``max(R-hat(z), R-hat(z_folded))``, with
``z_folded`` the normal scores of ``|theta - median(theta)|``, which catches chains that
differ in scale but not location. Converged chains give values ``< 1.01``.

*ESS.* With ``rho_t`` the autocorrelation at lag ``t`` estimated from all chains
(``rho_t = 1 - (W - mean_m acov_m(t)) / var+``, per-chain autocovariances by FFT),

    ESS = M n / tau,        tau = -1 + 2 sum_{t=0}^{2k+1} rho_t,

truncated by Geyer's initial positive sequence (stop at the first pair
``rho_{2k} + rho_{2k+1} < 0``) made monotone (each pair sum no larger than the
previous one), with ``tau >= 1/log10(M n)``. Bulk ESS is the ESS of the rank-normalised
split chains; tail ESS is ``min(ESS(I(theta <= q_0.05)), ESS(I(theta <= q_0.95)))`` on
split chains, with the pooled 5% and 95% quantiles; "mean" ESS is that of the raw split
chains (the one that sets the Monte Carlo error of the posterior mean,
``mcse_mean = sd / sqrt(ESS_mean)``). For an AR(1) chain ``x_t = rho x_{t-1} + e_t``,
``tau = (1 + rho)/(1 - rho)``.

#### Example

```python
rng = np.random.default_rng(0)
x = rng.normal(size=(1000, 4, 3))           # [draws, chains, parameters]
potential_scale_reduction(x)                # ~ [1.00, 1.00, 1.00]
effective_sample_size(x, method="bulk")     # ~ [4000, 4000, 4000]
summary = summarize({"theta": x})
print(format_summary(summary))
```
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from scipy import special, stats

from ..io._atomic import atomic_output, check_output_path

__all__ = [
    "potential_scale_reduction",
    "effective_sample_size",
    "summarize",
    "format_summary",
    "save_samples",
    "SUMMARY_PERCENTILES",
]

SUMMARY_PERCENTILES = (5, 16, 50, 84, 95)
_ESS_METHODS = ("bulk", "tail", "mean")
_RHAT_METHODS = ("rank", "split", "identity")


# ------------------------------------------------------------------------------------
# helpers on [chains, draws, P] arrays (P = flattened parameters)
# ------------------------------------------------------------------------------------


def _as_draws(samples, name="samples", min_draws=4, min_chains=1):
    """Return ``(x[chains, draws, P], event_shape)`` from ``samples[draws, chains, ...]``."""
    try:
        x = np.asarray(samples.numpy() if hasattr(samples, "numpy") else samples, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array, got {type(samples).__name__}") from None
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape [num_draws, num_chains, ...], got shape {list(x.shape)}"
        )
    n_draw, n_chain = x.shape[:2]
    if n_draw < min_draws:
        raise ValueError(f"{name} needs at least {min_draws} draws, got {n_draw}")
    if n_chain < min_chains:
        raise ValueError(f"{name} needs at least {min_chains} chains, got {n_chain}")
    event = x.shape[2:]
    x = x.reshape(n_draw, n_chain, -1).transpose(1, 0, 2)  # [chains, draws, P]
    return x, event


def _split_chains(x):
    """[M, N, P] -> [2M, floor(N/2), P]: first and last halves of each chain."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _z_scale(x):
    """Rank-normalise each parameter of [M, n, P] over all its M n draws (Blom scores)."""
    m, n, p = x.shape
    flat = x.reshape(m * n, p)
    ranks = stats.rankdata(flat, method="average", axis=0)
    z = special.ndtri((ranks - 0.375) / (m * n + 0.25))
    return z.reshape(m, n, p)


def _rhat_core(x):
    """Classic R-hat of [M, n, P] (no splitting), per parameter."""
    n = x.shape[1]
    chain_mean = x.mean(axis=1)
    within = x.var(axis=1, ddof=1).mean(axis=0)
    between = n * chain_mean.var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _autocov(x):
    """Biased (1/n) autocovariance along axis 1 of [M, n, P], via zero-padded FFT."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    nfft = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=nfft, axis=1)
    acov = np.fft.irfft(f * np.conj(f), n=nfft, axis=1)[:, :n]
    return acov / n


def _ess_core(x):
    """ESS of each parameter of [M, n, P] chains (Geyer initial monotone sequence)."""
    m, n, p = x.shape
    out = np.empty(p)
    acov = _autocov(x)  # [M, n, P]
    mean_acov = acov.mean(axis=0)  # [n, P]
    chain_mean = x.mean(axis=1)  # [M, P]
    mean_var = mean_acov[0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + chain_mean.var(axis=0, ddof=1)
    total = m * n
    for j in range(p):
        xj = x[:, :, j]
        if not np.all(np.isfinite(xj)):
            out[j] = np.nan
            continue
        if np.ptp(xj) < np.finfo(float).resolution:  # constant: every draw is "independent"
            out[j] = float(total)
            continue
        rho = np.zeros(n)
        mv, vp, ac = mean_var[j], var_plus[j], mean_acov[:, j]
        rho_even = 1.0
        rho[0] = rho_even
        rho_odd = 1.0 - (mv - ac[1]) / vp
        rho[1] = rho_odd
        t = 1
        while t < n - 3 and rho_even + rho_odd > 0.0:  # initial positive sequence
            rho_even = 1.0 - (mv - ac[t + 1]) / vp
            rho_odd = 1.0 - (mv - ac[t + 2]) / vp
            if rho_even + rho_odd >= 0:
                rho[t + 1] = rho_even
                rho[t + 2] = rho_odd
            t += 2
        max_t = t - 2
        if rho_even > 0:  # improved estimate (Vehtari et al. 2021, antithetic chains)
            rho[max_t + 1] = rho_even
        t = 1
        while t <= max_t - 2:  # initial monotone sequence
            if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
                rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
            t += 2
        tau = -1.0 + 2.0 * rho[: max_t + 1].sum() + rho[max_t + 1 : max_t + 2].sum()
        tau = max(tau, 1.0 / math.log10(total))
        out[j] = total / tau if np.all(np.isfinite(rho)) else np.nan
    return out


# ------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------


def potential_scale_reduction(samples, method: str = "rank"):
    r"""Rank-normalised split R-hat (Vehtari et al. 2021) of each parameter.

    Args:
      samples: array ``[num_draws, num_chains, *event_shape]`` (at least 4 draws and 2
        chains; a single chain is split in two, so 1 chain also works).
      method: ``"rank"`` (default): ``max`` of the rank-normalised split R-hat of the
        draws and of their folded values ``|theta - median|``; ``"split"``: classic split
        R-hat (Gelman et al. BDA3) of the raw draws; ``"identity"``: the original
        Gelman-Rubin R-hat without splitting (needs 2 chains).

    Returns:
      ``float64`` array of shape ``event_shape``: values near 1 (``< 1.01``) indicate
      that the chains sample the same distribution; NaN where a parameter is constant
      or not finite.

    See the module docstring for the formulas.
    """
    if method not in _RHAT_METHODS:
        raise ValueError(f"method must be one of {_RHAT_METHODS}, got {method!r}")
    min_chains = 2 if method == "identity" else 1
    x, event = _as_draws(samples, min_chains=min_chains)
    if method == "identity":
        r = _rhat_core(x)
    else:
        xs = _split_chains(x)
        if method == "split":
            r = _rhat_core(xs)
        else:
            bulk = _rhat_core(_z_scale(xs))
            folded = np.abs(xs - np.median(xs.reshape(-1, xs.shape[-1]), axis=0))
            tail = _rhat_core(_z_scale(folded))
            r = np.fmax(bulk, tail)
            r[np.isnan(bulk) | np.isnan(tail)] = np.nan
    r[~np.all(np.isfinite(x), axis=(0, 1))] = np.nan
    return r.reshape(event)


def effective_sample_size(samples, method: str = "bulk", prob=(0.05, 0.95)):
    r"""Effective sample size (Vehtari et al. 2021) of each parameter.

    Args:
      samples: array ``[num_draws, num_chains, *event_shape]`` (at least 4 draws).
      method: ``"bulk"`` (default, rank-normalised split chains: efficiency for the
        centre of the distribution), ``"tail"`` (the minimum of the ESS of the
        indicators ``I(theta <= q)`` at the quantiles ``prob``: efficiency for 5% / 95%
        intervals) or ``"mean"`` (raw split chains: sets the Monte Carlo standard error
        of the mean, ``sd / sqrt(ESS)``).
      prob: ``(low, high)`` quantile levels of the tail ESS.

    Returns:
      ``float64`` array of shape ``event_shape``, in draws (at most
      ``num_draws * num_chains * log10(num_draws * num_chains)``, which antithetic
      chains can reach).
    """
    if method not in _ESS_METHODS:
        raise ValueError(f"method must be one of {_ESS_METHODS}, got {method!r}")
    x, event = _as_draws(samples)
    if method == "bulk":
        ess = _ess_core(_z_scale(_split_chains(x)))
    elif method == "mean":
        ess = _ess_core(_split_chains(x))
    else:
        try:
            lo, hi = (float(prob[0]), float(prob[1]))
        except (TypeError, IndexError, ValueError):
            raise ValueError(f"prob must be a pair (low, high), got {prob!r}") from None
        if not (0.0 < lo < 1.0 and 0.0 < hi < 1.0):
            raise ValueError(f"prob must lie in (0, 1), got {prob!r}")
        flat = x.reshape(-1, x.shape[-1])
        ess = np.full(x.shape[-1], np.inf)
        finite = np.all(np.isfinite(flat), axis=0)
        for level in (lo, hi):
            q = np.quantile(np.where(finite, flat, 0.0), level, axis=0)
            ind = (x <= q).astype(float)
            ess = np.minimum(ess, _ess_core(_split_chains(ind)))
        ess[~finite] = np.nan
    return ess.reshape(event)


def _element_names(name, shape):
    if len(shape) == 0:
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def summarize(samples, names=None) -> dict:
    r"""Posterior summary: mean, sd, percentiles, R-hat, bulk and tail ESS per parameter.

    Args:
      samples: either an array ``[num_draws, num_chains, D]`` (or
        ``[num_draws, num_chains]`` for one parameter), or a dict ``name -> array
        [num_draws, num_chains, *event_shape]`` (every array with the same draws and
        chains), e.g. ``{"theta_E": ..., "z": ...}``.
      names: for an array, ``D`` parameter names (default ``x[0]``, ``x[1]``, ...); for a
        dict, the keys to summarise, in order (default: all, in the dict's order).

    Returns:
      ``dict`` mapping each scalar parameter name (vector entries as ``"z[3]"``) to a
      dict with ``mean``, ``sd``, ``mcse_mean`` (``sd / sqrt(ESS_mean)``), ``p5``,
      ``p16``, ``p50``, ``p84``, ``p95`` (percentiles over all chains), ``r_hat``
      (:func:`potential_scale_reduction`), ``ess_bulk`` and ``ess_tail``
      (:func:`effective_sample_size`). Print it with :func:`format_summary`.

    #### Example

    ```python
    result = sample_hmc(log_prob_fn, init, num_results=1000, num_burnin=500)
    print(format_summary(summarize(result.samples, names=["theta_E", "e1", "e2"])))
    ```
    """
    if isinstance(samples, dict):
        keys = list(samples) if names is None else list(names)
        missing = [k for k in keys if k not in samples]
        if missing:
            raise ValueError(f"names {missing!r} are not keys of samples {list(samples)!r}")
        arrays = {k: samples[k] for k in keys}
    else:
        arr = np.asarray(samples.numpy() if hasattr(samples, "numpy") else samples)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ValueError(
                "samples must be a dict or an array [num_draws, num_chains, D], got shape "
                f"{list(arr.shape)}"
            )
        d = arr.shape[-1]
        if names is None:
            names = [f"x[{i}]" for i in range(d)]
        names = list(names)
        if len(names) != d or len(set(names)) != d:
            raise ValueError(f"names must be {d} distinct names, got {names!r}")
        arrays = {n: arr[..., i] for i, n in enumerate(names)}
    lead = None
    out = {}
    for key, value in arrays.items():
        x, event = _as_draws(value, name=f"samples[{key!r}]")
        if lead is None:
            lead = x.shape[:2]
        elif x.shape[:2] != lead:
            raise ValueError(
                f"samples[{key!r}] has {x.shape[1]} draws x {x.shape[0]} chains, the others "
                f"{lead[1]} x {lead[0]}"
            )
        arr = np.asarray(value, dtype=float).reshape(x.shape[1], x.shape[0], -1)
        flat = arr.reshape(-1, arr.shape[-1])
        mean = flat.mean(axis=0)
        sd = flat.std(axis=0, ddof=1)
        pct = np.percentile(flat, SUMMARY_PERCENTILES, axis=0)
        rhat = potential_scale_reduction(arr).ravel()
        ess_bulk = effective_sample_size(arr, "bulk").ravel()
        ess_tail = effective_sample_size(arr, "tail").ravel()
        ess_mean = effective_sample_size(arr, "mean").ravel()
        for i, elem in enumerate(_element_names(str(key), event)):
            row = {"mean": float(mean[i]), "sd": float(sd[i])}
            with np.errstate(divide="ignore", invalid="ignore"):
                row["mcse_mean"] = float(sd[i] / np.sqrt(ess_mean[i]))
            for q, v in zip(SUMMARY_PERCENTILES, pct[:, i]):
                row[f"p{q}"] = float(v)
            row["r_hat"] = float(rhat[i])
            row["ess_bulk"] = float(ess_bulk[i])
            row["ess_tail"] = float(ess_tail[i])
            out[elem] = row
    return out


def format_summary(summary: dict, digits: int = 4) -> str:
    """A fixed-width text table of :func:`summarize` output, one parameter per line."""
    if not summary:
        return ""
    cols = list(next(iter(summary.values())))
    width = max(10, digits + 7)
    namew = max(len("param"), *(len(k) for k in summary))
    lines = ["param".ljust(namew) + "".join(c.rjust(width) for c in cols)]
    for name, row in summary.items():
        cells = []
        for c in cols:
            v = row[c]
            if c.startswith("ess"):
                cells.append(f"{v:.0f}".rjust(width) if np.isfinite(v) else "nan".rjust(width))
            else:
                cells.append(f"{v:.{digits}g}".rjust(width))
        lines.append(name.ljust(namew) + "".join(cells))
    return "\n".join(lines)


def _import_arviz():
    """ArviZ if it is installed (an optional dependency), else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ announces its refactor on import
        try:
            import arviz
        except ImportError:
            return None
    return arviz


def _netcdf_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    return (root if ext.lower() == ".npz" else path) + ".nc"


def save_samples(path, samples_dict, sample_stats=None, overwrite: bool = False) -> dict:
    r"""Write MCMC draws as ``.npz`` (always) and as ArviZ netCDF (if ArviZ is installed).

    Args:
      path: the ``.npz`` file to write (its directory must exist). The netCDF file goes
        beside it, with ``.npz`` replaced by ``.nc`` (``run.npz`` -> ``run.nc``).
      samples_dict: ``name -> array [num_draws, num_chains, *event_shape]`` (the layout
        of :func:`~tfstronglens.inference.mcmc.sample_hmc`), or a single array
        ``[num_draws, num_chains, D]`` (saved as ``"x"``).
      sample_stats: optional ``name -> array [num_draws, num_chains]`` of sampler
        statistics; ArviZ's names (``lp``, ``acceptance_rate``, ``diverging``,
        ``step_size``, ``n_steps``, ``tree_depth``) make ArviZ's plots use them.
      overwrite: replace existing files (otherwise ``FileExistsError``).

    Returns:
      ``{"npz": path, "netcdf": path_or_None}``.

    The ``.npz`` holds the posterior arrays under their names and the statistics under
    ``"sample_stats/<name>"``, in the draws-first layout; load it with ``np.load``. The
    netCDF file is ``az.from_dict(posterior=..., sample_stats=...)`` with arrays
    transposed to ArviZ's chains-first layout; read it with ``az.from_netcdf``. Both are
    written atomically (a temporary file renamed into place).
    """
    if not isinstance(samples_dict, dict):
        samples_dict = {"x": samples_dict}
    posterior = {}
    lead = None
    for k, v in samples_dict.items():
        a = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        if a.ndim < 2:
            raise ValueError(
                f"samples_dict[{k!r}] must have shape [num_draws, num_chains, ...], got "
                f"{list(a.shape)}"
            )
        if lead is None:
            lead = a.shape[:2]
        elif a.shape[:2] != lead:
            raise ValueError(
                f"samples_dict[{k!r}] has leading shape {a.shape[:2]}, expected {lead}")
        posterior[str(k)] = a
    if not posterior:
        raise ValueError("samples_dict must contain at least one array, got {}")
    stats_ = {}
    for k, v in (sample_stats or {}).items():
        a = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        if a.shape[:2] != lead:
            raise ValueError(
                f"sample_stats[{k!r}] has leading shape {a.shape[:2]}, expected {lead}")
        stats_[str(k)] = a
    az = _import_arviz()
    path = check_output_path(path, overwrite)
    nc_path = _netcdf_path(path) if az is not None else None
    if nc_path is not None:
        check_output_path(nc_path, overwrite)
    arrays = dict(posterior)
    arrays.update({f"sample_stats/{k}": v for k, v in stats_.items()})
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    if az is not None:
        idata = az.from_dict(
            posterior={k: np.swapaxes(v, 0, 1) for k, v in posterior.items()},
            sample_stats={k: np.swapaxes(v, 0, 1) for k, v in stats_.items()} or None,
        )
        with atomic_output(nc_path, overwrite=overwrite) as tmp:
            idata.to_netcdf(tmp)
    return {"npz": path, "netcdf": nc_path}
