r"""The embedded end-to-end example behind ``tfstronglens demo``.

An HST/ACS F814W-like image (0.05"/pixel, single orbit, Gaussian PSF of FWHM 0.1") of a
singular isothermal ellipsoid with external shear at ``z_lens = 0.5`` lensing a galaxy at
``z_source = 2`` whose light is the pretrained VAE's decoder at a latent vector ``z``
(the encoding of a synthetic galaxy of the held-out set, so a realistic source), with one
compact subhalo, a point mass of ``10^{10} M_sun`` (a tidally stripped subhalo whose mass
lies within ~0.1", its Einstein radius) on the arc. It is fitted with the model that
generated it (SIE + shear, VAE source with ``z ~ N(0, I)``, one candidate subhalo:
77 parameters), by MAP -> Laplace, VI or NUTS, and the subhalo is tested for with the
likelihood-ratio statistic of :func:`~tfstronglens.inference.detect_subhalo`.

**Why a compact subhalo.** What a subhalo does to the image that the smooth lens and a
flexible source cannot mimic is its *local* distortion. At the demo's S/N of 80, with
the lens and all 67 source parameters refitted (``Delta log L`` = best fit with the
subhalo minus best fit without, both started at the truth; measured with 4 x 600 Adam
steps): the ``10^{10} M_sun`` point mass gives ``Delta log L = 169`` (``chi^2`` change
of 937 with everything else fixed), a ``3 x 10^9 M_sun`` point mass 55 (178 fixed); a
truncated NFW of ``M200c = 10^{11} M_sun`` (Duffy et al. 2008 concentration,
truncated at its tidal radius, ``subhalo_profile="tnfw"``) changes the image by
``chi^2 = 113`` at fixed lens and source, but almost all of it is a smooth, ring-wide
distortion that the refit lens and VAE source absorb: ``Delta log L = 1.4`` (5.4 at
S/N 120). Its mass is spread over ~1", where it acts like a change of the macro model.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["DEMO_TRUTH", "demo_problem", "demo_table"]

#: Truths of the demo (lens, shear, source position and subhalo; the source latent is
#: the encoding of a synthetic galaxy, see :func:`demo_problem`).
DEMO_TRUTH = {
    "lens.0.theta_E": 1.05,
    "lens.0.e1": 0.12,
    "lens.0.e2": -0.06,
    "lens.0.center_x": 0.02,
    "lens.0.center_y": -0.03,
    "lens.1.gamma1": 0.03,
    "lens.1.gamma2": -0.02,
    "source.0.center_x": 0.06,
    "source.0.center_y": 0.04,
    "subhalo.0.mass": 1.0e10,
    "subhalo.0.center_x": 0.80,
    "subhalo.0.center_y": 0.75,
}

DEMO_SNR = 80.0  # matched-filter S/N of the lensed source (Observation.snr)


def demo_problem(num_pix: int = 64, seed: int = 0, source_pixel_scale: float = 0.025,
                 snr: float = DEMO_SNR, galaxy_index: int = 3, jit_compile: bool = False,
                 lens: str = "sie+shear", num_subhalos: int = 1,
                 subhalo_profile: str = "point_mass", normalize_flux: bool = False):
    """Build the demo's model and simulate its data.

    ``subhalo_profile="tnfw"`` uses a truncated NFW subhalo instead of the point mass
    (mass prior ``10^8 - 10^12 M_sun`` instead of ``10^7 - 10^11``; set
    ``DEMO_TRUTH``'s mass accordingly). ``lens="epl+shear"`` adds the power-law slope ``lens.0.gamma`` (truth 2.0, i.e. the
    same mass distribution); ``num_subhalos=0`` simulates and fits without the subhalo
    (with ``lens="epl+shear"`` that is the 75-parameter posterior of the validation
    test: 64 latents, source amplitude and position, EPL and shear).
    ``normalize_flux=True`` gives the source :class:`~tfstronglens.models.VAESource`'s
    flux normalisation (``amp`` alone sets the flux; the same image, another ``amp``).

    The model is not XLA-compiled by default (``jit_compile=False``): on a CPU the
    decoder's convolutions run as fast without XLA, and each XLA compilation of a
    gradient (MAP, VI and the two detection fits each need one) costs tens of seconds.

    Returns:
      ``(model, truth, data)``: the :class:`~tfstronglens.inference.LensModel` (with the
      data attached), the dict of true values of every free parameter (``source.z.k``
      included) and the noisy image ``[num_pix, num_pix]`` (e-/s per pixel).
    """
    from ..models import VAESource, load_pretrained_vae
    from ..observation import Observation
    from ..simulation.galaxies import SyntheticGalaxyGenerator
    from .model import LensModel

    vae = load_pretrained_vae()
    obs = Observation.from_instrument("hst_acs_f814w", num_pix=num_pix)
    source = VAESource(vae.decoder, pixel_scale=source_pixel_scale,
                       normalize_flux=normalize_flux)
    size = int(vae.decoder.output_shape[-1])
    gal = SyntheticGalaxyGenerator(stamp_size=size).sample(galaxy_index + 1, seed=12345)
    z_true = np.asarray(vae.encode(gal["image"][galaxy_index:galaxy_index + 1]))[0]

    half = 0.5 * num_pix * obs.pixel_scale
    model = LensModel(obs, lens, source, num_subhalos=num_subhalos,
                      subhalo_profile=subhalo_profile,
                      subhalo_mass_range=(1e8, 1e12) if subhalo_profile == "tnfw"
                      else (1e7, 1e11),
                      subhalo_region=(-0.8 * half, 0.8 * half, -0.8 * half, 0.8 * half),
                      z_lens=0.5, z_source=2.0, amp_scale=1.0, jit_compile=jit_compile)
    truth = {k: v for k, v in DEMO_TRUTH.items()
             if num_subhalos or not k.startswith("subhalo.")}
    if "lens.0.gamma" in model.param_names:
        truth["lens.0.gamma"] = 2.0
    truth["source.0.amp"] = 1.0
    for k, v in enumerate(z_true):
        truth[f"source.z.{k}"] = float(v)
    params = {k: tf.constant([v], model.dtype) for k, v in truth.items()}
    lensed = (model.replace(num_subhalos=0) if num_subhalos else model).render(
        {k: v for k, v in params.items() if not k.startswith("subhalo.")})
    scale = float(np.asarray(obs.scale_to_snr(lensed, snr))[0])
    truth["source.0.amp"] = scale
    params["source.0.amp"] = tf.constant([scale], model.dtype)
    clean = model.render(params)
    data = np.asarray(obs.add_noise(clean, seed=seed))[0]
    amp_scale = float(np.percentile(data, 99.5)) / obs.pixel_area
    model = model.replace(data=data, amp_scale=amp_scale)
    return model, truth, data


def demo_table(result, truth) -> str:
    """A text table of the recovered lens, source-position and subhalo parameters
    (posterior mean +- std and 68% interval) next to the truths."""
    rows = [f"{'parameter':<22}{'truth':>12}{'mean':>12}{'std':>10}{'16%':>12}{'84%':>12}"
            f"{'in 68%':>8}"]
    for name in result.param_names:
        if name.startswith("source.z.") or name not in result.summary:
            continue
        s = result.summary[name]
        t = truth.get(name)
        inside = "" if t is None else ("yes" if s["p16"] <= t <= s["p84"] else "no")
        fmt = (lambda v: f"{v:12.4g}")
        rows.append(f"{name:<22}{fmt(t) if t is not None else ' ' * 12}{fmt(s['mean'])}"
                    f"{s['std']:10.3g}{fmt(s['p16'])}{fmt(s['p84'])}{inside:>8}")
    return "\n".join(rows)
