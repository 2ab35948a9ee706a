"""The ``train-rim`` and ``reconstruct`` commands (see :mod:`tfstronglens.cli`)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from .cli import _UserError, _check_output_dir, _positive_int
from .cli_args import (add_finetune_args, add_image_args, add_training_args,
                       check_training_out, load_image_args, training_strategy,
                       worker_finished)
from .simulation.generator import LENS_PROFILES

__all__ = ["add_parsers"]

#: ``--lens`` shorthand -> mass profile names (the simulator's table, plus the shear).
LENS_SHORTHANDS = {name: (main, "SHEAR") for name, main in LENS_PROFILES.items()}
_METHODS = ("rim", "vae", "pixelated")


def add_parsers(sub):
    """Add ``train-rim`` and ``reconstruct`` to the CLI's subparsers."""
    tr = sub.add_parser(
        "train-rim",
        help="train the RIM source reconstructor on simulated lenses",
        description="Train a recurrent inference machine (tfstronglens.models.RIM) on an "
                    "infinite stream of simulated lenses (no files) and write DIR/rim.keras, "
                    "DIR/saved_model/, DIR/report.json (held-out source error and chi^2 per "
                    "pixel) and DIR/reconstructions.png. A checkpoint is written every "
                    "--steps-per-checkpoint steps; rerunning the same command resumes it.")
    tr.add_argument("--instrument", default="hst_acs_f814w",
                    help="instrument preset of the simulated images (default: %(default)s)")
    tr.add_argument("--source", choices=("galaxies", "vae", "sersic"), default="galaxies",
                    help="simulated sources: galaxy stamps (synthetic_galaxies, or "
                         "--galaxy-dataset), VAE-prior draws or Sersic (default: %(default)s)")
    tr.add_argument("--galaxy-dataset", default="synthetic_galaxies/64",
                    help="stamps of --source galaxies: synthetic_galaxies[/config] or "
                         "cosmos_galaxies[/config] with --manual-dir (default: %(default)s)")
    tr.add_argument("--manual-dir", default=None, help="COSMOS catalog folder for cosmos_galaxies")
    tr.add_argument("--lens", choices=sorted(LENS_SHORTHANDS), default="sie+shear",
                    help="lens model of the simulations (default: %(default)s)")
    tr.add_argument("--num-pix", type=_positive_int(4096), default=64,
                    help="image pixels per side (default: %(default)s)")
    tr.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                    help="learning-rate schedule over --steps (default: %(default)s)")
    add_finetune_args(tr, "RIM")
    tr.add_argument("--rim-steps", type=_positive_int(100), default=10,
                    help="recurrent steps T (default: %(default)s)")
    add_training_args(tr, steps=4000, batch_size=16, num_heldout=256)
    tr.set_defaults(func=_train_rim)

    rc = sub.add_parser(
        "reconstruct",
        help="reconstruct the source of a lens image for a given lens",
        description="Reconstruct the source of IMAGE.fits (lens light subtracted or absent) "
                    "for the lens in LENS.json, a lenstronomy-style list, e.g. "
                    '[{"theta_E": 1.1, "e1": 0.1, "e2": 0.0, "center_x": 0, "center_y": 0}, '
                    '{"gamma1": 0.01, "gamma2": 0.0}]. Writes DIR/source.fits (surface '
                    "brightness, e-/s/arcsec^2, PIXSCALE in the header), DIR/model.fits, "
                    "DIR/summary.json (method, chi2_per_pixel, source_pixel_scale, time_s) "
                    "and DIR/reconstruction.png.")
    add_image_args(rc, "the lens image (square, e-/s per pixel)")
    rc.add_argument("--lens", choices=sorted(LENS_SHORTHANDS), required=True,
                    help="lens model of LENS.json")
    rc.add_argument("--lens-params", required=True, metavar="LENS.json",
                    help="lens parameters, a lenstronomy-style kwargs list")
    rc.add_argument("--method", choices=_METHODS, default="rim",
                    help="rim: the recurrent inference machine (shipped model, or --model); "
                         "vae: MAP of the pretrained VAE's latents; pixelated: regularised "
                         "linear inversion (default: %(default)s)")
    rc.add_argument("--model", default=None, metavar="DIR",
                    help="a train-rim output folder (or .keras file) for --method rim")
    rc.add_argument("--out", required=True, metavar="DIR", help="output directory")
    rc.add_argument("--overwrite", action="store_true",
                    help="write into DIR even if it is not empty")
    rc.set_defaults(func=_reconstruct)


def _train_rim(args) -> int:
    from .models.rim_training import DEFAULT_RIM_SIMULATION, train_rim

    check_training_out(args, "tfstronglens.models.train_rim", "train-rim")
    out = args.out
    sim = dict(DEFAULT_RIM_SIMULATION, instrument=args.instrument, source=args.source,
               galaxy_dataset=args.galaxy_dataset, galaxy_manual_dir=args.manual_dir,
               lens_model=args.lens, num_pix=args.num_pix)
    strategy = training_strategy(args)
    report = train_rim(out, simulation=sim, steps=args.steps, batch_size=args.batch_size,
                       learning_rate=args.learning_rate, rim_steps=args.rim_steps,
                       steps_per_checkpoint=args.steps_per_checkpoint,
                       num_heldout=args.num_heldout, seed=args.seed, strategy=strategy,
                       overwrite=args.overwrite, progress=not args.no_progress,
                       learning_rate_schedule=args.lr_schedule, init_from=args.init_from,
                       first_batch=args.first_batch)
    if worker_finished(report, "train-rim"):
        return 0
    print(f"held-out ({report['num_heldout']} lenses): source error median "
          f"{report['source_error']['median']:.3f}, chi2/pixel median "
          f"{report['chi2_per_pixel']['median']:.3f}, {1e3 * report['seconds_per_lens']:.1f} "
          "ms per lens")
    return 0


