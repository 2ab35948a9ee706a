#!/usr/bin/env python
"""End-to-end fit speed: MAP -> VI -> NUTS on one simulated lens, against the issue-#5 target.

Configuration: the lensing-core benchmark of ``benchmarks/simulate.py`` (issue #2): 60x60
pixels at 0.065", supersampling 2, 7x7 Gaussian PSF of FWHM 0.1", EPL + external shear lens,
elliptical Sersic lens light and elliptical Sersic source: 22 free parameters. The noise is
that of a single-orbit HST/ACS F814W image (4 x 550 s; sky 22.2 mag/arcsec^2, zero point
25.94, read noise 4 e-; the ``hst_acs_f814w`` preset) on 0.065" pixels. The data are drawn
from the fitted model itself at fixed truths inside the ranges of ``simulate.py``. The
lens galaxy's total flux is ``--lens-light-ratio`` (default 10, as for SLACS-like lenses,
whose deflector is 2-3 magnitudes brighter than the arcs in F814W) times that of the
lensed arcs; both amplitudes are then scaled by one common factor so that the
matched-filter S/N of the lensed source (with the lens light's Poisson noise,
``Observation.snr``) is ``--snr``.

The public pipeline :func:`tfstronglens.inference.fit_lens` (``method="hmc"``) then runs:
multi-start MAP (Adam), full-rank VI (``--vi-surrogate``) started at the MAP, and NUTS
(or ChEES, ``--kernel``; through the IAF flow with ``--neutra``) with ``--num-chains``
chains started from VI draws and preconditioned by the VI covariance. Printed: seconds per
stage (HMC including XLA compilation, whose estimate is given separately), gradient
evaluations, min bulk/tail ESS and max R-hat over the 22 parameters, ESS per second (of
the NUTS sampling time and of the whole pipeline), how many truths lie inside the 68%
intervals, and the comparison with the issue's target ("the whole pipeline, to at least
1000 effective samples for every parameter, in under 10 minutes on this CPU").

Usage: ``python benchmarks/fit.py [--quick] [--num-chains 8] [--num-results 400]
[--num-burnin 300] [--init prior|cnn] [--json out.json]``; ``--map-study N`` runs only
the MAP on N noise realisations, with starts from the prior and from the lens CNN.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfstronglens as tsl  # noqa: E402
from tfstronglens.inference import LensModel, build_model, fit_lens  # noqa: E402
from tfstronglens.inference.kernels import self_tuning_samplers  # noqa: E402

NUM_PIX, PIX, SS, FWHM, KSIZE = 60, 0.065, 2, 0.1, 7  # as benchmarks/simulate.py

# Truths inside the ranges of benchmarks/simulate.py's random_params; the amplitudes
# (e-/s/arcsec^2) are rescaled to the requested S/N.
TRUTH = {
    "lens.0.theta_E": 1.1, "lens.0.gamma": 2.05, "lens.0.e1": 0.1, "lens.0.e2": -0.08,
    "lens.0.center_x": 0.02, "lens.0.center_y": -0.01,
    "lens.1.gamma1": 0.03, "lens.1.gamma2": -0.02,
    "lens_light.0.amp": 4.0, "lens_light.0.R_sersic": 0.7, "lens_light.0.n_sersic": 3.0,
    "lens_light.0.e1": 0.08, "lens_light.0.e2": -0.05, "lens_light.0.center_x": 0.02,
    "lens_light.0.center_y": -0.01,
    "source.0.amp": 20.0, "source.0.R_sersic": 0.2, "source.0.n_sersic": 1.5,
    "source.0.e1": -0.1, "source.0.e2": 0.12, "source.0.center_x": 0.05,
    "source.0.center_y": -0.04,
}

TARGET_S = 600.0   # issue #5: whole pipeline in under 10 minutes ...
TARGET_ESS = 1000  # ... to at least 1000 effective samples for every parameter
GIGALENS_S = 360.0  # issue #5's quoted reference: GIGA-Lens ~6 min per lens on one A100

QUICK = dict(num_starts=4, map_steps=30, vi_steps=30, num_chains=2, num_results=20,
             num_burnin=20)


def make_problem(snr, seed, dtype="float32", lens_light_ratio=10.0):
    """``(observation, truth, data)`` for the benchmark configuration at arc S/N ``snr``."""
    from scipy.optimize import brentq

    obs = tsl.Observation.from_instrument("hst_acs_f814w", num_pix=NUM_PIX, pixel_scale=PIX,
                                          psf=tsl.GaussianPSF(FWHM, size=KSIZE), dtype=dtype)
    gen = LensModel(obs, "epl+shear", "sersic", "sersic", supersample=SS)
    if sorted(gen.param_names) != sorted(TRUTH):  # pragma: no cover - configuration check
        raise RuntimeError(f"unexpected parameters {gen.param_names}")

    def render(truth):
        return np.asarray(gen.render({k: tf.constant([v], gen.dtype)
                                      for k, v in truth.items()}))[0].astype(np.float64)

    arcs = render({**TRUTH, "lens_light.0.amp": 0.0})
    light = render({**TRUTH, "source.0.amp": 0.0})
    light_scale = lens_light_ratio * arcs.sum() / light.sum()
    light = light * light_scale
    bkg2, texp = obs.background_rms ** 2, obs.total_exposure_time

    def arc_snr(k):  # Observation.snr of k * arcs with k * light as extra noise
        return math.sqrt(np.sum((k * arcs) ** 2 / (bkg2 + np.maximum(k * (arcs + light), 0)
                                                   / texp)))

    k = brentq(lambda k: arc_snr(k) - snr, 1e-8, 1e8, xtol=1e-12, rtol=1e-10)
    truth = dict(TRUTH)
    truth["lens_light.0.amp"] *= k * light_scale
    truth["source.0.amp"] *= k
    data = np.asarray(gen.simulate({k_: tf.constant([v], gen.dtype)
                                    for k_, v in truth.items()}, seed=seed))[0]
    return obs, truth, data, arc_snr(k)


def mirrored_mode(fit, truth):
    """Whether a fit's (e1, e2, gamma1, gamma2) is nearer the truth's mirror image
    ``-(e, gamma)`` than the truth: the ellipticity/shear degeneracy a multi-start MAP from
    the prior sometimes lands in."""
    keys = ("lens.0.e1", "lens.0.e2", "lens.1.gamma1", "lens.1.gamma2")
    e_t = np.array([truth[k] for k in keys])
    e_f = np.array([fit[k] for k in keys])
    return bool(np.linalg.norm(e_f + e_t) < np.linalg.norm(e_f - e_t))


def map_study(args, num_seeds):
    """``--map-study N``: the MAP alone (``fit_lens(method="map")``, the benchmark's starts
    and steps) on N noise realisations of the benchmark lens, starts drawn from the prior
    and from the shipped lens CNN (``init="cnn"``: the EPL + shear network for this model,
    the 60x60 image of 0.065" resampled onto its 64x64 grid of 0.05"): time, the mirrored
    ellipticity/shear mode, and the best log posterior."""
    rows = {"prior": [], "cnn": []}
    model = None
    for seed in range(num_seeds):
        obs, truth, data, _ = make_problem(args.snr, seed, lens_light_ratio=args.lens_light_ratio)
        if model is None:  # one model (its priors from the first image); data per fit
            model = build_model(obs, data, lens="epl+shear", source="sersic",
                                lens_light="sersic", supersample=SS,
                                compile_batch_size=args.compile_batch_size)
        for init in rows:
            t0 = time.perf_counter()
            res = fit_lens(model, data, method="map", num_starts=args.num_starts,
                           map_steps=args.map_steps, map_polish_steps=args.map_polish_steps,
                           seed=seed, init=init, progress=False)
            best = res.map.summary()
            rows[init].append(dict(time=time.perf_counter() - t0,
                                   mirrored=mirrored_mode(best, truth),
                                   log_post=float(res.map.log_posterior),
                                   theta_E=best["lens.0.theta_E"], gamma=best["lens.0.gamma"]))
            r = rows[init][-1]
            print(f"seed {seed}, starts from {init:5s}: {r['time']:.1f} s, mirrored "
                  f"{r['mirrored']}, log posterior {r['log_post']:.1f}, theta_E "
                  f"{r['theta_E']:.4f} (truth {truth['lens.0.theta_E']}), gamma "
                  f"{r['gamma']:.3f} (truth {truth['lens.0.gamma']})", flush=True)
    print(f"\nMAP of the benchmark lens ({num_seeds} noise realisations, {args.num_starts} "
          f"starts x {args.map_steps} Adam steps + polish):")
    for init, r in rows.items():
        t = np.array([x["time"] for x in r])
        print(f"  starts from {init:5s}: median {np.median(t):.1f} s; mirrored mode "
              f"{sum(x['mirrored'] for x in r)}/{len(r)}")
    d = np.array([b["log_post"] - a["log_post"] for a, b in zip(rows["prior"], rows["cnn"])])
    print(f"  best log posterior, cnn - prior starts: median {np.median(d):.2f}; cnn higher by "
          f"> 1 on {(d > 1).sum()}, lower by > 1 on {(d < -1).sum()}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-starts", type=int, default=32)
    ap.add_argument("--map-steps", type=int, default=400)
    ap.add_argument("--map-polish-steps", type=int, default=30,
                    help="Levenberg-Marquardt iterations after Adam (fit_lens default 30)")
    ap.add_argument("--vi-steps", type=int, default=400)
    ap.add_argument("--num-chains", type=int, default=8)
    ap.add_argument("--num-results", type=int, default=400)
    ap.add_argument("--num-burnin", type=int, default=300)
    ap.add_argument("--max-tree-depth", type=int, default=8)
    ap.add_argument("--compile-batch-size", type=int, default=None,
                    help="LensModel(compile_batch_size=...): one XLA compilation of the "
                         "value-and-gradient shared by MAP and VI instead of one per batch "
                         "size (default: off, as fit_lens users get it)")
    ap.add_argument("--snr", type=float, default=80.0, help="matched-filter S/N of the arcs")
    ap.add_argument("--lens-light-ratio", type=float, default=10.0,
                    help="total flux of the lens galaxy over that of the lensed arcs")
    ap.add_argument("--adapt-mass-matrix", default="dense",
                    choices=["dense", "diag", "none"],
                    help="NUTS metric learned in burn-in windows (fit_lens default: dense)")
    ap.add_argument("--kernel", default="nuts", choices=self_tuning_samplers(),
                    help="fit_lens hmc_kernel: NUTS (default) or ChEES-HMC (use many chains, "
                         "e.g. --num-chains 32)")
    ap.add_argument("--target-accept", type=float, default=None,
                    help="step-size adaptation target (fit_lens default: 0.8 for NUTS, 0.651 "
                         "for ChEES, on the harmonic mean over chains)")
    ap.add_argument("--vi-surrogate", default="full_rank",
                    choices=["mean_field", "full_rank", "iaf"])
    ap.add_argument("--neutra", action="store_true",
                    help="NeuTra-HMC through the IAF surrogate (needs --vi-surrogate iaf)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help=f"tiny settings for a smoke run ({QUICK}); no meaningful ESS")
    ap.add_argument("--progress", action="store_true", help="progress bars on stderr")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--no-tune-allocator", action="store_true",
                    help="leave glibc malloc at its defaults (see tfstronglens.runtime)")
    ap.add_argument("--init", default="prior", choices=["prior", "cnn"],
                    help="MAP starts: prior draws, or draws of the shipped lens CNN")
    ap.add_argument("--map-study", type=int, default=0, metavar="N",
                    help="only the MAP, with prior and CNN starts, on N noise realisations")
    args = ap.parse_args(argv)
    if args.map_study:
        return map_study(args, args.map_study)
    if args.quick:
        for key, val in QUICK.items():
            setattr(args, key, val)
    tuned = False if args.no_tune_allocator else tsl.runtime.tune_cpu_allocator()
    load_before = os.getloadavg()

    obs, truth, data, snr = make_problem(args.snr, args.seed,
                                         lens_light_ratio=args.lens_light_ratio)
    model = build_model(obs, data, lens="epl+shear", source="sersic", lens_light="sersic",
                        supersample=SS, compile_batch_size=args.compile_batch_size)
    names = list(model.param_names)
    settings = dict(num_starts=args.num_starts, map_steps=args.map_steps,
                    map_polish_steps=args.map_polish_steps,
                    vi_steps=args.vi_steps, num_chains=args.num_chains,
                    num_results=args.num_results, num_burnin=args.num_burnin,
                    max_tree_depth=args.max_tree_depth, seed=args.seed,
                    hmc_kernel=args.kernel, target_accept=args.target_accept,
                    vi_surrogate=args.vi_surrogate, neutra=args.neutra, init=args.init,
                    adapt_mass_matrix=(None if args.adapt_mass_matrix == "none"
                                       else args.adapt_mass_matrix))
    t0 = time.perf_counter()
    res = fit_lens(model, data, method="hmc", progress=args.progress, **settings)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    m = res.mcmc
    tm = res.timings
    summ = res.summary
    ess_bulk = {n: summ[n]["ess_bulk"] for n in names}
    ess_tail = {n: summ[n]["ess_tail"] for n in names}
    rhat = {n: summ[n]["r_hat"] for n in names}
    min_bulk_name = min(ess_bulk, key=ess_bulk.get)
    min_tail_name = min(ess_tail, key=ess_tail.get)
    min_ess = min(min(ess_bulk.values()), min(ess_tail.values()))
    inside = {n: bool(summ[n]["p16"] <= truth[n] <= summ[n]["p84"]) for n in names}
    # gradient evaluations (one per point): MAP Adam steps x starts; VI steps x the ELBO's
    # Monte Carlo sample size (fit_vi's default 16, which fit_lens does not change; the
    # Laplace initialisation's few evaluations are not counted); NUTS leapfrog steps of
    # burn-in and kept draws over all chains.
    grads_map = args.num_starts * args.map_steps
    grads_vi = args.vi_steps * 16
    grads_hmc_burn = int(np.sum(m.warmup_stats["n_steps"])) if "n_steps" in m.warmup_stats \
        else 0
    grads_hmc = int(np.sum(m.sample_stats["n_steps"]))
    ok = tm["total"] < TARGET_S and min_ess >= TARGET_ESS

    results = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": load_after,
        "tensorflow": tf.__version__, "allocator_tuned": tuned, "settings": settings,
        "quick": args.quick, "compile_batch_size": args.compile_batch_size, "arc_snr": snr,
        "background_rms": obs.background_rms,
        "total_exposure_time": obs.total_exposure_time, "num_params": len(names),
        "timings": dict(tm), "wall_time": wall,
        "hmc_timing": {k: v for k, v in m.timing.items()},
        "gradient_evaluations": {"map": grads_map, "vi": grads_vi,
                                 "hmc_burnin": grads_hmc_burn, "hmc_sampling": grads_hmc},
        "acceptance_rate": m.acceptance_rate.tolist(),
        "divergences": m.num_divergences.tolist(),
        "warmup_divergences": int(np.sum(m.warmup_stats.get("diverging", 0))),
        "step_size": m.step_size.tolist(),
        "mean_tree_depth": (None if m.mean_tree_depth is None
                            else m.mean_tree_depth.tolist()),
        "min_ess_bulk": min(ess_bulk.values()), "min_ess_bulk_param": min_bulk_name,
        "min_ess_tail": min(ess_tail.values()), "min_ess_tail_param": min_tail_name,
        "max_r_hat": max(rhat.values()), "max_r_hat_param": max(rhat, key=rhat.get),
        "min_ess_per_s_sampling": min_ess / m.timing["sampling"],
        "min_ess_per_s_total": min_ess / tm["total"],
        "truths_in_68": int(sum(inside.values())),
        "meets_target": ok,
        "parameters": {n: {**summ[n], "truth": truth[n], "in_68": inside[n]} for n in names},
    }

    print(f"\nConfiguration: {NUM_PIX}x{NUM_PIX} px at {PIX}\", supersample {SS}, EPL+SHEAR, "
          f"SERSIC_ELLIPSE lens light + source ({len(names)} parameters), {KSIZE}x{KSIZE} "
          f"Gaussian PSF FWHM {FWHM}\"; HST/ACS F814W noise: background rms "
          f"{obs.background_rms:.4g} e-/s, exposure {obs.total_exposure_time:.0f} s; arc S/N "
          f"{snr:.1f}")
    print(f"{results['cpus']} CPUs ({results['machine']}), TF {tf.__version__}, load average "
          f"before {load_before[0]:.2f} / after {load_after[0]:.2f} (1 min)"
          + ("   [--quick: smoke-run settings]" if args.quick else ""))
    print(f"settings: {settings}, compile_batch_size={args.compile_batch_size}")
    print(f"\n{'parameter':<24}{'truth':>10}{'mean':>10}{'std':>9}{'16%':>10}{'84%':>10}"
          f"{'R-hat':>7}{'ESS_b':>7}{'ESS_t':>7}{'in68':>5}")
    for n in names:
        s = summ[n]
        print(f"{n:<24}{truth[n]:10.4g}{s['mean']:10.4g}{s['std']:9.2g}{s['p16']:10.4g}"
              f"{s['p84']:10.4g}{s['r_hat']:7.3f}{s['ess_bulk']:7.0f}{s['ess_tail']:7.0f}"
              f"{'yes' if inside[n] else 'no':>5}")
    ht = m.timing
    comp = ht.get("compile_estimate")
    print(f"\ntime per stage [s]: MAP {tm['map']:.1f}, VI {tm['vi']:.1f}, HMC {tm['hmc']:.1f} "
          f"(burn-in {ht['warmup']:.1f} + sampling {ht['sampling']:.1f}; XLA compile "
          f"estimate {'n/a' if comp is None else f'{comp:.1f}'}), total {tm['total']:.1f}")
    print(f"gradient evaluations: MAP {grads_map}, VI {grads_vi}, HMC burn-in "
          f"{grads_hmc_burn} + sampling {grads_hmc} (all chains; "
          + (f"mean tree depth {np.mean(m.mean_tree_depth):.2f})" if m.mean_tree_depth
             is not None else f"mean leapfrog steps {np.mean(m.sample_stats['n_steps']):.1f})"))
    print(f"{args.kernel.upper()}: acceptance {np.mean(m.acceptance_rate):.3f} (per chain "
          f"{np.round(m.acceptance_rate, 3).tolist()}), divergences "
          f"{int(np.sum(m.num_divergences))} (burn-in {results['warmup_divergences']}), step "
          f"size {np.median(m.step_size):.3g}")
    print(f"min ESS bulk {results['min_ess_bulk']:.0f} ({min_bulk_name}), min ESS tail "
          f"{results['min_ess_tail']:.0f} ({min_tail_name}), max R-hat "
          f"{results['max_r_hat']:.4f} ({results['max_r_hat_param']}) over "
          f"{args.num_chains} chains x {args.num_results} draws")
    print(f"min ESS (bulk and tail) per second: {results['min_ess_per_s_sampling']:.2f} of NUTS "
          f"sampling time, {results['min_ess_per_s_total']:.2f} of the whole pipeline")
    print(f"truths inside the 68% intervals: {results['truths_in_68']} / {len(names)} "
          f"(expected ~{0.68 * len(names):.0f})")
    print(f"\nissue #5 target: whole pipeline to >= {TARGET_ESS} effective samples for every "
          f"parameter in < {TARGET_S / 60:.0f} min on this CPU: "
          f"{'MET' if ok else 'NOT MET'} (total {tm['total'] / 60:.2f} min, min ESS "
          f"{min_ess:.0f})")
    if min_ess > 0:
        fixed = tm["total"] - ht["sampling"]
        print(f"  extrapolated to {TARGET_ESS} ESS (MAP + VI + burn-in as run, sampling time "
              f"scaled by {TARGET_ESS}/min ESS): ~"
              f"{(fixed + ht['sampling'] * TARGET_ESS / min_ess) / 60:.2f} min")
    print(f"reference quoted in issue #5 (not measured here): GIGA-Lens ~{GIGALENS_S / 60:.0f} "
          "min per lens on one A100 GPU")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(results, fh, indent=2, default=float)
        os.replace(tmp, args.json)
    return results


if __name__ == "__main__":
    main()
