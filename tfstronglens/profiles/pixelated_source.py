"""A pixelated source: an image on a square source-plane grid, interpolated."""

from __future__ import annotations

import math
import numbers

import tensorflow as tf

from .base import LightProfile

__all__ = ["PixelatedSource", "interpolation_kernel"]

_INTERPOLATIONS = ("bilinear", "bicubic")
# Half-width of each kernel's support, in pixels.
_HALF_WIDTH = {"bilinear": 1, "bicubic": 2}


@tf.autograph.experimental.do_not_convert
def interpolation_kernel(s, interpolation: str = "bilinear"):
    r"""The 1D interpolation kernel ``K(s)`` (``s`` in pixels) of :class:`PixelatedSource`.

    * ``"bilinear"``: the tent ``K(s) = max(1 - |s|, 0)``.
    * ``"bicubic"``: Keys' (1981, IEEE Trans. ASSP 29, 1153) cubic convolution kernel with
      ``a = -1/2``: ``K = 3/2 |s|^3 - 5/2 |s|^2 + 1`` for ``|s| <= 1``,
      ``K = -1/2 |s|^3 + 5/2 |s|^2 - 4 |s| + 2`` for ``1 < |s| < 2``, 0 beyond.

    Both satisfy ``K(0) = 1``, ``K(k) = 0`` for integers ``k != 0`` (interpolation),
    ``sum_k K(s - k) = 1`` (partition of unity) and ``int K(s) ds = 1``.
    """
    a = tf.abs(s)
    if interpolation == "bilinear":
        return tf.nn.relu(1.0 - a)
    if interpolation == "bicubic":
        inner = (1.5 * a - 2.5) * a * a + 1.0
        outer = ((-0.5 * a + 2.5) * a - 4.0) * a + 2.0
        return tf.where(a <= 1.0, inner, tf.where(a < 2.0, outer, tf.zeros_like(a)))
    raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")


