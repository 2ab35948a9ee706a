"""Transposed convolutions as sub-pixel convolutions, for decoders inside compiled loops.

XLA:CPU (TF 2.21) runs a stride-2 transposed convolution (``Conv2DTranspose``; an HLO
convolution with ``lhs_dilate=2``) several times slower inside a ``tf.while_loop`` body
than in a single call; ordinary convolutions are not affected. Every sampler, optimiser
and VI loop of the package is such a loop, and the VAE decoder has four of them
(measurements: ``benchmarks/fit_vae.py --profile``, ``benchmarks/README.md``).

The same linear map written as an ordinary convolution does not have the problem: for
stride 2, a 4x4 kernel and ``"same"`` padding, output pixel ``(2m + a, 2n + b)`` sums two
input rows and two columns per phase ``(a, b)``,

    out[2m]     = y[m - 1] K[3] + y[m] K[1],
    out[2m + 1] = y[m] K[2]     + y[m + 1] K[0]   (per axis),

so one 3x3 stride-1 convolution with the four phases' taps stacked as ``4 C`` output
channels, followed by ``depth_to_space(2)``, gives the transposed convolution exactly
(up to float rounding; "sub-pixel convolution", Shi et al. 2016). :func:`loop_friendly`
clones a decoder with such layers and the same weights; layers of any other stride,
kernel size, padding or dilation keep TensorFlow's own implementation.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["SubpixelConv2DTranspose", "loop_friendly"]

# output phase -> {input offset: kernel tap}, for stride 2, kernel 4, "same" padding
_TAPS = {0: {-1: 3, 0: 1}, 1: {0: 2, 1: 0}}


def subpixel_kernel(kernel):
    """A ``[4, 4, C_out, C_in]`` transposed-convolution kernel (stride 2, ``"same"``) as the
    ``[3, 3, C_in, 4 C_out]`` kernel of the equivalent stride-1 convolution, output
    channel ``(2 a + b) C_out + c`` for phase ``(a, b)`` (``depth_to_space``'s order)."""
    c_out, c_in = kernel.shape[2], kernel.shape[3]
    zero = tf.zeros([c_in, c_out], kernel.dtype)
    phases = []
    for a in (0, 1):
        for b in (0, 1):
            rows = []
            for dy in (-1, 0, 1):
                cols = []
                for dx in (-1, 0, 1):
                    ty, tx = _TAPS[a].get(dy), _TAPS[b].get(dx)
                    cols.append(zero if ty is None or tx is None
                                else tf.transpose(kernel[ty, tx]))
                rows.append(tf.stack(cols))
            phases.append(tf.stack(rows))
    return tf.concat(phases, -1)


class SubpixelConv2DTranspose(keras.layers.Conv2DTranspose):
    """``Conv2DTranspose`` computed as a sub-pixel convolution when it is one of stride 2,
    kernel 4, ``"same"`` padding, channels last and no dilation or output padding (the
    module docstring says why); otherwise exactly ``Conv2DTranspose``. Same weights."""

    _frozen_kernel = None

    def freeze(self):
        """Compute the sub-pixel kernel once from the current weights (a constant from now
        on: later weight changes are not seen), so that the graph holds no kernel
        rearrangement, which otherwise costs compilation time and, without XLA, time per
        call."""
        if self.is_subpixel:
            self._frozen_kernel = tf.constant(subpixel_kernel(tf.convert_to_tensor(self.kernel)))

    @property
    def is_subpixel(self) -> bool:
        return (tuple(self.strides) == (2, 2) and tuple(self.kernel_size) == (4, 4)
                and self.padding == "same" and self.data_format == "channels_last"
                and tuple(self.dilation_rate) == (1, 1) and self.output_padding is None)

    def call(self, inputs):
        if not self.is_subpixel:
            return super().call(inputs)
        if self._frozen_kernel is not None:
            kernel = tf.cast(self._frozen_kernel, inputs.dtype)
        else:
            kernel = subpixel_kernel(tf.cast(self.kernel, inputs.dtype))
        out = tf.nn.depth_to_space(tf.nn.conv2d(inputs, kernel, 1, "SAME"), 2)
        if self.use_bias:
            out = out + tf.cast(self.bias, inputs.dtype)
        return self.activation(out) if self.activation is not None else out


def loop_friendly(model: keras.Model) -> keras.Model:
    """A clone of ``model`` with every ``Conv2DTranspose`` as a frozen
    :class:`SubpixelConv2DTranspose` and the same weights (copied), or ``model`` itself
    when it has none of the sub-pixel kind or cannot be cloned (a subclassed model)."""
    convs = [layer for layer in model.layers
             if type(layer) is keras.layers.Conv2DTranspose]
    if not any(SubpixelConv2DTranspose.from_config(layer.get_config()).is_subpixel
               for layer in convs):
        return model

    def clone(layer):
        if type(layer) is keras.layers.Conv2DTranspose:
            return SubpixelConv2DTranspose.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    try:
        new = keras.models.clone_model(model, clone_function=clone)
    except (ValueError, TypeError, NotImplementedError):
        return model
    new.set_weights(model.get_weights())
    new.trainable = False
    for layer in new.layers:
        if isinstance(layer, SubpixelConv2DTranspose):
            layer.freeze()
    return new
