"""Geometry shared by the profiles: safe radii, ellipticity and complex arithmetic.

Complex numbers are carried as ``(real, imag)`` pairs of real tensors: this keeps every
profile on the float fast paths of XLA and on TPUs (which lack complex128).

Ellipticity (lenstronomy convention): ``e = e1 + i e2``, ``|e| = (1 - q) / (1 + q)``,
position angle ``phi = arg(e) / 2`` of the major axis. The formulas below never form
``phi`` itself; they use ``e`` directly, which keeps values and gradients finite and
exact at ``q = 1`` (``e = 0``), where ``phi`` is undefined.
"""

from __future__ import annotations

import tensorflow as tf


def tiny(dtype) -> float:
    """A floor for squared radii: small enough to be invisible, large enough that
    1/r^2 stays far from overflow in ``dtype``."""
    return 1e-30 if dtype == tf.float64 else 1e-16


def safe_norm(x, y):
    """``sqrt(x^2 + y^2)`` floored so that it and its gradient stay finite at 0."""
    r2 = x * x + y * y
    return tf.sqrt(tf.maximum(r2, tiny(x.dtype)))


def abs_e(e1, e2):
    """``|e|`` with a zero (sub)gradient at ``e = 0`` instead of NaN."""
    e_sq = e1 * e1 + e2 * e2
    return tf.sqrt(tf.maximum(e_sq, 1e-30))


def q_from_e(e1, e2):
    """Axis ratio ``q = (1 - |e|) / (1 + |e|)``."""
    e = abs_e(e1, e2)
    return (1.0 - e) / (1.0 + e)


def cmul(ar, ai, br, bi):
    """Complex product of ``(ar + i ai)`` and ``(br + i bi)``."""
    return ar * br - ai * bi, ar * bi + ai * br


def cdiv(ar, ai, br, bi):
    """Complex quotient ``(ar + i ai) / (br + i bi)``."""
    den = br * br + bi * bi
    return (ar * br + ai * bi) / den, (ai * br - ar * bi) / den


def csqrt(ar, ai):
    """Principal complex square root (branch cut on the negative real axis).

    Written as ``t = sqrt((r + |ar|) / 2)`` and ``ai / (2 t)`` so that neither part takes
    ``sqrt(0)``: values and gradients are finite and correct everywhere except at 0 and on
    the cut itself (where the root is discontinuous). On the positive real axis, the naive
    ``sqrt(max((r - ar) / 2, 0))`` form gave NaN gradients.
    """
    r = tf.sqrt(tf.maximum(ar * ar + ai * ai, tiny(ar.dtype)))
    pos = ar >= 0
    t = tf.sqrt(0.5 * tf.where(pos, r + ar, r - ar))
    re = tf.where(pos, t, tf.abs(ai) / (2.0 * t))
    im = tf.where(pos, ai / (2.0 * t), tf.where(ai < 0, -t, t))
    return re, im


