"""Command-line options shared by several commands, parsed in one place and read in one
place: those of an observed lens image (``fit``, ``reconstruct``; the noise options also
``predict``), those of a training run on simulated lenses (``train-rim``,
``train-cnn``, ``train-ratio``) and the JSON simulation configs (``simulate``,
``train-cnn``, ``train-ratio``, ``infer-population``)."""

from __future__ import annotations

import os

from .cli import _positive_float, _positive_int, _seed, _UserError

__all__ = ["add_image_args", "add_image_options", "load_image_args", "add_noise_args",
           "add_training_args", "check_training_out", "training_strategy", "read_json_config",
           "add_strategy_args", "worker_finished",
           "add_finetune_args"]


def add_noise_args(p, what: str = "background noise per pixel, e-/s (default: header BKGRMS)"):
    """``--noise-rms S | --noise-map FILE`` (mutually exclusive)."""
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise-rms", type=_positive_float, default=None, metavar="S", help=what)
    noise.add_argument("--noise-map", default=None, metavar="FILE",
                       help="FITS map of the per-pixel noise sigma (e-/s)")


def add_image_args(p, what: str = "the lens image (square)"):
    """Add ``IMAGE.fits`` and the options that describe it (HDU, PSF, noise, exposure,
    pixel scale; :func:`add_image_options`) to the parser ``p``."""
    p.add_argument("image", metavar="IMAGE.fits", help=what)
    add_image_options(p)


def add_image_options(p):
    """Add the options that describe a lens image (``--hdu``, ``--psf`` or
    ``--psf-fwhm``, ``--noise-rms`` or ``--noise-map``, ``--exposure``,
    ``--pixel-scale``) to the parser ``p``, without the image itself (``fit-many``
    takes a catalogue of images)."""
    p.add_argument("--hdu", default=None, help="HDU of the image (index or EXTNAME)")
    psf = p.add_mutually_exclusive_group()
    psf.add_argument("--psf", metavar="PSF.fits", default=None,
                     help="PSF kernel (default: the image file's PSF extension, if any); "
                          "negative pixels holding up to 1%% of its flux (noise) are set to "
                          "zero, more is refused")
    psf.add_argument("--psf-fwhm", type=_positive_float, default=None, metavar="ARCSEC",
                     help="Gaussian PSF of this FWHM instead of a kernel (also instead of "
                          "the image file's PSF extension)")
    add_noise_args(p)
    p.add_argument("--exposure", type=_positive_float, default=None, metavar="T",
                   help="exposure time in s for the source's Poisson noise (default: "
                        "header EXPTIME; without it only the background noise)")
    p.add_argument("--pixel-scale", type=_positive_float, default=None, metavar="S",
                   help="arcsec per pixel (default: header PIXSCALE or the WCS)")


def load_image_args(args):
    """The :class:`~tfstronglens.io.ObservedImage` that :func:`add_image_args`' options
    describe; ``_UserError`` naming the option and path for an input file that does not
    exist."""
    from .io import load_lens_image

    for option, path in (("image", args.image), ("--psf", args.psf),
                         ("--noise-map", args.noise_map)):
        if path is not None and not os.path.isfile(path):
            raise _UserError(f"{option} {path!r} does not exist or is not a file")
    hdu = args.hdu
    if hdu is not None and hdu.lstrip("-").isdigit():
        hdu = int(hdu)
    return load_lens_image(args.image, hdu=hdu, psf=args.psf, psf_fwhm=args.psf_fwhm,
                           noise_rms=args.noise_rms, noise_map=args.noise_map,
                           exposure_time=args.exposure, pixel_scale=args.pixel_scale)


