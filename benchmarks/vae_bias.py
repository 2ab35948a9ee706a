#!/usr/bin/env python
"""Lens-parameter bias and 68% coverage of the VAE-source fit against arc S/N (issue #19).

The reference talk's caveat: "results are slightly biased for low S/N images; likely due
to limited expressiveness of source model". This measures it. Each lens is an HST/ACS
F814W-like image (the demo's: 64x64 pixels of 0.05", supersampling 2, Gaussian PSF of
FWHM 0.1") of an EPL + shear lens with random parameters, whose source is a galaxy the
VAE never saw: a noise-free stamp of the ``validation`` split of ``synthetic_galaxies/64``
(``--galaxies synthetic``) or one of the five real AEGIS F814W stamps of
``../shared/data/galsim_real`` (``--galaxies aegis``); or, as the control without
source-model misspecification, the held-out synthetic stamps encoded and decoded by the
VAE (``--galaxies vae-projected``: what remains is the inference's own error). Drawn as a
pixelated source at the
stamps' 0.03"/pixel, scaled to the arc S/N and given the instrument's noise. It is fitted
by :func:`tfstronglens.inference.fit_lens` with the model of the 75-parameter benchmark
(EPL + shear, the pretrained VAE source at the same 0.03"/pixel) by ``--method``:
``hmc`` (MAP -> VI -> ChEES), ``vi`` or ``map`` (Laplace), cheaper and only as good as
those approximations.

Per S/N it prints, over the 8 lens parameters of every lens: the mean and the spread of
the standardised error ``(posterior mean - truth) / posterior sd`` (0 and 1 for a
calibrated, unbiased posterior), the fraction of truths inside the central 68% interval
(0.68, with its binomial standard error), and per parameter the median error in its own
units. One JSON line per fitted lens goes to ``--out`` (default ``vae_bias.jsonl``); a
rerun skips the lenses already there, so an interrupted study resumes.

    python benchmarks/vae_bias.py --snr 15,30,50,100 --num-lenses 20 --method hmc
    python benchmarks/vae_bias.py --snr 15,50 --num-lenses 5 --method vi     # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from tfstronglens.inference import LensModel, fit_lens  # noqa: E402
from tfstronglens.lensing.simulator import Simulator  # noqa: E402
from tfstronglens.models import VAESource  # noqa: E402
from tfstronglens.observation import Observation  # noqa: E402
from tfstronglens.profiles import PixelatedSource  # noqa: E402
from tfstronglens.simulation.sources import load_galaxy_stamps  # noqa: E402

LENS_PARAMS = ("lens.0.theta_E", "lens.0.gamma", "lens.0.e1", "lens.0.e2",
               "lens.0.center_x", "lens.0.center_y", "lens.1.gamma1", "lens.1.gamma2")


def draw_lens(rng):
    """Random EPL + shear and source position around the demo's configuration."""
    return {"lens.0.theta_E": rng.uniform(0.9, 1.3), "lens.0.gamma": rng.uniform(1.85, 2.2),
            "lens.0.e1": rng.normal(0, 0.1), "lens.0.e2": rng.normal(0, 0.1),
            "lens.0.center_x": rng.normal(0, 0.02), "lens.0.center_y": rng.normal(0, 0.02),
            "lens.1.gamma1": rng.normal(0, 0.03), "lens.1.gamma2": rng.normal(0, 0.03),
            "source.0.center_x": rng.uniform(-0.1, 0.1),
            "source.0.center_y": rng.uniform(-0.1, 0.1)}


