"""The ``fit`` and ``demo`` commands of the command line (see :mod:`tfstronglens.cli`)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings

import numpy as np

from .cli import _check_output_dir, _positive_float, _positive_int, _seed
from .cli_args import add_image_options, load_image_args
from .io._atomic import atomic_output

__all__ = ["add_parsers", "add_model_args", "add_fit_options", "check_fit_options",
           "fit_image", "build_model_from_args", "HMC_CHECKPOINT"]

# parsers of the count options (starts, steps, chains, draws) and of non-negative integers
_count = _positive_int(10**9)
_non_negative = _seed

_SOURCES = ("vae", "sersic", "pixelated", "rim")
_METHODS = ("map", "vi", "hmc")
#: The HMC checkpoint of a run, in its ``--out`` folder (resumed by a rerun).
HMC_CHECKPOINT = "hmc_checkpoint.npz"
# the defaults of fit's inference settings (also those of fit-many)
_FIT_DEFAULTS = dict(method="hmc", num_starts=64, map_steps=500, vi_steps=500,
                    num_chains=8, num_results=500, num_burnin=500, map_polish_steps=30,
                    hmc_kernel="nuts")
_OVERWRITE_HELP = ("start a fresh run in DIR even if it is not empty: the outputs of an "
                   "earlier run there ({}) are deleted when the run starts, other files are "
                   "kept (an interrupted run is not resumed)")


def _add_inference_args(p, defaults):
    from .inference.kernels import self_tuning_samplers

    g = p.add_argument_group("inference settings")
    g.add_argument("--method", choices=_METHODS, default=defaults["method"],
                   help="map: multi-start MAP (Adam, then Levenberg-Marquardt) + Laplace; "
                        "vi: + variational (full-rank Gaussian); hmc: + NUTS or ChEES-HMC "
                        "(--hmc-kernel), its dense metric started at the VI covariance and "
                        "adapted in warm-up (default: %(default)s)")
    g.add_argument("--seed", type=_seed, default=0, help="seed (default: 0)")
    g.add_argument("--num-starts", type=_count, default=defaults["num_starts"],
                   help="MAP starts optimised together (default: %(default)s)")
    g.add_argument("--init", choices=("prior", "cnn"), default="prior",
                   help="where the MAP starts come from: prior draws, or draws of the "
                        "amortized lens CNN's posterior for the lens and source position "
                        "(--init-model; the image is cropped, padded or resampled onto the "
                        "network's grid). cnn helps on images like the network's training "
                        "set; on a nearly round lens with bright lens light its starts "
                        "found the mirrored ellipticity/shear mode more often than prior "
                        "starts (benchmarks/README.md) (default: %(default)s)")
    g.add_argument("--init-model", default=None, metavar="pretrained|pretrained-epl|DIR",
                   help="the lens CNN of --init cnn: a shipped one ('pretrained': SIE + shear,"
                        " 'pretrained-epl': EPL + shear) or a train-cnn folder (default: the "
                        "shipped one for the model's main lens)")
    g.add_argument("--map-steps", type=_count, default=defaults["map_steps"],
                   help="Adam steps of the MAP (default: %(default)s)")
    g.add_argument("--vi-steps", type=_count, default=defaults["vi_steps"],
                   help="VI optimisation steps (default: %(default)s)")
    g.add_argument("--surrogate", choices=("mean_field", "full_rank", "iaf"),
                   default="full_rank", help="VI surrogate (default: %(default)s)")
    g.add_argument("--num-chains", type=_count, default=defaults["num_chains"],
                   help="HMC chains (default: %(default)s)")
    g.add_argument("--num-results", type=_count, default=defaults["num_results"],
                   help="HMC draws kept per chain (default: %(default)s)")
    g.add_argument("--num-burnin", type=_non_negative, default=defaults["num_burnin"],
                   help="HMC warm-up steps per chain (default: %(default)s)")
    g.add_argument("--max-tree-depth", type=_positive_int(30), default=8,
                   help="NUTS maximum tree depth; for ChEES the trajectory cap is "
                        "2**depth - 1 leapfrog steps (default: %(default)s)")
    g.add_argument("--hmc-kernel", choices=self_tuning_samplers(),
                   default=defaults["hmc_kernel"],
                   help="sampler of --method hmc: nuts, or chees (ChEES-HMC: jittered "
                        "trajectories of adapted length, one step size for all chains; "
                        "use many chains, e.g. --num-chains 32) (default: %(default)s)")
    g.add_argument("--neutra", action="store_true",
                   help="NeuTra-HMC: sample in the base space of the VI normalizing flow "
                        "(needs --surrogate iaf), for curved or skewed posteriors")
    g.add_argument("--map-polish-steps", type=_non_negative,
                   default=defaults["map_polish_steps"],
                   help="Levenberg-Marquardt iterations after the Adam steps of the MAP "
                        "(0: none; skipped above 128 parameters and with --source rim) "
                        "(default: %(default)s)")
    g.add_argument("--no-xla", action="store_true",
                   help="run the model as plain TensorFlow graphs instead of XLA-compiled "
                        "functions (no compilation delay; slower per step on large images)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_model_args(p):
    """The model options of ``fit`` and ``sensitivity`` (``--lens`` or ``--model``, lens
    light, source, redshifts)."""
    from .inference.spec import LENS_SHORTHANDS

    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--lens", choices=sorted(LENS_SHORTHANDS),
                      help="main deflector; +m4, +m3m4, +m1m3m4 add circular multipoles of "
                           "those orders centred on it")
    what.add_argument("--model", metavar="MODEL.json",
                      help="the whole model as a JSON spec (lens components, lens light, "
                           "source, subhalos, redshifts, priors; see "
                           "tfstronglens.inference.spec); replaces --lens, --lens-light, "
                           "--source, --subhalos, --z-lens and --z-source")
    p.add_argument("--lens-light", choices=("sersic", "none"), default="none",
                   help="lens light model (default: %(default)s)")
    p.add_argument("--z-lens", type=_positive_float, default=None, metavar="Z",
                   help="lens redshift (default: 0.5)")
    p.add_argument("--z-source", type=_positive_float, default=None, metavar="Z",
                   help="source redshift (default: 2.0)")
    p.add_argument("--source", choices=_SOURCES, default=None,
                   help="vae: the pretrained VAE decoder (latent z ~ N(0, I)); sersic; "
                        "pixelated: a pixel grid with a smoothness prior; rim: the source "
                        "the shipped RIM reconstructs for each trial lens (no source "
                        "parameters; --method map only, no lens light)")
    p.add_argument("--source-pixel-scale", type=_positive_float, default=None, metavar="S",
                   help="source-plane pixel scale in arcsec for vae/pixelated (default: "
                        "half the image pixel scale)")


def add_fit_options(p):
    """Add the options of ``fit`` besides ``IMAGE.fits``, ``--out`` and ``--overwrite``
    to the parser ``p``: those that describe the image (``--hdu``, PSF, noise, exposure,
    pixel scale), the model (:func:`add_model_args`, ``--subhalos``, ``--source-init``)
    and the inference settings, with ``fit``'s defaults. ``fit-many`` takes the same
    options, so that its lenses are fitted as ``fit`` fits one."""
    add_image_options(p)
    p.add_argument("--flip-y", action="store_true",
                   help="the file's arrays (image, PSF, noise map) are stored upside down, "
                        "row 0 at +y (the top; PyAutoLens writes them so): reverse their "
                        "rows. Without it the FITS standard is assumed: the first row is the "
                        "bottom of the image, y increasing upward. A WCS in the header is "
                        "taken to describe the array as stored")
    add_model_args(p)
    p.add_argument("--subhalos", type=_non_negative, default=0, metavar="N",
                   help="number of candidate TNFW subhalos; with N >= 1 the one-subhalo "
                        "detection test is also run (default: 0)")
    p.add_argument("--null-simulations", type=_non_negative, default=0, metavar="B",
                   help="calibrate the detection's significance by a parametric bootstrap: "
                        "B images drawn from the best fit without a subhalo, each searched "
                        "as the data were (B more detections; summary.json's "
                        "subhalo_detection.null_calibration). Needs --subhalos >= 1 "
                        "(default: 0, Wilks' asymptotic significance only)")
    p.add_argument("--scan-grid", type=_non_negative, default=0, metavar="G",
                   help="with --subhalos 1, a faster search (e.g. G = 24): fit the model "
                        "without the subhalo first, scan the likelihood gain of a subhalo on "
                        "a G x G grid by linear response, and start half the one-subhalo "
                        "fits at its best cells. It can miss a strong subhalo that the fit "
                        "without it absorbs (benchmarks/README.md). 0: fit the subhalo from "
                        "prior draws and start the detection on a regular grid "
                        "(default: %(default)s)")
    p.add_argument("--source-init", choices=("prior", "rim"), default="prior",
                   help="rim: first fit the lens with --source rim, then start the MAP of "
                        "the vae/pixelated fit there, its source from the RIM's "
                        "reconstruction (default: prior draws)")
    _add_inference_args(p, _FIT_DEFAULTS)


def add_parsers(sub):
    """Add ``fit`` and ``demo`` to the CLI's subparsers."""
    fit = sub.add_parser(
        "fit",
        help="fit a lens image: DIR/summary.json, samples, PNGs",
        description="Fit lens, subhalo and source parameters to IMAGE.fits by MAP -> VI -> "
                    "HMC and write DIR/summary.json (per parameter mean, std, 16/50/84 "
                    "percentiles, R-hat and ESS where sampled, and why HMC draws did not "
                    "converge, also printed at the end; with --subhalos the "
                    "subhalo_detection statistic), DIR/samples.npz (and samples.nc for "
                    "ArviZ when installed), DIR/fit.png and DIR/corner.png. Pixel (row, "
                    "column) = (y, x), pixel centres symmetric about 0, row 0 at the "
                    "bottom (-y; the FITS standard, see --flip-y); angles such as "
                    "phi = atan2(e2, e1)/2 run from +x towards +y; the image is in "
                    "e-/s per pixel. When the header has a celestial WCS, summary.json also "
                    "has a 'sky' section (and the printed summary a few lines): RA, Dec "
                    "and offsets east/north of the image centre of the lens, source and "
                    "subhalo centres, and position angles east of north of the "
                    "ellipticities and the shear, from the posterior draws.",
    )
    fit.add_argument("image", metavar="IMAGE.fits", help="the lens image (square)")
    add_fit_options(fit)
    fit.add_argument("--out", required=True, metavar="DIR",
                     help="output directory, created when the run starts")
    fit.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP.format(
        f"summary.json, samples, PNGs, {HMC_CHECKPOINT}"))
    fit.set_defaults(func=_fit)

    demo = sub.add_parser(
        "demo",
        help="simulate an HST-like lens with a VAE source and a subhalo, and fit it",
        description="The embedded default (tfstronglens.inference.demo): simulate an "
                    "HST/ACS-like SIE + shear lens of a VAE source with one compact "
                    "1e10 M_sun subhalo, fit it end to end (77 parameters), print the recovered "
                    "parameters next to the truths and the subhalo detection statistic.",
    )
    demo.add_argument("--out", default=None, metavar="DIR",
                      help="also write summary.json, samples and PNGs there")
    demo.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP.format(
        f"summary.json, truth.json, samples, PNGs, {HMC_CHECKPOINT}"))
    # the VAE decoder makes an LM iteration of the 77 parameters cost ~6 s here: the demo's
    # MAP is Adam only; --method hmc: ChEES with 8 chains, short warm-up from the VI fit
    # (benchmarks/fit_vae.py, benchmarks/README.md)
    _add_inference_args(demo, dict(method="map", num_starts=16, map_steps=250, vi_steps=300,
                                   num_chains=8, num_results=600, num_burnin=100,
                                   map_polish_steps=0, hmc_kernel="chees"))
    demo.set_defaults(func=_demo)