def add_training_args(p, *, steps: int, batch_size: int, num_heldout: int):
    """The options of a training run on a stream of simulated lenses: ``--steps
    --batch-size --learning-rate --steps-per-checkpoint --num-heldout --seed --strategy
    --out --overwrite --no-progress``."""
    p.add_argument("--steps", type=_positive_int(10**9), default=steps,
                   help="total optimizer steps (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int(4096), default=batch_size,
                   help="lenses per step (default: %(default)s)")
    p.add_argument("--learning-rate", type=_positive_float, default=1e-3,
                   help="(initial) Adam learning rate (default: %(default)s)")
    p.add_argument("--steps-per-checkpoint", type=_positive_int(10**9), default=100,
                   help="optimizer steps between checkpoints (default: %(default)s)")
    p.add_argument("--num-heldout", type=_positive_int(10**6), default=num_heldout,
                   help="held-out lenses of the report (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, help="seed (default: 0)")
    add_strategy_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in DIR (discarding a checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_finetune_args(p, what: str):
    """``--init-from DIR`` and ``--first-batch K`` of a trainer that can fine-tune
    (``train-rim``, ``train-cnn``); ``what`` names its model."""
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help=f"fine-tune: start from this {what}'s weights (a training folder or "
                        ".keras file of the same architecture)")
    p.add_argument("--first-batch", type=_seed, default=0, metavar="K",
                   help="start the training stream at batch K (a fine-tuning run of a model "
                        "trained for N steps with the same --seed passes N: new lenses only)")


def check_training_out(args, command: str, name: str):
    """Refuse an ``--out`` that is a file, or a non-empty folder that holds no checkpoint of
    ``command`` (the trainer's recorded name; ``name`` is the CLI command), unless
    ``--overwrite``."""
    from .models.training import read_stream_state

    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise _UserError(f"--out {out!r} exists and is not a directory")
    if (os.path.isdir(out) and os.listdir(out) and not args.overwrite
            and read_stream_state(out, command) is None):
        raise _UserError(f"output directory {out!r} is not empty and is not a {name} "
                         "checkpoint directory; pass --overwrite to start afresh there")


def add_strategy_args(p):
    """``--strategy {default,mirrored,multiworker}`` (and ``--mirrored``, the same as
    ``--strategy mirrored``) of every ``train-*`` command; read by
    :func:`training_strategy`."""
    from .models.training import STRATEGIES

    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="tf.distribute strategy: default = one device; mirrored = all "
                        "local devices (MirroredStrategy); multiworker = synchronous "
                        "training on several machines/processes (MultiWorkerMirroredStrategy; "
                        "NCCL or ring all-reduce), whose cluster and own task the TF_CONFIG "
                        "environment variable gives, e.g. TF_CONFIG='{\"cluster\": "
                        "{\"worker\": [\"host1:12345\", \"host2:12345\"]}, \"task\": "
                        "{\"type\": \"worker\", \"index\": 0}}'. Every worker runs the same "
                        "command with its own index; worker 0 writes DIR (which all workers "
                        "must see, to resume), the others only train; the batch size must "
                        "be a multiple of the number of replicas, and train-vae needs --seed "
                        "(default: default)")
    p.add_argument("--mirrored", action="store_true", help="the same as --strategy mirrored")


def training_strategy(args):
    """The strategy of ``--strategy`` (``--mirrored``):
    :func:`tfstronglens.models.training.make_strategy`, ``None`` for ``default``.
    ``_UserError`` (exit 2) for a missing or malformed ``TF_CONFIG``."""
    from .models.training import make_strategy

    name = "mirrored" if getattr(args, "mirrored", False) else (args.strategy or "default")
    if name == "mirrored" and args.strategy not in (None, "default", "mirrored"):
        raise _UserError(f"--mirrored contradicts --strategy {args.strategy}")
    try:
        return make_strategy(name)
    except ValueError as exc:
        raise _UserError(f"--strategy {name}: {exc}") from None


def worker_finished(report, name: str) -> bool:
    """Print what a non-chief worker of a multi-worker run did and return True for its
    report (``{"chief": False, ...}``); False for the chief's or a one-worker report."""
    if report.get("chief", True):
        return False
    done = (f"{report['steps']} steps" if "steps" in report
            else f"{report.get('epochs', 0)} epochs")
    print(f"{name}: this worker trained {done}; the chief worker writes the outputs")
    return True


def read_json_config(path, option: str = "--config", *, allow_list: bool = False):
    """The JSON value in file ``path`` given as ``option``: a dict (a
    ``LensSimulationConfig``), or with ``allow_list`` also a non-empty list of dicts.
    ``_UserError`` naming the option and path for a missing file, invalid JSON or another
    value."""
    import json

    if not os.path.isfile(path):
        raise _UserError(f"{option} {path!r} does not exist or is not a file")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise _UserError(f"{option} {path!r} is not valid JSON: {exc}") from None
    ok = isinstance(data, dict) or (allow_list and isinstance(data, list) and data
                                    and all(isinstance(d, dict) for d in data))
    if not ok:
        want = "a config dict or a non-empty list of them" if allow_list else "a JSON object"
        raise _UserError(f"{option} {path!r} must hold {want}")
    return data
