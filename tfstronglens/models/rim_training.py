"""Train the :class:`~tfstronglens.models.RIM` on simulated lenses, and measure it.

:func:`rim_dataset` turns a :class:`~tfstronglens.simulation.LensDatasetGenerator` into an
infinite ``tf.data`` stream of ``(inputs, true source)`` batches (no files);
:func:`train_rim` trains on it with :func:`~tfstronglens.models.training.train_on_stream`
(checkpoints, resume, progress, ``tf.distribute``) and writes a held-out report
(:func:`evaluate_rim`) and a PNG grid.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import time

import keras
import numpy as np
import tensorflow as tf

from .rim import RIM, load_rim, source_error
from .training import (LEARNING_RATE_SCHEDULES, is_chief, save_trained_model, train_on_stream,
                       write_json)

__all__ = ["rim_dataset", "rim_batch", "train_rim", "evaluate_rim", "DEFAULT_RIM_SIMULATION"]

_COMMAND = "tfstronglens.models.train_rim"

#: The simulation the shipped RIM was trained on (``LensSimulationConfig`` fields): HST/ACS
#: F814W-like 64x64 images of 0.05", SIE + shear, galaxy-stamp sources, no lens light.
DEFAULT_RIM_SIMULATION = {"instrument": "hst_acs_f814w", "num_pix": 64, "supersample": 2,
                          "lens_model": "sie+shear", "lens_light": False,
                          "subhalo_model": "none", "source": "galaxies",
                          "galaxy_count": 2000}


def rim_batch(generator, rim: RIM, out: dict):
    """``(inputs, target)`` for a batch ``out`` of ``generator`` (its tensors): the RIM's
    inputs (image, noise sigma, the observation's PSF, the true lens parameters) and the
    true source on the RIM's source grid (e-/s/arcsec^2)."""
    truths = out["truths"]
    missing = [n for n in rim.lens_param_names if n not in truths]
    if missing:
        raise ValueError(f"the simulation has no lens parameters {missing}: its lens model does "
                         f"not match the RIM's lens_models {list(rim.lens_models)}")
    image = tf.convert_to_tensor(out["image"], tf.float32)
    batch = image.shape[0]
    obs = generator.observation
    kernel = obs.psf.kernel(obs.pixel_scale).astype(np.float32)
    inputs = {"image": image, "noise": tf.convert_to_tensor(out["noise_sigma"], tf.float32),
              "psf": tf.tile(tf.constant(kernel)[None], [batch, 1, 1]),
              "lens": tf.stack([tf.cast(truths[n], tf.float32) for n in rim.lens_param_names],
                               -1)}
    target = generator.source_on_grid(out, rim.source_num_pix, rim.source_pixel_scale)
    return inputs, target


def rim_dataset(generator, rim: RIM, batch_size: int, start: int = 0, stop: int | None = None,
                prefetch: int = 2) -> tf.data.Dataset:
    """``tf.data.Dataset`` of ``(inputs, target)`` (:func:`rim_batch`) for the generator's
    batches ``start, start + 1, ...`` (up to ``stop``, else forever), simulated on the fly
    (``prefetch`` ahead in tf.data's thread)."""
    target_fn = tf.function(lambda out: rim_batch(generator, rim, out), autograph=False)

    def batches():
        k = start
        while stop is None or k < stop:
            yield target_fn(generator.generate_tensors(k, batch_size))
            k += 1

    n, ns = rim.num_pix, rim.source_num_pix
    obs = generator.observation
    k = obs.psf.kernel(obs.pixel_scale).shape[-1]
    spec = ({"image": tf.TensorSpec([batch_size, n, n], tf.float32),
             "noise": tf.TensorSpec([batch_size, n, n], tf.float32),
             "psf": tf.TensorSpec([batch_size, k, k], tf.float32),
             "lens": tf.TensorSpec([batch_size, len(rim.lens_param_names)], tf.float32)},
            tf.TensorSpec([batch_size, ns, ns], tf.float32))
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return ds.prefetch(prefetch) if prefetch else ds


def evaluate_rim(rim: RIM, generator, num_lenses: int, batch_size: int = 32,
                 keep: int = 6) -> dict:
    """Reconstruct ``num_lenses`` simulated lenses (the generator's first batches) with the
    true lens; per lens: ``source_error`` (:func:`~tfstronglens.models.rim.source_error`,
    normalised MSE over the true source's footprint), ``chi2_per_pixel`` of the data
    against the re-rendered reconstruction, ``snr``; and the first ``keep`` lenses' images
    (data, model, noise, truth, reconstruction) for plots. Returns a dict of numpy arrays
    and the time per lens."""
    errors, chi2s, snrs, seconds, examples = [], [], [], 0.0, None
    call = tf.function(lambda inputs: rim(inputs, training=False), autograph=False)

    @tf.function(autograph=False)
    def rerender(source, inputs):
        rays = rim.operator.trace(inputs["lens"])
        return rim.operator.forward(source, rays, inputs["psf"])

    for k in range(-(-num_lenses // batch_size)):
        out = generator.generate_tensors(k, batch_size)
        inputs, target = rim_batch(generator, rim, out)
        if k == 0:
            call(inputs).numpy()  # traced once (fixed batch size): not timed
        t0 = time.perf_counter()
        est = call(inputs)[:, -1]
        est.numpy()
        seconds += time.perf_counter() - t0
        model = rerender(est, inputs)
        chi2 = tf.reduce_mean(tf.square((inputs["image"] - model) / inputs["noise"]), [1, 2])
        errors.append(source_error(est, target).numpy())
        chi2s.append(chi2.numpy())
        snrs.append(np.asarray(out["truths"]["source_snr"]))
        if examples is None:
            examples = {"data": inputs["image"].numpy()[:keep], "model": model.numpy()[:keep],
                        "noise": inputs["noise"].numpy()[:keep], "truth": target.numpy()[:keep],
                        "reconstruction": est.numpy()[:keep]}
    n = num_lenses
    return {"source_error": np.concatenate(errors)[:n], "chi2_per_pixel": np.concatenate(chi2s)[:n],
            "snr": np.concatenate(snrs)[:n], "seconds_per_lens": seconds / (len(errors) * batch_size),
            "examples": examples}


def _grid_png(path, ex, extent):
    from ..plotting import plot_image
    from .training import _figure, _save_figure

    n = len(ex["data"])
    fig, axes = _figure(n, 5, size=1.7)
    for j in range(n):
        vmax = float(np.max(ex["truth"][j]))
        plot_image(ex["data"][j], ax=axes[j, 0], colorbar=False)
        plot_image(ex["model"][j], ax=axes[j, 1], colorbar=False)
        plot_image((ex["data"][j] - ex["model"][j]) / ex["noise"][j], ax=axes[j, 2],
                   colorbar=False, cmap="RdBu_r", vmin=-3, vmax=3)
        plot_image(ex["truth"][j], ax=axes[j, 3], colorbar=False, vmin=0, vmax=vmax)
        plot_image(ex["reconstruction"][j], ax=axes[j, 4], colorbar=False, vmin=0, vmax=vmax)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("")
        ax.set_ylabel("")
    for ax, title in zip(axes[0], ("data", "model", "residual/sigma", "true source",
                                   "RIM source")):
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def train_rim(out_dir, *, simulation: dict | None = None, steps: int = 2000,
              batch_size: int = 16, learning_rate: float = 1e-3, rim_steps: int = 10,
              filters=(16, 16, 32), source_num_pix: int = 64, source_pixel_scale: float = 0.03,
              steps_per_checkpoint: int = 100, num_heldout: int = 256, seed: int = 0,
              jit_compile: bool = False, strategy=None, resume: bool = True,
              overwrite: bool = False, progress: bool = True, learning_rate_schedule: str = "constant",
              init_from=None, first_batch: int = 0) -> dict:
    """Train a :class:`RIM` on an infinite stream of simulated lenses and report on held-out
    ones.

    The training lenses are the :class:`~tfstronglens.simulation.LensDatasetGenerator`'s
    batches of ``LensSimulationConfig(**simulation, seed=seed)`` (default
    :data:`DEFAULT_RIM_SIMULATION`: HST-like, SIE + shear, galaxy sources from the
    ``train`` split); the held-out lenses use seed ``seed + 1`` and the ``validation``
    split's galaxies (galaxies never trained on). Checkpoints, resume and progress are
    :func:`~tfstronglens.models.training.train_on_stream`'s.

    Outputs in ``out_dir``: ``rim.keras``, ``saved_model/`` (:meth:`RIM.export`),
    ``report.json`` (held-out ``source_error`` and ``chi2_per_pixel`` percentiles, time per
    lens, the settings, the loss history) and ``reconstructions.png``.

    **Fine-tuning.** ``init_from`` (anything :func:`~tfstronglens.models.load_rim` takes)
    starts from that RIM's weights (its architecture must match; the optimizer starts
    afresh) instead of a random initialisation; ``first_batch`` starts the training stream
    at that batch index, so a continuation of a run of ``N`` steps with the same ``seed``
    passes ``first_batch=N`` and sees only lenses it has not been trained on.
    ``learning_rate_schedule`` is ``"constant"`` or ``"cosine"`` (from ``learning_rate``
    down to 1% of it over ``steps``; the first call's ``steps``: a resumed run with more steps continues at the final rate).

    ``jit_compile`` compiles the whole train step with XLA (for GPUs/TPUs; on CPUs the
    network's convolutions are faster without it, and the physics is compiled anyway).

    ``strategy`` (:func:`~tfstronglens.models.training.make_strategy`) distributes the
    training; under several workers every worker makes the same call and only the chief
    writes and evaluates: the others return ``{"chief": False, "steps", "history"}``.
    On TPUs (never tried) this is the path ``TPUStrategy`` would take: the stream's
    batches have a static shape ``[batch_size, ...]``, the RIM's unrolled
    ``rim_steps`` loop is a Python loop over a fixed count (traced once, no
    data-dependent control flow) and ``jit_compile=True`` compiles the per-replica step.
    Returns the report.
    """
    from ..simulation import LensDatasetGenerator, LensSimulationConfig
    from ..inference.spec import LENS_SHORTHANDS

    sim = dict(DEFAULT_RIM_SIMULATION if simulation is None else simulation)
    for key in ("seed", "galaxy_split"):
        sim.pop(key, None)
    config = LensSimulationConfig.from_dict(dict(sim, seed=int(seed), galaxy_split="train"))
    obs = config.observation()
    lens_models = [c.profile for c in LENS_SHORTHANDS[config.lens_model]]
    psf_size = int(obs.psf.kernel(obs.pixel_scale).shape[-1])
    arch = dict(num_pix=config.num_pix, pixel_scale=obs.pixel_scale,
                supersample=config.supersample, lens_models=lens_models,
                source_num_pix=source_num_pix, source_pixel_scale=source_pixel_scale,
                steps=rim_steps, filters=list(filters), psf_size=psf_size)
    if learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
        raise ValueError(f"learning_rate_schedule must be one of {sorted(LEARNING_RATE_SCHEDULES)}, "
                         f"got {learning_rate_schedule!r}")
    if not (isinstance(first_batch, numbers.Integral) and first_batch >= 0):
        raise ValueError(f"first_batch must be a non-negative integer, got {first_batch!r}")
    init = None
    if init_from is not None:
        init = load_rim(init_from)
        theirs = {k: init.get_config().get(k) for k in arch}
        mine = json.loads(json.dumps(arch))
        if json.loads(json.dumps(theirs)) != mine:
            diff = ", ".join(f"{k}: init_from {theirs[k]!r}, now {mine[k]!r}"
                             for k in arch if json.loads(json.dumps(theirs[k])) != mine[k])
            raise ValueError(f"init_from {init_from!r} is a RIM of another architecture ({diff})")
    settings = {"simulation": config.to_dict(), "rim": arch, "batch_size": batch_size,
                "learning_rate": learning_rate, "jit_compile": bool(jit_compile)}
    if learning_rate_schedule != "constant" or init is not None or first_batch:
        settings.update(learning_rate_schedule=learning_rate_schedule, first_batch=int(first_batch),
                        init_from=None if init_from is None else str(init_from))
    generator = LensDatasetGenerator(config)

    def make_model():
        if seed is not None:
            keras.utils.set_random_seed(int(seed))
        rim = RIM(**arch)
        if init is not None:
            rim.set_weights(init.get_weights())
        lr = LEARNING_RATE_SCHEDULES[learning_rate_schedule](learning_rate, int(steps))
        rim.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=1.0),
                    jit_compile=bool(jit_compile))
        return rim

    probe = RIM(**arch)
    t0 = time.perf_counter()
    rim, state = train_on_stream(
        make_model, lambda start: rim_dataset(generator, probe, batch_size, first_batch + start),
        out_dir,
        steps=steps, command=_COMMAND, settings=settings,
        steps_per_checkpoint=steps_per_checkpoint, resume=resume, overwrite=overwrite,
        progress=progress, strategy=strategy)
    train_seconds = time.perf_counter() - t0

    out_dir = os.fspath(out_dir)
    save_trained_model(rim, out_dir, "rim.keras", strategy)
    if not is_chief(strategy):
        return {"chief": False, "steps": int(state["step"]), "history": state["history"]}
    held = LensDatasetGenerator(dataclasses.replace(config, seed=int(seed) + 1,
                                                    galaxy_split="validation"))
    ev = evaluate_rim(rim, held, num_heldout)
    pct = lambda a: {f"p{q}": float(np.percentile(a, q)) for q in (16, 50, 84)}  # noqa: E731
    report = {
        "steps": int(state["step"]),
        "num_heldout": int(num_heldout),
        "source_error": {"median": float(np.median(ev["source_error"])), **pct(ev["source_error"])},
        "chi2_per_pixel": {"median": float(np.median(ev["chi2_per_pixel"])),
                           **pct(ev["chi2_per_pixel"])},
        "seconds_per_lens": ev["seconds_per_lens"],
        "definitions": {
            "source_error": "sum over the true source's footprint (pixels above 1% of its "
                            "peak) of (RIM - truth)^2 / truth^2, on the RIM's source grid",
            "chi2_per_pixel": "mean over image pixels of ((data - A s_RIM) / sigma)^2",
        },
        "train_seconds_this_call": train_seconds,
        "settings": settings,
        "history": state["history"],
    }
    _grid_png(os.path.join(out_dir, "reconstructions.png"), ev["examples"], None)
    write_json(os.path.join(out_dir, "report.json"), report)
    if progress:
        print(f"train_rim: {report['steps']} steps; held-out source error median "
              f"{report['source_error']['median']:.3f}, chi2/pixel median "
              f"{report['chi2_per_pixel']['median']:.3f}; wrote {out_dir}")
    return report
