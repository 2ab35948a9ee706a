"""Command line interface: ``tfstronglens <command> [options]``.

Commands
--------
``simulate-example``
    Simulate an HST-like galaxy-galaxy lens (elliptical power-law or SIE mass plus external
    shear, elliptical Sersic lens light and source, Gaussian PSF, Gaussian background
    noise with a fixed seed) and write ``lens.fits`` (noisy image, truths in the header,
    ``PSF`` and noise-free ``MODEL`` extensions) and ``lens.png`` into ``--out``.

``simulate``
    Simulate a dataset of ``--n`` lenses from a JSON config
    (:class:`tfstronglens.simulation.LensSimulationConfig`, ``--config``) or the default
    config for ``--instrument``, and write ``image_00000.fits``... and ``truths.ecsv`` into
    ``--out`` (:func:`tfstronglens.simulation.write_dataset`).

``train-vae``
    Train the galaxy VAE (:func:`tfstronglens.models.train_vae`) on ``--dataset``
    (``synthetic_galaxies`` or ``cosmos_galaxies``, TFDS, with ``--config``,
    ``--data-dir``, ``--manual-dir``; or a directory written by ``tf.data.Dataset.save``)
    and write ``vae.keras``, ``saved_model/``, ``report.json`` and PNG figures into
    ``--out``. A checkpoint is written every epoch; running the same command again on that
    directory resumes it with the checkpoint's settings (a changed setting is refused; a
    finished run is reported as complete and left alone; a non-empty ``--out`` is refused
    unless it is such a checkpoint directory or ``--overwrite`` is given, which starts
    afresh).

``fit``
    Fit an observed lens image (FITS) by MAP -> VI -> HMC
    (:func:`tfstronglens.inference.fit_lens`) and write ``summary.json``, the samples and
    PNGs into ``--out`` (:mod:`tfstronglens.cli_fit`).

``train-rim``, ``reconstruct``
    Train the RIM source reconstructor on simulated lenses; reconstruct the source of a
    lens image for a given lens (RIM, VAE-latent MAP or pixelated inversion)
    (:mod:`tfstronglens.cli_rim`).

``train-cnn``, ``predict``
    Train the amortized lens-parameter CNN on simulated lenses; lens-parameter posteriors
    of images in milliseconds (:mod:`tfstronglens.cli_cnn`).

``demo``
    The embedded end-to-end example (:mod:`tfstronglens.inference.demo`): simulate an
    HST-like lens with a VAE source and one subhalo, fit it and print the recovered
    parameters, the truths and the subhalo detection statistic.

TensorFlow's log messages (start-up lines, XLA compilation, ``tf.function`` retracing
warnings) are hidden unless ``--verbose`` is given, before or after the command
(:mod:`tfstronglens.cli_startup`).

Exit codes: 0 on success, 2 for bad arguments or a refused overwrite, 1 when writing
fails.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import sys

import numpy as np

import tfstronglens as tsl
from tfstronglens import io as tsl_io
from tfstronglens import plotting
from tfstronglens.cli_startup import VERBOSE_OPTION

__all__ = ["main", "example_lens"]

_MAX_NUM_PIX = 4096
_MAX_SUPERSAMPLE = 16

# Main deflector of the example: the elliptical power law when the package has it.
_EPL = getattr(tsl, "EPL", None)

#: Background noise standard deviation of the example, in image units (electron/s/pixel).
EXAMPLE_NOISE_SIGMA = 0.01
#: FWHM of the example's Gaussian PSF in arcsec (HST/ACS F814W-like).
EXAMPLE_PSF_FWHM = 0.1


_VERBOSE_HELP = ("show TensorFlow's log messages (start-up, XLA compilation, tf.function "
                 "retracing warnings), which are hidden by default")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line: ``prog: error: message (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(limit):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be an integer from 1 to {limit}, got {text!r}")
        return value

    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _check_output_dir(out, overwrite: bool, what: str = "into it anyway"):
    """Refuse an ``--out`` that is a file, or a non-empty directory without ``--overwrite``."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise _UserError(f"--out {out!r} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise _UserError(f"output directory {out!r} is not empty; pass --overwrite to write "
                         f"{what}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tfstronglens",
        description="Differentiable strong gravitational lensing in TensorFlow.",
    )
    parser.add_argument("--version", action="version", version=f"tfstronglens {tsl.__version__}")
    parser.add_argument(VERBOSE_OPTION, action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sim = sub.add_parser(
        "simulate-example",
        help="simulate an HST-like lens and write lens.fits and lens.png",
        description="Simulate an HST-like galaxy-galaxy strong lens (power-law or SIE mass "
                    "with external shear, Sersic lens light and source, Gaussian PSF of FWHM "
                    f"{EXAMPLE_PSF_FWHM}\", Gaussian background noise) and write DIR/lens.fits "
                    "(noisy image; truths in the header; PSF and noise-free MODEL extensions) "
                    "and DIR/lens.png.",
    )
    sim.add_argument("--out", default="tfstronglens_example", metavar="DIR",
                     help="output directory, created if needed (default: %(default)s)")
    sim.add_argument("--overwrite", action="store_true",
                     help="write into DIR even if it is not empty, replacing lens.fits/lens.png")
    sim.add_argument("--num-pix", type=_positive_int(_MAX_NUM_PIX), default=80, metavar="N",
                     help="pixels per side (default: %(default)s)")
    sim.add_argument("--pixel-scale", type=_positive_float, default=0.05, metavar="S",
                     help="pixel size in arcsec (default: %(default)s)")
    sim.add_argument("--supersample", type=_positive_int(_MAX_SUPERSAMPLE), default=2, metavar="S",
                     help="sub-pixels per pixel side (default: %(default)s)")
    sim.add_argument("--seed", type=_seed, default=42, metavar="N",
                     help="seed of the noise realisation (default: %(default)s)")
    sim.set_defaults(func=_simulate_example)

    ds = sub.add_parser(
        "simulate",
        help="simulate a dataset: DIR/image_00000.fits... and DIR/truths.ecsv",
        description="Simulate N lenses with parameters drawn from the priors of a JSON "
                    "config (LensSimulationConfig.to_dict(); missing fields take defaults) "
                    "or of the default config for --instrument, and write one FITS file per "
                    "image (noisy image, truths in the header, NOISE and PSF extensions) and "
                    "a truth table DIR/truths.ecsv.",
    )
    ds.add_argument("--config", metavar="CONFIG.json", default=None,
                    help="JSON file of LensSimulationConfig fields")
    ds.add_argument("--instrument", default=None, metavar="NAME",
                    help="instrument preset (overrides the config's; default euclid_vis when "
                         "no --config is given)")
    ds.add_argument("--source", choices=("sersic", "galaxies", "vae"), default=None,
                    help="source galaxies (overrides the config's; default sersic): "
                         "galaxies = stamps of the config's galaxy_dataset "
                         "(synthetic_galaxies/64 offline), randomly placed, rotated and "
                         "mirrored; vae = draws from the pretrained VAE. Their true source "
                         "images are written to each file's SOURCE extension")
    ds.add_argument("--n", type=_positive_int(10_000_000), required=True, metavar="N",
                    help="number of images")
    ds.add_argument("--out", required=True, metavar="DIR",
                    help="output directory, created if needed")
    ds.add_argument("--overwrite", action="store_true",
                    help="replace the dataset in DIR (its image_*.fits, truths.ecsv and the "
                         "leftovers of an interrupted run; other files are kept)")
    ds.add_argument("--seed", type=_seed, default=None, metavar="S",
                    help="generator seed (overrides the config's)")
    ds.add_argument("--batch-size", type=_positive_int(4096), default=64, metavar="B",
                    help="images rendered per compiled call (default: %(default)s)")
    ds.add_argument("--no-progress", action="store_true", help="no progress bar")
    ds.set_defaults(func=_simulate_dataset)

    tv = sub.add_parser(
        "train-vae",
        help="train the galaxy VAE: DIR/vae.keras, DIR/saved_model/, DIR/report.json",
        description="Train the galaxy variational autoencoder on a galaxy dataset and write "
                    "the model (DIR/vae.keras, SavedModels in DIR/saved_model/), a report "
                    "(DIR/report.json: held-out reconstruction chi2 per pixel, fraction of "
                    "galaxies reconstructed within the noise) and figures "
                    "(DIR/reconstructions.png, DIR/prior_samples.png). Checkpoints are "
                    "written to DIR/checkpoint/ after every epoch: if DIR holds one, the "
                    "command resumes from it (up to --epochs in total) with the "
                    "checkpoint's settings: a --batch-size, --learning-rate, --beta, "
                    "--kl-warmup-steps, --seed, --latent-dim, --base-filters or "
                    "--max-filters that differs from the checkpoint's is refused (the error "
                    "names it with the old and new values), never silently ignored; a run "
                    "that already has --epochs epochs says so and writes nothing. A "
                    "non-empty DIR without checkpoint is refused unless --overwrite is "
                    "given; --overwrite also discards an existing checkpoint and starts "
                    "afresh.",
    )
    tv.add_argument("--dataset", required=True, metavar="NAME",
                    help="synthetic_galaxies or cosmos_galaxies (TFDS; 'name/config' works "
                         "too), or a directory written by tf.data.Dataset.save")
    tv.add_argument("--config", default=None, metavar="NAME",
                    help="TFDS builder config, e.g. 64 or tiny (default: the builder's first)")
    tv.add_argument("--data-dir", default=None, metavar="D", help="TFDS data directory")
    tv.add_argument("--manual-dir", default=None, metavar="D",
                    help="TFDS manual directory (cosmos_galaxies reads the GalSim catalog there)")
    tv.add_argument("--out", required=True, metavar="DIR",
                    help="output directory, created if needed")
    tv.add_argument("--overwrite", action="store_true",
                    help="write into a non-empty DIR; discard a checkpoint there and start afresh")
    tv.add_argument("--epochs", type=_positive_int(100_000), default=20, metavar="N",
                    help="total number of epochs (default: %(default)s)")
    tv.add_argument("--batch-size", type=_positive_int(65536), default=64, metavar="B",
                    help="images per step (default: %(default)s)")
    tv.add_argument("--latent-dim", type=_positive_int(4096), default=64, metavar="K",
                    help="latent dimension (default: %(default)s)")
    tv.add_argument("--base-filters", type=_positive_int(4096), default=32, metavar="F",
                    help="filters of the encoder's first convolution, doubling per block "
                         "up to --max-filters; the decoder mirrors them "
                         "(default: %(default)s)")
    tv.add_argument("--max-filters", type=_positive_int(4096), default=128, metavar="F",
                    help="largest number of filters of a convolution, >= --base-filters "
                         "(default: %(default)s)")
    tv.add_argument("--learning-rate", type=_positive_float, default=1e-3, metavar="LR",
                    help="Adam learning rate (default: %(default)s)")
    tv.add_argument("--kl-warmup-steps", type=_seed, default=1000, metavar="N",
                    help="steps of linear KL warm-up, 0 for none (default: %(default)s)")
    tv.add_argument("--beta", type=_positive_float, default=1.0, metavar="B",
                    help="weight of the KL term (default: %(default)s)")
    tv.add_argument("--max-examples", type=_positive_int(10**9), default=None, metavar="N",
                    help="use at most N training examples")
    tv.add_argument("--seed", type=_seed, default=None, metavar="S",
                    help="seed of weight initialisation, shuffling and sampling")
    tv.add_argument("--jit-compile", action="store_true",
                    help="compile the training step with XLA (GPU/TPU; slow to compile on CPU)")
    tv.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .cli_args import add_strategy_args

    add_strategy_args(tv)  # --strategy (multi-worker: also --seed)
    tv.set_defaults(func=_train_vae)

    from .cli_cnn import add_parsers as add_cnn_parsers
    from .cli_fit import add_parsers
    from .cli_fit_many import add_parsers as add_fit_many_parsers
    from .cli_population import add_parsers as add_population_parsers
    from .cli_rim import add_parsers as add_rim_parsers
    from .cli_sensitivity import add_parsers as add_sensitivity_parsers

    add_parsers(sub)
    add_fit_many_parsers(sub)
    add_sensitivity_parsers(sub)
    add_rim_parsers(sub)
    add_cnn_parsers(sub)
    add_population_parsers(sub)
    for command in sub.choices.values():  # --verbose after the command works too
        command.add_argument(VERBOSE_OPTION, action="store_true", default=argparse.SUPPRESS,
                             help=_VERBOSE_HELP)
    return parser


def example_lens(num_pix: int = 80, pixel_scale: float = 0.05, supersample: int = 2):
    """The simulator and parameters of ``simulate-example``.

    Returns:
      ``(simulator, params)`` with ``params = {"lens": [...], "source": [...],
      "lens_light": [...]}`` (lenstronomy-style lists of dicts), so that
      ``simulator(**params)`` renders the noise-free image. The simulator renders once per
      call of the command, so it is not XLA-compiled (tracing alone is cheaper); it is
      cached per ``(num_pix, pixel_scale, supersample)`` so that repeated calls in one
      process do not trace again.
    """
    sim, main = _example_simulator(int(num_pix), float(pixel_scale), int(supersample))
    params = {
        "lens": [dict(main), {"gamma1": 0.03, "gamma2": -0.02}],
        "source": [{"amp": 40.0, "R_sersic": 0.15, "n_sersic": 1.2, "e1": 0.1, "e2": 0.08,
                    "center_x": 0.08, "center_y": 0.05}],
        "lens_light": [{"amp": 8.0, "R_sersic": 0.8, "n_sersic": 4.0, "e1": 0.05, "e2": -0.03,
                        "center_x": 0.02, "center_y": -0.01}],
    }
    return sim, params


@functools.lru_cache(maxsize=4)
def _example_simulator(num_pix: int, pixel_scale: float, supersample: int):
    grid = tsl.PixelGrid(num_pix, pixel_scale, supersample=supersample)
    main = {"theta_E": 1.2, "e1": 0.1, "e2": -0.05, "center_x": 0.02, "center_y": -0.01}
    deflector = tsl.SIE()
    if _EPL is not None:
        epl = _EPL()
        candidate = dict(main, gamma=2.05)
        known = {k: candidate[k] for k in epl.param_names if k in candidate}
        if set(epl.required_params) <= set(known):
            deflector, main = epl, known
    sim = tsl.Simulator(
        grid,
        lens=[deflector, tsl.Shear()],
        source=[tsl.SersicEllipse()],
        lens_light=[tsl.SersicEllipse()],
        psf=tsl.GaussianPSF(EXAMPLE_PSF_FWHM),
        jit_compile=False,
    )
    return sim, main


class _UserError(Exception):
    """An error caused by the user's request: reported in one line, exit code 2."""


def _simulate_example(args) -> int:
    out = args.out
    _check_output_dir(out, args.overwrite, "lens.fits and lens.png into it anyway")
    sim, params = example_lens(args.num_pix, args.pixel_scale, args.supersample)
    model = sim(**params).numpy()[0]
    rng = np.random.default_rng(args.seed)
    noisy = (model + rng.normal(0.0, EXAMPLE_NOISE_SIGMA, model.shape)).astype(np.float32)
    kernel = sim.psf.kernel(args.pixel_scale).astype(np.float32)

    header = {
        "ORIGIN": (f"tfstronglens {tsl.__version__}", "software that made this file"),
        "OBJECT": ("simulated strong lens", "tfstronglens simulate-example"),
        "SIGMABKG": (EXAMPLE_NOISE_SIGMA, "[BUNIT] Gaussian background noise sigma"),
        "SEED": (args.seed, "seed of the noise realisation (numpy default_rng)"),
        "SUPERSMP": (args.supersample, "sub-pixels per pixel side"),
        "PSFFWHM": (EXAMPLE_PSF_FWHM, "[arcsec] FWHM of the Gaussian PSF"),
        **tsl_io.params_to_header(sim, **params),
    }
    os.makedirs(out, exist_ok=True)
    fits_path = os.path.join(out, "lens.fits")
    png_path = os.path.join(out, "lens.png")
    unit = "electron/s"
    tsl_io.write_fits(
        fits_path, noisy, header=header, overwrite=args.overwrite,
        pixel_scale=args.pixel_scale, bunit=unit,
        PSF=(kernel, {"PIXSCALE": (args.pixel_scale, "[arcsec/pixel] pixel scale"),
                      "PSFFWHM": (EXAMPLE_PSF_FWHM, "[arcsec] FWHM")}),
        MODEL=(model.astype(np.float32), {"BUNIT": unit, "COMMENT": "noise-free model"}),
    )
    plotting.save_png(png_path, noisy, sim.grid, title="simulated lens (with noise)",
                      overwrite=args.overwrite, colorbar_label=unit)

    peak_snr = float(model.max()) / EXAMPLE_NOISE_SIGMA
    print(f"wrote {fits_path}")
    print(f"wrote {png_path}")
    print(f"image: {noisy.shape[0]} x {noisy.shape[1]} pixels of {args.pixel_scale:g} arcsec, "
          f"supersample {args.supersample}, PSF FWHM {EXAMPLE_PSF_FWHM:g} arcsec")
    print(f"noise sigma {EXAMPLE_NOISE_SIGMA:g} {unit} (seed {args.seed}); peak S/N {peak_snr:.1f}")
    print("truths:")
    for kind in ("lens", "source", "lens_light"):
        for i, (prof, p) in enumerate(zip(sim.components(kind), params[kind])):
            values = ", ".join(f"{k}={v:g}" for k, v in p.items())
            print(f"  {kind}[{i}] {prof.name}: {values}")
    return 0


def _simulate_dataset(args) -> int:
    from tfstronglens.simulation import LensDatasetGenerator, LensSimulationConfig, write_dataset

    from .cli_args import read_json_config

    data = {} if args.config is None else read_json_config(args.config)
    if args.instrument is not None:
        data["instrument"] = args.instrument
    if args.seed is not None:
        data["seed"] = args.seed
    if args.source is not None:
        data["source"] = args.source
    try:
        config = LensSimulationConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise _UserError(f"invalid config: {exc}") from None
    out = args.out
    _check_output_dir(out, args.overwrite)
    gen = LensDatasetGenerator(config)
    paths = write_dataset(gen, args.n, out, overwrite=args.overwrite,
                          progress=not args.no_progress, batch_size=args.batch_size)
    print(f"wrote {len(paths) - 1} images and {paths[-1]} ({config.instrument}, "
          f"{config.num_pix}x{config.num_pix}, {config.lens_model}, subhalos "
          f"{config.subhalo_model}, seed {config.seed})")
    return 0


def _train_vae(args) -> int:
    from tfstronglens.cli_args import training_strategy, worker_finished
    from tfstronglens.models import train_vae
    from tfstronglens.models.training import is_checkpoint_dir

    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise _UserError(f"--out {out!r} exists and is not a directory")
    if (os.path.isdir(out) and os.listdir(out) and not args.overwrite
            and not is_checkpoint_dir(out)):
        raise _UserError(f"output directory {out!r} is not empty and is not a train-vae "
                         "checkpoint directory; pass --overwrite to write into it anyway")
    if args.max_filters < args.base_filters:
        raise _UserError(f"--max-filters ({args.max_filters}) must be >= --base-filters "
                         f"({args.base_filters})")
    dataset = args.dataset
    if os.path.isdir(dataset):
        if args.config is not None:
            raise _UserError("--config applies to TFDS dataset names, not to the saved "
                             f"tf.data directory {dataset!r}")
    strategy = training_strategy(args)
    report = train_vae(
        dataset, out, epochs=args.epochs, batch_size=args.batch_size,
        latent_dim=args.latent_dim, base_filters=args.base_filters,
        max_filters=args.max_filters, learning_rate=args.learning_rate,
        kl_warmup_steps=args.kl_warmup_steps, beta=args.beta, resume=True,
        progress=not args.no_progress, max_examples=args.max_examples,
        data_dir=args.data_dir, manual_dir=args.manual_dir, config=args.config,
        jit_compile=args.jit_compile, overwrite=args.overwrite, seed=args.seed,
        strategy=strategy,
    )
    if worker_finished(report, "train-vae"):
        return 0
    chi2 = report["chi2_per_pixel"]
    summary = (f"{report['epochs']} epochs on {report['num_train']} galaxies "
               f"({report['dataset']}); held-out ({report['num_heldout']}) chi2/pixel median "
               f"{chi2['median']:.3f} (16-84%: {chi2['p16']:.3f}-{chi2['p84']:.3f}), "
               f"{100 * report['fraction_within_noise']:.1f}% within the noise")
    if report["already_complete"]:
        print(f"{out} already holds a complete run ({summary}); --epochs {args.epochs} "
              "leaves nothing to do: nothing was trained or written")
        return 0
    print(f"trained {summary}")
    print(f"wrote {os.path.join(out, 'vae.keras')}, {os.path.join(out, 'saved_model')}, "
          f"{os.path.join(out, 'report.json')}")
    return 0


def main(argv=None) -> int:
    """Run the command line interface; returns the exit code (0 ok, 2 usage, 1 failure)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argument errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    from .runtime import tune_cpu_allocator

    tune_cpu_allocator()  # XLA on CPU: keep freed buffers in the heap (see tfstronglens.runtime)
    try:
        with _tensorflow_python_logs(verbose=bool(getattr(args, "verbose", False))):
            return args.func(args)
    except (_UserError, ValueError, FileExistsError) as exc:
        print(f"tfstronglens {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tfstronglens {args.command}: error: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _tensorflow_python_logs(verbose: bool):
    """Hide the warnings of TensorFlow's Python logger (``tf.function`` retracing) during
    a command unless ``verbose``; the logger's level is restored afterwards. The C++ log
    lines are hidden at start-up (:mod:`tfstronglens.cli_startup`)."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
