r"""Reconstruct the source of a lensed image for a given lens: RIM, VAE-latent MAP, or a
regularised pixelated inversion.

Every method returns the source as surface brightness (e-/s/arcsec^2) on a pixel grid
centred on (0, 0), the model image it implies and its ``chi^2`` per pixel, in a
:class:`SourceReconstruction`. Methods (the table :data:`RECONSTRUCTION_METHODS`):

* ``"rim"``: the recurrent inference machine (:class:`~tfstronglens.models.RIM`; the
  shipped one unless ``model=`` is given): one network evaluation, no optimisation.
* ``"vae"``: the MAP of the pretrained VAE's latent vector, amplitude and centre with the
  lens held fixed (:func:`~tfstronglens.inference.find_map` on a
  :class:`~tfstronglens.inference.LensModel` with a
  :class:`~tfstronglens.models.VAESource`).
* ``"pixelated"``: the linear inversion ``s = argmin chi^2(s) + lambda ||G s||^2`` (``G``
  the forward differences of the source grid: gradient regularisation, as in Suyu et al.
  2006's "gradient" form), solved by conjugate gradients with the exact operator
  (:class:`~tfstronglens.lensing.SourceOperator`), ``lambda`` chosen on a log grid by the
  discrepancy principle (the ``chi^2`` per pixel closest to 1).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf

from ..lensing.grid import PixelGrid
from ..lensing.source_operator import SourceOperator

__all__ = ["SourceReconstruction", "reconstruct_source", "pixelated_inversion",
           "RECONSTRUCTION_METHODS", "source_init_from_rim"]


@dataclasses.dataclass(frozen=True)
class SourceReconstruction:
    """A reconstructed source.

    Attributes:
      method: ``"rim"``, ``"vae"`` or ``"pixelated"``.
      source: ``[n, n]`` surface brightness, e-/s/arcsec^2, pixel ``(i, j)`` at
        ``((j - (n-1)/2) s, (i - (n-1)/2) s)`` arcsec.
      source_pixel_scale: ``s`` (arcsec).
      model: ``[N, N]`` the image the source renders to (e-/s per pixel).
      chi2_per_pixel: mean over pixels of ``((data - model) / sigma)^2``.
      time_s: wall time of the reconstruction (after loading and compilation for ``rim``).
      details: method-specific numbers (e.g. the chosen ``lambda``).
    """

    method: str
    source: np.ndarray
    source_pixel_scale: float
    model: np.ndarray
    chi2_per_pixel: float
    time_s: float
    details: dict


def _as_image(value, name, n=None):
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square 2D array, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, {n}) like the image, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has {int(np.sum(~np.isfinite(arr)))} NaN or infinite "
                         "pixel(s)")
    return arr


def _inputs(image, noise, psf):
    image = _as_image(image, "image")
    n = image.shape[0]
    noise = np.asarray(noise, dtype=np.float64)
    if noise.ndim == 0:
        noise = np.full((n, n), float(noise))
    noise = _as_image(noise, "noise", n)
    if not np.all(noise > 0):
        raise ValueError(f"noise must be positive everywhere, got min {noise.min()!r}")
    psf = _as_image(psf, "psf")
    if psf.shape[0] % 2 == 0:
        raise ValueError(f"psf must have an odd size, got {psf.shape}")
    if not psf.sum() > 0:
        raise ValueError("psf must have a positive sum")
    return image, noise, psf / psf.sum()


def _chi2(image, noise, model):
    return float(np.mean(np.square((image - model) / noise)))


def pixelated_inversion(operator: SourceOperator, image, noise, psf, lens,
                        lambdas=None, max_iterations: int = 200):
    """The gradient-regularised least-squares source (see the module docs) for one image.

    Args:
      operator: a :class:`~tfstronglens.lensing.SourceOperator` (image grid, lens models,
        source grid).
      image, noise: ``[N, N]`` data and per-pixel sigma (e-/s).
      psf: ``[k, k]`` kernel (sum 1).
      lens: ``[1, P]`` packed lens parameters (:meth:`SourceOperator.pack`).
      lambdas: regularisation strengths to try, in units of ``lambda_0``, the mean diagonal
        of ``A^T N^-1 A`` (default ``10^[-2 .. 3]``, 11 values): all are solved together.
      max_iterations: conjugate-gradient iterations (a fixed number: static shapes).

    Returns ``(source [n, n], details)``, ``details`` with the chosen ``lambda`` (absolute
    and relative), every ``lambda``'s ``chi^2`` per pixel and the CG residual.
    """
    rel = np.logspace(-2, 3, 11) if lambdas is None else np.asarray(lambdas, np.float64)
    solve = _inversion_solver(operator, int(max_iterations))
    x, chi2, lam0, resid = (t.numpy() for t in solve(
        tf.constant(image, tf.float32)[None], tf.constant(1.0 / noise**2, tf.float32)[None],
        tf.constant(psf, tf.float32), tf.constant(lens, tf.float32),
        tf.constant(rel, tf.float32)))
    k = int(np.argmin(np.abs(chi2 - 1.0)))
    return x[k], {"lambda": float(rel[k] * lam0), "lambda_relative": float(rel[k]),
                  "lambda_0": float(lam0), "chi2_per_pixel_by_lambda":
                  {f"{v:.3g}": float(c) for v, c in zip(rel, chi2)},
                  "cg_relative_residual": float(resid[k])}


# One compiled solver per operator configuration and iteration count: the data, noise, PSF,
# lens and lambdas are arguments, so fitting many lenses of one survey compiles once
# instead of once per lens (each compilation holds on to its XLA executable).
_SOLVERS: dict = {}


def _operator_key(operator: SourceOperator, max_iterations: int) -> tuple:
    grid = operator.grid.get_config()
    return (tuple(sorted(grid.items())), operator.lens_models, operator.source.num_pix,
            float(operator.source.pixel_scale), max_iterations)


def _laplacian(s):
    """``G^T G s`` for forward differences ``G``: minus the discrete Laplacian of ``[L, n, n]``
    maps with free (Neumann) edges."""
    gx = s[..., :, 1:] - s[..., :, :-1]
    gy = s[..., 1:, :] - s[..., :-1, :]
    out = tf.pad(-gx, [[0, 0], [0, 0], [1, 0]]) + tf.pad(gx, [[0, 0], [0, 0], [0, 1]])
    out += tf.pad(-gy, [[0, 0], [1, 0], [0, 0]]) + tf.pad(gy, [[0, 0], [0, 1], [0, 0]])
    return -out


def _inversion_solver(operator: SourceOperator, max_iterations: int):
    key = _operator_key(operator, max_iterations)
    if key in _SOLVERS:
        return _SOLVERS[key]
    n = operator.source.num_pix

    @tf.function(jit_compile=True, autograph=False)
    def solve(d, inv_var, kernel, lens, rel_lams):
        rays = operator.trace(lens)
        like = tf.zeros([rel_lams.shape[0], n, n])
        ata = lambda s: operator.adjoint(operator.forward(s, rays, kernel) * inv_var,  # noqa: E731
                                         rays, kernel, like=like)
        # lambda_0: the mean of diag(A^T N^-1 A), estimated from A^T N^-1 A 1 / ...: the
        # exact mean diagonal is sum_p W_p sum_j A_pj^2 / n^2 <= this row-sum estimate
        lam0 = tf.reduce_mean(ata(tf.ones([1, n, n]))[:1])
        lams = rel_lams * lam0
        op = lambda s: ata(s) + lams[:, None, None] * _laplacian(s)  # noqa: E731
        b = operator.adjoint(d * inv_var, rays, kernel, like=like)
        x = tf.zeros_like(b)
        r = b - op(x)
        p = r
        rs = tf.reduce_sum(r * r, [1, 2])

        def body(i, x, r, p, rs):
            ap = op(p)
            alpha = rs / tf.maximum(tf.reduce_sum(p * ap, [1, 2]), 1e-30)
            x = x + alpha[:, None, None] * p
            r = r - alpha[:, None, None] * ap
            rs_new = tf.reduce_sum(r * r, [1, 2])
            p = r + (rs_new / tf.maximum(rs, 1e-30))[:, None, None] * p
            return i + 1, x, r, p, rs_new

        _, x, r, _, rs = tf.while_loop(lambda i, *a: i < max_iterations, body,
                                       (tf.constant(0), x, r, p, rs))
        model = operator.forward(x, rays, kernel)
        chi2 = tf.reduce_mean(tf.square(d - model) * inv_var, [1, 2])
        return x, chi2, lam0, tf.sqrt(rs / tf.reduce_sum(b * b, [1, 2]))

    _SOLVERS[key] = solve
    return solve


def _rim(image, noise, psf, lens_list, pixel_scale, lens_models, supersample, model,
         source_num_pix, source_pixel_scale):
    from ..models.rim import load_rim

    rim = load_rim(model)
    rim = rim.with_observation(num_pix=image.shape[0], pixel_scale=pixel_scale,
                               lens_models=list(lens_models), supersample=supersample,
                               psf_size=psf.shape[0])
    lens = rim.pack_lens(lens_list)
    inputs = {"image": image[None].astype(np.float32), "noise": noise[None].astype(np.float32),
              "psf": psf[None].astype(np.float32), "lens": lens}
    call = tf.function(lambda x: rim(x, training=False)[:, -1], autograph=False)
    call(inputs)
    t0 = time.perf_counter()
    source = call(inputs).numpy()[0]
    seconds = time.perf_counter() - t0
    return source, rim.source_pixel_scale, rim.operator, lens, seconds, {
        "steps": rim.steps, "model": model if isinstance(model, str) else "in-memory"}


def _pixelated(image, noise, psf, lens_list, pixel_scale, lens_models, supersample, model,
               source_num_pix, source_pixel_scale):
    op = SourceOperator(PixelGrid(image.shape[0], pixel_scale, supersample), list(lens_models),
                        source_num_pix, source_pixel_scale)
    lens = op.pack(lens_list)
    pixelated_inversion(op, image, noise, psf, lens)  # compile (once per configuration)
    t0 = time.perf_counter()
    source, details = pixelated_inversion(op, image, noise, psf, lens)
    return source, source_pixel_scale, op, lens, time.perf_counter() - t0, details


def _vae(image, noise, psf, lens_list, pixel_scale, lens_models, supersample, model,
         source_num_pix, source_pixel_scale, num_starts=8, num_steps=400, seed=0):
    from ..lensing.psf import PixelPSF
    from ..models import VAESource, load_pretrained_vae
    from ..observation import Observation
    from .map import find_map
    from .model import build_model

    n = image.shape[0]
    op = SourceOperator(PixelGrid(n, pixel_scale, supersample), list(lens_models),
                        source_num_pix, source_pixel_scale)
    lens = op.pack(lens_list)
    obs = Observation(n, pixel_scale, 1.0, background_rms=float(np.median(noise)),
                      psf=PixelPSF(psf))
    decoder = load_pretrained_vae().decoder if model is None else model
    src = VAESource(decoder, pixel_scale=0.03)
    fixed = {name: float(v) for name, v in zip(op.lens_param_names, lens[0])}
    # the lens is held at the given parameters: any list of mass profiles will do
    lm = build_model(obs, image, lens=list(op.lens_models), source=src, noise_map=noise,
                     fixed=fixed, supersample=supersample, jit_compile=False)
    t0 = time.perf_counter()
    fit = find_map(lm, num_starts=num_starts, num_steps=num_steps, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    z = np.array([float(fit.params[f"source.z.{k}"]) for k in range(src.latent_dim)], np.float32)
    amp = float(fit.params.get("source.0.amp", 1.0))
    cx = float(fit.params.get("source.0.center_x", 0.0))
    cy = float(fit.params.get("source.0.center_y", 0.0))
    grid = PixelGrid(source_num_pix, source_pixel_scale, 2)
    x, y = grid.coordinates(supersampled=True)
    sb = src.surface_brightness(x, y, z=z, amp=amp, center_x=cx, center_y=cy)
    source = grid.bin(sb).numpy()
    return source, source_pixel_scale, op, lens, seconds, {
        "num_starts": num_starts, "num_steps": num_steps, "amp": amp, "center_x": cx,
        "center_y": cy, "log_posterior": float(fit.log_posterior)}


#: ``method -> implementation``: each returns ``(source, pixel scale, operator, packed lens,
#: seconds, details)``.
RECONSTRUCTION_METHODS = {"rim": _rim, "vae": _vae, "pixelated": _pixelated}


def reconstruct_source(image, noise, psf, lens, *, pixel_scale: float, method: str = "rim",
                       lens_models=("SIE", "SHEAR"), supersample: int = 2, model=None,
                       source_num_pix: int = 64, source_pixel_scale: float = 0.03
                       ) -> SourceReconstruction:
    """Reconstruct the source of ``image`` for the lens ``lens`` (see the module docs).

    Args:
      image: ``[N, N]`` data (e-/s per pixel; lens light subtracted or absent).
      noise: per-pixel noise sigma, ``[N, N]`` or a scalar (e-/s).
      psf: ``[k, k]`` PSF kernel at the image's pixel scale (odd ``k``; normalised here).
      lens: lenstronomy-style list of dicts, one per ``lens_models`` entry, e.g.
        ``[{"theta_E": 1.1, "e1": 0.1, "e2": 0, "center_x": 0, "center_y": 0},
        {"gamma1": 0.01, "gamma2": 0}]``.
      pixel_scale: arcsec per image pixel.
      method: ``"rim"``, ``"vae"`` or ``"pixelated"``.
      lens_models: mass profile names (default SIE + external shear).
      supersample: sub-pixels per image pixel side for the ray tracing.
      model: ``rim``: a :class:`~tfstronglens.models.RIM`, a folder holding ``rim.keras`` or
        a ``.keras`` path (default: the shipped RIM); ``vae``: a decoder spec
        (:func:`~tfstronglens.models.load_decoder`; default the pretrained VAE).
      source_num_pix, source_pixel_scale: the source grid of ``pixelated`` and of the
        returned ``vae`` source (the RIM's is its own).

    Raises ``ValueError`` naming the bad argument (shapes, NaN pixels, non-positive noise,
    missing or unknown lens parameters, an unknown method).
    """
    if method not in RECONSTRUCTION_METHODS:
        raise ValueError(f"method={method!r}: must be one of {sorted(RECONSTRUCTION_METHODS)}")
    if not (isinstance(pixel_scale, (int, float)) and math.isfinite(pixel_scale)
            and pixel_scale > 0):
        raise ValueError(f"pixel_scale must be a positive number (arcsec), got {pixel_scale!r}")
    image, noise, psf = _inputs(image, noise, psf)
    source, scale, op, lens_arr, seconds, details = RECONSTRUCTION_METHODS[method](
        image, noise, psf, lens, float(pixel_scale), tuple(lens_models), int(supersample),
        model, int(source_num_pix), float(source_pixel_scale))
    if op.source.num_pix != source.shape[-1] or abs(op.source.pixel_scale - scale) > 1e-12:
        op = SourceOperator(op.grid, list(lens_models), source.shape[-1], scale)
    rays = op.trace(tf.constant(lens_arr))
    model_img = op.forward(tf.constant(source[None], tf.float32), rays,
                           tf.constant(psf, tf.float32)).numpy()[0]
    return SourceReconstruction(method=method, source=np.asarray(source, np.float32),
                                source_pixel_scale=float(scale), model=model_img,
                                chi2_per_pixel=_chi2(image, noise, model_img), time_s=seconds,
                                details=details)


def _resample(source, pixel_scale, num_pix, new_scale, supersample=2):
    """A source image ``[n, n]`` (e-/s/arcsec^2, bilinear on its grid centred on (0, 0))
    averaged over the pixels of another centred grid ``[num_pix, num_pix]``."""
    from ..profiles.pixelated_source import PixelatedSource

    src = PixelatedSource(source.shape[-1], pixel_scale)
    grid = PixelGrid(int(num_pix), float(new_scale), supersample)
    x, y = grid.coordinates(supersampled=True)
    return grid.bin(src.surface_brightness(x, y, image=np.asarray(source, np.float32))).numpy()


def source_init_from_rim(model, lens_params: dict, vae=None) -> dict:
    """Starting values for ``model``'s lens and source parameters from a RIM fit.

    ``lens_params``: the lens parameters of a MAP with ``source=RIMSource()`` (a dict
    ``name -> value`` with the names of ``model``, e.g. ``MAPResult.summary()``); the
    RIM's source for that lens (reconstructed from ``model``'s data and noise) becomes

    * for a pixelated source: ``source.0.image`` (resampled to its grid);
    * for a VAE source (``source.z.k``): the VAE encoder's posterior mean of the source
      resampled to the decoder's grid and divided by its peak, and ``source.0.amp`` the
      peak (``vae``: the :class:`~tfstronglens.models.VAE` whose decoder the model uses;
      default the pretrained one), centre (0, 0).

    Returns a dict for :func:`~tfstronglens.inference.fit_lens`'s ``map_init``.
    """
    from ..models.rim import RIMSource
    from .model import LensModel

    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    names = [n for n in model.param_names if n.startswith("lens.")]
    init = {n: float(lens_params[n]) for n in names if n in lens_params}
    missing = [n for n in names if n not in init]
    if missing:
        raise ValueError(f"lens_params lacks {missing}")
    rim_model = model.replace(source=RIMSource(), lens_light=None)
    lens_only = {n: v for n, v in init.items() if n in rim_model.param_names}
    _, source, _ = rim_model.component_kwargs(lens_only)
    rim_src = rim_model.source_profile
    image = np.asarray(source[0]["image"])[0]
    prof = model.source_profile
    if model.latent_dim:
        from ..models import load_pretrained_vae

        vae = load_pretrained_vae() if vae is None else vae
        n = prof.num_pix
        stamp = _resample(image, rim_src.pixel_scale, n, prof.pixel_scale)
        peak = float(max(stamp.max(), 1e-30))
        z = np.asarray(vae.posterior(stamp[None] / peak).mean())[0]
        init.update({f"source.z.{k}": float(v) for k, v in enumerate(z)})
        if "source.0.amp" in model.param_names:
            init["source.0.amp"] = peak
        for c in ("source.0.center_x", "source.0.center_y"):
            if c in model.param_names:
                init[c] = 0.0
    elif "source.0.image" in model.param_names:
        init["source.0.image"] = _resample(image, rim_src.pixel_scale, prof.num_pix,
                                           prof.pixel_scale)
    else:
        raise ValueError("source_init_from_rim needs a pixelated or VAE-latent source model")
    return init
