"""Ray tracing and image rendering."""

from __future__ import annotations

import tensorflow as tf

from .._validation import as_tensor, broadcast_shapes
from ..profiles.base import LightProfile, MassProfile, get_profile
from ._barrier import materialize
from .grid import PixelGrid
from .psf import PSF, convolve, psf_from_config

__all__ = ["Simulator"]

_KINDS = ("lens", "source", "lens_light")


def _as_profiles(items, base, kind, dtype):
    out = []
    for i, item in enumerate(items or ()):
        if isinstance(item, str):
            item = get_profile(item, dtype=dtype)
        if not isinstance(item, base):
            raise ValueError(
                f"{kind}[{i}] must be a {base.__name__} (or its name), got {item!r}"
            )
        if item.dtype != dtype:
            raise ValueError(
                f"{kind}[{i}] has dtype {item.dtype.name} but the grid has {dtype.name}; "
                "create the profiles with the same dtype"
            )
        out.append(item)
    return tuple(out)


def _ray_layout(shape) -> list:
    """A 2D shape ``[r, c]`` for the ``[s*s*N, N]`` rays of :meth:`PixelGrid.ray_coordinates`
    (the same elements in the same order: :meth:`PixelGrid.bin_rays` takes either) whose
    rows have a length ``c`` that is a multiple of 16, if there is one up to 1024.

    Compiled elementwise loops run over the last axis in vectors of 8 or 16 floats and
    finish each row in scalar code: with rows of ``N = 60`` that tail was 4 of every 60
    elements, and about a third of the time (measured: rendering 20-25% faster, its
    gradient too, with rows of 960).
    """
    total = int(shape[0]) * int(shape[1])
    for c in range(min(1024, total) // 16 * 16, 15, -16):
        if total % c == 0:
            return [total // c, c]
    return [int(shape[0]), int(shape[1])]


class Simulator:
    r"""Render lensed images from lists of profiles and lists of parameter dicts.

    #### Mathematical details

    For each sub-pixel position ``theta`` of the grid the source plane position is
    ``beta = theta - sum_k alpha_k(theta)`` (thin lens, all deflectors in one plane); the
    image is

        I(theta) = sum_l I_lens_light,l(theta) + sum_s I_source,s(beta(theta)),

    in flux / arcsec^2. Sub-pixels are averaged to pixels and multiplied by the pixel area
    (so images are in flux per pixel, as lenstronomy's), then convolved with the PSF at the
    native pixel scale (lenstronomy's default, ``supersampling_convolution=False``). The
    averaging applies the pixel window, so the analytic PSF kernels are the PSF sampled at
    pixel-centre offsets (not integrated over pixels): the image is ``box * PSF * I``, as
    lenstronomy's (see :class:`~tfstronglens.lensing.psf.PSF`).

    Args:
      grid: a :class:`PixelGrid` (its dtype sets the simulator's).
      lens, source, lens_light: sequences of profile instances (or registered names such
        as ``"SIE"``), in the order of the parameter lists given at call time.
      psf: a :class:`~tfstronglens.lensing.psf.PSF` or ``None``.
      jit_compile: compile the rendering with XLA (default True).

    Calling the simulator with ``lens=[{...}, ...]``, ``source=[...]``, ``lens_light=[...]``
    (lenstronomy-style ``kwargs`` lists) returns images ``[*batch_shape, N, N]``, where
    ``batch_shape`` is the broadcast of the parameters' leading (batch) shapes, at least
    ``[1]``.

    #### Example

    >>> grid = PixelGrid(60, 0.065, supersample=2)
    >>> sim = Simulator(grid, lens=[EPL(), Shear()], source=[SersicEllipse()], psf=GaussianPSF(0.1))
    >>> img = sim(lens=[dict(theta_E=1.0, gamma=2.1, e1=0.1, e2=0.0),
    ...                 dict(gamma1=0.02, gamma2=-0.01)],
    ...           source=[dict(amp=10.0, R_sersic=0.2, n_sersic=1.5, e1=0.0, e2=0.1)])
    """

    def __init__(self, grid: PixelGrid, lens=(), source=(), lens_light=(), psf: PSF | None = None,
                 jit_compile: bool = True):
        if not isinstance(grid, PixelGrid):
            raise ValueError(f"grid must be a PixelGrid, got {grid!r}")
        if psf is not None and not isinstance(psf, PSF):
            raise ValueError(f"psf must be a PSF instance or None, got {psf!r}")
        self.grid = grid
        self.dtype = grid.dtype
        self.lens = _as_profiles(lens, MassProfile, "lens", self.dtype)
        self.source = _as_profiles(source, LightProfile, "source", self.dtype)
        self.lens_light = _as_profiles(lens_light, LightProfile, "lens_light", self.dtype)
        self.psf = psf
        self.jit_compile = bool(jit_compile)
        self._kernel = None if psf is None else tf.constant(psf.kernel(grid.pixel_scale), self.dtype)
        self._x, self._y = (tf.reshape(c, _ray_layout(c.shape)) for c in grid.ray_coordinates())
        # one trace per batch shape (static shapes are what XLA wants); no AutoGraph, as
        # the rendering code has no Python control flow on tensor values
        self._render = tf.function(self.render, jit_compile=self.jit_compile,
                                   autograph=False)

    # ----------------------------------------------------------- parameters
    def components(self, kind: str):
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        return getattr(self, kind)

    def param_names(self, kinds=_KINDS) -> list:
        """Flat names ``"lens.0.theta_E"`` of every parameter, in canonical order."""
        names = []
        for kind in kinds:
            for i, prof in enumerate(self.components(kind)):
                names += [f"{kind}.{i}.{p}" for p in prof.param_names]
        return names

    def prepare(self, kind: str, params, check: bool = True):
        """Check and convert a list of parameter dicts for component ``kind``."""
        profiles = self.components(kind)
        params = [] if params is None else list(params)
        if len(params) != len(profiles):
            raise ValueError(
                f"{kind} has {len(profiles)} component(s) "
                f"({[type(p).__name__ for p in profiles]}) but {len(params)} parameter dict(s) "
                "were given"
            )
        out = []
        for i, (prof, kw) in enumerate(zip(profiles, params)):
            if not isinstance(kw, dict):
                raise ValueError(f"{kind}[{i}] parameters must be a dict, got {kw!r}")
            try:
                out.append(prof._prepare_params(kw, method="__call__", check=check))
            except ValueError as exc:
                raise ValueError(f"{kind}[{i}] ({type(prof).__name__}): {exc}") from None
        return out

    def batch_shape(self, prepared: dict) -> tf.TensorShape:
        shapes = []
        for kind, plist in prepared.items():
            for i, (prof, p) in enumerate(zip(self.components(kind), plist)):
                for name, v in p.items():
                    nd = prof.param_event_ndims.get(name, 0)
                    shp = v.shape[:-nd] if nd else v.shape
                    shapes.append((f"{kind}[{i}].{name}", shp))
        return broadcast_shapes(shapes, context="Simulator")

    def expand_params(self, kind: str, prepared) -> list:
        """Rendering step 0: the :meth:`prepare`-d parameter dicts of ``kind`` with two unit
        axes appended to every scalar parameter, so that a batch ``[B]`` broadcasts against
        the ``[r, c]`` rays of :attr:`rays` (map-valued parameters, such as a pixelated
        source's ``image``, are left as they are)."""
        out = []
        for prof, p in zip(self.components(kind), prepared):
            out.append({
                n: (v if prof.param_event_ndims.get(n, 0) else v[..., None, None])
                for n, v in p.items()
            })
        return out

    @property
    def rays(self):
        """The sub-pixel ray positions ``(x, y)`` (arcsec), each ``[r, c]``: the rays of
        :meth:`PixelGrid.ray_coordinates` in a layout whose rows are long multiples of 16
        (see :meth:`pixelize`, which bins values given on them)."""
        return self._x, self._y

    @property
    def psf_kernel(self):
        """The PSF kernel ``[k, k]`` at the grid's pixel scale (a tensor), or ``None``."""
        return self._kernel

    # --------------------------------------------------------------- physics
    def _alpha(self, x, y, lens):
        ax = tf.zeros_like(x)
        ay = tf.zeros_like(y)
        for prof, p in zip(self.lens, lens):
            dax, day = prof._deflection(x, y, **p)
            ax = ax + dax
            ay = ay + day
        return ax, ay

    def trace(self, lens, x=None, y=None):
        """Rendering step 1: source-plane positions ``beta = theta - sum_k alpha_k(theta)``
        of the rays (default :attr:`rays`) for expanded lens parameters
        (:meth:`expand_params`); ``[*batch, r, c]`` each. Without lens components the rays
        are returned unchanged."""
        if x is None:
            x, y = self.rays
        if not self.lens:
            return x, y
        ax, ay = self._alpha(x, y, lens)
        return x - ax, y - ay

    def light(self, kind: str, params, x, y):
        """Rendering step 2: the summed surface brightness (flux / arcsec^2) of the
        ``"source"`` or ``"lens_light"`` components at positions ``(x, y)`` (source-plane
        positions for the source, image-plane ones for the lens light), for expanded
        parameters. Zero without components."""
        if kind not in ("source", "lens_light"):
            raise ValueError(f"kind must be 'source' or 'lens_light', got {kind!r}")
        sb = tf.zeros_like(x)
        for prof, p in zip(self.components(kind), params):
            sb = sb + prof._surface_brightness(x, y, **p)
        return sb

    def pixelize(self, sb, convolve_psf: bool = True, psf_kernel=None):
        """Rendering step 3: surface brightness on :attr:`rays` ``[*batch, r, c]`` ->
        images ``[*batch, N, N]`` in flux per pixel: sub-pixels averaged
        (:meth:`PixelGrid.bin_rays`), times the pixel area, convolved with ``psf_kernel``
        (default: the simulator's PSF; ``[*batch, k, k]`` kernels convolve each image with
        its own) when ``convolve_psf``. A rank-2 result (no batch) gets a batch axis of 1."""
        img = materialize(self.grid.bin_rays(materialize(sb)) * self.grid.pixel_area)
        kernel = self._kernel if psf_kernel is None else psf_kernel
        if convolve_psf and kernel is not None:
            img = convolve(img, kernel)
        if img.shape.rank == 2:
            img = img[None]
        return img

    def render(self, lens, source, lens_light, convolve_psf: bool = True):
        """All rendering steps in one graph (no validation, no compilation: for use inside
        a caller's ``tf.function`` or Keras layer): :meth:`prepare`-d parameter lists ->
        images ``[*batch, N, N]``. :meth:`__call__` is this, validated and compiled."""
        lens = self.expand_params("lens", lens)
        source = self.expand_params("source", source)
        lens_light = self.expand_params("lens_light", lens_light)
        x, y = self.rays
        bx, by = self.trace(lens, x, y)
        sb = self.light("source", source, bx, by) + self.light("lens_light", lens_light, x, y)
        return self.pixelize(sb, convolve_psf=convolve_psf)

    # ------------------------------------------------------------ public API
    def __call__(self, lens=None, source=None, lens_light=None, convolve_psf: bool = True):
        """Render images ``[*batch_shape, N, N]`` in flux per pixel (see class docs)."""
        prepared = {k: self.prepare(k, v) for k, v in
                    (("lens", lens), ("source", source), ("lens_light", lens_light))}
        batch = self.batch_shape(prepared)
        img = self._render(prepared["lens"], prepared["source"], prepared["lens_light"],
                           convolve_psf=bool(convolve_psf))
        # set the output shape [*batch_shape or 1, N, N] here, from the eagerly checked
        # parameters: a trace with relaxed (unknown-rank) input shapes, as reduce_retracing
        # made after calls with different batch shapes, returned [N, N] for scalars
        n = self.grid.num_pix
        if batch.rank == 0:
            return tf.reshape(img, [1, n, n])
        if batch.is_fully_defined():
            return tf.reshape(img, batch.as_list() + [n, n])
        return img

    simulate = __call__

    def ray_shoot(self, x, y, lens):
        """Source-plane positions ``beta = theta - alpha(theta)`` for image positions."""
        x = as_tensor(x, self.dtype, "x")
        y = as_tensor(y, self.dtype, "y")
        p = self.prepare("lens", lens)
        ax, ay = self._alpha(x, y, p)
        return x - ax, y - ay

    def deflection(self, x, y, lens):
        """Total deflection ``(alpha_x, alpha_y)`` of all lens components at ``(x, y)``."""
        x = as_tensor(x, self.dtype, "x")
        y = as_tensor(y, self.dtype, "y")
        return self._alpha(x, y, self.prepare("lens", lens))

    def get_config(self) -> dict:
        return {
            "grid": self.grid.get_config(),
            "lens": [p.get_config() for p in self.lens],
            "source": [p.get_config() for p in self.source],
            "lens_light": [p.get_config() for p in self.lens_light],
            "psf": None if self.psf is None else self.psf.get_config(),
            "jit_compile": self.jit_compile,
        }

    @classmethod
    def from_config(cls, config: dict) -> "Simulator":
        cfg = dict(config)
        grid = PixelGrid(**cfg.pop("grid"))
        build = lambda items: [get_profile(**c) for c in items]  # noqa: E731
        return cls(grid, lens=build(cfg.pop("lens", [])), source=build(cfg.pop("source", [])),
                   lens_light=build(cfg.pop("lens_light", [])), psf=psf_from_config(cfg.pop("psf", None)),
                   **cfg)
