"""The ``train-ratio`` and ``infer-population`` commands (see :mod:`tfstronglens.cli`)."""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

from .cli import _UserError, _check_output_dir, _positive_int
from .cli_args import (add_training_args, check_training_out, read_json_config,
                       training_strategy, worker_finished)

__all__ = ["add_parsers", "read_population_images"]

#: Names the commands accept for a population parameter, besides the table's own.
_ALIASES = {"m_hm": "log10_m_hm", "beta": "subhalo_beta"}


def _param_names(text):
    from .simulation.population import POPULATION_PARAMETERS

    names = [_ALIASES.get(n.strip(), n.strip()) for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in POPULATION_PARAMETERS]
    if not names or unknown:
        raise _UserError(f"--params {text!r}: unknown population parameter(s) {unknown}; "
                         f"known: {sorted(POPULATION_PARAMETERS)} (m_hm is inferred as "
                         "log10_m_hm)")
    return names


def _prior_ranges(items, names):
    ranges = {}
    for item in items or ():
        name, sep, rng = item.partition("=")
        name = _ALIASES.get(name.strip(), name.strip())
        lo, sep2, hi = rng.partition(":")
        try:
            if not (sep and sep2):
                raise ValueError
            ranges[name] = (float(lo), float(hi))
        except ValueError:
            raise _UserError(f"--prior {item!r}: expected NAME=LOW:HIGH") from None
        if name not in names:
            raise _UserError(f"--prior {item!r}: {name} is not among --params {names}")
    return ranges


def add_parsers(sub):
    """Add ``train-ratio`` and ``infer-population`` to the CLI's subparsers."""
    from .models.ratio import RATIO_LOSSES

    tr = sub.add_parser(
        "train-ratio",
        help="train the subhalo-population likelihood-ratio estimator on simulated lenses",
        description="Train a neural likelihood-ratio estimator of subhalo-population "
                    "parameters (tfstronglens.models.PopulationRatioEstimator) on an infinite "
                    "stream of paired simulations (no files), with the ALICES loss (joint "
                    "ratio and joint score from the differentiable simulator) or a plain "
                    "classifier; then recalibrate it on held-out pairs and measure the "
                    "coverage of its posteriors over simulated ensembles. Writes "
                    "DIR/ratio.keras, DIR/saved_model/, DIR/report.json and "
                    "DIR/calibration.png; rerunning the same command resumes.")
    tr.add_argument("--config", default=None, metavar="CONFIG.json",
                    help="LensSimulationConfig JSON of everything but the inferred parameters "
                         "(subhalo_model cdm or wdm; default: HST-like 32x32, WDM subhalos)")
    tr.add_argument("--params", default="kappa_sub,log10_m_hm", metavar="NAMES",
                    help="comma-separated population parameters to infer: kappa_sub, "
                         "subhalo_beta, log10_m_hm (alias m_hm) (default: %(default)s)")
    tr.add_argument("--prior", action="append", metavar="NAME=LOW:HIGH",
                    help="uniform prior range of a parameter (repeatable; default: the "
                         "table's, e.g. kappa_sub 0.002:0.02, log10_m_hm 7:10)")
    tr.add_argument("--loss", choices=RATIO_LOSSES, default="alices",
                    help="training loss (default: %(default)s)")
    tr.add_argument("--score-weight", type=float, default=1.0,
                    help="weight of the score term of the alices loss (default: %(default)s)")
    tr.add_argument("--latent-weight", type=float, default=1.0,
                    help="weight of the auxiliary regression of the latent subhalos' number "
                         "and total mass from the image features (default: %(default)s)")
    tr.add_argument("--num-ensembles", type=_positive_int(10**5), default=200,
                    help="simulated ensembles of the coverage report (default: %(default)s)")
    tr.add_argument("--lenses-per-ensemble", type=_positive_int(10**5), default=10,
                    help="lenses per ensemble (default: %(default)s)")
    add_training_args(tr, steps=4000, batch_size=64, num_heldout=2048)
    tr.set_defaults(func=_train_ratio)

    ip = sub.add_parser(
        "infer-population",
        help="posterior of the subhalo population from many lens images",
        description="Posterior of the subhalo-population parameters from lens images (FITS "
                    "files or folders of them, e.g. the output of `tfstronglens simulate` "
                    "at the estimator's configuration) with a likelihood-ratio estimator: "
                    "the lenses' log-ratios add on a grid over the prior. Writes "
                    "DIR/posterior.json (per parameter mean, std, 2.5/16/50/84/97.5 "
                    "percentiles; the grid and log posterior) and DIR/posterior.png. "
                    "--show-config prints the estimator's simulation configuration as the "
                    "JSON `simulate --config` reads, and its parameters and priors.")
    ip.add_argument("images", nargs="*", metavar="IMAGE.fits|DIR",
                    help="lens images (e-/s per pixel, with a NOISE extension or BKGRMS/EXPTIME "
                         "headers), or folders of *.fits")
    ip.add_argument("--model", default="pretrained", metavar="pretrained|DIR",
                    help="the estimator: 'pretrained' or a train-ratio output folder / .keras")
    ip.add_argument("--points", type=_positive_int(1001), default=None, metavar="N",
                    help="grid points per parameter (default: 61 for one parameter, 41 for "
                         "two, 21 for three)")
    ip.add_argument("--show-config", action="store_true",
                    help="print the configuration the estimator was trained for and exit")
    ip.add_argument("--out", default=None, metavar="DIR", help="output directory")
    ip.add_argument("--overwrite", action="store_true",
                    help="write into DIR even if it is not empty")
    ip.set_defaults(func=_infer_population)


