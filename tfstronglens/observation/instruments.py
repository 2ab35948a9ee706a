r"""Instrument and survey presets for :meth:`tfstronglens.observation.Observation.from_instrument`.

Each preset describes one *typical* observation (one image, possibly a stack of dithered
exposures) with the quantities :class:`~tfstronglens.observation.Observation` needs.
Zero points are AB magnitudes giving 1 e-/s; sky brightnesses are AB mag/arcsec^2; read
noise is per exposure and per pixel; the PSF is a Gaussian or Moffat of the stated FWHM
(real PSFs are better described by a pixelated model, :meth:`PixelPSF.from_fits`).

==================  ===========  =========  ========  ========  =====  ==================
preset              pixel (")    PSF FWHM   ZP (AB)   sky       read   exposures
==================  ===========  =========  ========  ========  =====  ==================
``hst_acs_f814w``   0.05         0.10 G     25.94     22.2      4.0    4 x 550 s
``hst_wfc3_f140w``  0.08 (driz)  0.14 G     26.45     22.0      12.0   4 x 600 s
``euclid_vis``      0.10         0.16 G     25.72     22.3      4.2    4 x 566 s
``lsst_r``          0.20         0.73 M     28.13     21.2      10.0   368 x 15 s
==================  ===========  =========  ========  ========  =====  ==================

(G: Gaussian; M: Moffat with beta = 4.765, Trujillo et al. 2001.) Sources and choices:

``hst_acs_f814w`` -- a SLACS-like single-orbit HST/ACS-WFC F814W image: SLACS imaged its
lenses for one orbit in F814W, split into 4 dithered exposures of ~550 s (Bolton et al.
2008, ApJ 682, 964), drizzled to 0.05"/pixel (the native ACS/WFC scale). Zero point: the
STScI ACS zero-point tables (Bohlin 2016, AJ 152, 60; 25.94 to within ~0.01 mag depending
on the date). The PSF FWHM (~2 pixels) and the WFC read noise (~4 e-) are from the ACS
Instrument Handbook (ch. 4-5). The sky, 22.2 mag/arcsec^2 (0.078 e-/s/pixel), is the ACS
team's "average" zodiacal rate for WFC F814W, 0.0755 e-/s/pixel with earthshine "shadow"
(Sirianni et al., ACS zero-point and sky tables; ACS Instrument Handbook ch. 9); it ranges
from 0.6x (ecliptic pole) to 2x (ecliptic plane) that value.

``hst_wfc3_f140w`` -- a single-orbit WFC3/IR F140W image (4 dithered ~600 s exposures)
drizzled from the native 0.13" pixels to 0.08" (as lenstronomy's WFC3 preset). Zero point
26.45 (STScI WFC3/IR photometric calibration, Kalirai et al. 2009; 26.4524 in the 2012
tables, 26.45 since 2020). PSF FWHM ~0.14" at 1.4 um (WFC3 Instrument Handbook ch. 7).
Read noise: ~12 e- for a 16-read up-the-ramp fit (WFC3 Instrument Handbook ch. 5), per
native pixel (kept as is on the drizzled grid: a conservative simplification). Sky
22.0 mag/arcsec^2 (~1 e-/s per native pixel), a typical zodiacal level (WFC3 Instrument
Handbook sec. 9.7; Pirzkal 2014, WFC3 ISR 2014-11); it varies by a factor ~2.

``euclid_vis`` -- one field of the Euclid Wide Survey: 4 dithered VIS exposures of 566 s
(Scaramella et al. 2022, A&A 662, A112) on 0.1" pixels. Zero point 25.72 and sky
22.3 mag/arcsec^2 (arXiv:2405.13496), PSF FWHM 0.16" (arXiv:2405.13501) and read noise
4.2 e- (arXiv:2405.13493): the 2024 Euclid mission/instrument papers, with the numbers
lenstronomy 1.14 takes from them.

``lsst_r`` -- the Rubin/LSST 10-year r-band co-add: 184 visits of 2 x 15 s exposures
(Ivezic et al. 2019, ApJ 873, 111, table 1), 0.2" pixels, sky 21.2 mag/arcsec^2 (ibid.
table 2); zero point 28.13, median delivered seeing 0.73" and read noise 10 e- (an upper
bound; the camera requirement is < 10 e-) as in lenstronomy's LSST preset. The seeing PSF
is a Moffat with Trujillo et al.'s beta = 4.765.

#### Comparison with lenstronomy 1.14 (``lenstronomy.SimulationAPI.ObservationConfig``)

* Euclid VIS: identical except the pixel scale (lenstronomy 0.101", here the nominal
  0.1"). lenstronomy scales ``num_exposures`` with ``coadd_years`` (4 at 6 years).
* LSST r: lenstronomy uses 460 exposures (230 visits, from the 2008 version of Ivezic et
  al.); the published 2019 baseline has 184 r-band visits, i.e. 368 exposures, used here.
  Other numbers are identical. lenstronomy's PSF is Gaussian; here a Moffat.
* HST: lenstronomy has only WFC3/IR F160W (5400 s as a single exposure, ZP 25.96, sky
  22.3, read noise 4 e-, 0.08" pixels, FWHM 0.08"); neither ACS F814W nor F140W. Our
  F140W preset shares its 0.08" drizzled pixels but uses the WFC3/IR up-the-ramp read
  noise (12 e-) and the measured PSF FWHM (0.14") instead of 4 e- and 0.08".

lenstronomy's background noise ``sqrt(N r^2 + N t s p^2) / (N t)`` and its Poisson term
``model / (N t)`` are what :class:`Observation` computes (tested against it).
"""