def _check_out(out, overwrite):
    """Refuse an ``--out`` that is a file, or a non-empty folder without ``--overwrite``;
    nothing is created (:func:`_start_out` does that when the run starts)."""
    if out is None:
        return
    _check_output_dir(out, overwrite, "a fresh run into it")


@contextlib.contextmanager
def _run_folder(out, overwrite, stale=()):
    """The ``--out`` folder of a run that starts now (:func:`_start_out`); if the run fails
    before it wrote anything there, a folder that this run created is removed again."""
    created = not os.path.isdir(out)
    _start_out(out, overwrite, stale)
    try:
        yield
    except BaseException:
        if created and not os.listdir(out):
            os.rmdir(out)
        raise


def _start_out(out, overwrite, stale=()):
    """Create ``--out`` for a run that starts now (all its input validated); with
    ``--overwrite`` first delete the files ``stale`` that an earlier run wrote there, so
    that none of them is resumed (the HMC checkpoint) or taken for this run's output."""
    os.makedirs(out, exist_ok=True)
    if overwrite:
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, name))


def _flag(name):
    """The command-line flag of a :func:`~tfstronglens.inference.fit_lens` argument."""
    return "--" + name.replace("_", "-")


def _fit_kwargs(args):
    """The :func:`~tfstronglens.inference.fit_lens` arguments of the inference options,
    after refusing the combinations it would refuse or ignore (named by their flags)."""
    if args.neutra and args.method != "hmc":
        raise ValueError(f"--neutra applies to --method hmc, not --method {args.method}")
    if args.neutra and args.surrogate != "iaf":
        raise ValueError("--neutra samples through the VI normalizing flow: it needs "
                         f"--surrogate iaf, got --surrogate {args.surrogate}")
    null_simulations = getattr(args, "null_simulations", 0)
    if null_simulations and not getattr(args, "subhalos", 0):
        raise ValueError(f"--null-simulations {null_simulations} calibrates the subhalo "
                         f"detection: it needs --subhalos 1 or more")
    # (the LM polish differentiates by finite differences, which would re-run the RIM for
    # every displaced lens parameter: --source rim stops at Adam)
    polish = 0 if getattr(args, "source", None) == "rim" else args.map_polish_steps
    return dict(method=args.method, seed=args.seed, num_starts=args.num_starts,
                map_steps=args.map_steps, vi_steps=args.vi_steps, vi_surrogate=args.surrogate,
                num_chains=args.num_chains, num_results=args.num_results,
                num_burnin=args.num_burnin, max_tree_depth=args.max_tree_depth,
                hmc_kernel=args.hmc_kernel, neutra=args.neutra,
                map_polish_steps=polish, progress=not args.no_progress,
                init=_init(args), null_simulations=null_simulations,
                scan_grid=getattr(args, "scan_grid", 0) or None)