def atan(x):
    """``arctan(x)``; in float32 a branch-free Cephes ``atanf`` polynomial (about 1 ulp).

    XLA's CPU ``atan``/``atan2`` are not vectorized and cost ~10-20x an ``exp``; this
    range-reduced minimax polynomial (Moshier's Cephes library) is exact to float32
    rounding and vectorizes. float64 uses ``tf.math.atan``.
    """
    if x.dtype == tf.float64:
        return tf.math.atan(x)
    a = tf.abs(x)
    big = a > 2.414213562373095
    mid = a > 0.4142135623730950
    xr = tf.where(big, -1.0 / tf.maximum(a, 1e-30), tf.where(mid, (a - 1.0) / (a + 1.0), a))
    y0 = tf.where(big, 1.5707963267948966, tf.where(mid, 0.7853981633974483, 0.0))
    z = xr * xr
    poly = ((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1
    res = y0 + (poly * z * xr + xr)
    return tf.where(x < 0, -res, res)


def clog(ar, ai):
    """Principal complex logarithm."""
    return 0.5 * tf.math.log(ar * ar + ai * ai), tf.math.atan2(ai, ar)


def clog_right(ar, ai):
    """Complex logarithm for arguments with positive real part (fast: no atan2)."""
    return 0.5 * tf.math.log(ar * ar + ai * ai), atan(ai / ar)


class EllipticalFrame:
    """Elliptical coordinates of an elliptical mass distribution (Tessore & Metcalf 2015).

    For a profile with isodensity contours ``R = sqrt(q^2 x'^2 + y'^2)`` in the frame
    ``(x', y')`` rotated to the major axis, define (``z = x + i y`` relative to the centre)

        W = e^{i phi} (q x' + i y') = (z - e conj(z)) / (1 + |e|),

    so that ``R = |W|``, ``e^{i phi} e^{i phi_ell} = W / R`` and
    ``f e^{2 i phi_ell} = conj(e) W^2 / R^2`` with ``f = (1 - q)/(1 + q) = |e|``.

    Attributes: ``dx, dy`` (offsets from the centre), ``wr, wi`` (W), ``R`` (floored
    elliptical radius), ``ur, ui`` = ``-conj(e) W^2 / R^2`` (the argument of the
    hypergeometric series, ``|u| = |e|``), ``q`` and ``abs_e``.
    """

    def __init__(self, x, y, e1, e2, center_x, center_y):
        self.dx = x - center_x
        self.dy = y - center_y
        self.abs_e = abs_e(e1, e2)
        self.q = (1.0 - self.abs_e) / (1.0 + self.abs_e)
        inv = 1.0 / (1.0 + self.abs_e)
        # e conj(z) = (e1 + i e2)(dx - i dy) = (e1 dx + e2 dy) + i (e2 dx - e1 dy)
        self.wr = (self.dx - (e1 * self.dx + e2 * self.dy)) * inv
        self.wi = (self.dy - (e2 * self.dx - e1 * self.dy)) * inv
        self.R = safe_norm(self.wr, self.wi)
        # W^2 / R^2 and u = -conj(e) W^2 / R^2
        inv_r2 = 1.0 / (self.R * self.R)
        w2r = (self.wr * self.wr - self.wi * self.wi) * inv_r2
        w2i = 2.0 * self.wr * self.wi * inv_r2
        self.ur, self.ui = cmul(-e1, e2, w2r, w2i)


# ------------------------------------------------------------ gradient reductions
def sum_to(g, ref):
    """Sum a gradient ``g`` over the axes along which ``ref`` was broadcast (to ``ref``'s
    shape), as autodiff does for a broadcasting binary operation."""
    ref = tf.convert_to_tensor(ref)
    return sum_to_shape(g, ref.shape if ref.shape.is_fully_defined() else tf.shape(ref))


def sum_to_shape(g, shape):
    """``g`` summed over broadcast axes to ``shape`` (a static ``TensorShape`` or a shape
    tensor)."""
    if isinstance(shape, tf.TensorShape):
        if g.shape.is_fully_defined() and g.shape == shape:
            return g
        shape = shape.as_list()
    _, axes = tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(g), s1=shape)
    return tf.reshape(tf.reduce_sum(g, axes), shape)


def broadcast_shape(*tensors):
    """Broadcast shape of ``tensors``: a static ``TensorShape`` when all are static, else
    a shape tensor."""
    static = tf.TensorShape([])
    for t in tensors:
        if not t.shape.is_fully_defined():
            dyn = tf.shape(tensors[0])
            for u in tensors[1:]:
                dyn = tf.broadcast_dynamic_shape(dyn, tf.shape(u))
            return dyn
        static = tf.broadcast_static_shape(static, t.shape)
    return static


def _matmul_reductions() -> bool:
    """Whether pixel sums may use matrix products: only with no GPU/TPU visible, where
    matmuls run in full precision (GPUs use TF32, TPUs bfloat16 passes)."""
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def _major_sum(g):
    """``g [..., R, C]`` summed over its last two axes, rows first. XLA:CPU does not fuse
    the producer of ``g`` into a reduction over a major axis: it computes ``g`` in its own
    vectorized loop, then sums the rows."""
    return tf.reduce_sum(tf.reduce_sum(g, -2), -1)


def sum_pixels(grads, shape, expensive=()):
    """``[sum_to_shape(g, shape) for g in grads + expensive]``, computed together.

    For the hand-written gradients of the profiles: the ``grads`` are per-pixel gradients
    (all of one shape, e.g. ``[*batch, R, C]``) of per-image parameters of broadcast shape
    ``shape`` (e.g. ``[*batch, 1, 1]``, the Simulator's layout). On CPU, XLA emits one
    slow, unvectorized reduction loop per parameter, each re-reading (or recomputing) its
    producer; here the ``K`` gradients are stacked and their rows summed by one matrix
    product with a vector of ones (then a small sum over the rows), which XLA:CPU runs at
    full vector speed. Measured in TensorFlow 2.21 on the ``benchmarks/simulate.py``
    configuration (value and gradient of all 22 parameters, 2 CPUs): 8.4 / 29.6 / 61.4 ms
    at batch 8 / 32 / 64, against 10.0 / 32.4 / 60.1 ms with one ``reduce_sum`` per
    parameter (one run each): 9-16% less time at batches 8-32, none at 64. The 2-5x gain
    measured when this was written, with earlier code, no longer holds.

    The stacking loop itself is not vectorized, so per-pixel work that is expensive (e.g.
    a series) goes in ``expensive``: each of those is summed over rows first
    (:func:`_major_sum`), which XLA:CPU does not fuse with its producer, so that the
    expensive part runs in its own vectorized loop (for the EPL's ``d F / d gamma``
    series: 3x faster than inside the stacking loop).

    Other shapes, and all shapes on GPU/TPU (where matmuls run in reduced precision), use
    ``sum_to_shape``.
    """
    grads = list(grads)
    expensive = list(expensive)
    everything = grads + expensive
    gs = everything[0].shape
    fast = (
        isinstance(shape, tf.TensorShape)
        and gs.is_fully_defined()
        and gs.rank >= 2
        and shape.rank <= gs.rank
        and all(g.shape == gs for g in everything)
        and _matmul_reductions()
    )
    if fast:
        dims = gs.as_list()
        padded = [1] * (gs.rank - shape.rank) + shape.as_list()
        fast = padded[-2:] == [1, 1] and padded[:-2] == dims[:-2]
    if not fast:
        return [sum_to_shape(g, shape) for g in everything]
    rows, cols = dims[-2], dims[-1]
    lead = 1
    for d in dims[:-2]:
        lead *= d
    k = len(grads)
    out = []
    if k == 1:
        expensive = grads + expensive
    elif k:
        stacked = tf.reshape(tf.stack(grads, 0), [k * lead * rows, cols])
        # two columns of ones: XLA rewrites a matrix-vector product into a fused (slow) loop
        row_sums = tf.matmul(stacked, tf.ones([cols, 2], stacked.dtype))[:, 0]
        sums = tf.reduce_sum(tf.reshape(row_sums, [k, lead, rows]), -1)
        out = [tf.reshape(sums[j], shape) for j in range(k)]
    return out + [tf.reshape(_major_sum(g), shape) for g in expensive]
