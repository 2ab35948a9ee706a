"""Throughput of the dataset generator: images per second for 64x64 images on this CPU.

    TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/simulate_dataset.py [--batch-size 256]
        [--num-batches 5] [--subhalos none,cdm] [--supersample 2] [--instrument euclid_vis]
        [--n-max 32] [--lens-model epl+shear|sie+shear] [--no-lens-light] [--barriers]

Measured on the 2-core development CPU while shared with other jobs (so CPU time per batch
is the comparable figure), batch 256, euclid_vis 64x64, EPL+shear, Sersic source and lens
light, supersample 2: without subhalos 137 ms of CPU per batch (1874 images per
CPU-second; 1033 images/s wall on the loaded machine), of which the two S/N solves take
~18 ms and rendering most of the rest; before issue #3, 940 ms (272 per CPU-second). With
up to 8 CDM subhalos 1130 ms (227 per CPU-second; before: 2218 ms, 115), bounded by the
TNFW deflection of every subhalo at every sub-pixel (~38 ns of CPU per evaluation, ~6.7
subhalos x 16384 sub-pixels per image; tf.math.atan alone is ~9 ns of it); n_max 32 (mean
11.3 subhalos): 1913 ms. Supersample 1: 72 ms (3544 per CPU-second), 323 ms with CDM
subhalos (n_max 8); SIE+shear without lens light, supersample 1: 67 ms.

What made it faster (issue #3): the Gaussian noise drawn with the Philox algorithm named
explicitly (the same numbers; XLA:CPU ran the "auto_select" default ~30x slower), the two
S/N normalisations solved from a closed-form start with float32 Newton steps and one
float64 step (one materialized pass per step), the subhalo deflections evaluated for the
real subhalos only (compacted, chunked loop instead of a reduction over all n_max slots,
which XLA fused slowly), and the sub-pixels binned like the Simulator (which also fixed
the images of supersample > 1).

Times ``LensDatasetGenerator.generate_tensors`` (one XLA-compiled call per batch:
prior draws, ray tracing, Sersic source and lens light, PSF convolution, two S/N
normalisations, noise) after a warm-up call that compiles, and prints the compile time,
images/s and CPU time per batch for each subhalo model. ``--barriers`` also times each
configuration traced without the XLA barriers (``tfstronglens.lensing._barrier``).
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
    p.add_argument("--barriers", action="store_true",
                   help="also time each configuration without the XLA barriers")
    args = p.parse_args()
    from tfstronglens.runtime import tune_cpu_allocator

    print(f"malloc tuned: {tune_cpu_allocator()}")
    import contextlib

    from tfstronglens.lensing._barrier import barriers_disabled

    runs = [(sub, barrier) for sub in args.subhalos.split(",")
            for barrier in ((True, False) if args.barriers else (True,))]
    for sub, barrier in runs:
        cfg = LensSimulationConfig(instrument=args.instrument, num_pix=args.num_pix,
                                   supersample=args.supersample, subhalo_model=sub,
                                   lens_model=args.lens_model, n_max=args.n_max,
                                   lens_light=not args.no_lens_light)
        gen = LensDatasetGenerator(cfg)
        t0 = time.perf_counter()
        with contextlib.nullcontext() if barrier else barriers_disabled():
            gen.generate_tensors(0, args.batch_size)["image"].numpy()  # traces here
        t_compile = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        for k in range(1, args.num_batches + 1):
            gen.generate_tensors(k, args.batch_size)["image"].numpy()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = args.num_batches * args.batch_size
        light = "" if args.no_lens_light else "+lens light"
        print(f"{args.instrument} {args.num_pix}x{args.num_pix} supersample {args.supersample} "
              f"{args.lens_model}{light}, subhalos={sub} (n_max {cfg.n_max})"
              f"{'' if barrier else ', WITHOUT the XLA barriers'}: "
              f"compile+first batch {t_compile:.1f} s, {n / dt:.0f} images/s "
              f"({dt / args.num_batches * 1e3:.0f} ms per batch of {args.batch_size}; "
              f"CPU time {cpu / args.num_batches * 1e3:.0f} ms per batch, "
              f"{n / cpu:.0f} images per CPU-second)", flush=True)


if __name__ == "__main__":
    main()
