"""The ``sensitivity`` command: a subhalo sensitivity map of a lens image (see
:mod:`tfstronglens.inference.sensitivity`)."""

from __future__ import annotations

import os
import sys

import numpy as np

from .cli import _positive_float, _positive_int, _seed
from .cli_args import add_image_args
from .cli_fit import (_apply_model_spec, _check_out, _start_out, add_model_args,
                      build_model_from_args)

__all__ = ["add_parsers"]


def _masses(text: str) -> np.ndarray:
    """``LO:HI:N`` -> ``N`` log-spaced masses from ``LO`` to ``HI`` (M_sun)."""
    import argparse

    try:
        lo, hi, n = text.split(":")
        lo, hi, n = float(lo), float(hi), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LO:HI:N (e.g. 1e7:1e11:9), got {text!r}")
    if not (0 < lo < hi and np.isfinite(hi) and n >= 2):
        raise argparse.ArgumentTypeError(f"needs 0 < LO < HI and N >= 2, got {text!r}")
    return np.logspace(np.log10(lo), np.log10(hi), n)


def _region(text: str):
    import argparse

    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or not (vals[0] < vals[1] and vals[2] < vals[3]):
        raise argparse.ArgumentTypeError(f"must be XMIN,XMAX,YMIN,YMAX (arcsec) with "
                                         f"XMIN < XMAX and YMIN < YMAX, got {text!r}")
    return vals


def add_parsers(sub):
    p = sub.add_parser(
        "sensitivity",
        help="subhalo sensitivity map: lowest detectable mass per position",
        description="Fit the smooth model (no subhalo) to IMAGE.fits, then for every "
                    "position of a grid and every trial mass inject a subhalo of the "
                    "model's profile into the best fit and refit all smooth parameters "
                    "(batched Gauss-Newton): the lowest mass whose expected Delta chi^2 "
                    "reaches the threshold (5 sigma for 3 parameters by default). Writes "
                    "DIR/sensitivity.fits, DIR/sensitivity.json and DIR/sensitivity.png.")
    add_image_args(p)
    add_model_args(p)
    p.add_argument("--masses", type=_masses, default=_masses("1e7:1e11:9"), metavar="LO:HI:N",
                   help="log-spaced trial masses, M_sun, in the model's mass definition "
                        "(default: 1e7:1e11:9)")
    p.add_argument("--grid", type=_positive_int(10**4), default=20,
                   help="positions per side (default: %(default)s)")
    p.add_argument("--region", type=_region, default=None, metavar="XMIN,XMAX,YMIN,YMAX",
                   help="area of the grid in arcsec (default: the field of view)")
    p.add_argument("--threshold", type=_positive_float, default=None,
                   help="Delta chi^2 threshold (default: 5 sigma with 3 dof, 33.2)")
    p.add_argument("--subhalo-profile", choices=("TNFW", "PJAFFE", "SIS", "POINT_MASS"),
                   default=None, help="profile of the trial subhalos (default: the "
                                      "--model spec's, else TNFW)")
    p.add_argument("--refit-steps", type=_seed, default=4,
                   help="Gauss-Newton iterations of each smooth refit (default: "
                        "%(default)s)")
    p.add_argument("--num-starts", type=_positive_int(10**6), default=16,
                   help="MAP starts of the smooth fit (default: %(default)s)")
    p.add_argument("--map-steps", type=_positive_int(10**9), default=300,
                   help="Adam steps of the smooth fit (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, help="seed (default: 0)")
    p.add_argument("--no-xla", action="store_true", help="plain TensorFlow graphs")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="write into DIR even if it is not empty")
    p.set_defaults(func=_sensitivity)


def _sensitivity(args) -> int:
    from .inference import sensitivity_map, write_sensitivity_outputs

    _apply_model_spec(args)
    if args.source == "rim":
        raise ValueError("--source rim gives no smooth-model Jacobian to refit: use sersic, "
                         "pixelated or vae")
    _check_out(args.out, args.overwrite)
    model, obs_img, spec = build_model_from_args(args, min(16, args.num_starts))
    if args.subhalo_profile is not None:
        model = model.replace(subhalo_profile=args.subhalo_profile)
    _start_out(args.out, args.overwrite)
    print(f"tfstronglens sensitivity: smooth model of {model.replace(num_subhalos=0).num_params}"
          f" parameters, {args.grid}x{args.grid} positions x {len(args.masses)} masses, "
          f"{model.subhalo_profile} subhalos", file=sys.stderr)
    result = sensitivity_map(model, masses=args.masses, grid=args.grid, region=args.region,
                             threshold=args.threshold, refit_steps=args.refit_steps,
                             num_starts=args.num_starts, map_steps=args.map_steps,
                             seed=args.seed, progress=not args.no_progress)
    settings = {"image": os.path.abspath(args.image), "lens": args.lens,
                "model": None if spec is None else spec.to_dict(), "source": args.source
                if spec is None else spec.to_dict()["source"],
                "pixel_scale": obs_img.observation.pixel_scale, "notes": obs_img.notes}
    paths = write_sensitivity_outputs(result, args.out, obs_img.data,
                                      obs_img.observation.pixel_scale, overwrite=True,
                                      extra_settings=settings)
    s = result.summary()
    if s["num_detectable"]:
        print(f"lowest detectable subhalo mass: median 10^{s['median_log10_min_mass']:.2f}, "
              f"best 10^{s['min_log10_min_mass']:.2f} M_sun over {s['num_detectable']}/"
              f"{s['num_positions']} positions (aperture mass median "
              f"10^{s['median_log10_min_mass_aperture']:.2f} M_sun inside "
              f"{result.aperture:g}\")")
    else:
        print("no position reaches the threshold up to the largest trial mass")
    print(f"wrote {', '.join(sorted(os.path.basename(p) for p in paths.values()))} to "
          f"{args.out} in {result.timings['total']:.0f} s")
    return 0
