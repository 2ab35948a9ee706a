"""Write a simulated dataset as FITS images plus an ECSV truth table."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import numpy as np

from ..io import write_fits
from .generator import LensDatasetGenerator

__all__ = ["write_dataset", "image_filename"]

_TRUTHS = "truths.ecsv"
_STAGING_PREFIX = ".tmp-dataset-"
# The files of a dataset in a directory: images, truth table and the temporary files
# (``.tmp-<8 hex>-<name>``, :func:`~tfstronglens.io._atomic.atomic_output`) of either.
_DATASET_FILE = re.compile(r"(\.tmp-[0-9a-f]{8}-)?(image_\d{5,}\.fits|truths\.ecsv)")


def image_filename(i: int) -> str:
    """The file name of image ``i`` of a dataset: ``image_00000.fits``..."""
    return f"image_{i:05d}.fits"


def _remove_dataset(out_dir: str, keep: str):
    """Delete the dataset files of ``out_dir`` (:data:`_DATASET_FILE`) and the staging
    folders of interrupted runs, all but ``keep`` (this run's); other files are left
    alone."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if name.startswith(_STAGING_PREFIX) and name != keep and os.path.isdir(path):
            shutil.rmtree(path)
        elif _DATASET_FILE.fullmatch(name) and not os.path.isdir(path):
            os.remove(path)


def _truth_header(gen: LensDatasetGenerator, truths: dict, subhalos: dict, j: int) -> dict:
    """Header cards of image ``j`` of a batch: profile names, truths, subhalo count."""
    cards = {}
    sim = gen.simulator
    for kind in ("lens", "source", "lens_light"):
        for i, prof in enumerate(sim.components(kind)):
            prefix = f"{kind}{i}".upper()
            cards[f"{prefix}_MODEL"] = (prof.name, f"{kind}[{i}] profile")
            for p in prof.param_names:
                if prof.param_event_ndims.get(p, 0):
                    continue  # a source image: the SOURCE extension
                cards[f"{prefix}_{p}".upper()] = (float(truths[f"{kind}.{i}.{p}"][j]),
                                                  f"{kind}[{i}] {prof.name} {p}")
    cards["SRC_SNR"] = (float(truths["source_snr"][j]), "matched-filter S/N of the source")
    if "lens_light_snr" in truths:
        cards["LL_SNR"] = (float(truths["lens_light_snr"][j]), "matched-filter S/N of lens light")
    cards["SUBMODEL"] = (gen.config.subhalo_model, "subhalo model (none/cdm/wdm)")
    cards["NSUB"] = (int(np.sum(subhalos["mask"][j])), "number of subhalos")
    return cards


def write_dataset(generator: LensDatasetGenerator, n: int, out_dir, overwrite: bool = False,
                  progress: bool = True, batch_size: int = 64) -> list:
    """Simulate ``n`` lenses and write ``out_dir/image_00000.fits``... and ``truths.ecsv``.

    Each FITS file holds the noisy image (primary HDU, e-/s per pixel, with ``PIXSCALE``,
    ``BUNIT``, ``EXPTIME`` (total), ``NEXP``, instrument, redshifts, seed and all truths
    as header cards, e.g. ``LENS0_THETA_E``), a ``NOISE`` extension (per-pixel noise
    standard deviation of the noise-free model) and a ``PSF`` extension (the kernel at
    the pixel scale) and, for image sources, a ``SOURCE`` extension (the true source
    image, e-/s/arcsec^2, ``PIXSCALE`` in its header). ``truths.ecsv`` (an astropy Table, one row per image, in order) has
    an ``index``/``filename`` column, one column per truth (``lens.0.theta_E``...) and the
    subhalo arrays as fixed-length ``[n_max]`` columns ``subhalos.mass``... Image ``i`` is
    row ``i % batch_size`` of the generator's batch ``i // batch_size``; the same
    ``(generator seed, batch_size)`` thus gives the same files, and the first ``m`` images
    do not depend on ``n`` (the last batch is rendered whole and cut).

    The dataset is written into a staging folder inside ``out_dir`` (``.tmp-dataset-*``)
    and moved into place when complete (the truth table last), so an interrupted or
    failed run leaves no images beside ``out_dir``'s previous content. A non-empty
    ``out_dir`` is refused (``FileExistsError``) unless ``overwrite``, which replaces the
    dataset there: the images, truth table and temporary files of a previous (possibly
    interrupted) run are deleted before the new files are moved in; other files are left
    alone. Returns the list of written paths.
    """
    from astropy.table import Table

    from .. import __version__ as _version

    if not isinstance(generator, LensDatasetGenerator):
        raise ValueError(f"generator must be a LensDatasetGenerator, got {generator!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {out_dir!r} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"output directory {out_dir!r} is not empty; pass overwrite=True "
                              "(--overwrite) to write into it anyway")
    os.makedirs(out_dir, exist_ok=True)

    cfg = generator.config
    obs = generator.observation
    batch_size = int(batch_size)
    kernel = None if obs.psf is None else obs.psf.kernel(obs.pixel_scale).astype(np.float32)
    unit = "electron/s"
    base = {
        "ORIGIN": (f"tfstronglens {_version}", "software that made this file"),
        "INSTRUME": (cfg.instrument, "instrument preset"),
        "EXPTIME": (obs.total_exposure_time, "[s] total exposure time"),
        "NEXP": (obs.num_exposures, "number of exposures"),
        "BKGRMS": (obs.background_rms, "[electron/s] background noise per pixel"),
        "ZLENS": (cfg.z_lens, "lens redshift"),
        "ZSOURCE": (cfg.z_source, "source redshift"),
        "SUPERSMP": (cfg.supersample, "sub-pixels per pixel side"),
        "SIMSEED": (cfg.seed, "generator seed"),
    }
    if obs.zero_point is not None:
        base["MAGZP"] = (obs.zero_point, "[mag AB] zero point (1 electron/s)")

    num_batches = -(-n // batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="simulating", unit="image")
    rows = {}
    names = []
    staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out_dir)
    try:
        for k in range(num_batches):
            out = generator.generate(k, batch_size)
            count = min(batch_size, n - k * batch_size)
            for j in range(count):
                i = k * batch_size + j
                header = dict(base, BATCH=(k, "generator batch"), BATCHROW=(j, "row in batch"),
                              **_truth_header(generator, out["truths"], out["subhalos"], j))
                write_fits(os.path.join(staging, image_filename(i)),
                           out["image"][j].astype(np.float32), header=header,
                           pixel_scale=obs.pixel_scale, bunit=unit,
                           NOISE=(out["noise_sigma"][j].astype(np.float32),
                                  {"BUNIT": unit, "COMMENT": "noise standard deviation"}),
                           PSF=None if kernel is None else (
                               kernel, {"PIXSCALE": (obs.pixel_scale, "[arcsec/pixel]")}),
                           SOURCE=None if "source_image" not in out else (
                               out["source_image"][j].astype(np.float32),
                               {"PIXSCALE": (generator.source_pixel_scale, "[arcsec/pixel]"),
                                "BUNIT": "electron/s/arcsec2",
                                "COMMENT": "true source (PIXELATED, center and phi_G in the "
                                           "primary header)"}))
                names.append(image_filename(i))
                rows.setdefault("index", []).append(i)
                rows.setdefault("filename", []).append(image_filename(i))
                for name, v in out["truths"].items():
                    rows.setdefault(name, []).append(float(v[j]))
                for name, v in out["subhalos"].items():
                    rows.setdefault(f"subhalos.{name}", []).append(np.asarray(v[j]))
            if bar is not None:
                bar.update(count)
        table = Table({name: np.asarray(v) for name, v in rows.items()})
        table.meta["config"] = cfg.to_dict()
        table.meta["units"] = "angles arcsec, amp electron/s/arcsec^2, masses M_sun"
        table.write(os.path.join(staging, _TRUTHS), format="ascii.ecsv")
        names.append(_TRUTHS)
        if overwrite:
            _remove_dataset(out_dir, keep=os.path.basename(staging))
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    return [os.path.join(out_dir, name) for name in names]
