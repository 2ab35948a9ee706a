#!/usr/bin/env python
"""The learned-source posterior: cost per gradient, and the MAP -> VI -> HMC pipeline (#19).

The problem is that of ``tests/test_hmc_75d_lens.py``: the demo's HST/ACS-like image
(64x64 pixels at 0.05", supersampling 2, Gaussian PSF of FWHM 0.1") at arc S/N 50 of an
EPL + shear lens with the pretrained VAE source (64 latents, amplitude and position):
75 parameters. ``--subhalo`` fits the demo itself instead (SIE + shear, the VAE source
and one point-mass subhalo of 1e10 M_sun: 77 parameters), at ``--snr`` (default 50 here;
the demo runs at 80).

Two modes:

``python benchmarks/fit_vae.py --profile`` times one evaluation of the log posterior and
of its gradient, and of the VAE decoder alone, at batches of 1, 8 and 32 points (chains),
with and without XLA, on this machine: where the time of every leapfrog step goes.

``python benchmarks/fit_vae.py [--seed 0] [--kernel chees] [--num-chains 32]
[--num-burnin 300] [--num-results 300] [--neutra] [--xla] [--map-polish-steps 30]
[--normalize-flux] [--json out.json]`` runs the public
pipeline :func:`tfstronglens.inference.fit_lens` (``method="hmc"``) and prints seconds
per stage, gradient evaluations, max R-hat and min bulk/tail ESS over every parameter,
the ESS per second of the slowest parameter, and the issue's targets: the whole
pipeline to R-hat < 1.01 and at least 1000 bulk and tail ESS for every parameter in
under 10 minutes (75 parameters) or 5 minutes (77, with the subhalo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfstronglens.inference import fit_lens, sample_hmc  # noqa: E402
from tfstronglens.inference.demo import demo_problem  # noqa: E402
from tfstronglens.inference.kernels import self_tuning_samplers  # noqa: E402
from tfstronglens.models import load_pretrained_vae  # noqa: E402

TARGET_S = {75: 600.0, 77: 300.0}
TARGET_ESS = 1000.0
TARGET_RHAT = 1.01


def make_problem(subhalo: bool, snr: float, seed: int, jit_compile: bool = False,
                 normalize_flux: bool = False):
    kwargs = dict(snr=snr, seed=seed, jit_compile=jit_compile, normalize_flux=normalize_flux)
    if subhalo:
        return demo_problem(**kwargs)
    return demo_problem(lens="epl+shear", num_subhalos=0, **kwargs)


def _time(fn, x, repeats):
    """(first call incl. tracing/compilation, mean of ``repeats`` later calls) in s."""
    t0 = time.perf_counter()
    tf.nest.map_structure(lambda a: a.numpy(), fn(x))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        tf.nest.map_structure(lambda a: a.numpy(), fn(x))
    return first, (time.perf_counter() - t0) / repeats


def profile(args):
    """Cost per evaluation of the posterior and the decoder, batch 1/8/32, XLA on/off."""
    model, truth, data = make_problem(args.subhalo, args.snr, args.seed)
    objective = model.objective()
    x_true = model.to_flat({k: tf.constant([v], model.dtype) for k, v in truth.items()})
    decoder = load_pretrained_vae().decoder  # the demo's source
    weights = tf.random.stateless_normal(decoder.output_shape[1:], [3, 4])

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            val = objective.target_log_prob(x)
        return val, tape.gradient(val, x)

    def decoder_value_and_grad(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            img = decoder(z, training=False)
            val = tf.reduce_sum(tf.reshape(img * weights, [tf.shape(z)[0], -1]), -1)
        return val, tape.gradient(val, z)

    print(f"{model.num_params} parameters; {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), TF {tf.__version__}, load "
          f"average {os.getloadavg()[0]:.2f}")
    print(f"\n{'what':<34}{'XLA':>5}{'batch':>7}{'first call [s]':>16}{'per call [ms]':>15}"
          f"{'per point [ms]':>16}")
    rows = []
    for what, fn, latent in () if args.only_hmc else (
            ("log posterior", objective.target_log_prob, False),
                             ("log posterior + gradient", value_and_grad, False),
                             ("decoder + gradient (64 latents)", decoder_value_and_grad, True)):
        for jit in (False, True):
            compiled = tf.function(fn, jit_compile=jit)
            for batch in (1, 8, 32):
                if latent:
                    x = tf.random.stateless_normal([batch, 64], [1, batch])
                else:
                    x = tf.tile(x_true, [batch, 1]) + 0.01 * tf.random.stateless_normal(
                        [batch, model.num_params], [1, batch], dtype=model.dtype)
                first, per = _time(compiled, x, args.repeats)
                rows.append({"what": what, "xla": jit, "batch": batch, "first_s": first,
                             "per_call_ms": 1e3 * per, "per_point_ms": 1e3 * per / batch})
                print(f"{what:<34}{'yes' if jit else 'no':>5}{batch:>7}{first:>16.1f}"
                      f"{1e3 * per:>15.1f}{1e3 * per / batch:>16.2f}", flush=True)
    # The same gradients inside the sampler's compiled loop: fixed-length HMC, 10 leapfrog
    # steps per transition, 2 chunks of 10 transitions (the second one is timed).
    print(f"\n{'HMC, 10 leapfrog steps':<34}{'XLA':>5}{'chains':>7}{'compile [s]':>16}"
          f"{'per step [ms]':>15}{'per chain [ms]':>16}")
    for jit in (False, True):
        for chains in (8, 32):
            init = (np.tile(x_true.numpy(), (chains, 1))
                    + 1e-3 * np.random.default_rng(chains).normal(size=(chains, model.num_params)))
            res = sample_hmc(objective.target_log_prob, init, num_results=20, num_burnin=0,
                             kernel="hmc", num_leapfrog_steps=10, step_size=1e-3, seed=1,
                             chunk_size=10, jit_compile=jit, progress=False)
            per = (res.timing["total"] - res.timing["first_chunk"]) / (10 * 10)
            rows.append({"what": "hmc leapfrog step", "xla": jit, "batch": chains,
                         "first_s": res.timing["compile_estimate"], "per_call_ms": 1e3 * per,
                         "per_point_ms": 1e3 * per / chains})
            print(f"{'HMC leapfrog step':<34}{'yes' if jit else 'no':>5}{chains:>7}"
                  f"{res.timing['compile_estimate']:>16.1f}{1e3 * per:>15.1f}"
                  f"{1e3 * per / chains:>16.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"profile": rows, "num_params": model.num_params}, f, indent=1)


def pipeline(args):
    model, truth, data = make_problem(args.subhalo, args.snr, args.seed, args.xla,
                                      args.normalize_flux)
    dim = model.num_params
    names = list(model.param_names)
    settings = dict(num_starts=args.num_starts, map_steps=args.map_steps,
                    vi_steps=args.vi_steps, vi_surrogate=args.vi_surrogate,
                    num_chains=args.num_chains, num_burnin=args.num_burnin,
                    num_results=args.num_results, max_tree_depth=args.max_tree_depth,
                    hmc_kernel=args.kernel, neutra=args.neutra, seed=args.seed,
                    map_polish_steps=args.map_polish_steps,
                    adapt_mass_matrix=None if args.adapt_mass_matrix == "none"
                    else args.adapt_mass_matrix, detect=False)
    if args.hmc_xla:
        settings["hmc_jit_compile"] = True
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = fit_lens(model, data, method="hmc", progress=args.progress, **settings)
    wall = time.perf_counter() - t0
    tm, m, summ = res.timings, res.mcmc, res.summary
    stats = {n: summ[n] for n in names if n in summ}
    rhat = {n: s["r_hat"] for n, s in stats.items()}
    bulk = {n: s["ess_bulk"] for n, s in stats.items()}
    tail = {n: s["ess_tail"] for n, s in stats.items()}
    slowest = min(bulk, key=lambda n: min(bulk[n], tail[n]))
    min_ess = min(bulk[slowest], tail[slowest])
    grads_hmc = int(np.sum(m.sample_stats["n_steps"]))
    grads_burn = int(np.sum(m.warmup_stats["n_steps"]))
    target = TARGET_S.get(dim)
    ok = (max(rhat.values()) < TARGET_RHAT and min(bulk.values()) >= TARGET_ESS
          and min(tail.values()) >= TARGET_ESS and target is not None and tm["total"] < target)
    ht = m.timing
    print(f"\n{dim} parameters, arc S/N {args.snr}, seed {args.seed}; {os.cpu_count()} CPUs, "
          f"TF {tf.__version__}, load average before {load_before[0]:.2f} / after "
          f"{os.getloadavg()[0]:.2f}")
    print(f"settings: {settings}")
    print(f"time per stage [s]: MAP {tm['map']:.1f}, VI {tm['vi']:.1f}, HMC {tm['hmc']:.1f} "
          f"(burn-in {ht['warmup']:.1f} + sampling {ht['sampling']:.1f}; first chunk "
          f"{ht['first_chunk']:.1f}), total {tm['total']:.1f} (wall {wall:.1f})")
    print(f"HMC gradient evaluations (all chains): burn-in {grads_burn} + sampling {grads_hmc}; "
          f"mean leapfrog steps per transition {np.mean(m.sample_stats['n_steps']):.1f}; "
          f"divergences {int(np.sum(m.num_divergences))}")
    print(f"max R-hat {max(rhat.values()):.4f} ({max(rhat, key=rhat.get)}); min bulk ESS "
          f"{min(bulk.values()):.0f} ({min(bulk, key=bulk.get)}); min tail ESS "
          f"{min(tail.values()):.0f} ({min(tail, key=tail.get)})")
    print(f"slowest parameter {slowest}: ESS {min_ess:.0f}, {min_ess / ht['sampling']:.2f} "
          f"per second of HMC sampling, {min_ess / tm['total']:.2f} per second of the pipeline")
    lens = [n for n in names if n.startswith(("lens.", "subhalo."))]
    inside = sum(stats[n]["p16"] <= truth[n] <= stats[n]["p84"] for n in lens)
    print(f"lens{' and subhalo' if args.subhalo else ''} truths inside 68%: {inside} of "
          f"{len(lens)}")
    print(f"target (R-hat < {TARGET_RHAT}, bulk and tail ESS >= {TARGET_ESS:.0f}, total < "
          f"{target:.0f} s): {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "timings": dict(tm), "hmc_timing": dict(ht),
                       "wall": wall, "max_r_hat": max(rhat.values()),
                       "min_ess_bulk": min(bulk.values()), "min_ess_tail": min(tail.values()),
                       "slowest": slowest, "grads_burnin": grads_burn, "grads": grads_hmc,
                       "meets_target": bool(ok), "summary": stats}, f, indent=1, default=float)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="store_true",
                    help="only time the posterior and decoder per evaluation")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per --profile row")
    ap.add_argument("--only-hmc", action="store_true",
                    help="--profile: only the HMC rows")
    ap.add_argument("--subhalo", action="store_true",
                    help="the demo with its subhalo (77 parameters) instead of 75")
    ap.add_argument("--snr", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=0, help="noise realisation and fit seed")
    ap.add_argument("--num-starts", type=int, default=16)
    ap.add_argument("--map-steps", type=int, default=300)
    ap.add_argument("--vi-steps", type=int, default=300)
    ap.add_argument("--vi-surrogate", default="full_rank", choices=["full_rank", "iaf"])
    ap.add_argument("--neutra", action="store_true", help="NeuTra (needs --vi-surrogate iaf)")
    ap.add_argument("--kernel", default="chees", choices=self_tuning_samplers())
    ap.add_argument("--num-chains", type=int, default=32)
    ap.add_argument("--num-burnin", type=int, default=300)
    ap.add_argument("--num-results", type=int, default=300)
    ap.add_argument("--max-tree-depth", type=int, default=8)
    ap.add_argument("--map-polish-steps", type=int, default=30)
    ap.add_argument("--adapt-mass-matrix", default="dense", choices=["dense", "diag", "none"])
    ap.add_argument("--hmc-xla", action="store_true",
                    help="XLA-compile the HMC chunks (the demo model is not XLA-compiled)")
    ap.add_argument("--xla", action="store_true",
                    help="XLA-compile the model itself: every stage (MAP, VI, HMC)")
    ap.add_argument("--normalize-flux", action="store_true",
                    help="the flux-normalised VAE source (VAESource(normalize_flux=True))")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    if args.profile:
        return profile(args)
    return pipeline(args)


if __name__ == "__main__":
    main()
