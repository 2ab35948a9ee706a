"""A trained VAE decoder as a differentiable source light profile for the lensing core."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from ..profiles.base import Profile
from ..profiles.pixelated_source import PixelatedSource
from ._subpixel import loop_friendly
from .vae import VAE, model_dtype

__all__ = ["VAESource", "load_decoder"]


def load_decoder(spec) -> keras.Model:
    """The decoder named by ``spec``: a Keras decoder model, a :class:`VAE`, the name of a
    pretrained model (:func:`~tfstronglens.models.load_pretrained_vae`) or the path of a
    ``.keras`` file holding a VAE or a decoder.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for anything else
    that is not a decoder.
    """
    from ._pretrained import PRETRAINED_MODELS, load_pretrained_vae
    if isinstance(spec, VAE):
        return spec.decoder
    if isinstance(spec, keras.Model):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text in PRETRAINED_MODELS:
            return load_pretrained_vae(text).decoder
        if not text.endswith(".keras"):
            raise ValueError(f"decoder must be a Keras model, a pretrained model name "
                             f"{sorted(PRETRAINED_MODELS)} or a .keras file path, got {spec!r}")
        if not os.path.isfile(text):
            raise FileNotFoundError(f"decoder file {text!r} does not exist")
        model = keras.models.load_model(text, compile=False)
        return model.decoder if isinstance(model, VAE) else model
    raise ValueError(f"decoder must be a Keras model, a pretrained model name "
                     f"{sorted(PRETRAINED_MODELS)} or a .keras file path, got {spec!r}")


class VAESource(PixelatedSource):
    r"""A source galaxy drawn by a VAE decoder from latent parameters ``z``.

    #### Mathematical details

    The decoder ``D`` maps a latent vector ``z`` (``K`` numbers; ``z ~ N(0, I)`` under the
    VAE's prior) to an ``n x n`` image ``D(z)_ij`` on the source plane, read as surface
    brightness (the units of the training stamps per pixel of ``pixel_scale`` arcsec).
    The source is that image interpolated as :class:`~tfstronglens.PixelatedSource`
    (same pixel-centre convention, same kernels):

        I(x, y) = amp sum_{i,j} D(z)_ij K(u - j) K(v - i),
        u = (x - center_x) / s + (n - 1) / 2,   v = (y - center_y) / s + (n - 1) / 2,

    with total flux ``amp s^2 sum_ij D(z)_ij`` (:meth:`total_flux`). It is differentiable
    in ``z`` (through the decoder), ``amp`` and the centre, so gradient-based inference
    (MAP, VI, HMC) can fit the ``K`` latents jointly with the lens.

    **Flux normalisation** (``normalize_flux=True``). A VAE trained on galaxies of many
    brightnesses encodes brightness in its latents too (the shipped decoder's mean pixel
    varies by a factor ~15 between the 1st and 99th percentile of prior draws), so
    ``amp`` and the latents trade off along a curved ridge that no metric flattens. With
    normalisation the image is

        D~(z) = D(z) m_0 / max(mean_ij D(z)_ij, m_0 / 20),   m_0 = mean_ij D(0)_ij,

    so ``amp`` alone sets the flux (``amp s^2 n^2 m_0`` whenever the decoded mean exceeds
    ``m_0 / 20``) and the latents only the morphology; the floor keeps prior draws with
    almost no flux finite. This changes what ``amp`` means, not what images the model can
    draw (``benchmarks/README.md``: the effect on HMC).

    #### Parameters and shapes

    * ``z``: ``[..., K]`` (``param_event_ndims = {"z": 1}``); leading dimensions are batch
      dimensions. Inside the :class:`~tfstronglens.Simulator` a batch ``[B, K]`` renders
      ``B`` images ``[B, N, N]``.
    * ``amp`` (default 1), ``center_x``, ``center_y`` (default 0, arcsec): scalars that
      broadcast like every other profile's.

    The decoder runs in inference mode (``training=False``) in its own dtype; its output
    is cast to the profile's dtype (gradients flow through the casts). For float64
    arithmetic throughout, give a decoder built with ``dtype="float64"``.

    Args:
      decoder: a Keras model ``[B, K] -> [B, n, n]``, a :class:`~tfstronglens.models.VAE`
        (its decoder), a pretrained model name (e.g. ``"synthetic_galaxies_64"``) or the
        path of a ``.keras`` file (a VAE or a decoder). Names and paths are recorded in
        :meth:`get_config`, so ``get_profile(**source.get_config())`` rebuilds the source;
        an in-memory model cannot be rebuilt from the config (``decoder: None``).
      pixel_scale: source-plane pixel size in arcsec (> 0).
      interpolation: ``"bilinear"`` (default) or ``"bicubic"``.
      normalize_flux: divide the decoded image by its mean pixel (above), relative to
        that of ``z = 0`` (default False: ``D(z)`` as decoded).
      dtype: float32 (default) or float64.

    #### Example

    >>> vae = tsl.models.VAE(image_size=32, latent_dim=8, base_filters=8)
    >>> src = tsl.models.VAESource(vae.decoder, pixel_scale=0.03)
    >>> sim = tsl.Simulator(tsl.PixelGrid(48, 0.05), lens=[tsl.SIE()], source=[src])
    >>> z = np.random.normal(size=(4, 8)).astype("float32")
    >>> images = sim(lens=[dict(theta_E=1.0, e1=0.1, e2=0.0)], source=[dict(z=z, amp=2.0)])
    """

    name = "VAE"
    param_names = ("z", "amp", "center_x", "center_y")
    defaults = {"amp": 1.0, "center_x": 0.0, "center_y": 0.0}
    param_event_ndims = {"z": 1}

    def __init__(self, decoder, pixel_scale: float, interpolation: str = "bilinear",
                 normalize_flux: bool = False, dtype=tf.float32):
        self.decoder_spec = os.fspath(decoder) if isinstance(decoder, (str, os.PathLike)) else None
        model = load_decoder(decoder)
        in_shape = tuple(model.input_shape[1:])
        out_shape = tuple(model.output_shape[1:])
        if len(in_shape) != 1 or in_shape[0] is None:
            raise ValueError(f"decoder must take [batch, latent_dim] inputs, its input shape "
                             f"is {model.input_shape}")
        if len(out_shape) != 2 or out_shape[0] != out_shape[1] or out_shape[0] is None:
            raise ValueError(f"decoder must output square images [batch, n, n], its output "
                             f"shape is {model.output_shape}")
        super().__init__(int(out_shape[0]), pixel_scale, interpolation=interpolation, dtype=dtype)
        self.decoder = model
        # the same decoder with its transposed convolutions as sub-pixel convolutions
        # (fast inside XLA:CPU loops: models/_subpixel.py); decode() runs this one. Its
        # weights are copied now: build a new VAESource after training the decoder.
        self._loop_decoder = loop_friendly(model)
        self.latent_dim = int(in_shape[0])
        self._decoder_dtype = model_dtype(model)
        if not isinstance(normalize_flux, bool):
            raise ValueError(f"normalize_flux must be True or False, got {normalize_flux!r}")
        self.normalize_flux = normalize_flux
        self._reference_mean = None
        if normalize_flux:
            mean0 = float(tf.reduce_mean(self._decode_raw(tf.zeros([1, self.latent_dim]))))
            if not mean0 > 0:
                raise ValueError(f"normalize_flux=True needs a decoder whose image at z = 0 "
                                 f"has a positive mean, got {mean0!r}")
            self._reference_mean = mean0

    def get_config(self):
        return {**Profile.get_config(self), "decoder": self.decoder_spec,
                "pixel_scale": self.pixel_scale, "interpolation": self.interpolation,
                "normalize_flux": self.normalize_flux}

    def decode(self, z):
        """Source images ``D(z)`` (flux-normalised ``D~(z)`` with ``normalize_flux``),
        ``[..., n, n]`` in the profile's dtype, for ``z [..., K]``."""
        img = self._decode_raw(z)
        if not self.normalize_flux:
            return img
        m0 = tf.constant(self._reference_mean, img.dtype)
        mean = tf.reduce_mean(img, axis=[-2, -1], keepdims=True)
        return img * (m0 / tf.maximum(mean, m0 / 20.0))

    def _decode_raw(self, z):
        z = tf.cast(z, self._decoder_dtype)
        batch = tf.shape(z)[:-1]
        flat = tf.reshape(z, [-1, self.latent_dim])
        img = self._loop_decoder(flat, training=False)
        n = self.num_pix
        img = tf.reshape(tf.cast(img, self.dtype), tf.concat([batch, [n, n]], 0))
        if z.shape.rank is not None:
            img.set_shape(z.shape[:-1].concatenate([n, n]))
        return img

    def total_flux(self, z, amp=1.0):
        """``amp s^2 sum_ij D(z)_ij``, shape ``z.shape[:-1]`` broadcast with ``amp``."""
        p = self._prepare_params({"z": z, "amp": amp}, method="total_flux")
        return p["amp"] * tf.reduce_sum(self.decode(p["z"]), axis=[-2, -1]) * self.pixel_scale**2

    def _prepare_params(self, params: dict, method: str = "call", check: bool = True) -> dict:
        out = Profile._prepare_params(self, params, method=method, check=check)
        shape = out["z"].shape
        if shape.rank is not None and shape[-1] is not None and shape[-1] != self.latent_dim:
            raise ValueError(
                f"{type(self).__name__}.{method}: z must have shape [..., {self.latent_dim}] "
                f"(the decoder's latent_dim), got {shape.as_list()}"
            )
        return out

    @tf.autograph.experimental.do_not_convert
    def _surface_brightness(self, x, y, z, amp, center_x, center_y):
        return super()._surface_brightness(x, y, image=self.decode(z), amp=amp,
                                           center_x=center_x, center_y=center_y)
