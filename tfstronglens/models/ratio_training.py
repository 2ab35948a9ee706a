"""Train the subhalo-population ratio estimator on paired simulations, calibrate it, and
measure it.

:func:`ratio_dataset` streams batches of
:class:`~tfstronglens.simulation.population.PopulationPairSimulator` pairs;
:func:`train_ratio` trains a :class:`~tfstronglens.models.ratio.PopulationRatioEstimator`
on them with :func:`~tfstronglens.models.training.train_on_stream` (checkpoints, resume,
progress, ``tf.distribute``), recalibrates it (:func:`fit_calibration`) and reports
(:func:`evaluate_ratio`): the classifier's calibration curve on held-out pairs and the
coverage of the population posterior over simulated ensembles.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf

from .ratio import PopulationRatioEstimator
from .training import is_chief, save_trained_model, train_on_stream, write_json

__all__ = ["TRAIN_COMMAND", "DEFAULT_RATIO_SIMULATION", "ratio_dataset", "fit_calibration",
           "evaluate_ratio", "train_ratio", "PAIR_KEYS"]

#: The command name recorded in (and required of) train_ratio checkpoints.
TRAIN_COMMAND = "tfstronglens.models.train_ratio"

#: The keys of a pair batch the network trains on.
PAIR_KEYS = ("image", "noise", "theta_0", "theta_1", "y", "joint_log_ratio", "joint_score",
             "latent_summary")

#: The default simulation (``LensSimulationConfig`` fields): HST/ACS F814W-like 32x32
#: images of 0.05" of SIE + shear lenses (Einstein radii 0.5 - 0.7") of bright Sersic
#: sources (S/N 150 - 300: deep imaging), no lens light, WDM-suppressed TNFW subhalos of
#: 1e9 - 1e11 M_sun (at most 24) around the Einstein ring. Massive subhalos and deep images
#: because the population must leave a trace in single images: at S/N 40 - 100 the
#: subhalos of the densest population of the prior change an image by a median
#: chi^2 of 4 (at S/N 150 - 300, by 190), and lighter TNFW subhalos leave none at this
#: resolution (the sensitivity maps, ``benchmarks/sensitivity.py``, put the lowest
#: detectable TNFW mass on HST-like arcs near 10^10.6 - 10^10.9 M_sun).
DEFAULT_RATIO_SIMULATION = dict(instrument="hst_acs_f814w", num_pix=32, supersample=2,
                                lens_light=False, subhalo_model="wdm", n_max=24,
                                m_min=1e9, m_max=1e11, source="sersic",
                                priors={"theta_E": [0.5, 0.7], "source_snr": [150.0, 300.0]})

# held-out batches: from this index on (training reads 0, 1, 2, ...)
_HELDOUT_BATCH = 10**8


def _simulator(simulation: dict, params, priors, seed: int):
    from ..simulation import LensDatasetGenerator, LensSimulationConfig
    from ..simulation.population import PopulationPairSimulator, PopulationPrior

    cfg = LensSimulationConfig.from_dict(dict(simulation, seed=int(seed)))
    prior = PopulationPrior.from_names(params, priors)
    return PopulationPairSimulator(LensDatasetGenerator(cfg), prior)


def ratio_dataset(sim, batch_size: int, start: int = 0, stop: int | None = None,
                  prefetch: int = 2) -> tf.data.Dataset:
    """``tf.data.Dataset`` of pair batches (dicts of :data:`PAIR_KEYS`) ``start, start +
    1, ...`` (up to ``stop``, else forever), simulated on the fly."""
    n, d = sim.generator.config.num_pix, sim.prior.dim

    def batches():
        k = start
        while stop is None or k < stop:
            b = sim.batch(k, batch_size)
            yield {key: b[key] for key in PAIR_KEYS}
            k += 1

    f32 = tf.float32
    spec = {"image": tf.TensorSpec([batch_size, n, n], f32),
            "noise": tf.TensorSpec([batch_size, n, n], f32),
            "theta_0": tf.TensorSpec([batch_size, d], f32),
            "theta_1": tf.TensorSpec([batch_size, d], f32),
            "y": tf.TensorSpec([batch_size], f32),
            "joint_log_ratio": tf.TensorSpec([batch_size], f32),
            "joint_score": tf.TensorSpec([batch_size, d], f32),
            "latent_summary": tf.TensorSpec([batch_size, 2], f32)}
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return ds.prefetch(prefetch) if prefetch else ds


def _heldout_logits(net, sim, num_pairs: int, batch_size: int, first: int):
    logits, ys = [], []
    for k in range(-(-num_pairs // batch_size)):
        b = sim.batch(first + k, batch_size)
        logits.append(net.log_ratio(b, b["theta_0"], b["theta_1"]).numpy())
        ys.append(b["y"].numpy())
    return np.concatenate(logits)[:num_pairs], np.concatenate(ys)[:num_pairs]


def _bce(logit, y):
    return float(np.mean(np.logaddexp(0.0, logit) - y * logit))


def fit_calibration(logits, y) -> float:
    """The scale ``a`` of the log-ratios that minimises the held-out cross-entropy of
    ``a * logit`` against ``y`` (temperature scaling; no offset, as ``log r(theta_0,
    theta_1)`` is antisymmetric). ``a < 1``: the estimator was overconfident.

    The scale is kept only if it generalises: fitted on one half of the pairs, it must
    lower the cross-entropy of the other half; otherwise 1 is returned. (Measured on an
    estimator that had learned nothing: fitted on all pairs at once, the scale went to
    10, the bound, and made its posteriors overconfident. Its 68% regions covered the
    truth in 56% of 100 ensembles.)"""
    from scipy.optimize import minimize_scalar

    logits, y = np.asarray(logits, float), np.asarray(y, float)

    def fit(lg, yy):
        return float(minimize_scalar(lambda a: _bce(a * lg, yy), bounds=(0.01, 10.0),
                                     method="bounded").x)

    half = len(logits) // 2
    a = fit(logits[:half], y[:half])
    if not _bce(a * logits[half:], y[half:]) < _bce(logits[half:], y[half:]):
        return 1.0
    return fit(logits, y)


def calibration_curve(logits, y, bins: int = 10) -> dict:
    """Reliability of the classifier ``sigmoid(logit)``: per bin of predicted probability,
    its mean, the observed frequency of ``y = 1`` and the count; and the expected
    calibration error (count-weighted mean absolute difference)."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits, float)))
    y = np.asarray(y, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    pred, freq, count = [], [], []
    for b in range(bins):
        sel = idx == b
        count.append(int(sel.sum()))
        pred.append(float(p[sel].mean()) if sel.any() else float("nan"))
        freq.append(float(y[sel].mean()) if sel.any() else float("nan"))
    c = np.array(count)
    ok = c > 0
    ece = float(np.sum(c[ok] * np.abs(np.array(pred)[ok] - np.array(freq)[ok])) / c.sum())
    return {"predicted": pred, "observed": freq, "count": count, "ece": ece}


def evaluate_ratio(net: PopulationRatioEstimator, sim, *, num_pairs: int = 2000,
                   num_ensembles: int = 200, lenses_per_ensemble: int = 10,
                   points_per_axis: int = 31, batch_size: int = 64, seed: int = 0,
                   first_batch: int = _HELDOUT_BATCH + 10**6) -> dict:
    """Held-out measures of a ratio estimator: the cross-entropy and calibration curve of
    its classifier on ``num_pairs`` new pairs, and the coverage of the 68% and 95% HPD
    regions of the population posterior over ``num_ensembles`` ensembles of
    ``lenses_per_ensemble`` lenses, each ensemble's ``theta`` drawn from the prior
    (:func:`~tfstronglens.inference.population.ensemble_coverage`)."""
    from ..inference.population import (ensemble_coverage, grid_points,
                                        population_posterior)

    logits, y = _heldout_logits(net, sim, num_pairs, batch_size, first_batch)
    rng = np.random.default_rng(seed)
    prior = net.prior
    axes = prior.grid(points_per_axis)
    points = grid_points(axes)
    levels, widths, thetas = [], [], []
    t0 = time.perf_counter()
    for e in range(int(num_ensembles)):
        theta = rng.uniform(prior.low, prior.high)
        out = sim.simulate_at(np.repeat(theta[None], lenses_per_ensemble, 0).astype(np.float32),
                              first_batch + 10**6 + e)
        f = net.log_ratio_grid({"image": out["image"].numpy(),
                                "noise": out["noise_sigma"].numpy()}, points)
        post = population_posterior(net, log_ratios=f, axes=axes)
        levels.append(post.hpd_level(theta))
        s = post.summary()
        widths.append([s[n]["std"] for n in prior.names])
        thetas.append(theta)
    return {"bce": _bce(logits, y), "calibration": calibration_curve(logits, y),
            "coverage": {str(k): v for k, v in ensemble_coverage(levels).items()},
            "hpd_levels": [float(v) for v in levels],
            "posterior_std_median": {n: float(np.median(np.array(widths)[:, j]))
                                     for j, n in enumerate(prior.names)},
            "prior_std": {n: float((hi - lo) / np.sqrt(12)) for n, lo, hi in
                          zip(prior.names, prior.low, prior.high)},
            "num_ensembles": int(num_ensembles), "lenses_per_ensemble": int(lenses_per_ensemble),
            "ensemble_seconds": time.perf_counter() - t0}


def train_ratio(out_dir, *, params=("kappa_sub", "log10_m_hm"), priors=None, simulation=None,
                steps: int = 2000, batch_size: int = 64, loss: str = "alices",
                score_weight: float = 1.0, latent_weight: float = 1.0,
                learning_rate: float = 1e-3,
                filters=(16, 32, 64), features: int = 64, hidden=(128, 128),
                steps_per_checkpoint: int = 100, num_heldout: int = 2000,
                num_ensembles: int = 200, lenses_per_ensemble: int = 10, seed: int = 0,
                strategy=None, resume: bool = True, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Train a :class:`~tfstronglens.models.ratio.PopulationRatioEstimator` on paired
    simulations and report on held-out ones.

    ``params`` (and ``priors``, ``{name: (low, high)}`` over the defaults of
    :data:`~tfstronglens.simulation.population.POPULATION_PARAMETERS`) are the inferred
    population parameters; ``simulation`` a ``LensSimulationConfig`` dict (default
    :data:`DEFAULT_RATIO_SIMULATION`) for everything else. Checkpoints and resume are
    :func:`~tfstronglens.models.training.train_on_stream`'s. After training, the
    log-ratio is rescaled by :func:`fit_calibration` on ``num_heldout`` held-out pairs
    (kept as the model's ``calibration``), then :func:`evaluate_ratio` measures it on
    other held-out pairs and ensembles.

    Outputs in ``out_dir``: ``ratio.keras``, ``report.json`` (settings, calibration scale,
    held-out cross-entropy and calibration curve before/after, ensemble coverage, history)
    and ``calibration.png``. Returns the report.

    ``strategy`` (:func:`~tfstronglens.models.training.make_strategy`) distributes the
    training; under several workers every worker makes the same call and only the chief
    calibrates, evaluates and writes: the others return ``{"chief": False, "steps",
    "history"}``. On TPUs (never tried) ``TPUStrategy`` would take the same path: the
    paired batches have a static shape and the losses have no data-dependent control
    flow (the estimator keeps Keras' ``jit_compile="auto"``: XLA on a GPU or TPU, not on
    CPUs).
    """
    from ..simulation.population import PopulationPrior

    simulation = dict(DEFAULT_RATIO_SIMULATION if simulation is None else simulation)
    simulation.pop("seed", None)
    prior = PopulationPrior.from_names(list(params), priors)
    sim = _simulator(simulation, prior.names, prior.to_dict(), seed)
    cfg = sim.generator.config
    arch = dict(param_names=list(prior.names), prior_low=list(prior.low),
                prior_high=list(prior.high), num_pix=cfg.num_pix,
                pixel_scale=sim.generator.observation.pixel_scale,
                filters=[int(f) for f in filters], features=int(features),
                hidden=[int(h) for h in hidden], loss=loss, score_weight=float(score_weight),
                latent_weight=float(latent_weight),
                simulation={k: v for k, v in cfg.to_dict().items() if k != "seed"})
    settings = {"network": arch, "batch_size": int(batch_size),
                "learning_rate": float(learning_rate), "seed": int(seed)}

    def make_model():
        keras.utils.set_random_seed(int(seed))
        net = PopulationRatioEstimator(**arch)
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, int(steps), alpha=0.01)
        net.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=5.0))
        return net

    t0 = time.perf_counter()
    net, state = train_on_stream(
        make_model, lambda start: ratio_dataset(sim, batch_size, start), out_dir,
        steps=steps, command=TRAIN_COMMAND, settings=settings,
        steps_per_checkpoint=steps_per_checkpoint, resume=resume, overwrite=overwrite,
        progress=progress, strategy=strategy)
    train_seconds = time.perf_counter() - t0
    if not is_chief(strategy):
        save_trained_model(net, out_dir, "ratio.keras", strategy)
        return {"chief": False, "steps": int(state["step"]), "history": state["history"]}
    net.set_calibration(1.0)
    logits, y = _heldout_logits(net, sim, num_heldout, batch_size, _HELDOUT_BATCH)
    scale = fit_calibration(logits, y)
    before = {"bce": _bce(logits, y), "calibration": calibration_curve(logits, y)}
    net.set_calibration(scale)
    ev = evaluate_ratio(net, sim, num_pairs=num_heldout, num_ensembles=num_ensembles,
                        lenses_per_ensemble=lenses_per_ensemble, batch_size=batch_size,
                        seed=seed)
    out_dir = os.fspath(out_dir)
    save_trained_model(net, out_dir, "ratio.keras")
    report = {"steps": int(state["step"]), "calibration_scale": scale,
              "before_calibration": before, "heldout": ev,
              "train_seconds_this_call": train_seconds, "settings": settings,
              "history": state["history"]}
    _calibration_png(os.path.join(out_dir, "calibration.png"), before["calibration"],
                     ev["calibration"], ev["hpd_levels"])
    write_json(os.path.join(out_dir, "report.json"), report)
    if progress:
        cov = ev["coverage"]
        print(f"train_ratio: {report['steps']} steps; calibration scale {scale:.3f}; held-out "
              f"cross-entropy {ev['bce']:.4f} (chance 0.6931); ensemble coverage 68%: "
              f"{cov['0.68']['coverage']:.2f}, 95%: {cov['0.95']['coverage']:.2f}; wrote "
              f"{out_dir}")
    return report


def _calibration_png(path, before, after, hpd_levels):
    from .training import _figure, _save_figure

    fig, axes = _figure(1, 2, size=3.0)
    ax = axes[0, 0]
    for curve, label in ((before, "before"), (after, "after recalibration")):
        ax.plot(curve["predicted"], curve["observed"], "o-", ms=3, lw=1, label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("predicted P(drawn at theta_0)", fontsize=7)
    ax.set_ylabel("observed frequency", fontsize=7)
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    lv = np.sort(np.asarray(hpd_levels))
    grid = np.linspace(0, 1, 101)
    ax.plot(grid, [np.mean(lv < g) for g in grid], lw=1.2)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("credible level (HPD)", fontsize=7)
    ax.set_ylabel("fraction of ensembles covering the truth", fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)
