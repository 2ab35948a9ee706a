r"""Subhalo-population parameters, their prior, and the paired simulations that train a
likelihood-ratio estimator of them (:mod:`tfstronglens.models.ratio`).

#### Population parameters

:data:`POPULATION_PARAMETERS` is the one table of the parameters ``theta`` of the subhalo
population that can be inferred from lens images, with their default uniform priors:

* ``kappa_sub``: the mean convergence in CDM subhalos of ``[m_min, m_max]`` in the
  annulus around the Einstein ring (:class:`~tfstronglens.observation.SubhaloPopulation`),
  i.e. the normalisation of the mass function; ``U[0.002, 0.02]`` (2 to 23 subhalos of
  ``1e8 - 1e10`` M_sun expected in the default annulus of a 1.2" lens; the lower end is
  above 0 because the joint score ``(n - lambda) / kappa_sub`` of the Poisson number has
  a variance ``~ 1 / kappa_sub`` that diverges at 0);
* ``subhalo_beta``: the slope of the mass function ``dN/dm ~ m^beta``; ``U[-2.5, -1.5]``;
* ``log10_m_hm``: the warm-dark-matter half-mode mass, ``log10(m_hm / M_sun)``;
  ``U[7, 10]`` (below ``m_min = 1e8`` the suppression fades into CDM).

Everything else (the macro lens, the source, the lens light, and the subhalos' number,
masses and positions given ``theta``) is a nuisance drawn from the
:class:`~tfstronglens.simulation.LensDatasetGenerator`'s priors.

#### Paired simulations and the joint quantities

:class:`PopulationPairSimulator` draws, per lens, two parameter points ``theta_0,
theta_1`` from the prior, picks one of them with probability 1/2 (``y = 1`` for
``theta_0``), and simulates the image ``x`` with its latent subhalos ``z`` at the picked
point. Because the simulator is differentiable and the population is a TFP distribution,
it also returns what only the simulator knows (Brehmer et al. 2020, "Mining gold",
PNAS 117, 5242):

* the **joint log likelihood ratio** ``log r(x, z | theta_0, theta_1) = log p(z | theta_0)
  - log p(z | theta_1)`` (the image given ``z`` does not depend on ``theta``, so its
  likelihood cancels);
* the **joint score** ``t(x, z | theta) = grad_theta log p(z | theta)`` at the point
  ``x`` was drawn at, by automatic differentiation of the population's ``log_prob``.

Their conditional expectations given ``x`` are the intractable quantities a ratio
estimator learns: ``E[r(x, z | theta_0, theta_1) | x, theta_1] = p(x | theta_0) /
p(x | theta_1)`` and ``E[t(x, z | theta) | x, theta] = grad_theta log p(x | theta)``.
The latent subhalos' positions are uniform in an annulus set by the (nuisance) lens, the
same under both points, so their density cancels too.

Batch ``k`` is drawn with the stateless seed ``[seed, k]``; one compiled XLA call per batch.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["PopulationParameter", "POPULATION_PARAMETERS", "PopulationPrior",
           "PopulationPairSimulator"]

tfd = tfp.distributions


@dataclasses.dataclass(frozen=True)
class PopulationParameter:
    """One inferable population parameter: its ``name``, the
    :meth:`~tfstronglens.simulation.LensDatasetGenerator.subhalo_population` field it sets
    (``field``), the map from the parameter to that field (``to_field``, traceable), the
    default uniform prior ``(low, high)`` and its physical ``bounds`` (a prior must lie
    within them)."""

    name: str
    field: str
    to_field: object
    default_prior: tuple
    bounds: tuple
    description: str


def _identity(v):
    return v


def _exp10(v):
    return tf.exp(v * math.log(10.0))


POPULATION_PARAMETERS = {p.name: p for p in (
    PopulationParameter("kappa_sub", "kappa_sub", _identity, (0.002, 0.02), (0.0, math.inf),
                        "mean convergence in CDM subhalos in the annulus"),
    PopulationParameter("subhalo_beta", "subhalo_beta", _identity, (-2.5, -1.5),
                        (-math.inf, math.inf), "slope of the subhalo mass function"),
    PopulationParameter("log10_m_hm", "m_hm", _exp10, (7.0, 10.0), (-math.inf, math.inf),
                        "log10 of the WDM half-mode mass [M_sun]"),
)}


@dataclasses.dataclass(frozen=True)
class PopulationPrior:
    """Independent uniform priors over population parameters (a subset of
    :data:`POPULATION_PARAMETERS`, in the order given).

    ``PopulationPrior.from_names(["kappa_sub", "log10_m_hm"], {"kappa_sub": (0, 0.03)})``
    takes the default ranges for the names not given. Invalid names or ranges raise
    ``ValueError`` naming them.
    """

    names: tuple
    low: tuple
    high: tuple

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"names must be distinct population parameters, got {self.names!r}")
        unknown = [n for n in names if n not in POPULATION_PARAMETERS]
        if unknown:
            raise ValueError(f"unknown population parameter(s) {unknown}; known: "
                             f"{sorted(POPULATION_PARAMETERS)}")
        if len(self.low) != len(names) or len(self.high) != len(names):
            raise ValueError(f"low and high need one value per name ({len(names)})")
        low = tuple(float(v) for v in self.low)
        high = tuple(float(v) for v in self.high)
        for n, lo, hi in zip(names, low, high):
            b_lo, b_hi = POPULATION_PARAMETERS[n].bounds
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"prior of {n}: need finite low < high, got [{lo}, {hi}]")
            if lo < b_lo or hi > b_hi:
                raise ValueError(f"prior of {n}: [{lo}, {hi}] leaves the parameter's "
                                 f"range [{b_lo}, {b_hi}]")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def from_names(cls, names, ranges: dict | None = None) -> "PopulationPrior":
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        names = list(names)
        ranges = dict(ranges or {})
        extra = sorted(set(ranges) - set(names))
        if extra:
            raise ValueError(f"ranges given for parameter(s) {extra} not in names {names}")
        lo, hi = [], []
        for n in names:
            if n not in POPULATION_PARAMETERS:
                raise ValueError(f"unknown population parameter {n!r}; known: "
                                 f"{sorted(POPULATION_PARAMETERS)}")
            r = ranges.get(n, POPULATION_PARAMETERS[n].default_prior)
            if len(r) != 2:
                raise ValueError(f"range of {n} must be [low, high], got {r!r}")
            lo.append(r[0])
            hi.append(r[1])
        return cls(tuple(names), tuple(lo), tuple(hi))

    def to_dict(self) -> dict:
        return {n: [lo, hi] for n, lo, hi in zip(self.names, self.low, self.high)}

    @classmethod
    def from_dict(cls, ranges: dict) -> "PopulationPrior":
        return cls.from_names(list(ranges), ranges)

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def distribution(self) -> tfd.Distribution:
        """``tfd.Independent(tfd.Uniform)`` over ``[D]`` vectors (float32)."""
        return tfd.Independent(tfd.Uniform(np.float32(self.low), np.float32(self.high)), 1)

    def sample(self, n: int, seed) -> tf.Tensor:
        return self.distribution.sample(n, seed=seed)

    def contains(self, theta) -> np.ndarray:
        theta = np.asarray(theta, np.float64)
        return np.all((theta >= self.low) & (theta <= self.high), axis=-1)

    def standardize(self, theta):
        """Map the prior box to ``[-1, 1]^D`` (the ratio network's input scale)."""
        lo, hi = np.float32(self.low), np.float32(self.high)
        return (tf.convert_to_tensor(theta, tf.float32) - (lo + hi) / 2) / ((hi - lo) / 2)

    def to_population(self, theta) -> dict:
        """``theta [B, D]`` -> the ``population`` dict of ``[B]`` tensors that
        :meth:`~tfstronglens.simulation.LensDatasetGenerator.subhalo_population` takes."""
        theta = tf.convert_to_tensor(theta, tf.float32)
        return {POPULATION_PARAMETERS[n].field: POPULATION_PARAMETERS[n].to_field(theta[..., j])
                for j, n in enumerate(self.names)}

    def grid(self, points_per_axis: int = 41) -> list:
        """One 1-D grid of ``points_per_axis`` equally spaced values per parameter
        (the ends of the prior included)."""
        n = int(points_per_axis)
        if n < 2:
            raise ValueError(f"points_per_axis must be >= 2, got {points_per_axis!r}")
        return [np.linspace(lo, hi, n) for lo, hi in zip(self.low, self.high)]


class PopulationPairSimulator:
    """Paired simulations for ratio estimation (see the module docs).

    Args:
      generator: a :class:`~tfstronglens.simulation.LensDatasetGenerator` with
        ``subhalo_model`` ``"cdm"`` or ``"wdm"`` (its config fixes the population
        parameters that ``prior`` does not name).
      prior: the :class:`PopulationPrior` of the inferred parameters.

    :meth:`batch` ``(k, batch_size)`` returns a dict of tensors: ``image``, ``noise``
    (``[B, N, N]``), ``theta_0``, ``theta_1`` (``[B, D]``), ``y`` (``[B]``, 1 where the
    image was drawn at ``theta_0``), ``theta`` (the point it was drawn at),
    ``joint_log_ratio`` (``log p(z|theta_0) - log p(z|theta_1)``), ``joint_score``
    (``grad log p(z|theta)`` at ``theta``, ``[B, D]``), ``num_subhalos`` and
    ``latent_summary`` (:meth:`latent_summary`).
    :meth:`simulate_at` simulates images at given parameters (ensembles for inference).
    """

    def __init__(self, generator, prior: PopulationPrior):
        from .generator import LensDatasetGenerator

        if not isinstance(generator, LensDatasetGenerator):
            raise ValueError(f"generator must be a LensDatasetGenerator, got {generator!r}")
        if generator.config.subhalo_model == "none":
            raise ValueError("the generator's subhalo_model must be 'cdm' or 'wdm' to infer "
                             "the subhalo population, got 'none'")
        if not isinstance(prior, PopulationPrior):
            raise ValueError(f"prior must be a PopulationPrior, got {prior!r}")
        if generator.config.subhalo_model == "cdm" and "log10_m_hm" in prior.names:
            raise ValueError("log10_m_hm is inferred only with subhalo_model 'wdm' (the "
                             "generator's config has 'cdm')")
        self.generator, self.prior = generator, prior
        self._fns = {}

    def _population(self, out, theta):
        t = out["truths"]
        return self.generator.subhalo_population(
            t["lens.0.theta_E"], t["lens.0.center_x"], t["lens.0.center_y"],
            self.prior.to_population(theta))

    def log_prob_subhalos(self, out, theta):
        """``log p(z | theta)`` ``[B]`` of a batch's subhalos under ``theta [B, D]``."""
        return self._population(out, theta).log_prob(out["subhalos"])

    def joint_score(self, out, theta):
        """``grad_theta log p(z | theta)`` ``[B, D]`` (automatic differentiation)."""
        theta = tf.convert_to_tensor(theta, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(theta)
            lp = self.log_prob_subhalos(out, theta)
        return tape.gradient(lp, theta)

    def pairs(self, seed, batch_size: int) -> dict:
        """One batch of pairs (see the class docs), traceable."""
        s_0, s_1, s_y, s_x = tfp.random.split_seed(seed, 4)
        theta_0 = self.prior.sample(batch_size, s_0)
        theta_1 = self.prior.sample(batch_size, s_1)
        y = tf.cast(tfd.Bernoulli(probs=0.5).sample(batch_size, seed=s_y), tf.float32)
        theta = tf.where(y[:, None] > 0, theta_0, theta_1)
        out = self.generator.simulate(s_x, batch_size, self.prior.to_population(theta))
        log_r = self.log_prob_subhalos(out, theta_0) - self.log_prob_subhalos(out, theta_1)
        return {"image": out["image"], "noise": out["noise_sigma"], "theta_0": theta_0,
                "theta_1": theta_1, "y": y, "theta": theta, "joint_log_ratio": log_r,
                "joint_score": self.joint_score(out, theta),
                "num_subhalos": tf.reduce_sum(tf.cast(out["subhalos"]["mask"], tf.int32), -1),
                "latent_summary": self.latent_summary(out["subhalos"])}

    def latent_summary(self, subhalos):
        """Two numbers per lens that summarise its subhalos ``z`` (``[B, 2]``): the number
        ``n / sqrt(n_max)`` and the log total mass ``log10(1 + sum m / m_min)``, targets of
        the ratio network's auxiliary head (latent supervision of its image features)."""
        mask = tf.cast(subhalos["mask"], tf.float32)
        cfg = self.generator.config
        n = tf.reduce_sum(mask, -1) / math.sqrt(cfg.n_max)
        total = tf.reduce_sum(mask * tf.cast(subhalos["mass"], tf.float32), -1) / cfg.m_min
        return tf.stack([n, tf.math.log(1.0 + total) / math.log(10.0)], -1)

    def _compiled(self, key, fn):
        if key not in self._fns:
            self._fns[key] = tf.function(fn, jit_compile=True, autograph=False)
        return self._fns[key]

    def batch(self, k: int, batch_size: int) -> dict:
        """Batch ``k`` of pairs (stateless seed ``[config.seed, k]``), one compiled call."""
        fn = self._compiled(("pairs", int(batch_size)),
                            lambda seed: self.pairs(seed, int(batch_size)))
        return fn(self.generator.seed_for(k))

    def simulate_at(self, theta, k: int) -> dict:
        """Images of lenses with population parameters ``theta [B, D]`` (one row per lens;
        the nuisance parameters from the generator's priors, batch seed ``[config.seed,
        k]``): the generator's output dict (tensors)."""
        theta = np.asarray(theta, np.float32)
        if theta.ndim != 2 or theta.shape[1] != self.prior.dim:
            raise ValueError(f"theta must be [num_lenses, {self.prior.dim}] "
                             f"({list(self.prior.names)}), got shape {theta.shape}")
        fn = self._compiled(("at", theta.shape[0]), lambda seed, th: self.generator.simulate(
            seed, th.shape[0], self.prior.to_population(th)))
        return fn(self.generator.seed_for(k), tf.constant(theta))
