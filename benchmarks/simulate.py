#!/usr/bin/env python
"""Rendering speed: tfstronglens vs lenstronomy on one fixed configuration.

Configuration (issue #2): 60x60 pixels at 0.065", supersampling 2, EPL + external shear lens,
elliptical Sersic lens light and source, 7x7 Gaussian PSF with FWHM 0.1" (the same pixel
kernel in both codes, convolution at the native pixel scale). Both codes render the same
random parameter sets in the same run on the same machine; the images are checked to agree
before timing.

Timed:
  * lenstronomy ``ImageModel.image`` (EPL, and EPL_NUMBA when numba is installed), one image
    per call: images per second;
  * tfstronglens ``Simulator`` inside ``tf.function(jit_compile=True)``, batch 1 and 64;
  * value and gradient of a Gaussian log-likelihood of the batch w.r.t. all 22 parameters;
  * the per-call overhead (a compiled function of the same arguments that does next to
    nothing), so that the batch-1 ratio can also be read net of it.

Usage: ``python benchmarks/simulate.py [--repeats 20] [--dtype float32] [--json out.json]``
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

import tfstronglens as tsl  # noqa: E402

NUM_PIX, PIX, SS, FWHM, KSIZE = 60, 0.065, 2, 0.1, 7


def random_params(rng, batch):
    u = lambda lo, hi: rng.uniform(lo, hi, batch)  # noqa: E731
    lens = [
        dict(theta_E=u(0.9, 1.3), gamma=u(1.8, 2.2), e1=u(-0.2, 0.2), e2=u(-0.2, 0.2),
             center_x=u(-0.05, 0.05), center_y=u(-0.05, 0.05)),
        dict(gamma1=u(-0.05, 0.05), gamma2=u(-0.05, 0.05)),
    ]
    source = [dict(amp=u(10, 30), R_sersic=u(0.1, 0.3), n_sersic=u(1.0, 3.0), e1=u(-0.2, 0.2),
                   e2=u(-0.2, 0.2), center_x=u(-0.1, 0.1), center_y=u(-0.1, 0.1))]
    lens_light = [dict(amp=u(2, 6), R_sersic=u(0.5, 1.0), n_sersic=u(2.0, 4.0), e1=u(-0.2, 0.2),
                       e2=u(-0.2, 0.2), center_x=u(-0.05, 0.05), center_y=u(-0.05, 0.05))]
    return lens, source, lens_light


def take(params, i):
    """The ``i``-th parameter set of ``(lens, source, lens_light)`` as float kwargs lists."""
    return [[{k: float(v[i]) for k, v in d.items()} for d in plist] for plist in params]


def build_lenstronomy(kernel, lens_model="EPL"):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    c = 0.5 * (NUM_PIX - 1) * PIX
    data = ImageData(image_data=np.zeros((NUM_PIX, NUM_PIX)), ra_at_xy_0=-c, dec_at_xy_0=-c,
                     transform_pix2angle=np.array([[PIX, 0.0], [0.0, PIX]]))
    psf = PSF(psf_type="PIXEL", kernel_point_source=kernel)
    return ImageModel(data, psf, lens_model_class=LensModel([lens_model, "SHEAR"]),
                      source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                      lens_light_model_class=LightModel(["SERSIC_ELLIPSE"]),
                      kwargs_numerics={"supersampling_factor": SS,
                                       "supersampling_convolution": False})


def time_calls(fn, repeats, min_time=0.5):
    """Median seconds per call over ``repeats`` timed calls (after one warm-up)."""
    fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - t_start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) > 50 * repeats:
            break
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--lenstronomy-images", type=int, default=40)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--no-tune-allocator", action="store_true",
                    help="leave glibc malloc at its defaults (see tfstronglens.runtime)")
    args = ap.parse_args(argv)
    tuned = False if args.no_tune_allocator else tsl.runtime.tune_cpu_allocator()

    rng = np.random.default_rng(0)
    dtype = args.dtype
    grid = tsl.PixelGrid(NUM_PIX, PIX, supersample=SS, dtype=dtype)
    psf = tsl.GaussianPSF(FWHM, size=KSIZE)
    kernel = psf.kernel(PIX)
    def build_sim():
        return tsl.Simulator(grid, lens=[tsl.EPL(dtype=dtype), tsl.Shear(dtype=dtype)],
                             source=[tsl.SersicEllipse(b_n="lenstronomy", dtype=dtype)],
                             lens_light=[tsl.SersicEllipse(b_n="lenstronomy", dtype=dtype)],
                             psf=psf)

    sim = build_sim()

    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "tensorflow": tf.__version__, "dtype": dtype, "allocator_tuned": tuned}

    # ---------------------------------------------------------------- lenstronomy
    import lenstronomy

    results["lenstronomy"] = lenstronomy.__version__
    n_ref = args.lenstronomy_images
    lp = random_params(rng, n_ref)
    lens_models = ["EPL"]
    try:
        import numba  # noqa: F401

        lens_models.append("EPL_NUMBA")
    except ImportError:
        print("numba not installed: skipping lenstronomy EPL_NUMBA")
    ref_images = None
    for name in lens_models:
        im = build_lenstronomy(kernel, name)
        im.image(*take(lp, 0))  # warm-up (numba compilation)
        t0 = time.perf_counter()
        imgs = [im.image(*take(lp, i)) for i in range(n_ref)]
        dt = time.perf_counter() - t0
        results[f"lenstronomy_{name}_images_per_s"] = n_ref / dt
        if ref_images is None:
            ref_images = np.array(imgs)

    # --------------------------------------------------------------- tfstronglens
    np_dtype = np.float32 if dtype == "float32" else np.float64
    def to_tf(params):
        return [[{k: tf.constant(np.asarray(v, np_dtype)) for k, v in d.items()} for d in plist]
                for plist in params]
    # correctness check on the lenstronomy parameter sets
    check = sim(*to_tf(lp)).numpy()
    rel = np.max(np.abs(check - ref_images)) / np.max(np.abs(ref_images))
    results["max_rel_difference_vs_lenstronomy"] = float(rel)

    @tf.function(jit_compile=True)
    def render(lens, source, lens_light):
        return sim(lens, source, lens_light)

    @tf.function(jit_compile=True)
    def dispatch_only(lens, source, lens_light):
        # the same arguments, next to no arithmetic: the per-call cost of tf.function
        # dispatch and XLA execution set-up, which dominates at batch 1
        return tf.add_n([tf.reduce_sum(v) for v in tf.nest.flatten([lens, source, lens_light])])

    noise = 0.05

    def make_loglike_and_grad(sim):
        @tf.function(jit_compile=True)
        def loglike_and_grad(data, lens, source, lens_light):
            with tf.GradientTape() as tape:
                tape.watch([lens, source, lens_light])
                model = sim(lens, source, lens_light)
                ll = -0.5 * tf.reduce_sum(tf.square((model - data) / noise))
            return ll, tape.gradient(ll, [lens, source, lens_light])
        return loglike_and_grad

    loglike_and_grad = make_loglike_and_grad(sim)

    for batch in (1, 64):
        params = to_tf(random_params(rng, batch))
        t_fwd = time_calls(lambda: render(*params).numpy(), args.repeats)
        data = render(*params) + noise * tf.random.normal([batch, NUM_PIX, NUM_PIX], dtype=dtype)
        t_grad = time_calls(lambda: tf.nest.map_structure(lambda t: t.numpy(),
                                                          loglike_and_grad(data, *params)),
                            args.repeats)
        results[f"tfstronglens_batch{batch}_images_per_s"] = batch / t_fwd
        results[f"tfstronglens_batch{batch}_value_and_grad_images_per_s"] = batch / t_grad
        results[f"tfstronglens_batch{batch}_grad_over_forward"] = t_grad / t_fwd
        t_call = time_calls(lambda: dispatch_only(*params).numpy(), args.repeats)
        results[f"tfstronglens_batch{batch}_call_overhead_ms"] = 1e3 * t_call
        results[f"tfstronglens_batch{batch}_grad_over_forward_net_of_overhead"] = (
            (t_grad - t_call) / (t_fwd - t_call) if t_fwd > t_call else float("nan"))
        # the same through the eager, validating user call
        t_eager = time_calls(lambda: sim(*params).numpy(), max(3, args.repeats // 4))
        results[f"tfstronglens_batch{batch}_eager_call_images_per_s"] = batch / t_eager

    # the XLA barriers around the binned image (tfstronglens.lensing._barrier): the same
    # value and gradient traced without them
    from tfstronglens.lensing._barrier import barriers_disabled

    params = to_tf(random_params(rng, 64))
    data = render(*params) + noise * tf.random.normal([64, NUM_PIX, NUM_PIX], dtype=dtype)
    with barriers_disabled():  # a new Simulator: its rendering is traced inside the block
        plain = make_loglike_and_grad(build_sim())
        plain(data, *params)
    for name, fn in (("with", loglike_and_grad), ("without", plain)):
        t = time_calls(lambda: tf.nest.map_structure(lambda t: t.numpy(), fn(data, *params)),
                       args.repeats)
        results[f"tfstronglens_batch64_value_and_grad_{name}_barriers_images_per_s"] = 64 / t

    ref = results["lenstronomy_EPL_images_per_s"]
    print(f"\nConfiguration: {NUM_PIX}x{NUM_PIX} px at {PIX}\", supersample {SS}, EPL+SHEAR, "
          f"SERSIC_ELLIPSE lens light + source, {KSIZE}x{KSIZE} Gaussian PSF FWHM {FWHM}\" "
          f"({dtype}, {results['cpus']} CPUs, TF {tf.__version__}, lenstronomy "
          f"{results['lenstronomy']}, malloc tuned: {tuned})")
    print(f"max |tfstronglens - lenstronomy| / max(image) = {rel:.2e}")
    print(f"{'code':48s} {'images/s':>10s} {'x lenstronomy EPL':>18s}")
    for key, val in results.items():
        if key.endswith("images_per_s"):
            print(f"{key:48s} {val:10.1f} {val / ref:18.1f}")
    for batch in (1, 64):
        print(f"value+gradient / forward time, batch {batch}: "
              f"{results[f'tfstronglens_batch{batch}_grad_over_forward']:.2f} "
              f"({results[f'tfstronglens_batch{batch}_grad_over_forward_net_of_overhead']:.2f} "
              f"net of the {results[f'tfstronglens_batch{batch}_call_overhead_ms']:.2f} ms "
              "per-call overhead)")
    w, wo = (results[f"tfstronglens_batch64_value_and_grad_{n}_barriers_images_per_s"]
             for n in ("with", "without"))
    print(f"XLA barriers, value+gradient at batch 64: {w:.1f} images/s with, {wo:.1f} "
          f"without: x{w / wo:.2f}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(results, fh, indent=2)
        os.replace(tmp, args.json)
    return results


if __name__ == "__main__":
    main()