def _init(args):
    if args.init == "prior":
        return None
    from .models import PRETRAINED_CNNS

    if args.init_model is None:
        return "cnn"
    if args.init_model in PRETRAINED_CNNS:
        return args.init_model
    if not os.path.exists(args.init_model):
        raise ValueError(f"--init-model {args.init_model!r} does not exist")
    return args.init_model


def _print_summary(result):
    """Print the posterior summary table (without the VAE source's latent ``source.z.*``)."""
    from .inference import format_summary

    rows = {k: v for k, v in result.summary.items() if not k.startswith("source.z.")}
    print(format_summary(rows))


def _warn_problems(result, command: str):
    """Say on stderr, at the end of a run, why its HMC draws did not converge
    (``result.problems``) and which options to change."""
    from .inference import hmc_advice

    if result.problems:
        print(f"tfstronglens {command}: warning: the HMC draws did not converge: "
              f"{'; '.join(result.problems)}. The posterior summary is unreliable; "
              f"{hmc_advice(_flag)}", file=sys.stderr)


def _apply_model_spec(args):
    """``--model MODEL.json``: the spec's fields replace the model options; None otherwise.
    Without it ``--source`` is required, and ``--z-source`` must exceed ``--z-lens`` (the
    spec checks its own redshifts)."""
    from .inference.spec import ModelSpec

    args.spec = None
    if args.model is None:
        if args.source is None:
            raise ValueError("--source is required (or give the whole model with --model)")
        z_lens, z_source = args.z_lens or 0.5, args.z_source or 2.0
        if not z_source > z_lens:
            def shown(flag, given, value):
                return f"{flag} {value:g}" + (" (the default)" if given is None else "")

            raise ValueError(f"the source must lie behind the lens: "
                             f"{shown('--z-source', args.z_source, z_source)} is not larger "
                             f"than {shown('--z-lens', args.z_lens, z_lens)}")
        return None
    if not os.path.isfile(args.model):
        raise ValueError(f"--model {args.model!r} does not exist or is not a file")
    spec = args.spec = ModelSpec.from_json(args.model)
    given = [_flag(k) for k, default in
             (("lens_light", "none"), ("source", None), ("subhalos", 0), ("z_lens", None),
              ("z_source", None)) if getattr(args, k, default) != default]
    if given:
        raise ValueError(f"--model {args.model} gives the whole model: drop {given}")
    args.source = spec.source
    args.subhalos = spec.subhalos.count
    args.z_lens, args.z_source = spec.z_lens, spec.z_source
    args.lens_light = "none" if not spec.lens_light else "spec"
    return spec


