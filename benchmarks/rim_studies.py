"""Robustness studies of the shipped RIM (issue: RIM source reconstructor).

    python benchmarks/rim_studies.py [--study rotation,offset,aegis] [--num-lenses 64]

* ``rotation``: rotate the data, the noise map and the lens by 90 degrees; the
  reconstruction should rotate with them. Prints the normalised difference between the
  reconstruction of the rotated data and the rotated reconstruction (over the source's
  footprint; 0 = equivariant) for the RIM and for the VAE-latent MAP.
* ``offset``: the lens parameters off by one standard deviation each (random signs), the
  standard deviation being the Cramer-Rao bound ``sqrt(diag(F^-1))``, ``F = J^T N^-1 J``
  the Fisher matrix of the 7 lens parameters with the true source (central differences;
  what a MAP's errors approach): source error and chi^2 per pixel with the true and the offset lens.
* ``aegis``: the five real AEGIS F814W galaxies of GalSim's test data
  (``../shared/data/galsim_real``, skipped when absent), at their native S/N, lensed by SIE
  + shear lenses as the training data (random offsets, rotations, mirror images), S/N
  15-50: source error and chi^2 per pixel of the RIM, against the validation-split
  synthetic galaxies of the same lenses.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from tfstronglens.inference import reconstruct_source
from tfstronglens.models import load_rim, source_error
from tfstronglens.models.rim_training import DEFAULT_RIM_SIMULATION, evaluate_rim, rim_batch
from tfstronglens.simulation import LensDatasetGenerator, LensSimulationConfig

HERE = os.path.dirname(os.path.abspath(__file__))
GALSIM_REAL = os.path.join(HERE, "..", "..", "shared", "data", "galsim_real")
NAMES = ["lens.0.theta_E", "lens.0.e1", "lens.0.e2", "lens.0.center_x", "lens.0.center_y",
         "lens.1.gamma1", "lens.1.gamma2"]


def _generator(seed, count=64, **changes):
    cfg = dict(DEFAULT_RIM_SIMULATION, seed=seed, galaxy_split="validation", galaxy_count=count)
    cfg.update(changes)
    return LensDatasetGenerator(LensSimulationConfig.from_dict(cfg))


def _lens_list(t, j):
    return [{k.split(".")[-1]: float(t[k][j]) for k in NAMES[:5]},
            {k.split(".")[-1]: float(t[k][j]) for k in NAMES[5:]}]


def rotation(rim, n):
    gen = _generator(31)
    out = gen.generate(0, n)
    psf = gen.observation.psf.kernel(gen.observation.pixel_scale)
    sim = gen.simulator
    t = out["truths"]
    # which np.rot90 is a 90-degree rotation of the sky (x, y) -> (-y, x)?
    rot = {n_: t[n_].copy() for n_ in NAMES}
    rot["lens.0.center_x"], rot["lens.0.center_y"] = -t["lens.0.center_y"], t["lens.0.center_x"]
    for k in ("lens.0.e1", "lens.0.e2", "lens.1.gamma1", "lens.1.gamma2"):
        rot[k] = -t[k]
    src = [dict(image=out["source_image"], center_x=-t["source.0.center_y"],
                center_y=t["source.0.center_x"], phi_G=t["source.0.phi_G"] + np.pi / 2)]
    model_rot = sim(lens=[{k.split(".")[-1]: rot[k] for k in NAMES[:5]},
                          {k.split(".")[-1]: rot[k] for k in NAMES[5:]}], source=src).numpy()
    k_rot = min((1, 3), key=lambda k: np.abs(np.rot90(out["model"], k, axes=(1, 2))
                                             - model_rot).max())
    err = np.abs(np.rot90(out["model"], k_rot, axes=(1, 2)) - model_rot).max()
    print(f"rotation: np.rot90(k={k_rot}) is the sky rotation (model images agree to "
          f"{err / out['model'].max():.1e} of the peak)")
    for method in ("rim", "vae"):
        diffs, secs = [], 0.0
        for j in range(n if method == "rim" else min(n, 6)):
            kw = dict(pixel_scale=gen.observation.pixel_scale, method=method)
            r0 = reconstruct_source(out["image"][j], out["noise_sigma"][j], psf,
                                    _lens_list(t, j), **kw)
            r1 = reconstruct_source(np.rot90(out["image"][j], k_rot),
                                    np.rot90(out["noise_sigma"][j], k_rot), psf,
                                    _lens_list(rot, j), **kw)
            secs += r0.time_s + r1.time_s
            diffs.append(float(source_error(r1.source, np.rot90(r0.source, k_rot))))
        print(f"rotation {method}: {len(diffs)} lenses, normalised difference of the rotated "
              f"reconstructions median {np.median(diffs):.3f} (16-84%: "
              f"{np.percentile(diffs, 16):.3f}-{np.percentile(diffs, 84):.3f}); "
              f"{secs / (2 * len(diffs)):.2f} s per reconstruction")


def offset(rim, n):
    gen = _generator(41)
    out = gen.generate_tensors(0, n)
    inputs, truth = rim_batch(gen, rim, out)
    sim = gen.simulator
    t = out["truths"]
    src = [dict(image=out["source_image"], center_x=t["source.0.center_x"],
                center_y=t["source.0.center_y"], phi_G=t["source.0.phi_G"])]
    cols = tf.stack([t[k] for k in NAMES], -1)

    def render(c):
        lens = [{k.split(".")[-1]: c[:, i] for i, k in enumerate(NAMES[:5])},
                {k.split(".")[-1]: c[:, 5 + i] for i, k in enumerate(NAMES[5:])}]
        return sim(lens=lens, source=src)

    columns = []  # central differences (the renderer's XLA barriers have no forward mode)
    h = 1e-3
    for i in range(7):
        step = tf.one_hot([i] * n, 7) * h
        columns.append((render(cols + step) - render(cols - step)) / (2 * h))
    jac = tf.stack(columns, -1)                                    # [B, N, N, 7]
    jac = tf.reshape(jac / inputs["noise"][..., None], [n, -1, 7])
    fisher = tf.matmul(jac, jac, transpose_a=True)
    sd = np.sqrt(np.diagonal(np.linalg.inv(fisher.numpy().astype(np.float64)), axis1=1,
                             axis2=2))
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=sd.shape)
    packed = np.asarray(inputs["lens"])                             # rim order: 9 columns
    idx = [rim.lens_param_names.index(k) for k in NAMES]
    off = packed.copy()
    off[:, idx] += signs * sd
    print("offset: median Cramer-Rao sd of " + ", ".join(
        f"{k.split('.', 1)[1]} {np.median(sd[:, i]):.2g}" for i, k in enumerate(NAMES)))
    call = tf.function(lambda x: rim(x)[:, -1], autograph=False)

    @tf.function(autograph=False)
    def rerender(source, lens, psf):
        return rim.operator.forward(source, rim.operator.trace(lens), psf)

    for name, lens in (("true lens", packed), ("lens off by 1 sd", off)):
        x = dict(inputs, lens=tf.constant(lens))
        est = call(x)
        model = rerender(est, x["lens"], x["psf"])
        chi2 = tf.reduce_mean(tf.square((x["image"] - model) / x["noise"]), [1, 2]).numpy()
        err = source_error(est, truth).numpy()
        print(f"offset: {name}: source error median {np.median(err):.3f} (16-84%: "
              f"{np.percentile(err, 16):.3f}-{np.percentile(err, 84):.3f}), chi2/pixel median "
              f"{np.median(chi2):.3f}")


def aegis_stamps():
    """The five AEGIS F814W galaxies at native S/N, 64x64 at 0.03" (or None if absent)."""
    if not os.path.isfile(os.path.join(GALSIM_REAL, "AEGIS_F814w_catalog.fits")):
        return None, None
    import tensorflow_datasets as tfds

    from tfstronglens.datasets.cosmos_galaxies import CosmosGalaxies, CosmosGalaxiesConfig

    cfg = CosmosGalaxiesConfig(name="aegis_native", catalog="AEGIS_F814w_catalog.fits",
                               stamp_size=64, psf_size=33, snr_range=(0.0, 1e5),
                               validation_fraction=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        b = CosmosGalaxies(config=cfg, data_dir=tmp)
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=GALSIM_REAL))
        exs = list(tfds.as_numpy(b.as_dataset(split="train")))
    stamps = np.stack([np.asarray(e["image"], np.float32).reshape(64, 64) for e in exs])
    return stamps, exs


