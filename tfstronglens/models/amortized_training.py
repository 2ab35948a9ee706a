"""Train the lens-parameter posterior network on simulated lenses, and measure it.

:func:`cnn_dataset` turns one or more :class:`~tfstronglens.simulation.LensDatasetGenerator`
s (e.g. Sersic and galaxy sources, with and without lens light and subhalos) into an
infinite ``tf.data`` stream of ``({"image", "noise"}, theta)`` batches, taking the
generators in turn; :func:`train_cnn` trains a
:class:`~tfstronglens.models.LensPosteriorNetwork` on it with
:func:`~tfstronglens.models.training.train_on_stream` (checkpoints, resume, progress,
``tf.distribute``); :func:`evaluate_cnn` measures coverage, TARP and errors on held-out
simulations.
"""

from __future__ import annotations

import json
import numbers
import os
import time

import keras
import numpy as np
import tensorflow as tf

from .amortized import (POSTERIOR_HEADS, LensPosteriorNetwork, load_lens_cnn,
                        posterior_parameter_names)
from .training import (LEARNING_RATE_SCHEDULES, is_chief, save_trained_model, train_on_stream,
                       write_json)

__all__ = ["DEFAULT_CNN_SIMULATIONS", "cnn_generators", "cnn_dataset", "cnn_batch",
           "parameter_moments", "evaluate_cnn", "report_from_evaluation", "train_cnn", "TRAIN_COMMAND"]

#: The command name recorded in (and required of) train_cnn checkpoints.
TRAIN_COMMAND = "tfstronglens.models.train_cnn"

_BASE = {"instrument": "hst_acs_f814w", "num_pix": 64, "supersample": 2,
         "lens_model": "sie+shear", "galaxy_count": 2000}

#: The simulations the shipped network was trained on, taken in turn (``LensSimulationConfig``
#: fields): HST/ACS F814W-like 64x64 images of 0.05", SIE + shear; Sersic and galaxy-stamp
#: sources; with and without lens light; CDM subhalos as a nuisance in half of them.
DEFAULT_CNN_SIMULATIONS = [
    dict(_BASE, source="sersic", lens_light=False, subhalo_model="none"),
    dict(_BASE, source="galaxies", lens_light=False, subhalo_model="cdm"),
    dict(_BASE, source="sersic", lens_light=True, subhalo_model="cdm"),
    dict(_BASE, source="galaxies", lens_light=True, subhalo_model="none"),
]

# seeds of simulation i: training seed + _SEED_STRIDE * i; held-out: + _HELDOUT_OFFSET
_SEED_STRIDE, _HELDOUT_OFFSET = 7919, 104729


def cnn_generators(simulations, seed: int = 0, heldout: bool = False) -> list:
    """One :class:`~tfstronglens.simulation.LensDatasetGenerator` per simulation dict, with
    distinct seeds (and the galaxies' ``validation`` split for held-out ones). All must
    draw the same image size and lens model."""
    from ..simulation import LensDatasetGenerator, LensSimulationConfig

    if isinstance(simulations, dict):
        simulations = [simulations]
    if not simulations:
        raise ValueError("simulations must name at least one LensSimulationConfig dict")
    gens = []
    for i, sim in enumerate(simulations):
        sim = dict(sim)
        sim["seed"] = int(seed) + _SEED_STRIDE * i + (_HELDOUT_OFFSET if heldout else 0)
        sim["galaxy_split"] = "validation" if heldout else "train"
        gens.append(LensDatasetGenerator(LensSimulationConfig.from_dict(sim)))
    first = gens[0]
    for g in gens[1:]:
        for field in ("num_pix", "lens_model", "instrument"):
            if getattr(g.config, field) != getattr(first.config, field):
                raise ValueError(f"simulations must share {field}: {getattr(first.config, field)!r}"
                                 f" vs {getattr(g.config, field)!r}")
    return gens