def read_lens_params(path, lens: str) -> list:
    """The lens parameter list of ``LENS.json`` for the ``--lens`` shorthand, checked."""
    if not os.path.isfile(path):
        raise _UserError(f"--lens-params {path!r} does not exist")
    try:
        with open(path) as fh:
            params = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise _UserError(f"--lens-params {path!r} is not valid JSON: {exc}") from None
    names = LENS_SHORTHANDS[lens]
    if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
        raise _UserError(f"--lens-params {path!r} must hold a list of dicts (one per lens "
                         f"model {list(names)}), got {type(params).__name__}")
    if len(params) != len(names):
        raise _UserError(f"--lens-params {path!r} has {len(params)} dict(s); --lens {lens} "
                         f"needs {len(names)} ({', '.join(names)})")
    from .profiles import get_profile

    for i, (name, p) in enumerate(zip(names, params)):
        prof = get_profile(name)
        unknown = sorted(set(p) - set(prof.param_names))
        if unknown:
            raise _UserError(f"--lens-params {path!r}: entry {i} ({name}) has unknown "
                             f"parameter(s) {unknown}; {name} takes {list(prof.param_names)}")
        missing = sorted(set(prof.param_names) - set(p) - set(prof.defaults))
        if missing:
            raise _UserError(f"--lens-params {path!r}: entry {i} ({name}) lacks {missing}")
        for k, v in p.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise _UserError(f"--lens-params {path!r}: entry {i} ({name}) {k}={v!r} must "
                                 "be a finite number")
    return params


def _reconstruct(args) -> int:
    from .inference import reconstruct_source
    from .io import write_fits
    from .io._atomic import atomic_output

    lens = read_lens_params(args.lens_params, args.lens)
    if args.method != "rim" and args.model is not None:
        raise _UserError(f"--model applies to --method rim, not {args.method}")
    model = None
    if args.model is not None:
        from .models.rim import load_rim

        try:  # refuses a folder that is not a RIM before anything is written
            model = load_rim(args.model)
        except FileNotFoundError as exc:
            raise _UserError(f"--model: {exc}") from None
    obs_img = load_image_args(args)
    obs = obs_img.observation
    if obs.psf is None:
        raise _UserError("no PSF: give --psf or --psf-fwhm (or a PSF extension in the image)")
    data = np.asarray(obs_img.data, np.float64)
    if not np.all(np.isfinite(data)):
        raise _UserError(f"image {args.image!r} has {int(np.sum(~np.isfinite(data)))} NaN or "
                         "infinite pixel(s)")
    noise = obs_img.noise_sigma()
    _check_output_dir(args.out, args.overwrite, "into it")
    rec = reconstruct_source(data, noise, obs.psf.kernel(obs.pixel_scale), lens,
                             pixel_scale=obs.pixel_scale, method=args.method,
                             lens_models=LENS_SHORTHANDS[args.lens], model=model)
    os.makedirs(args.out, exist_ok=True)
    write_fits(os.path.join(args.out, "source.fits"), rec.source,
               pixel_scale=rec.source_pixel_scale, bunit="electron/s/arcsec2", overwrite=True,
               header={"METHOD": (rec.method, "tfstronglens reconstruct method")})
    write_fits(os.path.join(args.out, "model.fits"), rec.model.astype(np.float32),
               pixel_scale=obs.pixel_scale, bunit="electron/s", overwrite=True)
    summary = {"method": rec.method, "chi2_per_pixel": rec.chi2_per_pixel,
               "source_pixel_scale": rec.source_pixel_scale, "time_s": rec.time_s,
               "image": os.path.abspath(args.image), "lens": args.lens, "lens_params": lens,
               "details": rec.details, "notes": obs_img.notes}
    with atomic_output(os.path.join(args.out, "summary.json"), overwrite=True) as tmp:
        with open(tmp, "w") as fh:
            json.dump(summary, fh, indent=2)
            fh.write("\n")
    _png(os.path.join(args.out, "reconstruction.png"), data, rec, noise)
    print(f"{rec.method}: chi2/pixel {rec.chi2_per_pixel:.3f}, {rec.time_s:.2f} s; wrote "
          f"source.fits, model.fits, summary.json, reconstruction.png to {args.out}",
          file=sys.stderr)
    return 0


def _png(path, data, rec, noise):
    from .models.training import _figure, _save_figure
    from .plotting import plot_image

    fig, axes = _figure(1, 4, size=2.4)
    plot_image(data, ax=axes[0, 0], title="data")
    plot_image(rec.model, ax=axes[0, 1], title=f"model ({rec.method})")
    plot_image((data - rec.model) / noise, ax=axes[0, 2], cmap="RdBu_r", vmin=-3, vmax=3,
               title=f"residual/sigma, chi2/pix {rec.chi2_per_pixel:.2f}")
    plot_image(rec.source, ax=axes[0, 3], title="source")
    fig.tight_layout()
    return _save_figure(fig, path)
