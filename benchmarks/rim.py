"""Source reconstruction with the true lens: the shipped RIM against the regularised
pixelated inversion and the VAE-latent MAP, on held-out simulated HST-like lenses with
galaxy sources (validation-split galaxies, never trained on).

    python benchmarks/rim.py [--num-lenses 500] [--num-baseline 20]

Prints, per method, the median source error (normalised MSE over the true source's
footprint), the median image chi^2 per pixel and the time per lens; and the RIM's time per
lens at batch 64 and batch 1, with the network on TensorFlow's kernels (the default) and
with the whole reconstruction under XLA. Baselines (one optimisation per lens) run on the first
``--num-baseline`` lenses only, and the RIM's numbers are also given on those.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

from tfstronglens.inference import reconstruct_source
from tfstronglens.models import load_rim, source_error
from tfstronglens.models.rim_training import DEFAULT_RIM_SIMULATION, evaluate_rim, rim_batch
from tfstronglens.simulation import LensDatasetGenerator, LensSimulationConfig


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num-lenses", type=int, default=500)
    p.add_argument("--num-baseline", type=int, default=20)
    p.add_argument("--galaxies", choices=("synthetic", "aegis"), default="synthetic",
                   help="sources: validation-split synthetic galaxies, or the five real AEGIS "
                        "F814W galaxies of ../shared/data/galsim_real")
    args = p.parse_args()
    rim = load_rim()
    config = LensSimulationConfig.from_dict(dict(DEFAULT_RIM_SIMULATION, seed=101,
                                                 galaxy_split="validation"))
    gen = LensDatasetGenerator(config)
    if args.galaxies == "aegis":
        from rim_studies import aegis_stamps

        from tfstronglens.simulation.sources import GalaxyStampSampler

        stamps, _ = aegis_stamps()
        if stamps is None:
            raise SystemExit("the AEGIS stamps (../shared/data/galsim_real) are not here")
        gen = LensDatasetGenerator(config, source_sampler=GalaxyStampSampler(
            config, stamps=stamps, pixel_scale=0.03))
        print("sources: the five AEGIS F814W galaxies (native S/N)")
    ev = evaluate_rim(rim, gen, args.num_lenses, batch_size=64)
    print(f"RIM on {args.num_lenses} lenses: source error median "
          f"{np.median(ev['source_error']):.3f}, chi2/pixel median "
          f"{np.median(ev['chi2_per_pixel']):.3f}, {1e3 * ev['seconds_per_lens']:.1f} ms per "
          "lens at batch 64")
    one = tf.function(lambda x: rim(x)[:, -1], autograph=False)
    inputs, _ = rim_batch(gen, rim, gen.generate_tensors(0, 1))
    one(inputs)
    t0 = time.perf_counter()
    for _ in range(10):
        one(inputs).numpy()
    print(f"RIM latency at batch 1: {1e3 * (time.perf_counter() - t0) / 10:.1f} ms")

    # the design choice of RIM._compiled_gradient: physics under XLA, network on TF's
    # kernels, against the whole reconstruction under XLA
    inputs, _ = rim_batch(gen, rim, gen.generate_tensors(0, 64))
    for label, jit in (("physics XLA, network oneDNN (default)", False),
                       ("everything under XLA", True)):
        f = tf.function(lambda x: rim(x)[:, -1], autograph=False, jit_compile=jit)
        f(inputs).numpy()
        t0 = time.perf_counter()
        for _ in range(3):
            f(inputs).numpy()
        print(f"batch 64, {label}: {1e3 * (time.perf_counter() - t0) / 3 / 64:.1f} ms per lens")

    out = gen.generate(0, args.num_baseline)
    inputs, truth = rim_batch(gen, rim, gen.generate_tensors(0, args.num_baseline))
    t = out["truths"]
    rows = {m: ([], [], []) for m in ("rim", "pixelated", "vae")}
    for j in range(args.num_baseline):
        lens = [{k: float(t[f"lens.0.{k}"][j]) for k in ("theta_E", "e1", "e2", "center_x",
                                                        "center_y")},
                {k: float(t[f"lens.1.{k}"][j]) for k in ("gamma1", "gamma2")}]
        for m in rows:
            rec = reconstruct_source(out["image"][j], out["noise_sigma"][j],
                                     inputs["psf"][0].numpy(), lens,
                                     pixel_scale=rim.pixel_scale, method=m)
            rows[m][0].append(float(source_error(rec.source, truth[j])))
            rows[m][1].append(rec.chi2_per_pixel)
            rows[m][2].append(rec.time_s)
    print(f"\nfirst {args.num_baseline} lenses | median source error | median chi2/pixel | "
          "median time per lens (s)")
    for m, (err, chi2, sec) in rows.items():
        print(f"{m:10s} | {np.median(err):.3f} | {np.median(chi2):.3f} | {np.median(sec):.3f}")
    rim_err = np.asarray(rows["rim"][0])
    for m in ("pixelated", "vae"):
        other = np.asarray(rows[m][0])
        print(f"paired, RIM vs {m}: RIM lower on {np.sum(rim_err < other)} of {len(other)} "
              f"lenses; median error ratio RIM/{m} {np.median(rim_err / other):.2f}")


if __name__ == "__main__":
    main()