def cnn_batch(generators, param_names, k: int, batch_size: int):
    """Batch ``k`` of the stream: batch ``k // G`` of generator ``k % G``, as
    ``({"image", "noise"}, theta [B, D], the generator's output dict)``."""
    g = generators[k % len(generators)]
    out = g.generate_tensors(k // len(generators), batch_size)
    theta = tf.stack([out["truths"][n] for n in param_names], axis=-1)
    return {"image": out["image"], "noise": out["noise_sigma"]}, theta, out


def cnn_dataset(generators, param_names, batch_size: int, start: int = 0,
                stop: int | None = None, prefetch: int = 2) -> tf.data.Dataset:
    """``tf.data.Dataset`` of ``({"image", "noise"}, theta [B, D])`` for batches ``start,
    start + 1, ...`` (up to ``stop``, else forever); batch ``k`` is batch ``k // G`` of
    generator ``k % G`` (``G`` generators), simulated on the fly."""
    n = generators[0].config.num_pix

    def batches():
        k = start
        while stop is None or k < stop:
            inputs, theta, _ = cnn_batch(generators, param_names, k, batch_size)
            yield inputs, theta
            k += 1

    spec = ({"image": tf.TensorSpec([batch_size, n, n], tf.float32),
             "noise": tf.TensorSpec([batch_size, n, n], tf.float32)},
            tf.TensorSpec([batch_size, len(param_names)], tf.float32))
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return ds.prefetch(prefetch) if prefetch else ds


def parameter_moments(generators, param_names, batch_size: int, batches_per_generator: int = 16,
                      first_batch: int = 10**6):
    """Mean and standard deviation of each parameter over ``batches_per_generator``
    batches of each generator's prior (batch indices from ``first_batch`` on, far from
    those trained on; of ``batch_size``, the training batch size, so the generators'
    compiled batch functions are reused; the images are simulated too)."""
    thetas = [cnn_batch([g], param_names, first_batch + j, batch_size)[1].numpy()
              for g in generators for j in range(int(batches_per_generator))]
    theta = np.concatenate(thetas)
    return theta.mean(0), theta.std(0)


def evaluate_cnn(net: LensPosteriorNetwork, generators, num_lenses: int, batch_size: int = 100,
                 num_samples: int = 500, seed: int = 0) -> dict:
    """Posterior draws for ``num_lenses`` simulated lenses (taken from the generators in
    turn) and what they say about the network: per-parameter coverage of the 68% and 95%
    intervals, TARP (:mod:`tfstronglens.inference.calibration`), median absolute error of
    the posterior median (relative for ``theta_E``), and the network's time per image (the
    head's parameters, without sampling). Returns a dict (numpy arrays)."""
    from ..inference.calibration import interval_coverage, tarp_coverage

    call = tf.function(lambda inputs: net(inputs), autograph=False)
    draws_fn = tf.function(lambda inputs, seed: net.posterior(inputs).sample(
        num_samples, seed=seed), autograph=False)
    thetas, draws, snrs, light = [], [], [], []
    seconds, timed = 0.0, 0
    nb = -(-num_lenses // batch_size)
    for k in range(nb):
        inputs, theta, out = cnn_batch(generators, net.param_names, k, batch_size)
        if k == 0:
            call(inputs).numpy()
        t0 = time.perf_counter()
        call(inputs).numpy()
        seconds += time.perf_counter() - t0
        timed += batch_size
        d = draws_fn(inputs, tf.constant([int(seed), k]))
        draws.append(np.transpose(d.numpy(), (1, 0, 2)))
        thetas.append(theta.numpy())
        snrs.append(out["truths"]["source_snr"].numpy())
        light.append(np.full(batch_size, generators[k % len(generators)].config.lens_light))
    n = num_lenses
    theta, draws = np.concatenate(thetas)[:n], np.concatenate(draws)[:n]
    median = np.median(draws, axis=1)
    err = np.abs(median - theta)
    names = net.param_names
    i_te = names.index("lens.0.theta_E") if "lens.0.theta_E" in names else None
    cov = interval_coverage(draws, theta)
    tarp = tarp_coverage(draws, theta, seed=seed)
    return {"param_names": names, "theta": theta, "draws": draws, "median": median,
            "abs_error": err, "coverage": cov, "tarp": tarp,
            "theta_E_relative_error": (err[:, i_te] / theta[:, i_te]) if i_te is not None else None,
            "snr": np.concatenate(snrs)[:n], "lens_light": np.concatenate(light)[:n],
            "seconds_per_image": seconds / timed}


def _plots(out_dir, ev):
    from .training import _figure, _save_figure

    names, theta, draws = ev["param_names"], ev["theta"], ev["draws"]
    d = len(names)
    ncol = 5
    nrow = -(-d // ncol)
    fig, axes = _figure(nrow, ncol, size=2.2)
    lo, hi = np.quantile(draws, [0.16, 0.84], axis=1)
    med = ev["median"]
    m = min(len(theta), 400)
    for j, ax in enumerate(axes.flat):
        if j >= d:
            ax.axis("off")
            continue
        ax.errorbar(theta[:m, j], med[:m, j], yerr=[med[:m, j] - lo[:m, j], hi[:m, j] - med[:m, j]],
                    fmt=".", ms=2, lw=0.4, alpha=0.6)
        a, b = float(theta[:, j].min()), float(theta[:, j].max())
        ax.plot([a, b], [a, b], "k-", lw=0.7)
        ax.set_title(names[j], fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    _save_figure(fig, os.path.join(out_dir, "predicted_vs_true.png"))

    fig, axes = _figure(1, 2, size=3.0)
    ax = axes[0, 0]
    levels = np.linspace(0.05, 0.95, 19)
    from ..inference.calibration import interval_coverage

    cov = interval_coverage(draws, theta, levels=levels)
    for j in range(d):
        ax.plot(levels, [cov[float(lv)][j] for lv in levels], lw=0.8, label=names[j])
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("credible level", fontsize=7)
    ax.set_ylabel("coverage", fontsize=7)
    ax.legend(fontsize=4)
    ax = axes[0, 1]
    tarp = ev["tarp"]
    ax.plot(tarp.alpha, tarp.ecp, lw=1.0)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("credibility level alpha", fontsize=7)
    ax.set_ylabel("TARP expected coverage", fontsize=7)
    fig.tight_layout()
    _save_figure(fig, os.path.join(out_dir, "coverage.png"))


def report_from_evaluation(ev: dict) -> dict:
    """The JSON-able summary of :func:`evaluate_cnn`'s output."""
    names = ev["param_names"]
    cov = ev["coverage"]
    per = {n: {"coverage_68": float(cov[0.68][j]), "coverage_95": float(cov[0.95][j]),
               "median_abs_error": float(np.median(ev["abs_error"][:, j]))}
           for j, n in enumerate(names)}
    rep = {"num_lenses": int(len(ev["theta"])), "parameters": per,
           "tarp_max_deviation": ev["tarp"].max_deviation,
           "seconds_per_image": ev["seconds_per_image"]}
    if ev["theta_E_relative_error"] is not None:
        rep["theta_E_median_relative_error"] = float(np.median(ev["theta_E_relative_error"]))
    return rep


def train_cnn(out_dir, *, simulations=None, head: str = "flow", steps: int = 4000,
              batch_size: int = 64, learning_rate: float = 1e-3,
              learning_rate_schedule: str = "cosine", filters=(16, 32, 64, 128),
              features: int = 128, flow_layers: int = 4, flow_hidden=(64, 64),
              flow_transform: str = "spline", steps_per_checkpoint: int = 100, num_heldout: int = 2000, seed: int = 0,
              jit_compile: bool = False, strategy=None, resume: bool = True,
              overwrite: bool = False, progress: bool = True, init_from=None,
              first_batch: int = 0) -> dict:
    """Train a :class:`~tfstronglens.models.LensPosteriorNetwork` on an infinite stream of
    simulated lenses and report on held-out ones.

    The training lenses are the generators of ``simulations`` (a list of
    ``LensSimulationConfig`` dicts, default :data:`DEFAULT_CNN_SIMULATIONS`) taken in turn
    (:func:`cnn_dataset`); the held-out lenses use other seeds and the galaxies'
    ``validation`` split. Checkpoints, resume and progress are
    :func:`~tfstronglens.models.training.train_on_stream`'s. The parameters are
    standardised with the training prior's moments (:func:`parameter_moments`).
    ``learning_rate_schedule`` is ``"cosine"`` (to 1% over ``steps``) or ``"constant"``;
    the schedule is the first call's (a resumed run with more ``steps`` continues at the
    final learning rate).

    **Fine-tuning.** ``init_from`` (anything :func:`~tfstronglens.models.load_lens_cnn`
    takes) starts from that network's weights and keeps its standardisation (its
    architecture and parameters must be this run's), with a fresh optimizer and schedule;
    ``first_batch`` starts the training stream at that batch index, so that a network
    trained on batches ``0 .. N-1`` continues with ``first_batch=N`` on lenses it has not
    seen.

    Outputs in ``out_dir``: ``cnn.keras``, ``saved_model/``
    (:meth:`~tfstronglens.models.LensPosteriorNetwork.export`), ``report.json``
    (per-parameter coverage of the 68/95% intervals and median absolute error, TARP's
    largest deviation, ``theta_E``'s median relative error, time per image, the settings,
    the loss history), ``predicted_vs_true.png`` and ``coverage.png``. Returns the report.

    ``strategy`` (:func:`~tfstronglens.models.training.make_strategy`) distributes the
    training; under several workers every worker makes the same call and only the chief
    writes and evaluates: the others return ``{"chief": False, "steps", "history"}``.
    On TPUs (never tried) ``TPUStrategy`` would take the same path: static batch shapes,
    the flow head's fixed number of layers (no data-dependent control flow) and
    ``jit_compile=True`` for the per-replica step.
    """
    if head not in POSTERIOR_HEADS:
        raise ValueError(f"head must be one of {sorted(POSTERIOR_HEADS)}, got {head!r}")
    if learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
        raise ValueError(f"learning_rate_schedule must be one of {sorted(LEARNING_RATE_SCHEDULES)}, "
                         f"got {learning_rate_schedule!r}")
    sims = [dict(s) for s in (DEFAULT_CNN_SIMULATIONS if simulations is None else simulations)]
    generators = cnn_generators(sims, seed)
    names = posterior_parameter_names(generators[0])
    loc, scale = parameter_moments(generators, names, batch_size)
    cfg0 = generators[0].config
    arch = dict(param_names=names, param_loc=[float(v) for v in loc],
                param_scale=[float(v) for v in scale], num_pix=cfg0.num_pix,
                pixel_scale=generators[0].observation.pixel_scale, head=head,
                filters=[int(f) for f in filters], features=int(features),
                flow_layers=int(flow_layers), flow_hidden=[int(h) for h in flow_hidden],
                flow_transform=flow_transform)
    if not (isinstance(first_batch, numbers.Integral) and first_batch >= 0):
        raise ValueError(f"first_batch must be a non-negative integer, got {first_batch!r}")
    init = None
    if init_from is not None:
        init = load_lens_cnn(init_from)
        theirs = json.loads(json.dumps({k: init.get_config().get(k) for k in arch}))
        # the weights were trained on the first network's standardisation: keep it
        arch.update(param_loc=theirs["param_loc"], param_scale=theirs["param_scale"])
        mine = json.loads(json.dumps(arch))
        diff = [k for k in arch if theirs[k] != mine[k]]
        if diff:
            raise ValueError(f"init_from {init_from!r} is a lens CNN of another architecture "
                             "or parameters (" + ", ".join(
                                 f"{k}: init_from {theirs[k]!r}, now {mine[k]!r}"
                                 for k in diff) + ")")
    settings = {"simulations": [g.config.to_dict() for g in generators], "network": arch,
                "batch_size": int(batch_size), "learning_rate": float(learning_rate),
                "learning_rate_schedule": learning_rate_schedule,
                "jit_compile": bool(jit_compile)}
    if init is not None or first_batch:
        settings.update(first_batch=int(first_batch),
                        init_from=None if init_from is None else str(init_from))

    def make_model():
        keras.utils.set_random_seed(int(seed))
        net = LensPosteriorNetwork(**arch)
        if init is not None:
            net.set_weights(init.get_weights())
        lr = LEARNING_RATE_SCHEDULES[learning_rate_schedule](learning_rate, int(steps))
        net.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=5.0),
                    jit_compile=bool(jit_compile))
        return net

    t0 = time.perf_counter()
    net, state = train_on_stream(
        make_model,
        lambda start: cnn_dataset(generators, names, batch_size, first_batch + start), out_dir,
        steps=steps, command=TRAIN_COMMAND, settings=settings,
        steps_per_checkpoint=steps_per_checkpoint, resume=resume, overwrite=overwrite,
        progress=progress, strategy=strategy)
    train_seconds = time.perf_counter() - t0

    out_dir = os.fspath(out_dir)
    save_trained_model(net, out_dir, "cnn.keras", strategy)
    if not is_chief(strategy):
        return {"chief": False, "steps": int(state["step"]), "history": state["history"]}
    held = cnn_generators(sims, seed, heldout=True)
    ev = evaluate_cnn(net, held, num_heldout, batch_size=batch_size, seed=seed)
    report = {"steps": int(state["step"]), **report_from_evaluation(ev),
              "train_seconds_this_call": train_seconds, "settings": settings,
              "history": state["history"]}
    _plots(out_dir, ev)
    write_json(os.path.join(out_dir, "report.json"), report)
    if progress:
        te = report.get("theta_E_median_relative_error", float("nan"))
        print(f"train_cnn: {report['steps']} steps; held-out theta_E median relative error "
              f"{te:.4f}, TARP max deviation {report['tarp_max_deviation']:.3f}; wrote {out_dir}")
    return report
