"""The amortized lens-parameter CNN: speed, calibration, robustness, and what it does for
``fit``.

    python benchmarks/amortized.py [--model pretrained|DIR] [--only throughput,heldout,
        heads,lenstronomy,map,hmc,demo] [--num-heldout 2000] [--num-map 20] [--num-hmc 20]
        [--hmc-cache FILE.json] [--num-demo 4]

Sections:

* ``throughput``: images per second at batch 256 (the network alone, and with 100
  posterior draws per image) and the latency of one image (network + 1000 draws).
* ``heldout``: ``--num-heldout`` held-out simulations of the training mixture (other
  seeds, validation-split galaxies): per-parameter coverage of the 68%/95% intervals,
  TARP's largest deviation, median absolute error, ``theta_E``'s median relative error.
* ``lenstronomy``: images rendered by lenstronomy (not this package) of the five real
  AEGIS F814W galaxies of ``../shared/data/galsim_real`` (INTERPOL source, random
  rotation) behind SIE + shear lenses drawn from the training prior, HST-like noise at S/N
  15-50: the same statistics, against those of this package's own simulations.
* ``heads``: the default flow head against a full-covariance Gaussian head trained for
  ``--head-steps`` steps on the trained network's frozen features (the same backbone, so
  the heads alone are compared), on held-out simulations: mean negative log posterior
  density of the truth (lower is better), coverage, TARP, ``theta_E`` error.
* ``map``: ``fit_lens(method="map")`` on ``--num-map`` held-out lenses (Sersic source, no
  lens light) with MAP starts from the prior and from the CNN (``init="cnn"``), the same
  number of starts: time, and how often the MAP lands in the mirrored
  ellipticity/shear mode or misses ``theta_E`` by more than 2%.
* ``hmc``: NUTS posteriors of the package on ``--num-hmc`` of those lenses: the CNN's
  posterior width over HMC's and its offset in HMC standard deviations, per parameter.
* ``demo``: the MAP of ``tfstronglens demo`` (SIE + shear, VAE source, one subhalo: 77
  parameters; the demo's 16 starts x 250 Adam steps + polish) on ``--num-demo`` noise
  realisations, starts from the prior and from the CNN: time, mirrored mode, best log
  posterior, ``theta_E`` error. Not in the default ``--only`` (a few minutes per fit).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fit import mirrored_mode  # noqa: E402  (benchmarks/fit.py)
from tfstronglens.models import load_lens_cnn  # noqa: E402
from tfstronglens.models.amortized_training import (  # noqa: E402
    DEFAULT_CNN_SIMULATIONS, cnn_batch, cnn_generators, evaluate_cnn, report_from_evaluation)

HERE = os.path.dirname(os.path.abspath(__file__))
GALSIM_REAL = os.path.join(HERE, "..", "..", "shared", "data", "galsim_real")


def throughput(net):
    n = net.num_pix
    for b in (256,):
        x = {"image": tf.random.normal([b, n, n]) + 1.0, "noise": tf.ones([b, n, n])}
        fwd = tf.function(lambda x: net(x), autograph=False)
        draws = tf.function(lambda x: net.posterior(x).sample(100, seed=[1, 2]),
                            autograph=False)
        for name, f in (("network", fwd), ("network + 100 draws/image", draws)):
            f(x)
            t0 = time.perf_counter()
            reps = 5
            for _ in range(reps):
                tf.nest.map_structure(lambda t: t.numpy(), f(x))
            dt = (time.perf_counter() - t0) / reps
            print(f"throughput at batch {b}: {name}: {b / dt:.0f} images/s "
                  f"({1e3 * dt / b:.3f} ms per image)")
    x1 = {"image": tf.random.normal([1, n, n]) + 1.0, "noise": tf.ones([1, n, n])}
    one = tf.function(lambda x: net.posterior(x).sample(1000, seed=[1, 2]), autograph=False)
    one(x1)
    t0 = time.perf_counter()
    for _ in range(10):
        one(x1).numpy()
    print(f"latency of one image (network + 1000 draws): "
          f"{1e3 * (time.perf_counter() - t0) / 10:.1f} ms")


def _print_report(label, rep):
    print(f"{label}: {rep['num_lenses']} lenses; theta_E median relative error "
          f"{rep.get('theta_E_median_relative_error', float('nan')):.4f}; TARP max deviation "
          f"{rep['tarp_max_deviation']:.3f}")
    print(f"  {'parameter':20s} {'cov68':>6s} {'cov95':>6s} {'median|err|':>12s}")
    for name, v in rep["parameters"].items():
        print(f"  {name:20s} {v['coverage_68']:6.3f} {v['coverage_95']:6.3f} "
              f"{v['median_abs_error']:12.4f}")


def heldout(net, n):
    gens = cnn_generators(DEFAULT_CNN_SIMULATIONS, seed=0, heldout=True)
    ev = evaluate_cnn(net, gens, n, batch_size=100, num_samples=500)
    rep = report_from_evaluation(ev)
    _print_report("held-out simulations (training mixture)", rep)
    for light in (False, True):
        sel = ev["lens_light"] == light
        rel = ev["theta_E_relative_error"][sel]
        print(f"  lens light {'yes' if light else 'no '}: theta_E median relative error "
              f"{np.median(rel):.4f} ({sel.sum()} lenses)")
    return ev


def heads(net, steps, num, batch=64):
    import keras

    from tfstronglens.inference.calibration import interval_coverage, tarp_coverage
    from tfstronglens.models.amortized import GaussianHead

    names = net.param_names
    train = cnn_generators(DEFAULT_CNN_SIMULATIONS, seed=0)
    gauss = GaussianHead(net.dim)
    gauss.build((None, net.features))
    opt = keras.optimizers.Adam(1e-3)

    @tf.function(autograph=False)
    def step(x, theta):
        f = net.backbone(net.preprocess(x))
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(gauss.distribution(gauss(f)).log_prob(net.standardize(theta)))
        grads = tape.gradient(loss, gauss.trainable_weights)
        opt.apply_gradients(zip(grads, gauss.trainable_weights))
        return loss

    t0 = time.perf_counter()
    for k in range(steps):  # batches far beyond those the network was trained on
        x, theta, _ = cnn_batch(train, names, 2 * 10**6 + k, batch)
        loss = step(x, theta)
        if (k + 1) % 100 == 0:
            print(f"heads: Gaussian head step {k + 1}/{steps}, loss {float(loss):.3f}",
                  flush=True)
    print(f"heads: trained the Gaussian head in {time.perf_counter() - t0:.0f} s")

    @tf.function(autograph=False)
    def evaluate(x, theta, seed):
        f = net.backbone(net.preprocess(x))
        z = net.standardize(theta)
        out = {}
        for name, q in (("flow", net.head.distribution(net.head(f))),
                        ("gaussian", gauss.distribution(gauss(f)))):
            d = q.sample(500, seed=seed) * net.param_scale + net.param_loc
            out[name] = (-q.log_prob(z), tf.transpose(d, [1, 0, 2]))
        return out

    held = cnn_generators(DEFAULT_CNN_SIMULATIONS, seed=0, heldout=True)
    res = {"flow": ([], []), "gaussian": ([], [])}
    thetas = []
    for k in range(-(-num // batch)):
        x, theta, _ = cnn_batch(held, names, k, batch)
        out = evaluate(x, theta, tf.constant([7, k]))
        thetas.append(theta.numpy())
        for name, (nll, d) in out.items():
            res[name][0].append(nll.numpy())
            res[name][1].append(d.numpy())
    theta = np.concatenate(thetas)
    i = names.index("lens.0.theta_E")
    print(f"heads on {len(theta)} held-out lenses (same frozen backbone):")
    print(f"  {'head':9s} {'NLL':>7s} {'TARP':>6s} {'thE err':>8s}  68% coverage per parameter")
    for name, (nll, d) in res.items():
        d = np.concatenate(d)
        cov = interval_coverage(d, theta)
        med = np.median(d, 1)
        print(f"  {name:9s} {np.mean(np.concatenate(nll)):7.3f} "
              f"{tarp_coverage(d, theta).max_deviation:6.3f} "
              f"{np.median(np.abs(med[:, i] / theta[:, i] - 1)):8.4f}  "
              + " ".join(f"{c:.2f}" for c in cov[0.68]))


def _aegis_stamps():
    import sys

    sys.path.insert(0, HERE)
    from rim_studies import aegis_stamps

    return aegis_stamps()[0]


def lenstronomy_aegis(net, n_per_galaxy=40, seed=3):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    from tfstronglens.inference.calibration import interval_coverage, tarp_coverage

    stamps = _aegis_stamps()
    if stamps is None:
        print(f"lenstronomy: skipped ({GALSIM_REAL} not found)")
        return
    sim = dict(DEFAULT_CNN_SIMULATIONS[0], seed=12345)
    gen = cnn_generators([sim], seed=12345, heldout=True)[0]
    obs = gen.observation
    npix, pix = obs.num_pix, obs.pixel_scale
    kernel = np.asarray(obs.psf.kernel(pix), np.float64)
    n = n_per_galaxy * len(stamps)
    out = gen.generate(0, n)  # lens parameters, source positions and S/N from the prior
    t = {k: np.asarray(v) for k, v in out["truths"].items()}
    rng = np.random.default_rng(seed)
    data = ImageData(image_data=np.zeros((npix, npix)), transform_pix2angle=np.eye(2) * pix,
                     ra_at_xy_0=-(npix - 1) / 2 * pix, dec_at_xy_0=-(npix - 1) / 2 * pix)
    psf = PSF(psf_type="PIXEL", kernel_point_source=kernel / kernel.sum())
    im = ImageModel(data, psf, lens_model_class=LensModel(["SIE", "SHEAR"]),
                    source_model_class=LightModel(["INTERPOL"]),
                    kwargs_numerics={"supersampling_factor": 2})
    images, sigmas = [], []
    for i in range(n):
        stamp = stamps[i % len(stamps)]
        kl = [{k: float(t[f"lens.0.{k}"][i]) for k in
               ("theta_E", "e1", "e2", "center_x", "center_y")},
              {"gamma1": float(t["lens.1.gamma1"][i]), "gamma2": float(t["lens.1.gamma2"][i])}]
        ks = [{"image": stamp / stamp.max(), "center_x": float(t["source.0.center_x"][i]),
               "center_y": float(t["source.0.center_y"][i]), "scale": 0.03,
               "phi_G": float(rng.uniform(0, 2 * np.pi)), "amp": 1.0}]
        model = im.image(kwargs_lens=kl, kwargs_source=ks)
        m = tf.constant(model[None], tf.float32)
        amp = float(t["source_snr"][i]) / float(obs.snr(m)[0])
        # S/N is not linear in the amplitude with Poisson noise: iterate
        for _ in range(20):
            snr = float(obs.snr(tf.constant(model[None] * amp, tf.float32))[0])
            amp *= float(t["source_snr"][i]) / snr
        model = model * amp
        sig = np.sqrt(obs.noise_variance(tf.constant(model, tf.float32)).numpy())
        images.append(model + sig * rng.standard_normal(model.shape))
        sigmas.append(sig)
    x = {"image": tf.constant(np.stack(images), tf.float32),
         "noise": tf.constant(np.stack(sigmas), tf.float32)}
    draws = np.transpose(net.posterior(x).sample(500, seed=[4, 5]).numpy(), (1, 0, 2))
    theta = np.stack([t[name] for name in net.param_names], -1)
    med = np.median(draws, 1)
    cov = interval_coverage(draws, theta)
    rep = {"num_lenses": n, "tarp_max_deviation": tarp_coverage(draws, theta).max_deviation,
           "parameters": {name: {"coverage_68": float(cov[0.68][j]),
                                 "coverage_95": float(cov[0.95][j]),
                                 "median_abs_error": float(np.median(np.abs(med[:, j] - theta[:, j])))}
                          for j, name in enumerate(net.param_names)}}
    j = net.param_names.index("lens.0.theta_E")
    rep["theta_E_median_relative_error"] = float(np.median(np.abs(med[:, j] - theta[:, j])
                                                           / theta[:, j]))
    _print_report("lenstronomy-rendered AEGIS galaxies", rep)
    # the same lenses simulated by this package with Sersic sources, for comparison
    ref = report_from_evaluation(evaluate_cnn(net, [gen], n, batch_size=n, num_samples=500))
    _print_report("the same lens parameters, this package's Sersic simulations", ref)


def _load_cache(path):
    import json

    if not path or not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def _save_cache(path, cache):
    import json

    from tfstronglens.io._atomic import atomic_output

    with atomic_output(path, overwrite=True) as tmp, open(tmp, "w") as fh:
        json.dump(cache, fh, indent=1)


def map_and_hmc(net, num_map, num_hmc, num_starts=8, cache_path=None, hmc_first=0):
    from tfstronglens.inference import build_model, fit_lens

    cache = _load_cache(cache_path)  # lens index -> its HMC comparison row (resumable)

    sim = dict(DEFAULT_CNN_SIMULATIONS[0])
    gen = cnn_generators([sim], seed=777, heldout=True)[0]
    out = gen.generate(0, max(num_map, num_hmc))
    rows = {"prior": [], "cnn": []}
    hmc_rows = []
    # one model (amplitude priors scaled to the first image; they span six decades) for
    # every lens, the data passed per fit: its compiled objective serves all lenses
    model = build_model(gen.observation, np.asarray(out["image"][0]), lens="sie+shear",
                        source="sersic", lens_light=None, compile_batch_size=num_starts)
    for i in range(max(num_map, num_hmc)):
        truth = {k: float(np.asarray(v)[i]) for k, v in out["truths"].items()}
        image = np.asarray(out["image"][i])
        if i < num_map:
            for init in ("prior", "cnn"):
                t0 = time.perf_counter()
                res = fit_lens(model, image, method="map", num_starts=num_starts, map_steps=300,
                               seed=i, init=None if init == "prior" else net, progress=False)
                dt = time.perf_counter() - t0
                best = res.map.summary()
                rows[init].append(dict(
                    time=dt, mirrored=mirrored_mode(best, truth),
                    theta_E_miss=abs(best["lens.0.theta_E"] / truth["lens.0.theta_E"] - 1) > 0.02,
                    log_post=float(res.map.log_posterior)))
                print(f"map: lens {i + 1}/{num_map}, starts from {init}: {dt:.1f} s, mirrored "
                      f"{rows[init][-1]['mirrored']}, theta_E miss "
                      f"{rows[init][-1]['theta_E_miss']}", flush=True)
        if i < hmc_first:  # another process's share (its own --hmc-cache)
            pass
        elif i < num_hmc and str(i) in cache:
            hmc_rows.append({n: tuple(v) for n, v in cache[str(i)]["row"].items()})
            print(f"hmc: lens {i + 1}/{num_hmc} from {cache_path}", flush=True)
        elif i < num_hmc:
            res = fit_lens(model, image, method="hmc", num_starts=num_starts, map_steps=300,
                           seed=i,
                           init=net, num_chains=4, num_results=300, num_burnin=300,
                           progress=False)
            x = {"image": tf.constant(image[None]), "noise": tf.constant(
                np.asarray(out["noise_sigma"][i])[None])}
            d = net.posterior(x).sample(2000, seed=[i, 9]).numpy()[:, 0]
            hmc_rows.append({n: (float(d[:, j].mean()), float(d[:, j].std()),
                                 res.summary[n]["mean"], res.summary[n]["std"])
                             for j, n in enumerate(net.param_names)})
            max_r_hat = max(v["r_hat"] for v in res.summary.values())
            min_ess = min(min(v["ess_bulk"], v["ess_tail"]) for v in res.summary.values())
            print(f"hmc: lens {i + 1}/{num_hmc} done ({res.timings['total']:.0f} s; max R-hat "
                  f"{max_r_hat:.3f}, min bulk/tail ESS {min_ess:.0f})", flush=True)
            if cache_path:
                cache[str(i)] = {"row": hmc_rows[-1], "seconds": res.timings["total"],
                                 "max_r_hat": max_r_hat, "min_ess": min_ess}
                _save_cache(cache_path, cache)
    if num_map:
        print(f"MAP of {num_map} held-out lenses (SIE + shear, Sersic source, no lens light), "
              f"{num_starts} starts x 300 Adam steps + LM polish:")
        for init, r in rows.items():
            t = np.array([x["time"] for x in r])
            print(f"  starts from {init:5s}: median {np.median(t):.1f} s per lens; mirrored "
                  f"mode {sum(x['mirrored'] for x in r)}/{len(r)}; theta_E off by >2% "
                  f"{sum(x['theta_E_miss'] for x in r)}/{len(r)}")
        lp = np.array([[a["log_post"], b["log_post"]] for a, b in zip(rows["prior"], rows["cnn"])])
        print(f"  best log posterior, cnn - prior starts: median {np.median(lp[:, 1] - lp[:, 0]):.2f}"
              f"; cnn higher by > 1 on {(lp[:, 1] - lp[:, 0] > 1).sum()}, lower by > 1 on "
              f"{(lp[:, 0] - lp[:, 1] > 1).sum()} lenses")
    if hmc_rows:
        print(f"CNN vs NUTS posteriors on {len(hmc_rows)} lenses (median over lenses):")
        print(f"  {'parameter':20s} {'width cnn/hmc':>14s} {'|offset|/sd_hmc':>16s}")
        for n in net.param_names:
            w = np.median([r[n][1] / r[n][3] for r in hmc_rows])
            o = np.median([abs(r[n][0] - r[n][2]) / r[n][3] for r in hmc_rows])
            print(f"  {n:20s} {w:14.2f} {o:16.2f}")


def demo_starts(num_demo):
    from tfstronglens.inference import fit_lens
    from tfstronglens.inference.demo import demo_problem

    print(f"demo MAP on {num_demo} noise realisations (16 starts x 250 Adam steps + polish):")
    for seed in range(num_demo):
        model, truth, data = demo_problem(seed=seed)
        for init in ("prior", "cnn"):
            t0 = time.perf_counter()
            res = fit_lens(model, data, method="map", num_starts=16, map_steps=250, seed=seed,
                           init=init, progress=False)
            dt = time.perf_counter() - t0
            best = res.map.summary()
            err = best["lens.0.theta_E"] / truth["lens.0.theta_E"] - 1
            print(f"  seed {seed}, starts from {init:5s}: {dt:6.1f} s; mirrored "
                  f"{mirrored_mode(best, truth)}; best log posterior "
                  f"{float(res.map.log_posterior):.1f}; theta_E error {100 * err:+.2f}%; "
                  f"subhalo mass {best.get('subhalo.0.mass', float('nan')):.2e}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="pretrained")
    p.add_argument("--only", default="throughput,heldout,heads,lenstronomy,map,hmc")
    p.add_argument("--num-heldout", type=int, default=2000)
    p.add_argument("--num-map", type=int, default=20)
    p.add_argument("--num-hmc", type=int, default=20)
    p.add_argument("--num-demo", type=int, default=4)
    p.add_argument("--head-steps", type=int, default=1000)
    p.add_argument("--hmc-cache", default=None, metavar="FILE.json",
                   help="keep each lens's HMC comparison here; a rerun skips lenses done")
    p.add_argument("--hmc-first", type=int, default=0, metavar="K",
                   help="run NUTS only from lens K on (to share the lenses between "
                        "processes with separate caches; merge the JSON files after)")
    args = p.parse_args()
    net = load_lens_cnn(args.model)
    only = set(args.only.split(","))
    print(f"lens CNN: head {net.head_kind} ({net.flow_transform}), {net.count_params()} "
          f"weights, {net.num_pix}x{net.num_pix} images of {net.pixel_scale:g}\"")
    if "throughput" in only:
        throughput(net)
    if "heldout" in only:
        heldout(net, args.num_heldout)
    if "heads" in only:
        heads(net, args.head_steps, args.num_heldout)
    if "lenstronomy" in only:
        lenstronomy_aegis(net)
    if "map" in only or "hmc" in only:
        map_and_hmc(net, args.num_map if "map" in only else 0,
                    args.num_hmc if "hmc" in only else 0, cache_path=args.hmc_cache,
                    hmc_first=args.hmc_first)
    if "demo" in only:
        demo_starts(args.num_demo)


if __name__ == "__main__":
    main()
