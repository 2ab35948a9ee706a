r"""Subhalo sensitivity maps: the lowest detectable subhalo mass at each position of a lens.

The definition follows Vegetti & Koopmans (2009) and Despali et al. (2022): a subhalo of mass
``m`` at ``(x, y)`` is detectable if the best *smooth* model (no subhalo; macro model and
source refitted) of the data that the subhalo would produce is worse than the true model by
more than a threshold. Here the statistic is the expected (noise-free, "Asimov") difference

    Delta chi^2(m, x, y) = min_theta sum_p [d_p(m, x, y) - s_p(theta)]^2 / sigma_p^2,

where ``d`` is the noiseless image of the smooth best fit ``theta_0`` of the observed data plus
the subhalo, ``s(theta)`` the smooth model and ``sigma`` the data's noise (fixed at the smooth
best fit's). With noise, ``Delta chi^2`` of a fit has this mean plus the number of subhalo
parameters. The threshold defaults to the ``Delta chi^2`` of a 5 sigma detection with the 3
subhalo parameters (mass, x, y) by Wilks' theorem (33.2); Despali et al. used a Bayes factor
of ``Delta log E = 50``. The map is the smallest ``m`` of a log-spaced trial grid (log-linearly
interpolated) whose ``Delta chi^2`` reaches the threshold.

#### Method: batched refits

For each trial mass, every grid position is processed in one batch of compiled calls (one
XLA compilation per batch size):

1. the mock images ``d`` of all positions (the subhalo model's render);
2. the linear response: with ``J`` the whitened Jacobian of the smooth model at
   ``theta_0`` (central differences, ``2 D + 1`` renders, computed once) and
   ``r = (d - s(theta_0)) / sigma``, the linearised refit leaves
   ``|r|^2 - |Q^T r|^2`` (``Q`` from the QR decomposition of ``J``);
3. ``refit_steps`` Gauss-Newton iterations with that Jacobian frozen (the chord method)
   from ``theta_0``: ``theta <- theta + (J^T J)^{-1} J^T r(theta)``, each re-rendering the
   smooth model of every position, so that ``Delta chi^2`` is evaluated exactly at the
   refitted parameters; the smallest value over the iterates is kept (every one is an upper
   bound of the minimum).

This refits every smooth parameter (macro lens, shear, source, lens light) per position and
mass, which a sensitivity estimate from the gradient alone (herculens) does not, at the
cost of ``1 + refit_steps`` renders per position and mass instead of a full nonlinear fit
each (``benchmarks/sensitivity.py`` measures both).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf
from scipy import stats

from ._util import positive_float, positive_int
from .map import MAPResult, find_map, render_batched, whitened_jacobian
from .model import LensModel

__all__ = ["SensitivityMap", "sensitivity_map", "detection_threshold",
           "write_sensitivity_outputs"]


def detection_threshold(sigma: float = 5.0, dof: int = 3) -> float:
    """``Delta chi^2`` whose chi-squared tail probability with ``dof`` degrees of freedom
    equals the one-sided Gaussian tail of ``sigma`` (Wilks; 33.2 for 5 sigma, 3 dof)."""
    return float(stats.chi2.isf(stats.norm.sf(positive_float(sigma, "sigma")),
                                positive_int(dof, "dof")))


@dataclasses.dataclass(frozen=True)
class SensitivityMap:
    """Result of :func:`sensitivity_map`.

    Attributes:
      x, y: ``[G]`` grid-cell centres (arcsec); maps are ``[G, G]`` with rows along ``y``.
      masses: ``[M]`` trial masses (M_sun, the model's subhalo mass definition).
      delta_chi2: ``[M, G, G]`` the statistic after the refits (module docs).
      delta_chi2_linear: ``[M, G, G]`` its linear-response estimate.
      log10_min_mass: ``[G, G]`` log10 of the lowest detectable mass; ``NaN`` where even
        the largest trial mass stays below the threshold, and the smallest trial mass
        where it already exceeds it (see ``below_range``).
      below_range: ``[G, G]`` True where the smallest trial mass is already detectable (the
        value is an upper limit).
      log10_min_mass_aperture: ``[G, G]`` the same in the profile-robust projected mass
        inside ``aperture`` arcsec (:meth:`LensModel.subhalo_masses`).
      aperture: that radius (arcsec).
      threshold: the ``Delta chi^2`` threshold.
      refit_change: ``[M]`` the largest change of ``Delta chi^2`` in the last refit
        iteration, relative (convergence of the refits).
      smooth_fit: the :class:`MAPResult` of the smooth model.
      timings: seconds per stage; settings: the arguments.
    """

    x: np.ndarray
    y: np.ndarray
    masses: np.ndarray
    delta_chi2: np.ndarray
    delta_chi2_linear: np.ndarray
    log10_min_mass: np.ndarray
    below_range: np.ndarray
    log10_min_mass_aperture: np.ndarray
    aperture: float
    threshold: float
    refit_change: np.ndarray
    smooth_fit: MAPResult
    timings: dict
    settings: dict

    def summary(self, arc_mask=None) -> dict:
        """JSON-ready numbers: the median and minimum of the lowest detectable log10 mass over
        the detectable positions (or those of ``arc_mask [G, G]``), and how many there are."""
        vals = self.log10_min_mass if arc_mask is None else \
            np.where(np.asarray(arc_mask, bool), self.log10_min_mass, np.nan)
        ok = np.isfinite(vals)
        ap = self.log10_min_mass_aperture[ok]
        return {
            "num_positions": int(vals.size), "num_detectable": int(ok.sum()),
            "median_log10_min_mass": float(np.median(vals[ok])) if ok.any() else None,
            "min_log10_min_mass": float(np.min(vals[ok])) if ok.any() else None,
            "median_log10_min_mass_aperture": float(np.median(ap)) if ok.any() else None,
        }


def _lowest_detectable(log_m, stat, threshold):
    """Per position (last axis flattened): the log-linear interpolation of ``log10 m`` at
    which ``stat`` [M, P] first reaches ``threshold``; NaN if never; flag if at the first."""
    M, P = stat.shape
    out = np.full(P, np.nan)
    below = np.zeros(P, bool)
    for p in range(P):
        hit = np.flatnonzero(stat[:, p] >= threshold)
        if hit.size == 0:
            continue
        i = hit[0]
        if i == 0:
            out[p], below[p] = log_m[0], True
            continue
        s0, s1 = (math.log(max(v, 1e-300)) for v in stat[i - 1:i + 1, p])
        t = (math.log(threshold) - s0) / (s1 - s0) if s1 > s0 else 1.0
        out[p] = log_m[i - 1] + min(max(t, 0.0), 1.0) * (log_m[i] - log_m[i - 1])
    return out, below


def sensitivity_map(model: LensModel, data=None, masses=None, grid: int = 20, region=None,
                    threshold: float | None = None, refit_steps: int = 4,
                    smooth_fit: MAPResult | None = None, num_starts: int = 16,
                    map_steps: int = 300, seed: int = 0, max_batch: int = 400,
                    progress: bool = True) -> SensitivityMap:
    """The lowest detectable subhalo mass on a ``grid x grid`` grid of positions (module
    docs).

    Args:
      model: a :class:`LensModel` (its subhalo profile, redshifts and lens cosmology define
        the trial subhalos; any candidate subhalos of it are dropped for the smooth fit).
      data: the image (default: the model's data).
      masses: trial masses in M_sun, increasing (default ``logspace(7, 11, 9)``).
      grid: positions per side (int >= 2), cell centres over ``region``.
      region: ``(x_min, x_max, y_min, y_max)`` arcsec (default: the field of view).
      threshold: ``Delta chi^2`` threshold (default :func:`detection_threshold`, 5 sigma).
      refit_steps: Gauss-Newton iterations of the smooth refits (>= 0; 0: linear response).
      smooth_fit: a previous MAP of the smooth model to reuse (else :func:`find_map` with
        ``num_starts``, ``map_steps`` and ``seed``).
      max_batch: largest batch of renders per compiled call.
      progress: progress bars and per-mass lines.
    """
    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    masses = np.logspace(7, 11, 9) if masses is None else np.asarray(masses, np.float64)
    if masses.ndim != 1 or masses.size < 2 or not np.all(np.isfinite(masses)) \
            or not np.all(masses > 0) or not np.all(np.diff(masses) > 0):
        raise ValueError(f"masses must be at least 2 increasing positive numbers (M_sun), got "
                         f"{masses!r}")
    G = positive_int(grid, "grid", minimum=2)
    K = positive_int(refit_steps, "refit_steps", minimum=0)
    thr = detection_threshold() if threshold is None else positive_float(threshold, "threshold")
    half = 0.5 * model.field_of_view
    region = (-half, half, -half, half) if region is None else tuple(float(v) for v in region)
    if len(region) != 4 or not (region[0] < region[1] and region[2] < region[3]):
        raise ValueError(f"region must be (x_min, x_max, y_min, y_max), got {region!r}")
    timings = {}
    t0 = time.perf_counter()
    m0 = model.replace(num_subhalos=0) if model.num_subhalos else model
    m1 = model.replace(num_subhalos=1, subhalo_mass_range=(0.5 * masses[0], 2.0 * masses[-1]),
                       subhalo_region=(min(region[0], -half), max(region[1], half),
                                       min(region[2], -half), max(region[3], half)))
    obj0 = m0.objective(data, "likelihood")
    d = obj0.data
    if smooth_fit is None:
        t = time.perf_counter()
        smooth_fit = find_map(m0, d, num_starts=positive_int(num_starts, "num_starts"),
                              num_steps=positive_int(map_steps, "map_steps"), seed=seed,
                              progress=progress)
        timings["smooth_fit"] = time.perf_counter() - t
    elif not (isinstance(smooth_fit, MAPResult) and
              list(smooth_fit.param_names) == list(m0.param_names)):
        raise ValueError("smooth_fit must be a MAPResult of the model without subhalos")
    x0 = np.asarray(smooth_fit.x, np.float64)[None]

    # ---- the smooth model's whitened Jacobian at its best fit, once
    t = time.perf_counter()
    J, base, w = whitened_jacobian(obj0, x0, max_batch)  # J [P, D] whitened
    q, rr = np.linalg.qr(J)
    # Gauss-Newton step operator (least squares through the QR factors)
    solve = np.linalg.solve(rr, q.T)                     # [D, P]
    timings["jacobian"] = time.perf_counter() - t

    # ---- trial subhalos: every position x mass
    xs = region[0] + (np.arange(G) + 0.5) * (region[1] - region[0]) / G
    ys = region[2] + (np.arange(G) + 0.5) * (region[3] - region[2]) / G
    xx, yy = np.meshgrid(xs, ys)
    P = G * G
    best = {k: np.asarray(v) for k, v in smooth_fit.params.items()}
    obj1 = m1.objective(d, "likelihood")
    stat = np.zeros((masses.size, P))
    stat_lin = np.zeros((masses.size, P))
    m_ap = np.zeros((masses.size, P))
    change = np.zeros(masses.size)
    t = time.perf_counter()
    for i, mass in enumerate(masses):
        params = {k: np.broadcast_to(v, (P,) + v.shape) for k, v in best.items()}
        params.update({"subhalo.0.mass": np.full(P, mass), "subhalo.0.center_x": xx.ravel(),
                       "subhalo.0.center_y": yy.ravel()})
        params = {k: tf.constant(v, m1.dtype) for k, v in params.items()}
        x1 = m1.to_flat(params).numpy()
        mocks = render_batched(obj1, x1, max_batch).reshape(P, -1)
        m_ap[i] = m1.subhalo_masses(params)["subhalo.0.mass_aperture"].numpy()
        r = (mocks - base) * w                         # [P, pixels] whitened residuals
        stat_lin[i] = np.sum(r * r, -1) - np.sum((r @ q) ** 2, -1)
        xk = np.repeat(x0, P, 0)
        chi2 = np.sum(r * r, -1)
        prev = chi2
        for _ in range(K):
            xk = xk + r @ solve.T
            r = (mocks - render_batched(obj0, xk, max_batch).reshape(P, -1)) * w
            new = np.sum(r * r, -1)
            change[i] = float(np.max(np.abs(new - prev) / np.maximum(new, 1.0)))
            prev = new
            chi2 = np.minimum(chi2, new)
        stat[i] = chi2
        if progress:
            print(f"sensitivity: mass {mass:.3g} M_sun: Delta chi^2 max {chi2.max():.3g}, "
                  f"{int(np.sum(chi2 >= thr))}/{P} positions detectable", flush=True)
    timings["maps"] = time.perf_counter() - t
    log_m = np.log10(masses)
    lo, below = _lowest_detectable(log_m, stat, thr)
    # the same interpolation weights in the aperture mass
    lo_ap = np.full(P, np.nan)
    for p in np.flatnonzero(np.isfinite(lo)):
        lo_ap[p] = np.interp(lo[p], log_m, np.log10(m_ap[:, p]))
    timings["total"] = time.perf_counter() - t0
    settings = dict(masses=masses.tolist(), grid=G, region=list(region), threshold=thr,
                    refit_steps=K, subhalo_profile=m1.subhalo_profile,
                    statistic="expected (noise-free) Delta chi^2 after refitting every "
                              "smooth parameter; threshold: 5 sigma with 3 dof (Wilks) "
                              "unless given")
    return SensitivityMap(
        x=xs, y=ys, masses=masses, delta_chi2=stat.reshape(-1, G, G),
        delta_chi2_linear=stat_lin.reshape(-1, G, G), log10_min_mass=lo.reshape(G, G),
        below_range=below.reshape(G, G), log10_min_mass_aperture=lo_ap.reshape(G, G),
        aperture=m1.subhalo_aperture, threshold=thr, refit_change=change,
        smooth_fit=smooth_fit, timings=timings, settings=settings)


def write_sensitivity_outputs(result: SensitivityMap, out_dir, data, pixel_scale: float,
                              overwrite: bool = False, extra_settings: dict | None = None):
    """Write ``sensitivity.fits`` (primary: lowest detectable log10 mass ``[G, G]``;
    extensions ``APERTURE`` (the same in the aperture mass), ``DCHI2`` ``[M, G, G]`` and
    ``MASSES``), ``sensitivity.json`` (settings, threshold, summary, timings) and
    ``sensitivity.png`` into ``out_dir``, each atomically. Returns ``{kind: path}``."""
    import json
    import os

    from .. import plotting
    from ..io._atomic import atomic_output
    from ..io.fits import write_fits

    out_dir = os.fspath(out_dir)
    region = result.settings["region"]
    G = result.x.size
    header = {"X_MIN": region[0], "X_MAX": region[1], "Y_MIN": region[2], "Y_MAX": region[3],
              "GRID": G, "DCHI2THR": result.threshold, "APERTURE": result.aperture,
              "COMMENT": "lowest detectable log10 subhalo mass (M_sun) per grid cell; "
                         "rows along y; NaN: not detectable up to the largest trial mass"}
    paths = {"fits": os.path.join(out_dir, "sensitivity.fits"),
             "json": os.path.join(out_dir, "sensitivity.json"),
             "png": os.path.join(out_dir, "sensitivity.png")}
    write_fits(paths["fits"], result.log10_min_mass.astype(np.float32), header,
               overwrite=overwrite, APERTURE=result.log10_min_mass_aperture.astype(np.float32),
               DCHI2=result.delta_chi2.astype(np.float32),
               MASSES=result.masses.astype(np.float64))
    doc = {"settings": {**result.settings, **(extra_settings or {})},
           "threshold_delta_chi2": result.threshold, "aperture_arcsec": result.aperture,
           "summary": result.summary(), "timings": result.timings,
           "refit_change": [float(v) for v in result.refit_change],
           "below_range_positions": int(result.below_range.sum()),
           "grid_x": result.x.tolist(), "grid_y": result.y.tolist(),
           "log10_min_mass": [[None if not np.isfinite(v) else float(v) for v in row]
                              for row in result.log10_min_mass]}
    with atomic_output(paths["json"], overwrite=overwrite) as tmp:
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1)
    plotting.save_sensitivity_map(paths["png"], data, result.log10_min_mass, region,
                                  pixel_scale=pixel_scale, overwrite=overwrite)
    return paths