def build_model_from_args(args, batch_size: int, *, log=None):
    """The :class:`LensModel` of a command's model and data options (``fit``,
    ``sensitivity``): ``(model, image, spec)``, ``spec`` the ``--model`` spec or None.
    The notes on the image (where each value came from) go to ``log`` (default:
    ``sys.stderr``)."""
    from .inference import build_model

    obs_img = load_image_args(args)
    if getattr(args, "flip_y", False):
        obs_img = obs_img.flipped()
    # (build_model scales the amplitude priors to the brightest pixels)
    peak = float(np.percentile(obs_img.data, 99.5))
    if not peak > 0:
        raise ValueError(f"the image {args.image!r} has no positive signal (99.5th "
                         f"percentile of its pixels {peak:g}): fit an image of the lens in "
                         "e-/s per pixel")
    for note in obs_img.notes:
        print(f"tfstronglens {args.command}: {note}",
              file=sys.stderr if log is None else log)
    obs = obs_img.observation
    kwargs = {}
    src_scale = args.source_pixel_scale or 0.5 * obs.pixel_scale
    if args.source == "vae":
        from .models import VAESource, load_pretrained_vae

        source = VAESource(load_pretrained_vae().decoder, pixel_scale=src_scale)
    elif args.source == "pixelated":
        source = "pixelated"
        kwargs.update(source_pixel_scale=src_scale, source_prior="smooth")
    elif args.source == "rim":
        from .models.rim import RIMSource

        source = RIMSource()
    else:
        source = "sersic"
    # One traced/compiled value-and-gradient for MAP, VI (16 ELBO draws a step), Laplace
    # and detection, instead of one per batch size (tens of seconds each).
    kwargs["compile_batch_size"] = batch_size
    spec = args.spec
    if spec is not None:
        kwargs.update(spec.model_kwargs())
        source = kwargs.pop("source", source)  # a list of source components
        if not isinstance(source, str) and any(c.profile == "PIXELATED" for c in source):
            kwargs.update(source_prior="smooth")  # as --source pixelated
    else:
        kwargs.update(lens=args.lens, num_subhalos=getattr(args, "subhalos", 0),
                      lens_light=None if args.lens_light == "none" else "sersic",
                      z_lens=args.z_lens or 0.5, z_source=args.z_source or 2.0)
    model = build_model(obs, obs_img.data, source=source, noise_map=obs_img.noise_map,
                        # the RIM's network runs faster on TF's own kernels than under
                        # XLA:CPU, and its physics is XLA-compiled inside it anyway
                        jit_compile=not args.no_xla and args.source != "rim", **kwargs)
    return model, obs_img, spec