class PixelatedSource(LightProfile):
    r"""A source given as an image on a square grid, interpolated (lenstronomy ``INTERPOL``).

    #### Mathematical details

    The ``num_pix x num_pix`` image ``I_ij`` (surface brightness in flux / arcsec^2, row
    ``i``, column ``j``) sits on pixel centres

        x_j = (j - (n - 1) / 2) s + center_x,    y_i = (i - (n - 1) / 2) s + center_y,

    (``s = pixel_scale``, the convention of :class:`~tfstronglens.lensing.PixelGrid`: x
    along columns, y along rows). The surface brightness is the separable interpolation

        I(x, y) = amp sum_{i,j} I_ij K(u - j) K(v - i),
        u = x' / s + (n - 1) / 2,   v = y' / s + (n - 1) / 2,
        x' =  (x - center_x) cos(phi_G) + (y - center_y) sin(phi_G),
        y' = -(x - center_x) sin(phi_G) + (y - center_y) cos(phi_G),

    i.e. the image rotated counter-clockwise by ``phi_G`` (radians, default 0) about its
    centre (lenstronomy's ``INTERPOL`` convention), with the kernel ``K`` of :func:`interpolation_kernel`: the tent ``max(1 - |t|, 0)``
    (``"bilinear"``, the default) or Keys' cubic (``"bicubic"``). The sum runs over the
    image only, i.e. the image is surrounded by zeros: the surface brightness goes
    continuously to zero within one pixel (two for bicubic) beyond the outer pixel
    centres, and is exactly zero further out. It is exact at pixel centres
    (``I(x_j, y_i) = amp I_ij``); bilinear interpolation reproduces functions linear in
    ``x`` and ``y`` exactly wherever the interpolation uses only image pixels (and
    bicubic quadratics, two pixels in from the edge).

    **Flux conservation.** Since ``int K(t) dt = 1`` for both kernels, the integral of
    the interpolated surface brightness over the plane is exactly

        int I(x, y) dx dy = amp s^2 sum_{i,j} I_ij,

    the same total flux as the image read as flux per pixel ``I_ij s^2`` (and as
    lenstronomy's ``Interpol.total_flux``). Lensing conserves surface brightness, so a
    lensed image of it has total flux ``amp s^2 sum I_ij`` times the magnification.
    Bicubic interpolation can ring (negative values near sharp edges); bilinear cannot.

    With ``interpolation="bilinear"`` this is lenstronomy's ``INTERPOL`` light model with
    ``scale = pixel_scale`` (a ``RectBivariateSpline`` of degree 1 on the image padded
    with a ring of zeros), which it matches to rounding, rotations included.

    #### Parameters and shapes

    * ``image``: ``[..., num_pix, num_pix]`` (``param_event_ndims = {"image": 2}``); the
      leading dimensions are batch dimensions.
    * ``amp`` (default 1, multiplies the image), ``center_x``, ``center_y`` (default 0,
      arcsec), ``phi_G`` (default 0, radians): scalars broadcasting elementwise with ``x, y`` like every other profile.

    Let ``S`` be the broadcast shape of ``x, y, amp, center_x, center_y``. Its last two
    dimensions (all of them if ``S`` has rank < 2) are the evaluation points, e.g. the
    ``[H, W]`` pixel grid; the leading ones ``S[:-2]`` are batch dimensions and
    broadcast against the image's batch dimensions ``image.shape[:-2]``. The result has
    shape ``broadcast(image.shape[:-2], S[:-2]) + S[-2:]``. So an ``[B, n, n]`` batch of
    images evaluated through the :class:`~tfstronglens.lensing.Simulator` (ray-traced
    positions ``[B, H, W]``, or an unlensed ``[H, W]`` grid) gives ``[B, H, W]``, image
    ``b`` being sampled at positions ``b``.

    The interpolation gathers the ``2 x 2`` (``4 x 4``) neighbouring pixels of every
    point (``tf.gather``). On a shared 2-core CPU, for ``32`` images sampled at ``120^2``
    points each (bilinear, float32, XLA), this took 7 ms forward / 31 ms with gradients
    for ``32^2``-pixel sources and 15 / 52 ms for ``64^2``, against 115 / 270 ms and
    440 / 990 ms for the dense one-hot/matmul formulation ``sum_ij Wy[p, i] I_ij
    Wx[p, j]``. It is differentiable w.r.t. ``image``, ``amp``, the centre and
    ``x, y`` (piecewise: the bilinear gradient in ``x, y`` jumps across pixel centres)
    and runs under ``tf.function(jit_compile=True)``.

    Args:
      num_pix: pixels per side of the source image (int >= 1).
      pixel_scale: source pixel size in arcsec (> 0).
      interpolation: ``"bilinear"`` (default) or ``"bicubic"``.
      dtype: float32 (default) or float64.

    #### Example

    >>> import numpy as np, tfstronglens as tsl
    >>> src = tsl.PixelatedSource(num_pix=32, pixel_scale=0.05)
    >>> image = np.random.rand(4, 32, 32)                     # a batch of 4 sources
    >>> sim = tsl.Simulator(tsl.PixelGrid(60, 0.065), lens=[tsl.SIE()], source=[src])
    >>> imgs = sim(lens=[dict(theta_E=np.full(4, 1.0), e1=0.1, e2=0.0)],
    ...            source=[dict(image=image)])              # [4, 60, 60]
    """

    name = "PIXELATED"
    param_names = ("image", "amp", "center_x", "center_y", "phi_G")
    defaults = {"amp": 1.0, "center_x": 0.0, "center_y": 0.0, "phi_G": 0.0}
    param_event_ndims = {"image": 2}

    def __init__(self, num_pix: int, pixel_scale: float, interpolation: str = "bilinear",
                 dtype=tf.float32):
        super().__init__(dtype=dtype)
        if isinstance(num_pix, bool) or not isinstance(num_pix, numbers.Integral) or num_pix < 1:
            raise ValueError(f"num_pix must be a positive integer, got {num_pix!r}")
        if (isinstance(pixel_scale, bool) or not isinstance(pixel_scale, numbers.Real)
                or not math.isfinite(pixel_scale) or pixel_scale <= 0):
            raise ValueError(f"pixel_scale must be a positive number (arcsec), got {pixel_scale!r}")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}"
            )
        self.num_pix = int(num_pix)
        self.pixel_scale = float(pixel_scale)
        self.interpolation = interpolation

    def param_event_shape(self, pname: str) -> tuple:
        return (self.num_pix, self.num_pix) if pname == "image" else \
            super().param_event_shape(pname)

    def get_config(self):
        return {**super().get_config(), "num_pix": self.num_pix,
                "pixel_scale": self.pixel_scale, "interpolation": self.interpolation}

    def total_flux(self, image, amp=1.0):
        """Integral of the interpolated surface brightness: ``amp s^2 sum(image)``, shape
        ``image.shape[:-2]`` broadcast with ``amp``."""
        p = self._prepare_params({"image": image, "amp": amp}, method="total_flux")
        return p["amp"] * tf.reduce_sum(p["image"], axis=[-2, -1]) * self.pixel_scale**2

    def _prepare_params(self, params: dict, method: str = "call", check: bool = True) -> dict:
        out = super()._prepare_params(params, method=method, check=check)
        shape = out["image"].shape
        n = self.num_pix
        if shape.rank is not None and any(d is not None and d != n for d in shape[-2:]):
            raise ValueError(
                f"{type(self).__name__}.{method}: image must have shape [..., {n}, {n}] "
                f"(num_pix={n}), got {shape.as_list()}"
            )
        return out

    # ------------------------------------------------------------ implementation
    # No data-dependent Python control flow: AutoGraph conversion (slow) is not needed.
    @tf.autograph.experimental.do_not_convert
    def _surface_brightness(self, x, y, image, amp, center_x, center_y, phi_G=None):
        n, h = self.num_pix, _HALF_WIDTH[self.interpolation]
        dx, dy = x - center_x, y - center_y
        if phi_G is not None:
            cos, sin = tf.cos(phi_G), tf.sin(phi_G)
            dx, dy = dx * cos + dy * sin, dy * cos - dx * sin
        # continuous pixel coordinates: column u, row v (pixel centres at integers)
        u = dx / self.pixel_scale + 0.5 * (n - 1)
        v = dy / self.pixel_scale + 0.5 * (n - 1)
        # Static output shape, when the ranks are known (they may not be inside a
        # tf.function traced with reduce_retracing); the computation itself only uses
        # dynamic shapes, which XLA resolves at compile time.
        static = tf.broadcast_static_shape(u.shape, v.shape)
        if static.rank is not None and image.shape.rank is not None:
            nb = max(static.rank - 2, 0)
            try:
                batch_static = tf.broadcast_static_shape(image.shape[:-2], static[:nb])
            except ValueError:
                raise ValueError(
                    f"{type(self).__name__}: the image's batch shape "
                    f"{image.shape[:-2].as_list()} does not broadcast against the batch "
                    f"shape {static[:nb].as_list()} of x, y (their shape without the last "
                    "two, point, dimensions)"
                ) from None
            static = batch_static.concatenate(static[nb:])
        else:
            static = tf.TensorShape(None)
        shape = tf.broadcast_dynamic_shape(tf.shape(u), tf.shape(v))
        nb = tf.maximum(tf.size(shape) - 2, 0)  # leading point dims that are batch dims
        batch = tf.broadcast_dynamic_shape(tf.shape(image)[:-2], shape[:nb])
        out_shape = tf.concat([batch, shape[nb:]], 0)
        img = tf.reshape(tf.broadcast_to(image, tf.concat([batch, [n, n]], 0)), [-1, n, n])
        nimg = tf.shape(img)[0]
        u = tf.reshape(tf.broadcast_to(u, out_shape), [nimg, -1])
        v = tf.reshape(tf.broadcast_to(v, out_shape), [nimg, -1])

        values = tf.reshape(self._interpolate(img, u, v, n, h), out_shape)
        values.set_shape(static)
        return amp * values

    @tf.autograph.experimental.do_not_convert
    def _interpolate(self, img, u, v, n, h):
        """``sum_ij img[b, i, j] K(u[b, p] - j) K(v[b, p] - i)`` for img ``[Nb, n, n]`` and
        u, v ``[Nb, P]``.

        The image is zero-padded by ``h`` pixels and cut into its ``(n + 1)^2`` windows of
        ``2h x 2h`` pixels (``4 h^2`` shifted slices, stacked along a last axis); one
        ``tf.gather`` of rows then fetches each point's window, and the separable kernel
        weights contract it. One gather (whose gradient is one scatter-add of short rows)
        compiles faster and ran as fast or faster on CPU than one gather per tap.
        """
        k, c = 2 * h, n + 1
        nimg = tf.shape(img)[0]
        padded = tf.pad(img, [[0, 0], [h, h], [h, h]])
        windows = tf.stack([padded[:, a:a + c, b:b + c] for a in range(k) for b in range(k)], -1)
        windows = tf.reshape(windows, [-1, k * k])  # [Nb (n+1)^2, k^2]
        # Far outside the grid every weight vanishes; clipping only keeps the integer
        # conversion safe (the clipped points keep weight 0 and gradient 0).
        u = tf.clip_by_value(u, -h - 1.0, n + h + 0.0)
        v = tf.clip_by_value(v, -h - 1.0, n + h + 0.0)
        # Window of the taps j0 + 1 - h ... j0 + h, j0 = floor(u) clipped to [-1, n - 1]:
        # it holds every image pixel within the kernel's support of the point, also for
        # points beyond the outer pixel centres (the other taps are padding zeros).
        j0 = tf.stop_gradient(tf.clip_by_value(tf.floor(u), -1.0, n - 1.0))
        i0 = tf.stop_gradient(tf.clip_by_value(tf.floor(v), -1.0, n - 1.0))
        index = (tf.range(nimg)[:, None] * (c * c) + tf.cast(i0 + 1.0, tf.int32) * c
                 + tf.cast(j0 + 1.0, tf.int32))
        vals = tf.gather(windows, index)  # [Nb, P, k^2]
        vals = tf.reshape(vals, tf.concat([tf.shape(u), [k, k]], 0))
        taps = tf.range(1 - h, h + 1, dtype=u.dtype)
        wx = interpolation_kernel(u[..., None] - (j0[..., None] + taps), self.interpolation)
        wy = interpolation_kernel(v[..., None] - (i0[..., None] + taps), self.interpolation)
        return tf.reduce_sum(tf.reduce_sum(vals * wx[..., None, :], -1) * wy, -1)
