"""An XLA optimization barrier that also applies to the gradient: the package's one
XLA:CPU scheduling workaround. ``benchmarks/simulate.py`` (value and gradient of a
render) and ``benchmarks/simulate_dataset.py`` (the generator) time it against
:func:`barriers_disabled`; ``benchmarks/README.md`` has the figures."""

from __future__ import annotations

import contextlib

import tensorflow as tf

try:  # the tf2xla op; present in every TensorFlow build with XLA
    from tensorflow.compiler.tf2xla.python.xla import optimization_barrier as _opt_barrier
except ImportError:  # pragma: no cover
    _opt_barrier = None


@tf.custom_gradient
def materialize(x):
    """Identity that XLA must compute in full before any consumer reads it (forward) and
    whose incoming gradient is likewise computed once (backward).

    XLA fuses cheap elementwise producers into every consumer. In the backward pass of a
    rendering that made XLA:CPU recompute the PSF adjoint (k^2 shifted copies) inside each
    of the per-parameter pixel reductions; a barrier on the sub-pixel surface brightness
    stops that. Values are unchanged.
    """

    # the gradient is itself a ``materialize``, so that it can be differentiated again
    # (the barrier op has no registered gradient): second derivatives and forward mode
    # (``tf.autodiff.ForwardAccumulator`` transposes the backward pass) work through it
    return _apply(x), materialize


def _apply(x):
    if _opt_barrier is None:
        return tf.identity(x)
    out = _opt_barrier(x)
    return out[0] if isinstance(out, (list, tuple)) else out


def barriers_enabled() -> bool:
    """Whether functions traced now get the barrier (False inside
    :func:`barriers_disabled`): part of the key of caches of traced functions."""
    return _opt_barrier is not None


@contextlib.contextmanager
def barriers_disabled():
    """Within the block, functions *traced* anew use a plain identity instead of the
    barrier (for the benchmarks that measure what the barrier buys)."""
    global _opt_barrier
    saved, _opt_barrier = _opt_barrier, None
    try:
        yield
    finally:
        _opt_barrier = saved