def _check_rim_lens(args, spec):
    """Refuse lens components that the RIM (``--source rim``, ``--source-init rim``)
    cannot take: profiles with non-default settings, such as a multipole's order."""
    from .inference.spec import LENS_SHORTHANDS
    from .profiles import get_profile

    def non_default(c):
        if not c.settings:
            return False
        try:
            config = get_profile(c.profile, **c.settings).get_config()
        except TypeError:  # settings that do not fit the profile: the model names them
            return False
        try:
            return config != get_profile(c.profile).get_config()
        except TypeError:  # a profile whose settings have no defaults
            return True

    lens = LENS_SHORTHANDS[args.lens] if spec is None else spec.lens
    configured = [c.profile for c in lens if non_default(c)]
    if configured:
        where = f"--lens {args.lens}" if spec is None else f"--model {args.model}"
        raise ValueError(f"the RIM (--source rim / --source-init rim) takes lens profiles "
                         f"with their default settings only; {where} gives {configured} "
                         "other settings (e.g. a multipole's order): fit it with another "
                         "--source")


def check_fit_options(args) -> dict:
    """Check the options of ``fit`` that do not depend on the image and return the
    :func:`~tfstronglens.inference.fit_lens` arguments they give.

    ``args`` are ``fit``'s parsed options (:func:`add_fit_options`); a ``--model`` spec
    is applied to them (its fields replace ``--source``, ``--subhalos``, the redshifts and
    the lens light), so call this once per ``args``. ``ValueError`` naming the options
    for a combination ``fit`` refuses. ``fit-many`` calls it once before fitting any
    lens, so that a bad option is one error, not one per lens.
    """
    spec = _apply_model_spec(args)
    if args.source == "rim" and args.method != "map":
        raise ValueError(f"--source rim gives a point estimate of the source: use --method "
                         f"map (got --method {args.method}), or --source vae/pixelated with "
                         "--source-init rim for posteriors")
    if args.source_init == "rim" and args.source not in ("vae", "pixelated"):
        raise ValueError(f"--source-init rim seeds a vae or pixelated source, not --source "
                         f"{args.source}")
    if args.source_init == "rim" and args.init == "cnn":
        raise ValueError("--source-init rim and --init cnn both choose the MAP starts: give one")
    if "rim" in (args.source, args.source_init):
        if args.lens_light != "none":
            raise ValueError("the RIM reconstructs the source from data without lens light: "
                             "--source rim / --source-init rim need --lens-light none")
        _check_rim_lens(args, spec)
    return _fit_kwargs(args)


