#!/usr/bin/env python
"""Training speed of the galaxy VAE (images per second), with and without XLA.

Configuration (issue #4): the default :class:`tfstronglens.models.VAE` (64x64 stamps,
latent_dim 64, base_filters 32, max_filters 128), batch 64, Adam, on random stamps held in
memory (so the input pipeline costs nothing). Each mode compiles with
``model.compile(jit_compile=...)``; ``train_on_batch`` is called ``--warmup`` times (tracing
and, with XLA, compilation) and then timed over ``--steps`` steps.

Usage: ``python benchmarks/train_vae.py [--steps 10] [--warmup 2] [--batch-size 64]
[--image-size 64] [--modes eager-graph,xla] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfstronglens as tsl  # noqa: E402

MODES = {"graph": False, "xla": True}


def time_mode(jit, args, x, noise):
    keras.utils.set_random_seed(0)
    vae = tsl.models.VAE(image_size=args.image_size, latent_dim=args.latent_dim, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        vae.train_on_batch(x, noise)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        logs = vae.train_on_batch(x, noise, return_dict=True)
        times.append(time.perf_counter() - t)
    times = np.array(times)
    return {
        "jit_compile": jit,
        "warmup_seconds": warm,
        "median_step_seconds": float(np.median(times)),
        "images_per_second": float(args.batch_size / np.median(times)),
        "best_images_per_second": float(args.batch_size / times.min()),
        "final_loss": float(logs["loss"]),
        "num_params": int(vae.count_params()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--latent-dim", type=int, default=64)
    ap.add_argument("--modes", default="graph,xla",
                    help="comma-separated: graph (tf.function) and/or xla (jit_compile)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    tsl.runtime.tune_cpu_allocator()
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.1, (args.batch_size, args.image_size, args.image_size)).astype("float32")
    noise = np.full([args.batch_size], 0.1, "float32")
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(f"tfstronglens {tsl.__version__}, TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"devices {devices}")
    print(f"default VAE, {args.image_size}x{args.image_size}, latent {args.latent_dim}, "
          f"batch {args.batch_size}; {args.warmup} warm-up + {args.steps} timed steps")
    results = {}
    for mode in args.modes.split(","):
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
        r = time_mode(MODES[mode], args, x, noise)
        results[mode] = r
        print(f"  {mode:5s} (jit_compile={r['jit_compile']!s:5s}): {r['images_per_second']:8.1f} "
              f"images/s (median step {1e3 * r['median_step_seconds']:.0f} ms; best "
              f"{r['best_images_per_second']:.1f} images/s; warm-up {r['warmup_seconds']:.1f} s; "
              f"{r['num_params']:,} parameters)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
