"""Amortized starting points: MAP starts drawn from the lens CNN's posterior.

Multi-start MAP from prior draws spends most starts far from the answer and sometimes
converges to the mirrored ellipticity/shear mode; a
:class:`~tfstronglens.models.LensPosteriorNetwork` gives, in milliseconds, a posterior
over the main lens and the source position that already excludes most of the prior.
:func:`amortized_starts` turns draws of it into ``fit_lens``'s ``map_init``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .model import LensModel

__all__ = ["amortized_starts", "default_lens_cnn", "AMORTIZED_INITS"]

#: ``fit_lens(init=...)`` / ``fit --init`` names: ``"prior"`` (prior draws) or ``"cnn"``
#: (the shipped lens CNN for the model's main lens, :func:`default_lens_cnn`).
AMORTIZED_INITS = ("prior", "cnn")


def default_lens_cnn(model: LensModel) -> str:
    """The shipped lens CNN (a :data:`~tfstronglens.models.PRETRAINED_CNNS` name) for
    ``model``: ``"pretrained-epl"`` when the main lens has a free power-law slope
    (``lens.0.gamma``), else ``"pretrained"`` (SIE + shear)."""
    return "pretrained-epl" if "lens.0.gamma" in model.param_names else "pretrained"


def amortized_starts(model: LensModel, network=None, data=None, num_starts: int = 64,
                     seed: int = 0, oversample: int = 4) -> dict:
    """``fit_lens``'s ``map_init``: ``num_starts`` draws of the network's posterior for the
    parameters it shares with ``model`` (the others are drawn from the prior by the MAP).

    The image is put on the network's grid first
    (:func:`~tfstronglens.models.amortized.match_network_grid`): centre-cropped or padded
    when the pixel scales agree within 1%, else resampled (bilinear, flux kept). A
    resampled image is not what the network was trained on (other PSF sampling,
    correlated noise), so its posterior is only approximately calibrated; as MAP starts,
    which the MAP then refines, the draws need only be near the answer. Draws outside
    ``model``'s prior support are dropped (``oversample * num_starts`` are drawn); if fewer
    than ``num_starts`` remain, the valid ones are reused in turn.

    Args:
      model: the :class:`LensModel`; its coordinates must be centred on the image centre,
        as the network's are.
      network: a :class:`~tfstronglens.models.LensPosteriorNetwork` or anything
        :func:`~tfstronglens.models.load_lens_cnn` takes (default: the shipped one for
        the model's main lens, :func:`default_lens_cnn`).
      data: the image (default: the model's data); its noise is
        :meth:`LensModel.data_noise_sigma`.

    Returns ``{name: [num_starts] array}`` (constrained values).

    Raises:
      ValueError: the network shares no parameter with the model, the image cannot be put
        on its grid, or none of its draws lies inside the prior.
    """
    from ..models.amortized import load_lens_cnn, match_network_grid

    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    net = load_lens_cnn(default_lens_cnn(model) if network is None else network)
    shared = [n for n in net.param_names if n in model.param_names]
    if not shared:
        raise ValueError(f"the lens CNN's parameters {net.param_names} are not the model's "
                         f"({model.param_names})")
    num_starts = int(num_starts)
    image = model.resolve_data(data)
    sigma = model.data_noise_sigma(image)
    scale = float(model.observation.pixel_scale)
    odd = (model.num_pix - net.num_pix) % 2
    image, sigma, _ = match_network_grid(
        np.asarray(image), np.asarray(sigma), scale, net.num_pix, net.pixel_scale,
        resample=bool(odd) or abs(scale / net.pixel_scale - 1) > 0.01)
    q = net.posterior({"image": tf.constant(image)[None], "noise": tf.constant(sigma)[None]})
    n_draw = max(int(oversample), 1) * num_starts
    draws = q.sample(n_draw, seed=tf.constant([int(seed), 17]))[:, 0].numpy()
    cols = {n: draws[:, net.param_names.index(n)] for n in shared}
    prior = dict(model.sample_prior(n_draw, seed=int(seed)))
    for n, v in cols.items():
        prior[n] = tf.constant(v.astype(model.dtype.as_numpy_dtype))
    ok = np.all(np.isfinite(np.asarray(model.to_flat(prior))), axis=-1)
    if not ok.any():
        raise ValueError("no draw of the lens CNN's posterior lies inside the model's prior; "
                         "is the image of the kind the network was trained on?")
    idx = np.flatnonzero(ok)
    idx = np.resize(idx, num_starts)
    return {n: v[idx] for n, v in cols.items()}