def fit_image(args, *, log=None):
    """Fit ``args.image`` and write its outputs into ``args.out``: the per-lens code path
    of ``fit`` and ``fit-many`` (which calls it once per lens of its catalogue).

    ``args`` are ``fit``'s parsed options (the image, :func:`add_fit_options`, ``--out``,
    ``--overwrite``; ``args.command`` names the command in messages). The options are
    checked (:func:`check_fit_options`) and ``--out`` is refused if it is a file, or a
    non-empty folder without ``--overwrite``, before anything is created; then the model
    is built from the image (:func:`build_model_from_args`), ``--out`` is created (with
    ``--overwrite`` the files of an earlier run are deleted first; a folder this run
    created is removed again if the fit fails before writing there), the lens is fitted
    (:func:`~tfstronglens.inference.fit_lens`) and ``summary.json``, the samples and the
    PNGs are written (:func:`~tfstronglens.inference.write_fit_outputs`, each file
    atomically).

    The notes on the image and the model go to ``log`` (default: ``sys.stderr``); nothing
    is printed on stdout (``fit`` prints the summary itself). Returns ``(result,
    paths)``: the :class:`~tfstronglens.inference.FitResult` and ``{kind: path}`` of the
    written files. Raises ``ValueError`` or ``_UserError`` for bad options or input files.
    """
    from .inference import FIT_OUTPUT_FILES

    log = sys.stderr if log is None else log
    fit_kwargs = check_fit_options(args)
    _check_out(args.out, args.overwrite)
    # batches of 8: the cost per point is the same as at 16 on the 100x100 images of
    # benchmarks/subhalo_search.py, and the detection's 8-start fits are not padded to 16
    model, obs_img, spec = build_model_from_args(args, min(8, args.num_starts), log=log)
    with _run_folder(args.out, args.overwrite, (*FIT_OUTPUT_FILES, HMC_CHECKPOINT)):
        return _run_fit(args, model, obs_img, spec, fit_kwargs, log)


