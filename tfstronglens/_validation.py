"""Argument checking and tensor conversion shared by every layer of the package.

Checks run on concrete values (eager tensors, numpy arrays, Python numbers) and are
skipped on symbolic tensors inside ``tf.function``/XLA, where data-dependent Python
errors are impossible; the compiled code then relies on the checks done by the
eager caller (e.g. :class:`tfstronglens.Simulator` validates before it compiles).
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

__all__ = [
    "resolve_dtype",
    "as_tensor",
    "is_concrete",
    "check_positive",
    "check_at_most",
    "check_fields",
    "check_finite",
    "largest_ellipticity",
    "broadcast_shapes",
    "positive_int",
    "positive_float",
]

_ALLOWED_DTYPES = (tf.float32, tf.float64)


def resolve_dtype(dtype) -> tf.DType:
    """Return a float ``tf.DType`` (float32 or float64) or raise ``ValueError``."""
    if dtype is None:
        return tf.float32
    try:
        dt = tf.as_dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in _ALLOWED_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def is_concrete(value) -> bool:
    """True when ``value`` holds data we can inspect in Python (not a graph tensor)."""
    if isinstance(value, (numbers.Number, np.ndarray, np.generic, list, tuple)):
        return True
    if isinstance(value, tf.Tensor):
        return hasattr(value, "numpy") and tf.executing_eagerly()
    if isinstance(value, tf.Variable):
        return tf.executing_eagerly()
    return False


def check_finite(value, name: str):
    """Raise ``ValueError`` naming ``name`` if a concrete ``value`` contains NaN or inf."""
    if not is_concrete(value):
        return
    arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = arr[~np.isfinite(arr)].ravel()[0]
        raise ValueError(f"{name} must be finite, got a value of {bad!r}")
    if arr.dtype.kind not in "fciub":
        raise ValueError(f"{name} must be numeric, got {value!r}")


def check_positive(value, name: str, allow_zero: bool = False):
    """Raise ``ValueError`` if a concrete ``value`` is not (strictly) positive."""
    check_finite(value, name)
    if not is_concrete(value):
        return
    arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    ok = np.all(arr >= 0) if allow_zero else np.all(arr > 0)
    if not ok:
        kind = "non-negative" if allow_zero else "positive"
        shown = arr.ravel()[np.argmin(arr.ravel())].item()  # a plain number, not array(..)
        raise ValueError(f"{name} must be {kind}, got {shown!r}")


def check_fields(data, cls, what: str) -> dict:
    """``data`` as a dict whose keys are all fields of the dataclass ``cls``; ``ValueError``
    naming ``what`` (e.g. ``"config"``) and the unknown keys otherwise."""
    import dataclasses

    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a dict, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; known: {sorted(names)}")
    return data


def check_at_most(value, limit: float, name: str):
    """Raise ``ValueError`` if a concrete ``value`` exceeds ``limit`` anywhere."""
    if not is_concrete(value):
        return
    arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    if not np.all(arr <= limit):
        shown = arr.ravel()[np.argmax(arr.ravel())].item()
        raise ValueError(f"{name} must be at most {limit}, got {shown!r}")


def largest_ellipticity(e1, e2):
    """``(e1, e2, |e|)`` (floats) of the most elliptical entry of concrete ``e1, e2``.

    ``None`` when either is symbolic (inside ``tf.function``), when they are empty or when
    their shapes do not broadcast (the caller's shape check names them). Profiles use it
    to refuse an ellipticity out of their range with the offending values.
    """
    if not (is_concrete(e1) and is_concrete(e2)):
        return None
    a1 = np.asarray(e1.numpy() if hasattr(e1, "numpy") else e1, dtype=float)
    a2 = np.asarray(e2.numpy() if hasattr(e2, "numpy") else e2, dtype=float)
    try:
        a1, a2 = np.broadcast_arrays(a1, a2)
    except ValueError:
        return None
    if not a1.size:
        return None
    e = np.hypot(a1, a2)
    i = np.unravel_index(np.argmax(e), e.shape)
    return float(a1[i]), float(a2[i]), float(e[i])


def as_tensor(value, dtype, name: str, check: bool = True) -> tf.Tensor:
    """Convert ``value`` to a tensor of ``dtype`` (casting numpy float64 input to float32
    when asked), checking finiteness of concrete inputs."""
    if value is None:
        raise ValueError(f"{name} is required, got None")
    if check:
        check_finite(value, name)
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype != dtype:
            if not (value.dtype.is_floating or value.dtype.is_integer):
                raise ValueError(f"{name} must be a real number, got dtype {value.dtype.name}")
            value = tf.cast(value, dtype)
        return tf.convert_to_tensor(value)
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} could not be converted to a tensor: {value!r}") from exc
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be a real number or array, got {value!r}")
    return tf.convert_to_tensor(arr.astype(dtype.as_numpy_dtype, copy=False))


def broadcast_shapes(named_shapes, context: str = "") -> tf.TensorShape:
    """Broadcast static shapes, raising ``ValueError`` that names the argument that fails.

    ``named_shapes`` is an iterable of ``(name, TensorShape)``.
    """
    result = tf.TensorShape([])
    seen = []
    for name, shape in named_shapes:
        shape = tf.TensorShape(shape)
        try:
            result = tf.broadcast_static_shape(result, shape)
        except ValueError:
            where = f" in {context}" if context else ""
            raise ValueError(
                f"{name} has shape {shape.as_list()}, which does not broadcast against "
                f"{', '.join(f'{n} {s.as_list()}' for n, s in seen)}{where}"
            ) from None
        seen.append((name, shape))
    return result


def positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``, else a
    ``ValueError`` naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) ``> 0`` (``>= 0``
    with ``allow_zero``), else a ``ValueError`` naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not np.isfinite(value) or (value < 0 if allow_zero else value <= 0):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {kind} number, got {value!r}")
    return float(value)