def galaxy_stamps(kind: str, count: int):
    """``(stamps [M, 64, 64], pixel scale)``: held-out synthetic or real AEGIS galaxies, or
    (``"vae-projected"``) the held-out synthetic ones encoded and decoded by the VAE: the
    same morphologies inside the fitted source model, the control without source-model
    misspecification."""
    if kind in ("synthetic", "vae-projected"):
        stamps, scale = load_galaxy_stamps("synthetic_galaxies/64", split="validation",
                                           count=count)
        if kind == "vae-projected":
            from tfstronglens.models import load_pretrained_vae
            vae = load_pretrained_vae()
            stamps = np.asarray(vae.decode(vae.encode(stamps)), np.float32)
        return stamps, scale
    here = os.path.dirname(os.path.abspath(__file__))
    import sys
    sys.path.insert(0, here)
    from rim_studies import aegis_stamps
    stamps, _ = aegis_stamps()
    if stamps is None:
        raise SystemExit("the AEGIS stamps (../shared/data/galsim_real) are not here")
    return stamps, 0.03


def simulate(obs, stamp, pixel_scale, truth, snr, seed):
    """The noisy image of ``stamp`` lensed by ``truth``'s EPL + shear at arc S/N ``snr``."""
    from tfstronglens.profiles import EPL, Shear
    sim = Simulator(obs.grid(2), lens=[EPL(), Shear()],
                    source=[PixelatedSource(stamp.shape[-1], pixel_scale)], psf=obs.psf)
    lens = [{k.split(".")[-1]: truth[k] for k in LENS_PARAMS if k.startswith("lens.0.")},
            {k.split(".")[-1]: truth[k] for k in LENS_PARAMS if k.startswith("lens.1.")}]
    clean = sim(lens=lens, source=[{"image": stamp, "center_x": truth["source.0.center_x"],
                                    "center_y": truth["source.0.center_y"]}])
    clean = clean * obs.scale_to_snr(clean, snr)[:, None, None]
    return np.asarray(obs.add_noise(clean, seed=seed))[0]


def fit_one(args, obs, source, stamp, index, snr):
    """Simulate lens ``index`` at ``snr`` and fit it with the VAE ``source``."""
    rng = np.random.default_rng([args.seed, index])
    truth = draw_lens(rng)
    data = simulate(obs, stamp, source.pixel_scale, truth, snr, seed=1000 * args.seed + index)
    model = LensModel(obs, "epl+shear", source, z_lens=0.5, z_source=2.0, data=data,
                      amp_scale=float(np.percentile(data, 99.5)) / obs.pixel_area,
                      jit_compile=args.xla)
    settings = dict(method=args.method, seed=index, num_starts=args.num_starts,
                    map_steps=args.map_steps, map_polish_steps=args.map_polish_steps,
                    vi_steps=args.vi_steps, hmc_kernel="chees", num_chains=args.num_chains,
                    num_burnin=args.num_burnin, num_results=args.num_results,
                    hmc_jit_compile=True, progress=False, detect=False)
    t0 = time.perf_counter()
    res = fit_lens(model, data, **settings)
    summ = res.summary
    row = {"snr": snr, "index": index, "method": args.method, "galaxies": args.galaxies,
           "seconds": time.perf_counter() - t0, "truth": truth,
           "mean": {n: summ[n]["mean"] for n in LENS_PARAMS},
           "sd": {n: summ[n]["std"] for n in LENS_PARAMS},
           "p16": {n: summ[n]["p16"] for n in LENS_PARAMS},
           "p84": {n: summ[n]["p84"] for n in LENS_PARAMS},
           "problems": list(res.problems)}
    if res.mcmc is not None:
        row["max_r_hat"] = max(s["r_hat"] for s in summ.values())
        row["min_ess_bulk"] = min(s["ess_bulk"] for s in summ.values())
    return row