def _run_fit(args, model, obs_img, spec, fit_kwargs, log):
    """The run of :func:`fit_image` (its options validated, its model built, ``--out``
    created): the fit and its output files; returns ``(result, paths)``."""
    from .inference import write_fit_outputs

    obs = obs_img.observation
    print(f"tfstronglens {args.command}: {len(model.param_names)} parameters, method "
          f"{args.method}", file=log)
    map_init = None
    if args.source_init == "rim":
        from .inference import find_map, source_init_from_rim
        from .models.rim import RIMSource

        rim_model = model.replace(source=RIMSource())
        print(f"tfstronglens {args.command}: --source-init rim: MAP of the "
              f"{len(rim_model.param_names)} lens parameters with the RIM's source", file=log)
        rim_map = find_map(rim_model, num_starts=args.num_starts, num_steps=args.map_steps,
                           seed=args.seed, progress=not args.no_progress)
        map_init = source_init_from_rim(model, rim_map.summary())
    result = _fit_quietly(model, **fit_kwargs, map_init=map_init,
                          checkpoint=os.path.join(args.out, HMC_CHECKPOINT))
    settings = {"image": os.path.abspath(args.image), "lens": args.lens,
                "model": None if spec is None else spec.to_dict(),
                "lens_light": args.lens_light,
                "source": args.source if spec is None else spec.to_dict()["source"],
                "source_init": args.source_init,
                "subhalos": args.subhalos, "z_lens": args.z_lens or 0.5,
                "z_source": args.z_source or 2.0,
                "pixel_scale": obs.pixel_scale, "flip_y": obs_img.flip_y,
                "notes": obs_img.notes}
    truths = _header_truths(obs_img.header, model)
    if truths:
        print(f"tfstronglens {args.command}: the header records the true values of "
              f"{len(truths)} parameters (a simulated image): written to summary.json and "
              "marked in corner.png", file=log)
    frame = obs_img.sky_frame()
    sky = None
    if frame is not None:
        from .io.sky import sky_summary

        sky = sky_summary(frame, result.param_names, result.samples, result.best_fit)
    paths = write_fit_outputs(result, args.out, overwrite=True, extra_settings=settings,
                              truths=truths or None, sky=sky)
    return result, paths


def _header_truths(header, model) -> dict:
    """The true parameter values in the header of a simulated image
    (:func:`~tfstronglens.io.fits.truths_from_header`) for the components of ``model``."""
    from .io.fits import truths_from_header

    profiles = {f"lens.{i}": c.profile for i, c in enumerate(model.lens_components)}
    profiles.update({f"lens_light.{i}": c.profile
                     for i, c in enumerate(model.lens_light_components)})
    profiles.update({f"source.{i}": p.name for i, p in enumerate(model.source_profiles)})
    return truths_from_header(header, model.param_names, profiles)


def _print_sky(summary_path):
    """Print the ``sky`` section of a fit's ``summary.json``, if it has one."""
    from .io.sky import format_sky_summary

    with open(summary_path) as fh:
        sky = json.load(fh).get("sky")
    if sky:
        print(format_sky_summary(sky))


