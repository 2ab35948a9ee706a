"""The ``train-cnn`` and ``predict`` commands (see :mod:`tfstronglens.cli`)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from .cli import _UserError, _check_output_dir, _positive_float, _positive_int, _seed
from .cli_args import (add_finetune_args, add_noise_args, add_training_args,
                       check_training_out, read_json_config, training_strategy,
                       worker_finished)

__all__ = ["add_parsers"]


def add_parsers(sub):
    """Add ``train-cnn`` and ``predict`` to the CLI's subparsers."""
    from .models.amortized import POSTERIOR_HEADS

    tr = sub.add_parser(
        "train-cnn",
        help="train the amortized lens-parameter CNN on simulated lenses",
        description="Train a lens-parameter posterior network "
                    "(tfstronglens.models.LensPosteriorNetwork) on an infinite stream of "
                    "simulated lenses (no files): by default HST-like SIE + shear lenses with "
                    "Sersic and galaxy sources, with and without lens light, CDM subhalos as a "
                    "nuisance in half of them. Writes DIR/cnn.keras, DIR/saved_model/, "
                    "DIR/report.json (held-out coverage, TARP, errors), "
                    "DIR/predicted_vs_true.png and DIR/coverage.png. A checkpoint is written "
                    "every --steps-per-checkpoint steps; rerunning the same command resumes.")
    tr.add_argument("--instrument", default="hst_acs_f814w",
                    help="instrument preset of the simulated images (default: %(default)s)")
    tr.add_argument("--config", default=None, metavar="CONFIG.json",
                    help="simulation config(s): a LensSimulationConfig dict or a list of them "
                         "(taken in turn); --instrument overrides their instrument")
    tr.add_argument("--head", choices=sorted(POSTERIOR_HEADS), default="flow",
                    help="posterior head (default: %(default)s)")
    add_finetune_args(tr, "lens CNN")
    add_training_args(tr, steps=5000, batch_size=64, num_heldout=2000)  # (cosine-decayed LR)
    tr.set_defaults(func=_train_cnn)

    pr = sub.add_parser(
        "predict",
        help="lens-parameter posteriors of lens images in milliseconds (amortized CNN)",
        description="Posterior of the main-lens parameters and the source position of each "
                    "IMAGE.fits from the amortized CNN (the shipped one for HST/ACS F814W-like "
                    "64x64 images of 0.05\", or --model). Writes DIR/predictions.json (per "
                    "file: mean, std, 16/50/84th percentiles of each parameter, named as in "
                    "fit's summary) and DIR/draws.npz (samples [files, draws, parameters]). "
                    "Images of another size are centre-cropped or zero-padded; another pixel "
                    "scale needs --resample.")
    pr.add_argument("images", nargs="+", metavar="IMAGE.fits", help="lens images (e-/s/pixel)")
    add_noise_args(pr)
    pr.add_argument("--exposure", type=_positive_float, default=None, metavar="T",
                    help="exposure time in s for the Poisson noise (default: header EXPTIME)")
    pr.add_argument("--pixel-scale", type=_positive_float, default=None, metavar="P",
                    help="arcsec per pixel (default: header PIXSCALE or the WCS)")
    pr.add_argument("--model", default="pretrained", metavar="pretrained|pretrained-epl|DIR",
                    help="the network: a shipped one ('pretrained': SIE + shear, "
                         "'pretrained-epl': EPL + shear, which adds lens.0.gamma) or a "
                         "train-cnn output folder / .keras file")
    pr.add_argument("--resample", action="store_true",
                    help="interpolate images of another pixel scale onto the network's grid")
    pr.add_argument("--num-samples", type=_positive_int(10**6), default=2000,
                    help="posterior draws per image (default: %(default)s)")
    pr.add_argument("--seed", type=_seed, default=0, help="seed of the draws (default: 0)")
    pr.add_argument("--out", required=True, metavar="DIR", help="output directory")
    pr.add_argument("--overwrite", action="store_true",
                    help="write into DIR even if it is not empty")
    pr.set_defaults(func=_predict)


def _read_simulations(path, instrument):
    if path is None:
        from .models.amortized_training import DEFAULT_CNN_SIMULATIONS

        sims = [dict(s) for s in DEFAULT_CNN_SIMULATIONS]
    else:
        sims = read_json_config(path, allow_list=True)
        sims = [sims] if isinstance(sims, dict) else sims
    from .simulation import LensSimulationConfig

    out = []
    for i, sim in enumerate(sims):
        sim = dict(sim, instrument=instrument)
        try:
            LensSimulationConfig.from_dict(sim)
        except (ValueError, TypeError) as exc:
            raise _UserError(f"--config {path!r}, entry {i}: {exc}") from None
        out.append(sim)
    return out


