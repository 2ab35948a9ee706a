"""The ``fit`` and ``demo`` commands of the command line (see :mod:`tfstronglens.cli`)."""

from __future__ import annotations

import json
import os
import sys
import time

from .cli import _check_output_dir, _positive_float, _positive_int, _seed
from .cli_args import add_image_args, load_image_args

__all__ = ["add_parsers"]

# parsers of the count options (starts, steps, chains, draws) and of non-negative integers
_count = _positive_int(10**9)
_non_negative = _seed

_SOURCES = ("vae", "sersic", "pixelated", "rim")
_METHODS = ("map", "vi", "hmc")


def _add_inference_args(p, defaults):
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
                        "(needs an image of the CNN's pixel scale; --init-model) "
                        "(default: %(default)s)")
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
                   help="NUTS chains (default: %(default)s)")
    g.add_argument("--num-results", type=_count, default=defaults["num_results"],
                   help="NUTS draws per chain (default: %(default)s)")
    g.add_argument("--num-burnin", type=_non_negative, default=defaults["num_burnin"],
                   help="NUTS warm-up steps per chain (default: %(default)s)")
    g.add_argument("--max-tree-depth", type=_count, default=8,
                   help="NUTS maximum tree depth; for ChEES the trajectory cap is "
                        "2**depth - 1 leapfrog steps (default: %(default)s)")
    g.add_argument("--hmc-kernel", choices=("nuts", "chees"), default="nuts",
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


def add_parsers(sub):
    """Add ``fit`` and ``demo`` to the CLI's subparsers."""
    fit = sub.add_parser(
        "fit",
        help="fit a lens image: DIR/summary.json, samples, PNGs",
        description="Fit lens, subhalo and source parameters to IMAGE.fits by MAP -> VI -> "
                    "HMC and write DIR/summary.json (per parameter mean, std, 16/50/84 "
                    "percentiles, R-hat and ESS where sampled; with --subhalos the "
                    "subhalo_detection statistic), DIR/samples.npz (and samples.nc for "
                    "ArviZ when installed), DIR/fit.png and DIR/corner.png. Pixel (row, "
                    "column) = (y, x), pixel centres symmetric about 0; the image is in "
                    "e-/s per pixel.",
    )
    add_image_args(fit)
    add_model_args(fit)
    fit.add_argument("--subhalos", type=_non_negative, default=0, metavar="N",
                     help="number of candidate TNFW subhalos; with N >= 1 the one-subhalo "
                          "detection test is also run (default: 0)")
    fit.add_argument("--source-init", choices=("prior", "rim"), default="prior",
                     help="rim: first fit the lens with --source rim, then start the MAP of "
                          "the vae/pixelated fit there, its source from the RIM's "
                          "reconstruction (default: prior draws)")
    fit.add_argument("--out", required=True, metavar="DIR", help="output directory")
    fit.add_argument("--overwrite", action="store_true",
                     help="write into DIR even if it is not empty")
    _add_inference_args(fit, dict(method="hmc", num_starts=64, map_steps=500, vi_steps=500,
                                  num_chains=8, num_results=500, num_burnin=500,
                                  map_polish_steps=30))
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
    demo.add_argument("--overwrite", action="store_true",
                      help="write into DIR even if it is not empty")
    _add_inference_args(demo, dict(method="map", num_starts=16, map_steps=250, vi_steps=300,
                                   num_chains=4, num_results=200, num_burnin=200,
                                   # the VAE decoder makes an LM iteration of the 77
                                   # parameters cost ~6 s here: the demo's MAP is Adam only
                                   map_polish_steps=0))
    demo.set_defaults(func=_demo)


def _check_out(out, overwrite):
    if out is None:
        return
    _check_output_dir(out, overwrite, "into it")
    os.makedirs(out, exist_ok=True)


def _fit_kwargs(args):
    # (the LM polish differentiates by finite differences, which would re-run the RIM for
    # every displaced lens parameter: --source rim stops at Adam)
    polish = 0 if getattr(args, "source", None) == "rim" else args.map_polish_steps
    return dict(method=args.method, seed=args.seed, num_starts=args.num_starts,
                map_steps=args.map_steps, vi_steps=args.vi_steps, vi_surrogate=args.surrogate,
                num_chains=args.num_chains, num_results=args.num_results,
                num_burnin=args.num_burnin, max_tree_depth=args.max_tree_depth,
                hmc_kernel=args.hmc_kernel, neutra=args.neutra,
                map_polish_steps=polish, progress=not args.no_progress,
                init=_init(args))


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
    from .inference import format_summary

    rows = {k: dict(v, sd=v["std"]) for k, v in result.summary.items()
            if not k.startswith("source.z.")}
    print(format_summary(rows))


def _apply_model_spec(args):
    """``--model MODEL.json``: the spec's fields replace the model options; None otherwise.
    Without it ``--source`` is required."""
    from .inference.spec import ModelSpec

    args.spec = None
    if args.model is None:
        if args.source is None:
            raise ValueError("--source is required (or give the whole model with --model)")
        return None
    spec = args.spec = ModelSpec.from_json(args.model)
    given = [f"--{k.replace('_', '-')}" for k, default in
             (("lens_light", "none"), ("source", None), ("subhalos", 0), ("z_lens", None),
              ("z_source", None)) if getattr(args, k, default) != default]
    if given:
        raise ValueError(f"--model {args.model} gives the whole model: drop {given}")
    args.source = spec.source
    args.subhalos = spec.subhalos.count
    args.z_lens, args.z_source = spec.z_lens, spec.z_source
    args.lens_light = "none" if not spec.lens_light else "spec"
    return spec


def build_model_from_args(args, batch_size: int):
    """The :class:`LensModel` of a command's model and data options (``fit``,
    ``sensitivity``): ``(model, image, spec)``, ``spec`` the ``--model`` spec or None."""
    from .inference import build_model

    obs_img = load_image_args(args)
    for note in obs_img.notes:
        print(f"tfstronglens {args.command}: {note}", file=sys.stderr)
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


def _fit(args) -> int:
    from .inference import fit_lens, write_fit_outputs

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
    if "rim" in (args.source, args.source_init) and args.lens_light != "none":
        raise ValueError("the RIM reconstructs the source from data without lens light: "
                         "--source rim / --source-init rim need --lens-light none")
    _check_out(args.out, args.overwrite)
    model, obs_img, spec = build_model_from_args(args, min(16, args.num_starts))
    obs = obs_img.observation
    print(f"tfstronglens fit: {len(model.param_names)} parameters, method {args.method}",
          file=sys.stderr)
    map_init = None
    if args.source_init == "rim":
        from .inference import find_map, source_init_from_rim
        from .models.rim import RIMSource

        rim_model = model.replace(source=RIMSource())
        print(f"tfstronglens fit: --source-init rim: MAP of the {len(rim_model.param_names)} "
              "lens parameters with the RIM's source", file=sys.stderr)
        rim_map = find_map(rim_model, num_starts=args.num_starts, num_steps=args.map_steps,
                           seed=args.seed, progress=not args.no_progress)
        map_init = source_init_from_rim(model, rim_map.summary())
    result = fit_lens(model, **_fit_kwargs(args), map_init=map_init,
                      checkpoint=os.path.join(args.out, "hmc_checkpoint.npz"))
    settings = {"image": os.path.abspath(args.image), "lens": args.lens,
                "model": None if spec is None else spec.to_dict(),
                "lens_light": args.lens_light,
                "source": args.source if spec is None else spec.to_dict()["source"],
                "source_init": args.source_init,
                "subhalos": args.subhalos, "z_lens": args.z_lens or 0.5,
                "z_source": args.z_source or 2.0,
                "pixel_scale": obs.pixel_scale, "notes": obs_img.notes}
    paths = write_fit_outputs(result, args.out, overwrite=True, extra_settings=settings)
    _print_summary(result)
    if result.detection is not None:
        det = result.detection
        print(f"subhalo detection: delta log L = {det.delta_log_likelihood:.2f}, "
              f"significance = {det.significance_sigma:.2f} sigma, mass = {det.mass:.3g} "
              f"M_sun at ({det.center_x:.3f}, {det.center_y:.3f}) arcsec")
    print(f"wrote {', '.join(sorted(os.path.basename(p) for p in paths.values()))} to "
          f"{args.out} in {result.timings['total']:.0f} s")
    return 0


def _demo(args) -> int:
    from .inference import fit_lens, write_fit_outputs
    from .inference.demo import demo_problem, demo_table

    _check_out(args.out, args.overwrite)
    t0 = time.perf_counter()
    print("tfstronglens demo: simulating an HST/ACS-like lens (SIE + shear, VAE source, "
          "one 1e10 M_sun point-mass subhalo)...", file=sys.stderr)
    model, truth, data = demo_problem(seed=args.seed)
    print(f"tfstronglens demo: fitting {len(model.param_names)} parameters "
          f"(method {args.method})", file=sys.stderr)
    checkpoint = None if args.out is None else os.path.join(args.out, "hmc_checkpoint.npz")
    result = fit_lens(model, data, **_fit_kwargs(args), checkpoint=checkpoint,
                      detection_starts=25, detection_steps=150)
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
        with open(os.path.join(args.out, "truth.json"), "w") as fh:
            json.dump(truth, fh, indent=2)
        print(f"wrote {', '.join(sorted(os.path.basename(p) for p in paths.values()))} "
              f"and truth.json to {args.out}")
    return 0