def _fit(args) -> int:
    result, paths = fit_image(args)
    _print_summary(result)
    _print_sky(paths["summary"])
    if result.detection is not None:
        det = result.detection
        print(f"subhalo detection: delta log L = {det.delta_log_likelihood:.2f}, "
              f"significance = {det.significance_sigma:.2f} sigma, mass = {det.mass:.3g} "
              f"M_sun at ({det.center_x:.3f}, {det.center_y:.3f}) arcsec")
    cal = result.null_calibration
    if cal is not None:
        print(f"calibrated by {cal.num_simulations} null simulations: p = {cal.p_value:.3g} "
              f"({cal.significance_sigma:.2f} sigma; the bootstrap resolves p >= "
              f"{1 / (cal.num_simulations + 1):.3g}); against the fitted null "
              f"{cal.null_zero_fraction:.2f} delta_0 + {1 - cal.null_zero_fraction:.2f} "
              f"chi2_{cal.null_dof:.2f}: {cal.significance_sigma_fitted:.2f} sigma")
    print(f"wrote {', '.join(sorted(os.path.basename(p) for p in paths.values()))} to "
          f"{args.out} in {result.timings['total']:.0f} s")
    _warn_problems(result, "fit")
    return 0


def _fit_quietly(*args, **kwargs):
    """:func:`~tfstronglens.inference.fit_lens` without its ``ConvergenceWarning``: the
    commands report ``result.problems`` at the end instead, naming the options to change
    (:func:`_warn_problems`)."""
    from .inference import ConvergenceWarning, fit_lens

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_lens(*args, **kwargs)


def _demo(args) -> int:
    from .inference import FIT_OUTPUT_FILES, write_fit_outputs
    from .inference.demo import demo_problem, demo_table

    fit_kwargs = _fit_kwargs(args)
    _check_out(args.out, args.overwrite)
    if args.out is not None:
        _start_out(args.out, args.overwrite, (*FIT_OUTPUT_FILES, "truth.json", HMC_CHECKPOINT))
    t0 = time.perf_counter()
    print("tfstronglens demo: simulating an HST/ACS-like lens (SIE + shear, VAE source, "
          "one 1e10 M_sun point-mass subhalo)...", file=sys.stderr)
    # MAP, Laplace and detection run faster without XLA here (compilation of each); the
    # sampling chunks of --method hmc run under XLA unless --no-xla (benchmarks/README.md)
    model, truth, data = demo_problem(seed=args.seed)
    print(f"tfstronglens demo: fitting {len(model.param_names)} parameters "
          f"(method {args.method})", file=sys.stderr)
    checkpoint = None if args.out is None else os.path.join(args.out, HMC_CHECKPOINT)
    result = _fit_quietly(model, data, **fit_kwargs, checkpoint=checkpoint,
                          hmc_jit_compile=not args.no_xla, detection_starts=25,
                          detection_steps=150)
    print(demo_table(result, truth))
    det = result.detection
    if det is not None:
        print(f"\nsubhalo detection (best fit with one subhalo vs without): delta log L = "
              f"{det.delta_log_likelihood:.2f}, significance = {det.significance_sigma:.2f} "
              f"sigma; best-fit subhalo mass = {det.mass:.3g} M_sun at "
              f"({det.center_x:.3f}, {det.center_y:.3f}) arcsec (truth "
              f"{truth['subhalo.0.mass']:.3g} M_sun at ({truth['subhalo.0.center_x']:.2f}, "
              f"{truth['subhalo.0.center_y']:.2f}))")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    print(f"\ntime: {timing}; wall {time.perf_counter() - t0:.0f} s")
    if args.out is not None:
        scalar_truth = {k: v for k, v in truth.items() if not k.startswith("source.z.")}
        paths = write_fit_outputs(result, args.out, overwrite=True,
                                  extra_settings={"demo": True}, truths=scalar_truth)
        with atomic_output(os.path.join(args.out, "truth.json"), overwrite=True) as tmp, \
                open(tmp, "w") as fh:
            json.dump(truth, fh, indent=2)
        print(f"wrote {', '.join(sorted(os.path.basename(p) for p in paths.values()))} "
              f"and truth.json to {args.out}")
    _warn_problems(result, "demo")
    return 0
