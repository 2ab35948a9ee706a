"""The subhalo search on a real-sized cutout: `tfstronglens fit --subhalos 1 --method map
--source sersic` on a 100x100 HST-like image (0.04"/pixel), with and without a subhalo.

    python benchmarks/subhalo_search.py [--images sub,null] [--mass 1e10] [--seed 0]
        [--snr 300] [--json OUT.json] [-- extra fit options, e.g. --num-starts 16]

Images: 100x100 pixels of 0.04" (a 4" field) with a Gaussian PSF of FWHM 0.08", an SIE +
shear lens (theta_E = 1.2") of an elliptical Sersic source, scaled to a matched-filter
arc S/N of ``--snr``, with or without one TNFW subhalo of M200c ``--mass`` on the arc
(truncated in the host as tfstronglens's model truncates it), all rendered by lenstronomy
(3x3 supersampling, convolution on the supersampled grid) and given Gaussian noise; the
truncated-NFW parameters come from the tfstronglens model at the truth
(``LensModel.component_kwargs``), so the image is what the fitted model class can draw.
Each image is written to FITS and fitted by the command line in this process, timed per
stage (``summary.json``'s ``timings``); printed: wall time, ``Delta log L`` and the
significance, and the best-fit subhalo against the truth. Options after ``--`` go to
``tfstronglens fit`` unchanged, to compare settings on the same images.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

N, PIX, FWHM, SIGMA = 100, 0.04, 0.08, 0.02
LENS = {"lens.0.theta_E": 1.2, "lens.0.e1": 0.10, "lens.0.e2": -0.05,
        "lens.0.center_x": 0.02, "lens.0.center_y": -0.03, "lens.1.gamma1": 0.03,
        "lens.1.gamma2": -0.02}
SOURCE = {"source.0.amp": 1.0, "source.0.R_sersic": 0.15, "source.0.n_sersic": 1.5,
          "source.0.e1": 0.1, "source.0.e2": -0.05, "source.0.center_x": 0.06,
          "source.0.center_y": 0.04}
SUBHALO_AT = (0.75, 0.95)  # arcsec, on the arc of this lens


def lenstronomy_image(kw_lens, kw_source, subhalo: bool):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel as LModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util.simulation_util import data_configure_simple

    data = ImageData(**data_configure_simple(N, PIX, inverse=False))  # (ra, dec) = (x, y)
    psf = PSF(psf_type="GAUSSIAN", fwhm=FWHM, pixel_size=PIX, truncation=5)
    names = ["SIE", "SHEAR"] + (["TNFW"] if subhalo else [])
    model = ImageModel(data, psf, lens_model_class=LModel(names),
                       source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                       kwargs_numerics={"supersampling_factor": 3,
                                        "supersampling_convolution": True})
    return model.image(kw_lens[:len(names)], kw_source)


def make_images(mass, snr, seed):
    """``{"sub": image, "null": image}`` (the same noise), the truths and the arc S/N scale."""
    from tfstronglens.inference import LensModel
    from tfstronglens import GaussianPSF, Observation

    obs = Observation(N, PIX, 1.0, psf=GaussianPSF(FWHM), background_rms=SIGMA,
                      dtype=tf.float64)
    model = LensModel(obs, "sie+shear", "sersic", num_subhalos=1)
    truth = {**LENS, **SOURCE, "subhalo.0.mass": mass, "subhalo.0.center_x": SUBHALO_AT[0],
             "subhalo.0.center_y": SUBHALO_AT[1]}
    lens, source, _ = model.component_kwargs(
        {k: tf.constant([v], tf.float64) for k, v in truth.items()})
    as_kw = lambda d: {k: float(np.asarray(v).reshape(-1)[0]) for k, v in d.items()}  # noqa: E731
    kw_lens = [as_kw(d) for d in lens]
    kw_lens[1] = {"gamma1": kw_lens[1]["gamma1"], "gamma2": kw_lens[1]["gamma2"]}
    kw_source = [as_kw(source[0])]
    null = lenstronomy_image(kw_lens, kw_source, subhalo=False)
    # matched-filter S/N of the arcs: sqrt(sum(image^2)) / sigma
    scale = snr * SIGMA / np.sqrt(np.sum(null ** 2))
    kw_source[0]["amp"] *= scale
    truth["source.0.amp"] *= scale
    noise = np.random.default_rng(seed).normal(0.0, SIGMA, (N, N))
    images = {"null": lenstronomy_image(kw_lens, kw_source, False) + noise,
              "sub": lenstronomy_image(kw_lens, kw_source, True) + noise}
    clean_sub = images["sub"] - noise
    diff = clean_sub - (images["null"] - noise)
    print(f"arc S/N {snr}; the subhalo changes the image by chi^2 = "
          f"{np.sum(diff ** 2) / SIGMA ** 2:.1f} (max |diff| / sigma = "
          f"{np.max(np.abs(diff)) / SIGMA:.2f}); TNFW {kw_lens[2]}", flush=True)
    return images, truth


def fit(path, out, extra):
    from tfstronglens.cli import main

    argv = ["fit", path, "--lens", "sie+shear", "--subhalos", "1", "--method", "map",
            "--source", "sersic", "--psf-fwhm", str(FWHM), "--out", out, "--no-progress",
            *extra]
    t = time.perf_counter()
    main(argv)
    wall = time.perf_counter() - t
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f), wall


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default="sub,null", help="which images: sub, null or both")
    p.add_argument("--mass", type=float, default=1e10, help="subhalo M200c in M_sun")
    p.add_argument("--snr", type=float, default=300.0, help="matched-filter arc S/N")
    p.add_argument("--seed", type=int, default=0, help="noise realisation")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    from tfstronglens.io import write_fits

    images, truth = make_images(args.mass, args.snr, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for which in args.images.split(","):
            path = os.path.join(tmp, f"{which}.fits")
            write_fits(path, images[which], pixel_scale=PIX, header={"BKGRMS": SIGMA})
            summary, wall = fit(path, os.path.join(tmp, which), extra)
            det = summary["subhalo_detection"]
            t = summary["timings"]
            row = dict(image=which, extra=" ".join(extra), wall=wall,
                       **{f"t_{k}": v for k, v in t.items()},
                       delta_log_l=det["delta_log_likelihood"],
                       sigma=det["significance_sigma"], mass=det["mass_msun"],
                       x=det["center_x"], y=det["center_y"])
            rows.append(row)
            stages = ", ".join(f"{k} {v:.0f} s" for k, v in t.items())
            print(f"{which}: wall {wall:.0f} s ({stages}); delta log L = "
                  f"{row['delta_log_l']:.2f} ({row['sigma']:.2f} sigma); subhalo "
                  f"{row['mass']:.3g} M_sun at ({row['x']:.3f}, {row['y']:.3f})"
                  + (f" (truth {truth['subhalo.0.mass']:.3g} at {SUBHALO_AT})"
                     if which == "sub" else ""), flush=True)
    if args.json:
        from tfstronglens.io._atomic import atomic_output

        with atomic_output(args.json, overwrite=True) as tmp, open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
