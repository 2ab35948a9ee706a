r"""Subhalo detection by a likelihood-ratio test between nested lens models.

#### The statistic

For an image ``d`` we fit, by multi-start maximum likelihood (:func:`find_map` with
``objective="likelihood"``), the model without a subhalo (``H0``: the
:class:`LensModel` with ``num_subhalos=0``) and the same model with one subhalo (``H1``:
three more parameters, the mass ``m`` and position ``x, y``), and form

    Delta log L = max_{H1} log L(d | theta) - max_{H0} log L(d | theta),
    TS = 2 max(Delta log L, 0).

``H0`` is nested in ``H1`` as ``m -> 0`` (on the boundary of the mass range; the model's
smallest mass ``m_min``, default ``1e7 M_sun``, is negligible for these images, and a
test checks that its image differs from ``H0``'s by far less than the noise).

**Significance (Wilks' theorem).** If ``H0`` holds and the regularity conditions hold,
``TS`` is asymptotically ``chi^2_k`` with ``k`` the number of extra parameters
(``dof=3``). Because the null value ``m = 0`` lies on the boundary of the parameter space,
the asymptotic distribution is the mixture ``1/2 delta_0 + 1/2 chi^2_k``
(Chernoff 1954; Self & Liang 1987), used when ``boundary=True`` (the default):

    p = 1/2 P(chi^2_k > TS)        (boundary=True)
    p =     P(chi^2_k > TS)        (boundary=False)

and the significance is the one-sided Gaussian equivalent ``sigma = Phi^{-1}(1 - p)``
(``scipy.stats.norm.isf(p)``; 0 when ``p >= 1/2``). E.g. ``k = 3``, boundary: ``TS =
25.0`` gives ``p = 7.7e-6``, 4.3 sigma, and 5 sigma needs ``TS = 31.8``.

**Caveats (read before quoting a number).** The position ``(x, y)`` is not defined under
``H0``, so Wilks' regularity conditions fail (Davies 1987): the null distribution of the
maximum over positions is wider than ``chi^2_3`` (a look-elsewhere effect growing with
the searched area), and the quoted sigma is a *local* significance. Measured on 50 lenstronomy-rendered
images without a subhalo (``benchmarks/README.md``), TS followed ``chi^2_5`` rather than
the stated mixture (3 optimiser failures aside): 5 sigma then needs ``TS = 38.6``, not
31.8. The maximum
likelihood is found by a finite multi-start optimisation, so ``Delta log L`` is a lower
bound of the true maximum difference (missed optima lower TS). Posterior odds are
not computed either; ``laplace=True`` adds a rough Laplace-approximation Bayes factor,
``log Z1 - log Z0``, from the Hessians of the log posterior at the two best fits (it
depends on the priors, in particular on the mass range and the searched region).

#### Search

The ``H0`` fit starts from the prior (``num_starts`` starts). The ``H1`` starts take the
best ``H0`` parameters for the lens and source, and the subhalo positions on a regular
``k x k`` grid over ``subhalo_region`` (``k = floor(sqrt(num_starts))``; their masses
start at 3/4 of the log mass range, so that the image responds to the subhalo's position;
the remaining starts at random positions with masses drawn from the log-uniform prior): a
coarse scan of the region that gradient steps then refine. With ``scan_grid`` the scan is
an actual one: :func:`scan_subhalo` estimates ``Delta log L`` in every cell of a fine grid
and at every trial mass by linear response around the ``H0`` fit (one render per cell and
mass, every smooth parameter refitted to first order), and half the ``H1`` starts are
its best cells at their best masses, the others on the regular grid. On a 100x100
lenstronomy-rendered image with a weak subhalo it put its best cell where the 64-start
grid search ended (``benchmarks/subhalo_search.py``), so that 8 starts did the work of
64. It is a linearisation around ``H0``: a strong subhalo whose deflection the ``H0`` fit
has partly absorbed into the lens can rank low in it (the demo's 1e10 M_sun point mass
did: ``benchmarks/README.md``). Since ``H1`` thereby continues the lens and
source optimisation for ``num_steps`` more steps, all ``H0`` starts are continued for as
many steps too (otherwise an incompletely converged ``H0`` fit would inflate
``Delta log L``), together with one more start at ``H1``'s best lens and source: ``H1``
may have found a smooth-model mode that ``H0``'s starts missed, and would "detect" it.
When that start takes ``H0`` above ``H1`` (which cannot hold at the maxima, as ``H0`` is
nested in ``H1``), ``H1`` is searched again from ``H0``'s new best fit. (Measured on a
lenstronomy-rendered null image where both had missed the mode: ``Delta log L`` was
+4478, "infinite sigma"; ``H0`` from ``H1``'s smooth part rose 4859 above its best and
380 above ``H1``.) ``benchmarks/subhalo_null.py`` measures the statistic on images
without a subhalo.

#### A calibrated significance: the parametric bootstrap

:func:`calibrate_null` measures the null distribution of ``TS`` for *this* image and
*this* search: it draws ``B`` images from the best-fit ``H0`` with the model's noise,
runs the same two fits on each (``H0`` started from the generating parameters, as the
data's ``H0`` fit starts from its MAP) and compares the observed ``TS`` with those
(:class:`NullCalibration`). It accounts for the look-elsewhere effect over the searched
region, for the boundary, and for what the finite optimisation does under ``H0``. Two
numbers come out:

* the empirical ``p = (1 + #{TS_b >= TS}) / (B + 1)`` (Davison & Hinkley 1997, ch. 4;
  North, Curtis & Sham 2002), valid at every ``B`` but floored at ``1 / (B + 1)``: 20 simulations
  resolve at most ~1.7 sigma, 5 sigma would need ~10^7;
* a tail extrapolation: :func:`fit_null_distribution` fits the mixture
  ``w_0 delta_0 + (1 - w_0) chi^2_k`` to the ``TS_b`` by maximum likelihood (``w_0`` the
  fraction with ``TS = 0``, ``k`` free and not an integer), and ``p = (1 - w_0)
  P(chi^2_k > TS)``: an "effective degrees of freedom" approximation of the
  look-elsewhere effect, not a theorem (the asymptotic tail of a maximum over positions
  is that of Gross & Vitells 2010, which such a ``chi^2`` follows only approximately).
  It assumes the tail keeps the shape of the bulk, which the 50-image study supports
  (``chi^2_5``, KS p = 0.73) but which ``B`` simulations cannot test beyond ``1/B``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings

import numpy as np
import tensorflow as tf
from scipy import stats

from ._util import as_seed, positive_int, progress_bar
from .map import MAPResult, find_map, render_batched, whitened_jacobian
from .model import LensModel

__all__ = ["detect_subhalo", "SubhaloDetection", "scan_subhalo", "SubhaloScan",
           "subhalo_point", "wilks_significance", "calibrate_null", "NullCalibration",
           "fit_null_distribution", "empirical_p_value"]


def _gaussian_sigma(p):
    """The one-sided Gaussian significance of p-values ``p``, floored at 0 (NaN stays NaN)."""
    return np.maximum(stats.norm.isf(p), 0.0)


def wilks_significance(delta_log_likelihood, dof: int = 3, boundary: bool = True):
    """``(sigma, p_value)`` for a likelihood-ratio ``Delta log L`` (see module docs).

    ``TS = 2 max(Delta log L, 0)``; ``p = w P(chi^2_dof > TS)`` with ``w = 1/2`` when
    ``boundary`` (mixture ``1/2 delta_0 + 1/2 chi^2_dof``), else 1; ``sigma =
    norm.isf(p)`` floored at 0. Works on numbers and numpy arrays.
    """
    dof = positive_int(dof, "dof")
    dll = np.asarray(delta_log_likelihood, dtype=np.float64)
    if not np.all(np.isfinite(dll)):
        raise ValueError(f"delta_log_likelihood must be finite, got {delta_log_likelihood!r}")
    ts = 2.0 * np.maximum(dll, 0.0)
    p = stats.chi2.sf(ts, dof) * (0.5 if boundary else 1.0)
    p = np.where(ts > 0, p, 1.0 if not boundary else 0.5)
    sigma = _gaussian_sigma(p)
    if sigma.ndim == 0:
        return float(sigma), float(p)
    return sigma, p


@dataclasses.dataclass(frozen=True)
class SubhaloDetection:
    """Result of :func:`detect_subhalo`.

    Attributes:
      delta_log_likelihood: ``max log L(H1) - max log L(H0)``.
      test_statistic: ``2 max(Delta log L, 0)``.
      p_value, significance_sigma: from :func:`wilks_significance`; dof, boundary.
      mass: best-fit subhalo mass [M_sun] (``M200c`` or total mass under the model's
        profile assumptions, see :class:`LensModel`);
      center_x, center_y: best-fit position [arcsec].
      fit_without, fit_with: the two :class:`MAPResult` s (maximum likelihood).
      log_bayes_factor_laplace: ``log Z1 - log Z0`` (Laplace) or ``None``.
      mass_aperture: projected mass [M_sun] inside ``aperture`` arcsec of the subhalo;
      mass_eff, r_pert: the effective lensing mass [M_sun] inside the perturbation radius
        [arcsec] (:meth:`LensModel.subhalo_masses`: these do not lean on the profile).
      scan: the :class:`SubhaloScan` that placed ``H1``'s starts, or ``None``.
    """

    delta_log_likelihood: float
    test_statistic: float
    p_value: float
    significance_sigma: float
    dof: int
    boundary: bool
    mass: float
    center_x: float
    center_y: float
    fit_without: MAPResult
    fit_with: MAPResult
    log_bayes_factor_laplace: float | None
    mass_aperture: float
    aperture: float
    mass_eff: float
    r_pert: float
    scan: SubhaloScan | None = None

    @property
    def detected_5sigma(self) -> bool:
        return self.significance_sigma >= 5.0

    def __repr__(self):
        return (f"SubhaloDetection(delta_log_likelihood={self.delta_log_likelihood:.4g}, "
                f"significance_sigma={self.significance_sigma:.3g}, mass={self.mass:.3g} "
                f"M_sun, position=({self.center_x:.3f}, {self.center_y:.3f})\")")


@dataclasses.dataclass(frozen=True)
class SubhaloScan:
    """Result of :func:`scan_subhalo`: where the data ask for a subhalo.

    Attributes:
      x, y: ``[G]`` grid-cell centres (arcsec); maps are ``[G, G]`` with rows along ``y``.
      masses: ``[M]`` trial masses (M_sun, the model's subhalo mass definition).
      delta_log_likelihood: ``[M, G, G]`` the linear-response estimate of ``log L`` with a
        subhalo of that mass in that cell minus ``log L`` without (module docs of
        :func:`scan_subhalo`); maximised over the masses it is a map of where the data
        ask for a subhalo.
      wall_time: seconds.
    """

    x: np.ndarray
    y: np.ndarray
    masses: np.ndarray
    delta_log_likelihood: np.ndarray
    wall_time: float

    @property
    def best_map(self) -> np.ndarray:
        """``[G, G]``: the estimate maximised over the trial masses."""
        return self.delta_log_likelihood.max(axis=0)

    def best_cells(self, k: int) -> np.ndarray:
        """``[k, 3]`` rows ``(mass, x, y)``: the ``k`` cells with the largest estimate
        (each at its best trial mass), best first."""
        k = min(positive_int(k, "k"), self.best_map.size)
        flat = self.best_map.ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        iy, ix = np.unravel_index(order, self.best_map.shape)
        im = self.delta_log_likelihood.argmax(axis=0)[iy, ix]
        return np.stack([self.masses[im], self.x[ix], self.y[iy]], axis=1)


def scan_subhalo(model: LensModel, fit_without: MAPResult, data=None, grid: int = 24,
                 masses=None, max_batch: int = 256) -> SubhaloScan:
    r"""The likelihood gain of one subhalo in every cell of a ``grid x grid`` grid over the
    model's ``subhalo_region`` and at every trial mass, by linear response around the
    best fit without a subhalo: one render per cell and mass.

    With ``theta_0`` the best fit of the model without subhalos (``fit_without``, e.g.
    maximum likelihood), ``J`` its whitened Jacobian there (central differences,
    ``2 D + 1`` renders) with orthonormal basis ``Q`` (QR), ``r_0 = (d - s(theta_0)) /
    sigma`` and ``r_1 = (d - s_1(theta_0; m, x, y)) / sigma`` the residual with a subhalo
    added, refitting every smooth parameter to first order gives

        Delta log L(m, x, y) ~ 1/2 [(|r_0|^2 - |Q^T r_0|^2) - (|r_1|^2 - |Q^T r_1|^2)].

    It ranks the cells; it is not the detection statistic (a nonlinear fit of both models
    is, :func:`detect_subhalo`, which starts its subhalo fits at the best cells). Cost:
    ``G^2 M`` renders in batches of ``max_batch``.

    Args:
      model: a :class:`LensModel` (its subhalo profile, mass range and region are the
        trial subhalos').
      fit_without: a :class:`MAPResult` of the model without subhalos.
      data: the image (default: the model's data).
      grid: cells per side (>= 2).
      masses: increasing trial masses (M_sun; default: about one per decade over the
        model's ``subhalo_mass_range``, its ends included: 5 for 1e7 - 1e11; the best
        cells' masses are starting points, refined by the fits).
      max_batch: largest batch of renders per compiled call.
    """
    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    t0 = time.perf_counter()
    m1 = model if model.num_subhalos == 1 else model.replace(num_subhalos=1)
    m0 = model.replace(num_subhalos=0) if model.num_subhalos else model
    if not (isinstance(fit_without, MAPResult)
            and list(fit_without.param_names) == list(m0.param_names)):
        raise ValueError(f"fit_without must be a MAPResult of the model without subhalos "
                         f"(parameters {list(m0.param_names)}), got {fit_without!r}")
    G = positive_int(grid, "grid", minimum=2)
    lo, hi = m1.subhalo_mass_range
    masses = (np.geomspace(lo, hi, max(2, round(math.log10(hi / lo)) + 1)) if masses is None
              else np.asarray(masses, np.float64))
    if masses.ndim != 1 or masses.size < 1 or not np.all(np.isfinite(masses)) \
            or not np.all(masses > 0) or not np.all(np.diff(masses) > 0):
        raise ValueError(f"masses must be increasing positive numbers (M_sun), got {masses!r}")
    obj0 = m0.objective(data, "likelihood")
    d = obj0.data
    x0 = np.asarray(fit_without.x, np.float64)[None]
    J, base, w = whitened_jacobian(obj0, x0, max_batch)
    q, _ = np.linalg.qr(J)                                # [pixels, D]
    r0 = (np.asarray(d, np.float64).reshape(-1) - base) * w

    def refit_chi2(r):                                    # rows of r: whitened residuals
        return np.sum(r * r, -1) - np.sum((r @ q) ** 2, -1)

    chi2_0 = float(refit_chi2(r0[None])[0])
    r0x, r1x, r2x, r3x = m1.subhalo_region
    xs = r0x + (np.arange(G) + 0.5) * (r1x - r0x) / G
    ys = r2x + (np.arange(G) + 0.5) * (r3x - r2x) / G
    xx, yy = np.meshgrid(xs, ys)
    P = G * G
    obj1 = m1.objective(d, "likelihood")
    gain = np.zeros((masses.size, P))
    for i, mass in enumerate(masses):
        x1 = subhalo_point(m1, x0[0], mass, xx.ravel(), yy.ravel())
        model_images = render_batched(obj1, x1, max_batch).reshape(P, -1)
        r1 = r0[None] - (model_images - base) * w
        gain[i] = 0.5 * (chi2_0 - refit_chi2(r1))
    return SubhaloScan(x=xs, y=ys, masses=masses, delta_log_likelihood=gain.reshape(-1, G, G),
                       wall_time=time.perf_counter() - t0)


def subhalo_point(model, x_without, mass, center_x, center_y) -> np.ndarray:
    """Unconstrained points ``[P, D]`` of ``model`` with one subhalo: its smooth parameters
    (lens, source, light) at ``x_without``, an unconstrained point ``[D0]`` of the same
    model without subhalos, copied as it is (its constrained values may round onto a prior
    bound, where the inverse bijector is infinite), and a subhalo of mass ``mass`` (M_sun)
    at ``(center_x, center_y)`` (arcsec; numbers or arrays ``[P]``)."""
    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    m1 = model if model.num_subhalos == 1 else model.replace(num_subhalos=1)
    m0 = model.replace(num_subhalos=0) if model.num_subhalos else model
    x_without = np.asarray(x_without, np.float64)
    if x_without.shape != (m0.num_params,):
        raise ValueError(f"x_without must be one unconstrained point [{m0.num_params}] of the "
                         f"model without subhalos, got shape {x_without.shape}")
    mass, center_x, center_y = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64))
                                                     for v in (mass, center_x, center_y)))
    P = mass.size
    draws = dict(m1.sample_prior(P, tf.constant([0, 0], tf.int32)))
    draws.update({"subhalo.0.mass": tf.constant(mass, m1.dtype),
                  "subhalo.0.center_x": tf.constant(center_x, m1.dtype),
                  "subhalo.0.center_y": tf.constant(center_y, m1.dtype)})
    x = np.array(m1.to_flat(draws), np.float64)
    for j, i in _shared_columns(m1.param_names, m0.param_names):
        x[:, j] = x_without[i]
    return x


def _subhalo_starts(model_with, fit0: MAPResult, num_starts, seed):
    """Starts ``[S, D]`` (unconstrained) for H1: H0's best lens/source, subhalo positions on
    a grid, masses from the prior. H0's point is copied in unconstrained coordinates: its
    constrained values may round onto a prior bound (e.g. a multipole phase at the edge of
    its period), where the constraining bijector's inverse is infinite."""
    draws = dict(model_with.sample_prior(num_starts, seed))
    init = {}
    k = int(math.isqrt(num_starts))
    x0, x1, y0, y1 = model_with.subhalo_region
    gx = x0 + (np.arange(k) + 0.5) * (x1 - x0) / k
    gy = y0 + (np.arange(k) + 0.5) * (y1 - y0) / k
    xx, yy = np.meshgrid(gx, gy)
    n_grid = k * k
    cx = draws["subhalo.0.center_x"].numpy().copy()
    cy = draws["subhalo.0.center_y"].numpy().copy()
    cx[:n_grid] = xx.ravel()
    cy[:n_grid] = yy.ravel()
    init["subhalo.0.center_x"] = cx
    init["subhalo.0.center_y"] = cy
    # Grid starts begin heavy (at 3/4 of the log mass range): a light subhalo barely
    # changes the image, so the gradient with respect to its position would vanish and it
    # could not move towards the signal; the optimisation then lowers the mass as needed.
    m_min, m_max = (float(v) for v in model_with.subhalo_mass_range)
    heavy = math.exp(math.log(m_min) + 0.75 * (math.log(m_max) - math.log(m_min)))
    mass = draws["subhalo.0.mass"].numpy().copy()
    mass[:n_grid] = heavy
    init["subhalo.0.mass"] = mass
    draws.update({name: tf.constant(v, model_with.dtype) for name, v in init.items()})
    x = np.array(model_with.to_flat(draws))
    x0 = np.asarray(fit0.x)
    for j, i in _shared_columns(model_with.param_names, fit0.param_names):
        x[:, j] = x0[i]
    return x


def _shared_columns(names_to, names_from):
    """``(j, i)`` for every parameter name at column ``j`` of ``names_to`` and ``i`` of
    ``names_from``: how H0's and H1's unconstrained points map onto each other."""
    index = {name: i for i, name in enumerate(names_from)}
    return [(j, index[name]) for j, name in enumerate(names_to) if name in index]


def _smooth_part(model_without, fit_with: MAPResult):
    """The point ``[D0]`` (unconstrained) of the model without subhalos at ``fit_with``'s
    best lens and source."""
    pairs = _shared_columns(model_without.param_names, fit_with.param_names)
    return np.asarray(fit_with.x)[[i for _, i in pairs]]


def detect_subhalo(model: LensModel, data=None, num_starts: int = 64, num_steps: int = 500,
                   learning_rate: float = 0.05, seed=None, dof: int = 3, boundary: bool = True,
                   lbfgs_steps: int = 0, laplace: bool = False, fit_without: MAPResult = None,
                   scan_grid: int | None = None, progress: bool = True,
                   **map_kwargs) -> SubhaloDetection:
    r"""Likelihood-ratio test for one subhalo (see module docs).

    Args:
      model: a :class:`LensModel`; its configuration (lens, source, priors, noise) is used
        for ``H0`` (with ``num_subhalos=0``) and ``H1`` (``num_subhalos=1``: the subhalo
        profile, mass range, region and cosmology are the model's).
      data: the image (default: the model's data).
      num_starts, num_steps, learning_rate, lbfgs_steps: for both maximum-likelihood fits
        (:func:`find_map`); other keyword arguments are passed to it.
      seed: int or stateless seed.
      dof, boundary: for :func:`wilks_significance`.
      laplace: also compute the Laplace-approximation log Bayes factor.
      fit_without: a previous maximum-likelihood fit of ``H0`` to reuse.
      scan_grid: when given (cells per side), half of ``H1``'s subhalo starts (rounded
        up) are the best cells of :func:`scan_subhalo` on that grid (each at its best
        trial mass), the others on the regular grid: the search starts where the data
        ask for a subhalo, so that fewer starts and steps find the same maximum
        (``scan`` of the result holds the map).
      progress: progress bars.

    Returns:
      a :class:`SubhaloDetection`.

    #### Example

    >>> model = LensModel(obs, "sie+shear", "sersic", num_subhalos=1, amp_scale=10.0)
    >>> det = detect_subhalo(model, data, num_starts=64, num_steps=500, seed=1)
    >>> det.significance_sigma, det.mass, det.center_x, det.center_y
    """
    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    S = positive_int(num_starts, "num_starts")
    d = model.resolve_data(data)
    seed = as_seed(seed)
    s0, s1, s_init = (tf.constant([int(seed[0]), int(seed[1]) + i], tf.int32) for i in range(3))
    m1 = model if model.num_subhalos == 1 else model.replace(num_subhalos=1)
    m0 = model.replace(num_subhalos=0) if model.num_subhalos else model
    common = dict(num_starts=S, num_steps=num_steps, learning_rate=learning_rate,
                  objective="likelihood", lbfgs_steps=lbfgs_steps, progress=progress,
                  **map_kwargs)
    if fit_without is None:
        fit0 = find_map(m0, d, seed=s0, **common)
    else:
        if not isinstance(fit_without, MAPResult) or fit_without.objective_name != "likelihood":
            raise ValueError("fit_without must be a MAPResult of a maximum-likelihood fit "
                             "(objective='likelihood') of the model without subhalos")
        fit0 = fit_without
    scan = None
    if scan_grid is not None and S > 1:
        # half the starts at the scan's best cells, the other half on a coarse regular
        # grid: the scan is a linearisation, and a strong subhalo that the fit without it
        # has partly absorbed (the demo's 1e10 M_sun point mass) can rank low in it
        scan = scan_subhalo(m1, fit0, d, grid=scan_grid)
        n_scan = (S + 1) // 2
        cells = scan.best_cells(n_scan)
        init = np.concatenate([subhalo_point(m1, fit0.x, *cells.T),
                               _subhalo_starts(m1, fit0, S - len(cells), s_init)], 0)
    else:
        init = _subhalo_starts(m1, fit0, S, s_init)
    fit1 = find_map(m1, d, seed=s1, init=init, **common)
    # H1's lens/source parameters had num_steps more optimisation than H0's: continue H0's
    # starts for as long, so that an unconverged H0 does not inflate Delta log L, and add
    # one start at H1's lens and source (H1 may have found a smooth-model mode H0 missed)
    starts0 = np.concatenate([np.asarray(fit0.all_x), _smooth_part(m0, fit1)[None]], 0)
    fit0 = find_map(m0, d, seed=s0, init=starts0, **dict(common, num_starts=len(starts0)))
    if fit0.objective > fit1.objective:
        # H1 is nested in H0's better mode but did not reach it: search H1 again from there
        again_init = _subhalo_starts(m1, fit0, S, s_init + 1)
        if scan is not None:  # the scan's cells, now around H0's better fit
            pos = ["subhalo.0.mass", "subhalo.0.center_x", "subhalo.0.center_y"]
            cols = [list(m1.param_names).index(n) for n in pos]
            again_init[:, cols] = np.asarray(init)[:, cols]
        again = find_map(m1, d, seed=s1 + 1, init=again_init, **common)
        if again.objective > fit1.objective:
            fit1 = again
    dll = fit1.objective - fit0.objective
    sigma, p = wilks_significance(dll, dof=dof, boundary=boundary)
    log_bf = None
    if laplace:
        from .vi import laplace_approximation

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z0 = laplace_approximation(m0, fit0.x, d).log_evidence
            z1 = laplace_approximation(m1, fit1.x, d).log_evidence
        log_bf = z1 - z0
    robust = m1.subhalo_masses({k: tf.convert_to_tensor(v)[None]
                                for k, v in fit1.params.items()})
    return SubhaloDetection(
        delta_log_likelihood=float(dll), test_statistic=float(2 * max(dll, 0.0)),
        p_value=p, significance_sigma=sigma, dof=dof, boundary=boundary,
        mass=float(fit1.params["subhalo.0.mass"]),
        center_x=float(fit1.params["subhalo.0.center_x"]),
        center_y=float(fit1.params["subhalo.0.center_y"]),
        fit_without=fit0, fit_with=fit1, log_bayes_factor_laplace=log_bf,
        mass_aperture=float(robust["subhalo.0.mass_aperture"][0]),
        aperture=m1.subhalo_aperture,
        mass_eff=float(robust.get("subhalo.0.mass_eff", [np.nan])[0]),
        r_pert=float(robust.get("subhalo.0.r_pert", [np.nan])[0]), scan=scan)


def empirical_p_value(observed, null_samples) -> float:
    """``(1 + #{null >= observed}) / (B + 1)``: the p-value of ``observed`` against ``B``
    draws of its null distribution, counting the observation itself among them so that it
    is valid at every ``B`` (never 0; uniform on ``{1, ..., B + 1} / (B + 1)`` under the
    null)."""
    null = np.asarray(null_samples, np.float64).ravel()
    if null.size == 0 or not np.all(np.isfinite(null)):
        raise ValueError(f"null_samples must be a non-empty array of finite numbers, got "
                         f"{null_samples!r}")
    observed = float(observed)
    if not math.isfinite(observed):
        raise ValueError(f"observed must be finite, got {observed!r}")
    return float((1 + np.sum(null >= observed)) / (null.size + 1))


def fit_null_distribution(test_statistics):
    """``(w_0, k)``: the maximum-likelihood mixture ``w_0 delta_0 + (1 - w_0) chi^2_k`` of
    non-negative test statistics (``w_0``: the fraction exactly 0; ``k`` real, fitted to the
    positive ones; ``k = nan`` when fewer than 2 are positive)."""
    from scipy.optimize import minimize_scalar

    ts = np.asarray(test_statistics, np.float64).ravel()
    if ts.size == 0 or not np.all(np.isfinite(ts)) or np.any(ts < 0):
        raise ValueError(f"test_statistics must be non-empty, finite and >= 0, got "
                         f"{test_statistics!r}")
    pos = ts[ts > 0]
    w0 = float(1.0 - pos.size / ts.size)
    if pos.size < 2:
        return w0, float("nan")
    res = minimize_scalar(lambda k: -np.sum(stats.chi2.logpdf(pos, k)), bounds=(0.05, 100.0),
                          method="bounded", options={"xatol": 1e-6})
    return w0, float(res.x)


@dataclasses.dataclass(frozen=True)
class NullCalibration:
    """Result of :func:`calibrate_null` (see the module docs).

    Attributes:
      test_statistic: the observed ``TS``.
      null_test_statistics: ``TS_b`` of the ``B`` images drawn from the best-fit ``H0``.
      p_value, significance_sigma: empirical (:func:`empirical_p_value`; floored at
        ``1 / (B + 1)``).
      null_zero_fraction, null_dof: the fitted null ``w_0 delta_0 + (1 - w_0) chi^2_k``
        (:func:`fit_null_distribution`).
      p_value_fitted, significance_sigma_fitted: the observed ``TS`` against that fit
        (an extrapolation beyond ``1 / B``).
      wall_time: seconds.
    """

    test_statistic: float
    null_test_statistics: np.ndarray
    p_value: float
    significance_sigma: float
    null_zero_fraction: float
    null_dof: float
    p_value_fitted: float
    significance_sigma_fitted: float
    wall_time: float

    @property
    def num_simulations(self) -> int:
        return int(np.size(self.null_test_statistics))

    @classmethod
    def from_statistics(cls, test_statistic, null_test_statistics, wall_time: float = 0.0):
        """The calibration of ``test_statistic`` against given null draws."""
        null = np.asarray(null_test_statistics, np.float64).ravel()
        p = empirical_p_value(test_statistic, null)
        w0, k = fit_null_distribution(null)
        ts = float(test_statistic)
        if not math.isfinite(k):
            p_fit = float("nan")
        else:
            p_fit = float((1.0 - w0) * stats.chi2.sf(ts, k)) if ts > 0 else 1.0
        return cls(test_statistic=ts, null_test_statistics=null, p_value=p,
                   significance_sigma=float(_gaussian_sigma(p)), null_zero_fraction=w0,
                   null_dof=k, p_value_fitted=p_fit,
                   significance_sigma_fitted=float(_gaussian_sigma(p_fit)),
                   wall_time=float(wall_time))

    def to_dict(self) -> dict:
        """JSON-ready summary (for ``summary.json``)."""
        nan = lambda v: None if not math.isfinite(v) else float(v)  # noqa: E731
        return {"num_simulations": self.num_simulations,
                "null_test_statistics": [float(v) for v in self.null_test_statistics],
                "p_value": self.p_value, "significance_sigma": self.significance_sigma,
                "null_zero_fraction": self.null_zero_fraction, "null_dof": nan(self.null_dof),
                "p_value_fitted": nan(self.p_value_fitted),
                "significance_sigma_fitted": nan(self.significance_sigma_fitted),
                "wall_time_s": self.wall_time,
                "definition": ("parametric bootstrap: images drawn from the best fit without "
                               "a subhalo, refitted with and without one as the data were; "
                               "p_value = (1 + #{TS_b >= TS}) / (B + 1); p_value_fitted = "
                               "TS against the maximum-likelihood fit null_zero_fraction "
                               "delta_0 + (1 - null_zero_fraction) chi2(null_dof) of the "
                               "TS_b (an extrapolation beyond 1/B)")}


def calibrate_null(model: LensModel, detection: SubhaloDetection, num_simulations: int = 20,
                   seed=None, h0_starts: int = 8, h0_jitter: float = 0.02,
                   progress: bool = True, **detect_kwargs) -> NullCalibration:
    """The parametric bootstrap of ``detection``'s test statistic (see the module docs).

    Args:
      model: the :class:`LensModel` ``detection`` was run with.
      detection: the :class:`SubhaloDetection` of the data.
      num_simulations: ``B``, images drawn from ``detection.fit_without``'s best fit.
      seed: int or stateless seed (images and fits).
      h0_starts, h0_jitter: each image's ``H0`` fit starts at the generating parameters
        with this many jittered starts (unconstrained ``Normal(0, h0_jitter)``), as
        :func:`~tfstronglens.inference.fit_lens` starts the data's from its MAP.
      **detect_kwargs: the settings of :func:`detect_subhalo` the data were analysed with
        (``num_starts``, ``num_steps``, ``learning_rate``, ...): the null must be the
        same search.

    Returns:
      a :class:`NullCalibration`. Cost: ``B`` detections.
    """
    if not isinstance(detection, SubhaloDetection):
        raise ValueError(f"detection must be a SubhaloDetection, got {detection!r}")
    B = positive_int(num_simulations, "num_simulations")
    h0_starts = positive_int(h0_starts, "h0_starts")
    for name in ("data", "fit_without"):
        if name in detect_kwargs:
            raise ValueError(f"calibrate_null draws its own images and H0 fits: {name} "
                             f"cannot be given")
    start = time.perf_counter()
    seed = as_seed(seed)
    m0 = model.replace(num_subhalos=0) if model.num_subhalos else model
    truth = detection.fit_without.params
    fit_opts = {k: detect_kwargs[k] for k in ("num_steps", "learning_rate") if k in detect_kwargs}
    null = []
    bar = progress_bar(B, "null simulations", progress)
    for b in range(B):
        s_img, s_h0, s_det = (tf.constant([int(seed[0]) + b + 1, int(seed[1]) + 7 * i], tf.int32)
                              for i in range(3))
        image = m0.simulate(truth, seed=s_img)[0]
        fit0 = find_map(m0, image, num_starts=h0_starts, seed=s_h0, init=truth,
                        init_jitter=h0_jitter, objective="likelihood", progress=False,
                        **fit_opts)
        det = detect_subhalo(model, image, seed=s_det, fit_without=fit0, progress=False,
                             **detect_kwargs)
        null.append(det.test_statistic)
        bar.update(1)
    bar.close()
    return NullCalibration.from_statistics(detection.test_statistic, null,
                                           time.perf_counter() - start)