def report(rows):
    """The table: per S/N, standardised error, coverage and median error per parameter."""
    for snr in sorted({r["snr"] for r in rows}):
        sel = [r for r in rows if r["snr"] == snr]
        z = np.array([[(r["mean"][n] - r["truth"][n]) / r["sd"][n] for n in LENS_PARAMS]
                      for r in sel])
        inside = np.array([[r["p16"][n] <= r["truth"][n] <= r["p84"][n]
                            for n in LENS_PARAMS] for r in sel])
        cov = inside.mean()
        se = np.sqrt(0.68 * 0.32 / inside.size)
        print(f"\nS/N {snr:g}: {len(sel)} lenses ({sel[0]['method']}, {sel[0]['galaxies']} "
              f"sources), median {np.median([r['seconds'] for r in sel]):.0f} s per lens")
        print(f"  standardised error (mean - truth) / sd over all lens parameters: mean "
              f"{z.mean():+.2f}, sd {z.std():.2f}; 68% coverage {cov:.2f} (nominal 0.68 "
              f"+- {se:.2f})")
        print(f"  {'parameter':18s} {'mean z':>8s} {'|z| median':>10s} {'coverage':>9s} "
              f"{'median |error|':>15s}")
        for j, n in enumerate(LENS_PARAMS):
            err = [abs(r["mean"][n] - r["truth"][n]) for r in sel]
            print(f"  {n:18s} {z[:, j].mean():+8.2f} {np.median(np.abs(z[:, j])):10.2f} "
                  f"{inside[:, j].mean():9.2f} {np.median(err):15.4f}")
        if "max_r_hat" in sel[0]:
            print(f"  HMC: max R-hat over lenses {max(r['max_r_hat'] for r in sel):.3f}, "
                  f"min bulk ESS {min(r['min_ess_bulk'] for r in sel):.0f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snr", default="15,30,50,100", help="comma-separated arc S/N values")
    ap.add_argument("--num-lenses", type=int, default=20, help="lenses per S/N")
    ap.add_argument("--galaxies", choices=("synthetic", "aegis", "vae-projected"),
                    default="synthetic")
    ap.add_argument("--method", choices=("map", "vi", "hmc"), default="hmc")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-starts", type=int, default=16)
    ap.add_argument("--map-steps", type=int, default=300)
    ap.add_argument("--map-polish-steps", type=int, default=0)
    ap.add_argument("--vi-steps", type=int, default=300)
    ap.add_argument("--num-chains", type=int, default=16)
    ap.add_argument("--num-burnin", type=int, default=100)
    ap.add_argument("--num-results", type=int, default=200)
    ap.add_argument("--xla", action="store_true", help="XLA-compile the model (every stage)")
    ap.add_argument("--out", default="vae_bias.jsonl",
                    help="one JSON line per fitted lens; a rerun resumes (default: %(default)s)")
    ap.add_argument("--report-only", action="store_true", help="print the table of --out")
    args = ap.parse_args(argv)
    try:
        snrs = [float(s) for s in args.snr.split(",")]
    except ValueError:
        ap.error(f"--snr must be comma-separated numbers, got {args.snr!r}")
    if any(s <= 0 for s in snrs) or args.num_lenses < 1:
        ap.error(f"--snr values must be > 0 and --num-lenses >= 1, got {args.snr!r}, "
                 f"{args.num_lenses}")
    rows = []
    if os.path.exists(args.out):
        with open(args.out) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    if not args.report_only:
        stamps, pixel_scale = galaxy_stamps(args.galaxies, args.num_lenses)
        obs = Observation.from_instrument("hst_acs_f814w", num_pix=64)
        # loaded (and its loop-friendly clone built) once for all lenses
        source = VAESource("synthetic_galaxies_64", pixel_scale=pixel_scale)
        done = {(r["snr"], r["index"], r["method"], r["galaxies"]) for r in rows}
        todo = [(snr, i) for snr in snrs for i in range(args.num_lenses)
                if (snr, i, args.method, args.galaxies) not in done]
        print(f"{len(todo)} fits to do ({len(rows)} already in {args.out})", flush=True)
        for k, (snr, i) in enumerate(todo):
            row = fit_one(args, obs, source, stamps[i % len(stamps)], i, snr)
            rows.append(row)
            with open(args.out, "a") as fh:  # one complete line per lens
                fh.write(json.dumps(row, default=float) + "\n")
            print(f"[{k + 1}/{len(todo)}] S/N {snr:g} lens {i}: {row['seconds']:.0f} s",
                  flush=True)
    rows = [r for r in rows if r["method"] == args.method and r["galaxies"] == args.galaxies
            and r["snr"] in snrs]
    if rows:
        report(rows)


if __name__ == "__main__":
    main()
