"""Subhalo sensitivity maps: speed, against full nonlinear refits, and the lowest detectable
subhalo mass along the arcs for HST-like and Euclid VIS images.

    python benchmarks/sensitivity.py [--grid 20] [--instruments hst_acs_f814w,euclid_vis]
        [--profiles PJAFFE,TNFW]

The lens is the demo's (SIE + shear, theta_E = 1.05", z = 0.5 -> 2) with a Sersic source
(R = 0.15", n = 1.5) at the demo's matched-filter S/N of 80, on a 4" field (80x80 pixels
of 0.05" for HST/ACS F814W, 40x40 of 0.1" for Euclid VIS). Per instrument and subhalo
profile it prints the time of each stage of ``sensitivity_map`` (20x20 positions x 9
masses, 1e7 - 1e11 M_sun), the time of one full nonlinear refit of the smooth model
(Adam from the best fit + Levenberg-Marquardt, as a lenstronomy-style map would need per
position and mass) and the ratio, and the lowest detectable mass along the arcs (grid
cells where the smooth model's lensed light exceeds 10% of its peak): median and best.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

from tfstronglens.inference import LensModel, find_map, sensitivity_map
from tfstronglens.observation import Observation

TRUTH = {"lens.0.theta_E": 1.05, "lens.0.e1": 0.12, "lens.0.e2": -0.06,
         "lens.0.center_x": 0.02, "lens.0.center_y": -0.03, "lens.1.gamma1": 0.03,
         "lens.1.gamma2": -0.02, "source.0.amp": 1.0, "source.0.R_sersic": 0.15,
         "source.0.n_sersic": 1.5, "source.0.e1": 0.1, "source.0.e2": -0.05,
         "source.0.center_x": 0.06, "source.0.center_y": 0.04}
PIXELS = {"hst_acs_f814w": 80, "euclid_vis": 40}


def problem(instrument, profile, seed=0):
    obs = Observation.from_instrument(instrument, num_pix=PIXELS[instrument])
    model = LensModel(obs, "sie+shear", "sersic", subhalo_profile=profile, amp_scale=1.0)
    params = {k: tf.constant([v], model.dtype) for k, v in TRUTH.items()}
    scale = float(np.asarray(obs.scale_to_snr(model.render(params), 80.0))[0])
    params["source.0.amp"] = tf.constant([scale], model.dtype)
    data = np.asarray(obs.add_noise(model.render(params), seed=seed))[0]
    amp = float(np.percentile(data, 99.5)) / obs.pixel_area
    return model.replace(data=data, amp_scale=amp), data


def full_refit_seconds(model, res):
    """Wall time of one full nonlinear refit of the smooth model to a mock with a subhalo
    (warm-started at the smooth best fit: 300 Adam steps, 30 LM iterations)."""
    best = {k: tf.reshape(v, [1]) for k, v in res.smooth_fit.params.items()}
    m1 = model.replace(num_subhalos=1)
    mock = m1.render({**best, "subhalo.0.mass": tf.constant([1e9]),
                      "subhalo.0.center_x": tf.constant([0.8]),
                      "subhalo.0.center_y": tf.constant([0.7])})[0]
    init = {k: v[0] for k, v in best.items()}
    kw = dict(num_starts=1, num_steps=300, learning_rate=0.005, init=init,
              objective="likelihood", lm_steps=30, progress=False)
    find_map(model, mock, **kw)  # compile
    t = time.perf_counter()
    find_map(model, mock, **kw)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grid", type=int, default=20)
    p.add_argument("--instruments", default="hst_acs_f814w,euclid_vis")
    p.add_argument("--profiles", default="PJAFFE,TNFW")
    args = p.parse_args()
    rows = []
    for instrument in args.instruments.split(","):
        for profile in args.profiles.split(","):
            model, data = problem(instrument, profile)
            t = time.perf_counter()
            res = sensitivity_map(model, masses=np.logspace(7, 11, 9), grid=args.grid,
                                  progress=False)
            wall = time.perf_counter() - t
            refit = full_refit_seconds(model.replace(num_subhalos=0), res)
            n_fits = args.grid ** 2 * 9
            smooth = model.render({k: tf.reshape(v, [1])
                                   for k, v in res.smooth_fit.params.items()})[0].numpy()
            n = smooth.shape[0]
            h = model.observation.pixel_scale
            ix = np.clip(((res.x + 0.5 * n * h) / h).astype(int), 0, n - 1)
            arcs = smooth[np.ix_(ix, ix)] > 0.1 * smooth.max()   # [y, x] cells on the arcs
            s = res.summary(arc_mask=arcs)
            rows.append((instrument, profile, wall, res.timings, refit, n_fits, s,
                         int(arcs.sum()), float(np.max(res.refit_change[:6]))))
            print(f"{instrument} {profile}: map {wall:.1f} s ({res.timings}); one full refit "
                  f"{refit:.2f} s -> {n_fits} refits {refit * n_fits / 60:.1f} min "
                  f"(x{refit * n_fits / res.timings['maps']:.0f} the batched refits); along "
                  f"the arcs ({int(arcs.sum())} cells): {s}", flush=True)
    print("\n| instrument | subhalo profile | map wall [s] | of which refits [s] | one full refit "
          "[s] | full refits for the map [min] | arcs: median log10 M_min | arcs: best |")
    print("|---|---|---|---|---|---|---|---|")
    for inst, prof, wall, tim, refit, n_fits, s, n_arc, _ in rows:
        med, best = s["median_log10_min_mass"], s["min_log10_min_mass"]
        print(f"| {inst} | {prof} | {wall:.0f} | {tim['maps']:.0f} | {refit:.2f} | "
              f"{refit * n_fits / 60:.0f} | {med if med is None else round(med, 2)} | "
              f"{best if best is None else round(best, 2)} |")


if __name__ == "__main__":
    main()