def _read_config(path):
    if path is None:
        return None
    data = read_json_config(path)
    from .simulation import LensSimulationConfig

    try:
        cfg = LensSimulationConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise _UserError(f"--config {path!r}: {exc}") from None
    if cfg.subhalo_model == "none":
        raise _UserError(f"--config {path!r}: subhalo_model must be 'cdm' or 'wdm' to infer "
                         "the subhalo population, got 'none'")
    return data


def _train_ratio(args) -> int:
    from .models.ratio_training import TRAIN_COMMAND, train_ratio

    names = _param_names(args.params)
    ranges = _prior_ranges(args.prior, names)
    simulation = _read_config(args.config)
    check_training_out(args, TRAIN_COMMAND, "train-ratio")
    try:
        from .simulation.population import PopulationPrior

        PopulationPrior.from_names(names, ranges)
        if simulation is not None and "log10_m_hm" in names and \
                simulation.get("subhalo_model") != "wdm":
            raise ValueError("inferring log10_m_hm needs subhalo_model 'wdm' in --config")
    except ValueError as exc:
        raise _UserError(str(exc)) from None
    report = train_ratio(args.out, params=names, priors=ranges, simulation=simulation,
                         steps=args.steps, batch_size=args.batch_size, loss=args.loss,
                         score_weight=args.score_weight, latent_weight=args.latent_weight,
                         learning_rate=args.learning_rate,
                         steps_per_checkpoint=args.steps_per_checkpoint,
                         num_heldout=args.num_heldout, num_ensembles=args.num_ensembles,
                         lenses_per_ensemble=args.lenses_per_ensemble, seed=args.seed,
                         strategy=training_strategy(args), overwrite=args.overwrite,
                         progress=not args.no_progress)
    if worker_finished(report, "train-ratio"):
        return 0
    cov = report["heldout"]["coverage"]
    print(f"train-ratio: {report['steps']} steps; held-out cross-entropy "
          f"{report['heldout']['bce']:.4f} (chance 0.6931); coverage of the 68/95% regions "
          f"over {report['heldout']['num_ensembles']} ensembles: "
          f"{cov['0.68']['coverage']:.2f}/{cov['0.95']['coverage']:.2f}")
    return 0


