r"""The lensing operator of a pixelated source: ``s -> A s`` for a fixed lens and PSF.

For a source given as surface brightness on a square grid
(:class:`~tfstronglens.profiles.PixelatedSource`, bilinear, centred on (0, 0)) the
rendered image is linear in the source pixels: ``d = A s`` with ``A`` = ray tracing of
the supersampled image pixels through the lens, interpolation on the source grid,
sub-pixel averaging times the pixel area, PSF convolution (the
:class:`~tfstronglens.Simulator`'s steps). The rays do not depend on ``s``, so
:meth:`SourceOperator.trace` runs once per lens and :meth:`SourceOperator.forward`,
:meth:`SourceOperator.adjoint` (``A^T r``, by automatic differentiation of the forward
map: exact) and :meth:`SourceOperator.log_likelihood_gradient` reuse them. The RIM, the
regularised pixelated inversion and the RIM's training data all use it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..profiles.base import MassProfile, get_profile
from ..profiles.pixelated_source import PixelatedSource
from .grid import PixelGrid
from .simulator import Simulator

__all__ = ["SourceOperator"]


class SourceOperator:
    """``A``: pixelated sources ``[B, n, n]`` (e-/s/arcsec^2) -> images ``[B, N, N]`` (e-/s
    per pixel) through the lens ``lens_models`` (see the module docs).

    Args:
      grid: the image :class:`PixelGrid` (its supersampling is the ray tracing's).
      lens_models: mass profile names (or instances) with scalar parameters.
      source_num_pix, source_pixel_scale: the source grid (centred on (0, 0)).
    """

    def __init__(self, grid: PixelGrid, lens_models, source_num_pix: int,
                 source_pixel_scale: float):
        if isinstance(lens_models, str) or not isinstance(lens_models, (list, tuple)):
            raise ValueError(f"lens_models must be a list of mass profile names, got "
                             f"{lens_models!r}")
        profiles = []
        for i, name in enumerate(lens_models):
            try:
                prof = get_profile(name) if isinstance(name, str) else name
            except (ValueError, TypeError) as exc:
                raise ValueError(f"lens_models[{i}]={name!r}: {exc}") from None
            if not isinstance(prof, MassProfile) or prof.param_event_ndims:
                raise ValueError(f"lens_models[{i}]={name!r} is not a mass profile with scalar "
                                 "parameters")
            profiles.append(prof)
        self.lens_models = tuple(p.name for p in profiles)
        self.source = PixelatedSource(source_num_pix, source_pixel_scale)
        self.simulator = Simulator(grid, lens=profiles, source=[self.source], jit_compile=False)
        self.lens_param_names = self.simulator.param_names(("lens",))

    @property
    def grid(self) -> PixelGrid:
        return self.simulator.grid

    def pack(self, lens) -> np.ndarray:
        """A lenstronomy-style list of lens parameter dicts (one per lens model; scalars or
        ``[B]`` arrays; omitted parameters at their defaults) -> ``[B, P]`` float32, columns
        :attr:`lens_param_names`. ``ValueError`` names a missing or unknown parameter."""
        if not isinstance(lens, (list, tuple)):
            raise ValueError(f"lens parameters must be a list of dicts (one per lens model "
                             f"{list(self.lens_models)}), got {lens!r}")
        prepared = self.simulator.prepare("lens", lens)
        cols = [np.asarray(p[name], np.float32)
                for p, prof in zip(prepared, self.simulator.lens) for name in prof.param_names]
        cols = np.broadcast_arrays(*cols)
        if cols[0].ndim > 1:
            raise ValueError(f"lens parameters must be scalars or [B] arrays, got shape "
                             f"{cols[0].shape}")
        arr = np.stack([np.atleast_1d(c) for c in cols], axis=-1)
        if not np.all(np.isfinite(arr)):
            raise ValueError("lens parameters must be finite")
        return arr

    def trace(self, lens):
        """Source-plane positions of the rays for lens parameters ``[B, P]``."""
        columns = tf.unstack(tf.cast(lens, self.grid.dtype), axis=-1)
        params, k = [], 0
        for prof in self.simulator.lens:
            params.append({name: columns[k + i] for i, name in enumerate(prof.param_names)})
            k += len(prof.param_names)
        sim = self.simulator
        return sim.trace(sim.expand_params("lens", sim.prepare("lens", params, check=False)))

    def forward(self, source, rays, psf=None):
        """``A s``: images ``[B, N, N]`` of sources ``[B, n, n]`` along ``rays``
        (:meth:`trace`), convolved with ``psf`` (``[k, k]``, ``[B, k, k]`` or ``None``)."""
        sim = self.simulator
        params = sim.expand_params("source", sim.prepare("source", [{"image": source}],
                                                         check=False))
        sb = sim.light("source", params, *rays)
        return sim.pixelize(sb, convolve_psf=psf is not None, psf_kernel=psf)

    def adjoint(self, image, rays, psf=None, like=None):
        """``A^T r`` ``[B, n, n]`` for images ``[B, N, N]`` (exact: the gradient of
        ``<r, A s>``). ``like``: a source tensor giving the batch shape (default: the
        image's)."""
        n = self.source.num_pix
        if like is None:
            like = tf.zeros(tf.concat([tf.shape(image)[:-2], [n, n]], 0), image.dtype)
        with tf.GradientTape() as tape:
            tape.watch(like)
            inner = tf.reduce_sum(self.forward(like, rays, psf) * image)
        return tape.gradient(inner, like)

    def log_likelihood_gradient(self, source, rays, psf, data, inv_var):
        """``grad_s log L = A^T ((data - A s) inv_var)`` (``inv_var = 1 / sigma^2``)."""
        with tf.GradientTape() as tape:
            tape.watch(source)
            model = self.forward(source, rays, psf)
            loglik = -0.5 * tf.reduce_sum(tf.square(data - model) * inv_var)
        return tape.gradient(loglik, source)
