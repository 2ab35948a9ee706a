"""Throughput of the dataset generator: images per second for 64x64 images on this CPU.

    TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/simulate_dataset.py [--batch-size 256]
        [--num-batches 5] [--subhalos none,cdm] [--supersample 2] [--instrument euclid_vis]

Measured on the 2-core development CPU (idle, malloc tuned), batch 256, euclid_vis 64x64,
EPL+shear, Sersic source and lens light, supersample 2: 483 images/s without subhalos,
185 images/s with up to 8 CDM subhalos (TNFW; each subhalo is evaluated on every
sub-pixel). Rendering alone runs at ~4800 images/s (benchmarks/simulate.py), so the
S/N normalisation, noise and prior draws dominate: the open item for "thousands/s".

Times ``LensDatasetGenerator.generate_tensors`` (one XLA-compiled call per batch:
prior draws, ray tracing, Sersic source and lens light, PSF convolution, two S/N
normalisations by Newton iteration, noise) after a warm-up call that compiles, and
prints the compile time and images/s for each subhalo model.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfstronglens.simulation import LensDatasetGenerator, LensSimulationConfig  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-batches", type=int, default=5)
    p.add_argument("--num-pix", type=int, default=64)
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--instrument", default="euclid_vis")
    p.add_argument("--subhalos", default="none,cdm")
    p.add_argument("--n-max", type=int, default=32)
    p.add_argument("--lens-model", default="epl+shear", choices=["epl+shear", "sie+shear"])
    p.add_argument("--no-lens-light", action="store_true")
    args = p.parse_args()
    from tfstronglens.runtime import tune_cpu_allocator

    print(f"malloc tuned: {tune_cpu_allocator()}")
    for sub in args.subhalos.split(","):
        cfg = LensSimulationConfig(instrument=args.instrument, num_pix=args.num_pix,
                                   supersample=args.supersample, subhalo_model=sub,
                                   lens_model=args.lens_model, n_max=args.n_max,
                                   lens_light=not args.no_lens_light)
        gen = LensDatasetGenerator(cfg)
        t0 = time.perf_counter()
        gen.generate_tensors(0, args.batch_size)["image"].numpy()
        t_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k in range(1, args.num_batches + 1):
            gen.generate_tensors(k, args.batch_size)["image"].numpy()
        dt = time.perf_counter() - t0
        n = args.num_batches * args.batch_size
        light = "" if args.no_lens_light else "+lens light"
        print(f"{args.instrument} {args.num_pix}x{args.num_pix} supersample {args.supersample} "
              f"{args.lens_model}{light}, subhalos={sub} (n_max {cfg.n_max}): "
              f"compile+first batch {t_compile:.1f} s, {n / dt:.0f} images/s "
              f"({dt / args.num_batches * 1e3:.0f} ms per batch of {args.batch_size})")


if __name__ == "__main__":
    main()
