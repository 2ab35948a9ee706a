"""The subhalo-population ratio estimator (issue #16): how much the images say, how fast the
paired simulations run, and how the ALICES loss compares with a plain classifier.

    python benchmarks/population.py [--study information,throughput,learning]
        [--params kappa_sub] [--prior kappa_sub=0.002:0.1] [--steps 2000]
        [--batch-size 64] [--template]

* information: on 2048 pairs of the simulation, the cross-entropy of the ideal classifier
  *that knows the subhalos* (the joint ratio; a lower bound for any estimator from
  images), and how much the subhalos change an image: the chi^2 between each image's
  noise-free model with and without its subhalos, by number of subhalos.
* throughput: paired simulations (image, joint log ratio, joint score) per second.
* learning: trains the network with the ``classifier`` and the ``alices`` loss on the same
  stream for ``--steps`` steps and prints both learning curves (the cross-entropy against
  the hard labels on each step's fresh pairs, i.e. out of sample, per 100 steps) and the
  held-out cross-entropy; the pairs needed by each to reach the classifier's final value
  are the "gain in simulations".

``--template`` fixes the macro lens and the source (one Einstein ring of 0.6"), so that
only the subhalos vary: the tractable-likelihood case of the issue.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfstronglens.models.ratio import PopulationRatioEstimator  # noqa: E402
from tfstronglens.models.ratio_training import (DEFAULT_RATIO_SIMULATION, PAIR_KEYS,  # noqa: E402
                                                _bce, ratio_dataset)
from tfstronglens.simulation import (LensDatasetGenerator, LensSimulationConfig,  # noqa: E402
                                     PopulationPairSimulator, PopulationPrior)

TEMPLATE = {"theta_E": [0.6, 0.6], "lens_q": [1, 1], "lens_center": [0, 0], "shear": [0, 0],
            "source_R_sersic": [0.1, 0.1], "source_n_sersic": [1, 1], "source_q": [1, 1],
            "source_offset": [0.05, 0.05], "source_snr": [150, 150]}


def make_sim(args):
    cfg = dict(DEFAULT_RATIO_SIMULATION)
    if args.template:
        cfg["priors"] = TEMPLATE
    ranges = {}
    for item in args.prior or ():
        name, rng = item.split("=")
        ranges[name] = tuple(float(v) for v in rng.split(":"))
    prior = PopulationPrior.from_names(args.params, ranges)
    return PopulationPairSimulator(LensDatasetGenerator(LensSimulationConfig.from_dict(cfg)),
                                   prior)


def information(sim, batch_size):
    lr, y, chi2, n = [], [], [], []
    gen = sim.generator
    for k in range(2048 // batch_size):
        b = sim.batch(10**7 + k, batch_size)
        lr.append(b["joint_log_ratio"].numpy())
        y.append(b["y"].numpy())
        # the same lenses without their subhalos (eager: the images of one execution mode)
        seed = tf.constant([3, k])
        out = gen.simulate(seed, batch_size, sim.prior.to_population(b["theta"]))
        none = {key: tf.zeros_like(v) for key, v in out["subhalos"].items()}
        smooth = gen.simulate(seed, batch_size, subhalos=none)["model"]
        chi2.append((((out["model"] - smooth) / out["noise_sigma"]) ** 2).numpy().sum((1, 2)))
        n.append(out["subhalos"]["mask"].numpy().sum(1))
    lr, y, chi2, n = map(np.concatenate, (lr, y, chi2, n))
    print(f"information: cross-entropy knowing the subhalos {_bce(lr, y):.4f} (chance "
          f"0.6931); chi^2 of the subhalos' change of the image: median {np.median(chi2):.1f}, "
          f"90th percentile {np.percentile(chi2, 90):.1f}; by number of subhalos: " + ", ".join(
              f"{k}: {np.median(chi2[n == k]):.1f}" for k in range(int(n.max()) + 1)
              if np.any(n == k)), flush=True)


def throughput(sim, batch_size):
    sim.batch(0, batch_size)["image"].numpy()
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(1, 6):
        b = sim.batch(k, batch_size)
        b["joint_score"].numpy()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"throughput: {5 * batch_size / dt:.0f} pairs/s ({5 * batch_size / cpu:.0f} per "
          f"CPU-second), mean {float(np.mean(b['num_subhalos'])):.1f} subhalos per image",
          flush=True)


def learning(sim, args):
    held = {k: v for k, v in sim.batch(10**8, 2048).items() if k in PAIR_KEYS}
    curves = {}
    for loss in ("classifier", "alices"):
        keras.utils.set_random_seed(0)
        p = sim.prior
        net = PopulationRatioEstimator(p.names, p.low, p.high, num_pix=sim.generator.config.num_pix,
                                       filters=(16, 32, 64), features=64, hidden=(128, 128),
                                       loss=loss, input_scale=args.input_scale,
                                       latent_weight=args.latent_weight)
        net.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=5.0))
        t0 = time.perf_counter()
        h = net.fit(ratio_dataset(sim, args.batch_size), steps_per_epoch=100,
                    epochs=max(1, args.steps // 100), verbose=0)
        logit = net.log_ratio(held, held["theta_0"], held["theta_1"]).numpy()
        curves[loss] = np.array(h.history["bce"])
        print(f"learning, {loss}: {time.perf_counter() - t0:.0f} s; cross-entropy per 100 "
              f"steps {np.round(curves[loss], 4).tolist()}; held-out {_bce(logit, held['y']):.4f}; "
              f"latent summary MSE {np.round(h.history['latent_mse'], 3).tolist()} (its "
              f"variance {np.var(held['latent_summary'], 0).sum():.3f})", flush=True)
    target = curves["classifier"][-1]
    reach = {k: int(np.argmax(c <= target) + 1) * 100 * args.batch_size if np.any(c <= target)
             else None for k, c in curves.items()}
    print(f"pairs to reach the classifier's final cross-entropy {target:.4f}: {reach}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="information,throughput,learning")
    p.add_argument("--params", default="kappa_sub")
    p.add_argument("--prior", action="append")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--template", action="store_true")
    p.add_argument("--input-scale", default="linear", choices=["linear", "asinh"])
    p.add_argument("--latent-weight", type=float, default=1.0)
    args = p.parse_args()
    sim = make_sim(args)
    print(f"simulation: {DEFAULT_RATIO_SIMULATION}{' with the template lens' if args.template else ''}; "
          f"prior {sim.prior.to_dict()}", flush=True)
    studies = args.study.split(",")
    if "information" in studies:
        information(sim, args.batch_size)
    if "throughput" in studies:
        throughput(sim, args.batch_size)
    if "learning" in studies:
        learning(sim, args)


if __name__ == "__main__":
    main()