def aegis(rim, n):
    stamps, exs = aegis_stamps()
    if stamps is None:
        print(f"aegis: skipped ({GALSIM_REAL} not found)")
        return
    snrs = [float(e["snr"]) for e in exs]
    print(f"aegis: {len(stamps)} galaxies (ids {[int(e['id']) for e in exs]}), stamp S/N "
          f"{np.round(snrs, 0).tolist()}")
    results = {}
    from tfstronglens.simulation.sources import GalaxyStampSampler

    for label in ("synthetic (validation split)", "AEGIS F814W"):
        gen = _generator(51, count=len(stamps))
        if label.startswith("AEGIS"):
            gen = LensDatasetGenerator(gen.config, source_sampler=GalaxyStampSampler(
                gen.config, stamps=stamps, pixel_scale=0.03))
        ev = evaluate_rim(rim, gen, n, batch_size=min(n, 32))
        results[label] = ev
        print(f"aegis: {label}: {n} lenses, source error median "
              f"{np.median(ev['source_error']):.3f} (16-84%: "
              f"{np.percentile(ev['source_error'], 16):.3f}-"
              f"{np.percentile(ev['source_error'], 84):.3f}), chi2/pixel median "
              f"{np.median(ev['chi2_per_pixel']):.3f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--study", default="rotation,offset,aegis")
    p.add_argument("--num-lenses", type=int, default=64)
    args = p.parse_args()
    rim = load_rim()
    studies = {"rotation": rotation, "offset": offset, "aegis": aegis}
    for name in args.study.split(","):
        t0 = time.perf_counter()
        studies[name](rim, args.num_lenses)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)\n")


if __name__ == "__main__":
    main()
