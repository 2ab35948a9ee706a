"""Small helpers shared by the inference modules: seeds, Adam in a compiled loop, progress."""

from __future__ import annotations

import numbers

import tensorflow as tf
import tensorflow_probability as tfp

from .._validation import positive_float, positive_int  # the inference modules' import

__all__ = ["as_seed", "positive_int", "positive_float", "progress_bar"]


def as_seed(seed, name: str = "seed"):
    """A stateless TF/TFP seed (shape-[2] int32 tensor) from an int, a pair or ``None``."""
    if seed is None:
        return tfp.random.sanitize_seed(None)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if not 0 <= int(seed) < 2**31:
            raise ValueError(f"{name} must be an integer in [0, 2**31) or a shape-[2] int "
                             f"tensor, got {seed!r}")
        return tf.constant([0, int(seed)], tf.int32)
    t = tf.convert_to_tensor(seed)
    if not t.dtype.is_integer or t.shape.as_list() != [2]:
        raise ValueError(f"{name} must be an integer or a shape-[2] integer tensor, got {seed!r}")
    return tf.cast(t, tf.int32)


class _NoBar:
    def __init__(self, total=None, **_):
        self.total = total

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar when ``enabled`` and tqdm is installed, else a silent stand-in."""
    if not enabled:
        return _NoBar(total)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return _NoBar(total)
    return tqdm(total=total, desc=desc, leave=False)


def adam_update(x, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """One Adam step (Kingma & Ba 2015) for *descent* on a loss with gradient ``g``.

    ``t`` is the 1-based step count (float). Returns ``(x, m, v)``.
    """
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * tf.square(g)
    m_hat = m / (1.0 - tf.pow(beta1, t))
    v_hat = v / (1.0 - tf.pow(beta2, t))
    return x - lr * m_hat / (tf.sqrt(v_hat) + eps), m, v