from __future__ import annotations

import copy

__all__ = ["INSTRUMENTS", "get_instrument", "instrument_names"]

# keys: pixel_scale [arcsec], exposure_time [s per exposure], num_exposures,
# sky_brightness [AB mag / arcsec^2], zero_point [AB mag for 1 e-/s], read_noise [e- per
# exposure and pixel], psf_model ("gaussian" | "moffat"), psf_fwhm [arcsec], psf_beta
INSTRUMENTS = {
    "hst_acs_f814w": {
        "pixel_scale": 0.05,
        "exposure_time": 550.0,
        "num_exposures": 4,
        "sky_brightness": 22.2,
        "zero_point": 25.94,
        "read_noise": 4.0,
        "psf_model": "gaussian",
        "psf_fwhm": 0.10,
        "description": "HST ACS/WFC F814W, SLACS-like single orbit (4 x 550 s)",
    },
    "hst_wfc3_f140w": {
        "pixel_scale": 0.08,
        "exposure_time": 600.0,
        "num_exposures": 4,
        "sky_brightness": 22.0,
        "zero_point": 26.45,
        "read_noise": 12.0,
        "psf_model": "gaussian",
        "psf_fwhm": 0.14,
        "description": "HST WFC3/IR F140W, single orbit (4 x 600 s), drizzled to 0.08\"",
    },
    "euclid_vis": {
        "pixel_scale": 0.1,
        "exposure_time": 566.0,
        "num_exposures": 4,
        "sky_brightness": 22.3,
        "zero_point": 25.72,
        "read_noise": 4.2,
        "psf_model": "gaussian",
        "psf_fwhm": 0.16,
        "description": "Euclid VIS, Wide Survey (4 x 566 s)",
    },
    "lsst_r": {
        "pixel_scale": 0.2,
        "exposure_time": 15.0,
        "num_exposures": 368,
        "sky_brightness": 21.2,
        "zero_point": 28.13,
        "read_noise": 10.0,
        "psf_model": "moffat",
        "psf_fwhm": 0.73,
        "psf_beta": 4.765,
        "description": "Rubin LSST r band, 10-year co-add (184 visits x 2 x 15 s)",
    },
}


def instrument_names() -> list:
    """The names of the presets, sorted."""
    return sorted(INSTRUMENTS)


def _normalize(name) -> str:
    if not isinstance(name, str):
        raise ValueError(f"instrument name must be a string, one of {instrument_names()}, "
                         f"got {name!r}")
    return name.strip().lower().replace("-", "_").replace(" ", "_").replace("/", "_")


def get_instrument(name: str) -> dict:
    """A copy of the preset ``name`` (case-insensitive; ``-``, ``/`` and spaces read as ``_``).

    Raises ``ValueError`` listing the known names for an unknown one.
    """
    key = _normalize(name)
    if key not in INSTRUMENTS:
        raise ValueError(f"unknown instrument {name!r}; known instruments: {instrument_names()}")
    return copy.deepcopy(INSTRUMENTS[key])