def _expand(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.fits")))
            if not found:
                raise _UserError(f"image folder {p!r} holds no .fits files")
            files.extend(found)
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise _UserError(f"image {p!r} does not exist")
    return files


#: FITS header cards of ``simulate`` output that must match the estimator's simulation
_HEADER_CHECKS = (("INSTRUME", "instrument"), ("ZLENS", "z_lens"), ("ZSOURCE", "z_source"))


def _noise_of(path, obs):
    """The per-pixel noise sigma: the file's ``NOISE`` extension (``simulate`` writes the
    one the image was drawn with, what the estimator saw in training), else the noise the
    header describes for a model equal to the data."""
    from .io import read_fits

    try:
        noise, _ = read_fits(path, hdu="NOISE")
    except ValueError:
        return np.asarray(obs.noise_sigma(), np.float32)
    if noise.shape != obs.data.shape:
        raise ValueError(f"{path}: NOISE extension of shape {noise.shape} for an image of "
                         f"shape {obs.data.shape}")
    return np.asarray(noise, np.float32)


def read_population_images(paths, net):
    """``(image [N, n, n], noise [N, n, n], files)`` of FITS images (or folders of them)
    for the estimator ``net``: the size and pixel scale must be the estimator's, and the
    instrument and redshifts too where the header states them (``ValueError`` naming the
    file otherwise)."""
    from .io import load_lens_image

    files = _expand(paths)
    if not files:
        raise ValueError("no images given: pass FITS files or folders of them")
    sim = net.simulation or {}
    images, noises = [], []
    for path in files:
        obs = load_lens_image(path)
        n = obs.data.shape
        if n != (net.num_pix, net.num_pix):
            raise ValueError(f"{path}: image of {n[0]}x{n[1]} pixels, but the estimator was "
                             f"trained on {net.num_pix}x{net.num_pix} images")
        ps = obs.observation.pixel_scale
        if abs(ps - net.pixel_scale) > 1e-6 * net.pixel_scale:
            raise ValueError(f"{path}: pixel scale {ps}\" but the estimator was trained at "
                             f"{net.pixel_scale}\"")
        header = obs.header
        for card, field in _HEADER_CHECKS:
            if card in header and field in sim and header[card] != sim[field]:
                raise ValueError(f"{path}: {card} = {header[card]!r}, but the estimator was "
                                 f"trained with {field} = {sim[field]!r}")
        images.append(np.asarray(obs.data, np.float32))
        noises.append(_noise_of(path, obs))
    return np.stack(images), np.stack(noises), files


def _infer_population(args) -> int:
    from .inference.population import population_posterior
    from .io._atomic import atomic_output
    from .models.ratio import load_ratio_estimator

    try:
        net = load_ratio_estimator(args.model)
    except FileNotFoundError as exc:
        raise _UserError(f"--model: {exc}") from None
    if args.show_config:
        cfg = dict(net.simulation or {}, seed=0)
        print(json.dumps(cfg, indent=2, sort_keys=True))
        print("inferred population parameters (uniform priors): "
              + ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, lo, hi in
                          zip(net.param_names, net.prior.low, net.prior.high)), file=sys.stderr)
        return 0
    if args.out is None:
        raise _UserError("--out DIR is required (unless --show-config)")
    if not args.images:
        raise _UserError("no images given: pass FITS files or folders of them")
    try:
        image, noise, files = read_population_images(args.images, net)
    except ValueError as exc:
        raise _UserError(str(exc)) from None
    _check_output_dir(args.out, args.overwrite, "into it")
    points = args.points or {1: 61, 2: 41}.get(net.dim, 21)
    post = population_posterior(net, {"image": image, "noise": noise}, points_per_axis=points)
    os.makedirs(args.out, exist_ok=True)
    out = {"model": str(args.model), "files": [os.path.abspath(f) for f in files],
           "priors": net.prior.to_dict(), **post.to_dict()}
    with atomic_output(os.path.join(args.out, "posterior.json"), overwrite=True) as tmp:
        with open(tmp, "w") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")
    from .plotting import save_population_posterior

    save_population_posterior(post, os.path.join(args.out, "posterior.png"))
    s = post.summary()
    print(f"infer-population: {len(files)} lenses; " + "; ".join(
        f"{n} = {v['p50']:.4g} (+{v['p84'] - v['p50']:.2g} -{v['p50'] - v['p16']:.2g})"
        for n, v in s.items()) + f"; wrote {args.out}")
    return 0