def _train_cnn(args) -> int:
    from .models.amortized_training import TRAIN_COMMAND, train_cnn

    check_training_out(args, TRAIN_COMMAND, "train-cnn")
    out = args.out
    sims = _read_simulations(args.config, args.instrument)
    strategy = training_strategy(args)
    report = train_cnn(out, simulations=sims, head=args.head, steps=args.steps,
                       batch_size=args.batch_size, learning_rate=args.learning_rate,
                       steps_per_checkpoint=args.steps_per_checkpoint,
                       num_heldout=args.num_heldout, seed=args.seed, strategy=strategy,
                       overwrite=args.overwrite, progress=not args.no_progress,
                       init_from=args.init_from, first_batch=args.first_batch)
    if worker_finished(report, "train-cnn"):
        return 0
    cov = report["parameters"]
    worst68 = max(abs(v["coverage_68"] - 0.68) for v in cov.values())
    print(f"held-out ({report['num_lenses']} lenses): theta_E median relative error "
          f"{report.get('theta_E_median_relative_error', float('nan')):.4f}; largest 68% "
          f"coverage offset {100 * worst68:.1f} points; TARP max deviation "
          f"{report['tarp_max_deviation']:.3f}; {1e3 * report['seconds_per_image']:.2f} ms per "
          "image")
    return 0


def _predict(args) -> int:
    import tensorflow as tf

    from .io import load_lens_image
    from .io._atomic import atomic_output
    from .models.amortized import load_lens_cnn, match_network_grid

    if args.noise_map is not None and len(args.images) > 1:
        raise _UserError("--noise-map describes one image; give one IMAGE.fits with it")
    try:
        net = load_lens_cnn(args.model)
    except FileNotFoundError as exc:
        raise _UserError(f"--model: {exc}") from None
    images, noises, notes = [], [], {}
    for path in args.images:
        if not os.path.isfile(path):
            raise _UserError(f"image {path!r} does not exist")
        obs_img = load_lens_image(path, noise_rms=args.noise_rms, noise_map=args.noise_map,
                                  exposure_time=args.exposure, pixel_scale=args.pixel_scale)
        try:
            img, sig, how = match_network_grid(obs_img.data, obs_img.noise_sigma(),
                                               obs_img.observation.pixel_scale, net.num_pix,
                                               net.pixel_scale, resample=args.resample)
        except ValueError as exc:
            raise _UserError(f"{path}: {exc}") from None
        images.append(img)
        noises.append(sig)
        notes[path] = obs_img.notes + how
    _check_output_dir(args.out, args.overwrite, "into it")
    q = net.posterior({"image": tf.constant(np.stack(images)),
                       "noise": tf.constant(np.stack(noises))})
    draws = q.sample(args.num_samples, seed=tf.constant([int(args.seed), 0])).numpy()
    draws = np.transpose(draws, (1, 0, 2))  # [files, draws, D]
    predictions = {}
    bases = [os.path.basename(p) for p in args.images]
    for i, path in enumerate(args.images):
        d = draws[i]
        p16, p50, p84 = np.percentile(d, [16, 50, 84], axis=0)
        predictions[bases[i] if bases.count(bases[i]) == 1 else path] = {
            "file": os.path.abspath(path),
            "parameters": {n: {"mean": float(d[:, j].mean()), "std": float(d[:, j].std()),
                               "p16": float(p16[j]), "p50": float(p50[j]),
                               "p84": float(p84[j])}
                           for j, n in enumerate(net.param_names)},
            "notes": notes[path]}
    os.makedirs(args.out, exist_ok=True)
    with atomic_output(os.path.join(args.out, "predictions.json"), overwrite=True) as tmp:
        with open(tmp, "w") as fh:
            json.dump({"model": str(args.model), "num_samples": args.num_samples,
                       "predictions": predictions}, fh, indent=2)
            fh.write("\n")
    with atomic_output(os.path.join(args.out, "draws.npz"), overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, samples=draws.astype(np.float32),
                     param_names=np.array(net.param_names),
                     files=np.array([os.path.abspath(p) for p in args.images]))
    print(f"predict: {len(args.images)} image(s); wrote predictions.json and draws.npz to "
          f"{args.out}", file=sys.stderr)
    return 0
