"""Convolutions that XLA:CPU runs fast inside compiled loops and gradients: a decoder clone.

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

The second XLA:CPU slow path is the input gradient of an ordinary convolution: TensorFlow
writes it as an HLO convolution with a reversed window and swapped feature dimensions,
which XLA:CPU lowers to a generic loop instead of its fast convolution routine. For a
stride-1 ``"same"`` convolution with an odd kernel that gradient is the forward
convolution with the flipped, channel-transposed kernel; :func:`same_conv` says so with a
custom gradient, and :func:`loop_friendly` uses it for the decoder's ``Conv2D`` layers and
for the sub-pixel ones (what each pays: ``benchmarks/fit_vae.py --profile``,
``benchmarks/README.md``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["FrozenConv2D", "SubpixelConv2DTranspose", "loop_friendly"]

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


def adjoint_kernel(kernel):
    """The kernel ``[k, k, C_out, C_in]`` of the adjoint of a stride-1 ``"same"``
    convolution with an odd ``[k, k, C_in, C_out]`` kernel: flipped in both spatial axes,
    channels swapped."""
    return tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])


def same_conv(x, kernel, adjoint):
    """``tf.nn.conv2d(x, kernel, 1, "SAME")`` for an odd square kernel, whose gradient with
    respect to ``x`` is the forward convolution with ``adjoint`` (:func:`adjoint_kernel`
    of ``kernel``, precomputed). XLA:CPU lowers TensorFlow's own input gradient (an HLO
    convolution with reversed window and swapped features) to a slow generic loop; a
    forward convolution takes the fast path. No gradient flows to the kernels: they are
    constants here."""
    kernel = tf.stop_gradient(kernel)
    adjoint = tf.stop_gradient(adjoint)

    @tf.custom_gradient
    def conv(x):
        def grad(dy):
            return same_conv(dy, adjoint, kernel)
        return tf.nn.conv2d(x, kernel, 1, "SAME"), grad

    return conv(x)


class FrozenConv2D(keras.layers.Conv2D):
    """``Conv2D`` whose kernel, once :meth:`freeze`-d, is a constant and whose input
    gradient is a forward convolution (:func:`same_conv`), when it is a stride-1,
    odd-kernel, ``"same"``, channels-last convolution without dilation or groups;
    otherwise exactly ``Conv2D``. Same weights."""

    _frozen = None

    @property
    def is_adjoint_friendly(self) -> bool:
        k = tuple(self.kernel_size)
        return (tuple(self.strides) == (1, 1) and k[0] == k[1] and k[0] % 2 == 1
                and self.padding == "same" and self.data_format == "channels_last"
                and tuple(self.dilation_rate) == (1, 1) and self.groups == 1)

    def freeze(self):
        """Hold the current kernel and its adjoint as constants (later weight changes are
        not seen)."""
        if self.is_adjoint_friendly:
            kernel = tf.convert_to_tensor(self.kernel)
            self._frozen = (tf.constant(kernel), tf.constant(adjoint_kernel(kernel)))

    def call(self, inputs):
        if self._frozen is None:
            return super().call(inputs)
        kernel, adjoint = (tf.cast(k, inputs.dtype) for k in self._frozen)
        out = same_conv(inputs, kernel, adjoint)
        if self.use_bias:
            out = out + tf.cast(self.bias, inputs.dtype)
        return self.activation(out) if self.activation is not None else out


class SubpixelConv2DTranspose(keras.layers.Conv2DTranspose):
    """``Conv2DTranspose`` computed as a sub-pixel convolution when it is one of stride 2,
    kernel 4, ``"same"`` padding, channels last and no dilation or output padding (the
    module docstring says why); otherwise exactly ``Conv2DTranspose``. Same weights."""

    _frozen_kernel = None

    def freeze(self):
        """Compute the sub-pixel kernel (and its adjoint, :func:`same_conv`) once from the
        current weights (constants from now on: later weight changes are not seen), so
        that the graph holds no kernel rearrangement, which otherwise costs compilation
        time and, without XLA, time per call."""
        if self.is_subpixel:
            kernel = subpixel_kernel(tf.convert_to_tensor(self.kernel))
            self._frozen_kernel = (tf.constant(kernel), tf.constant(adjoint_kernel(kernel)))

    @property
    def is_subpixel(self) -> bool:
        return (tuple(self.strides) == (2, 2) and tuple(self.kernel_size) == (4, 4)
                and self.padding == "same" and self.data_format == "channels_last"
                and tuple(self.dilation_rate) == (1, 1) and self.output_padding is None)

    def call(self, inputs):
        if not self.is_subpixel:
            return super().call(inputs)
        if self._frozen_kernel is not None:
            kernel, adjoint = (tf.cast(k, inputs.dtype) for k in self._frozen_kernel)
            out = same_conv(inputs, kernel, adjoint)
        else:
            out = tf.nn.conv2d(inputs, subpixel_kernel(tf.cast(self.kernel, inputs.dtype)),
                               1, "SAME")
        out = tf.nn.depth_to_space(out, 2)
        if self.use_bias:
            out = out + tf.cast(self.bias, inputs.dtype)
        return self.activation(out) if self.activation is not None else out


_LOOP_FRIENDLY = {keras.layers.Conv2DTranspose: SubpixelConv2DTranspose,
                  keras.layers.Conv2D: FrozenConv2D}


def loop_friendly(model: keras.Model) -> keras.Model:
    """A frozen clone of ``model`` for inference inside compiled loops: every
    ``Conv2DTranspose`` as a :class:`SubpixelConv2DTranspose` and every ``Conv2D`` as a
    :class:`FrozenConv2D`, kernels held as constants, the same weights (copied). ``model``
    itself when it has no such layer or cannot be cloned (a subclassed model)."""
    if not any(type(layer) in _LOOP_FRIENDLY for layer in model.layers):
        return model

    def clone(layer):
        cls = _LOOP_FRIENDLY.get(type(layer), layer.__class__)
        return cls.from_config(layer.get_config())

    try:
        new = keras.models.clone_model(model, clone_function=clone)
    except (ValueError, TypeError, NotImplementedError):
        return model
    new.set_weights(model.get_weights())
    new.trainable = False
    for layer in new.layers:
        if isinstance(layer, (SubpixelConv2DTranspose, FrozenConv2D)):
            layer.freeze()
    return new
