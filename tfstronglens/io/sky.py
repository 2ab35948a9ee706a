r"""Where a fitted lens lies on the sky: the model's pixel frame mapped through an image's WCS.

The model's frame
-----------------
A fit works in the frame of :class:`~tfstronglens.PixelGrid`: pixel ``(row i, column j)``
of the ``N x N`` image array has its centre at

    x = (j - (N - 1) / 2) s,    y = (i - (N - 1) / 2) s       (arcsec, s = pixel scale),

so ``+x`` runs along the columns and ``+y`` along the rows, and **row 0 is at -y** (the
bottom of the image). This is the FITS convention: the first row stored in a FITS file
is the bottom row of the image, and the FITS pixel coordinates ``(X, Y) = (j + 1, i + 1)``
grow to the right and upward. Angles in the model (``phi = atan2(e2, e1) / 2`` of an
ellipticity, ``atan2(gamma2, gamma1) / 2`` of a shear) are measured from ``+x``
counter-clockwise, i.e. towards ``+y``. An array stored the other way up (row 0 at ``+y``,
as PyAutoLens writes its arrays) is read with ``flip_y=True``
(:func:`~tfstronglens.io.load_lens_image`, ``fit --flip-y``): its rows are reversed, and
a WCS in its header, which describes the array *as stored* (FITS standard), is applied to
the stored row ``N - 1 - i`` of the model's row ``i``.

Sky positions and offsets
-------------------------
:class:`SkyFrame` maps a model position ``(x, y)`` to its pixel ``(j, i)`` and through the
header's celestial WCS (``astropy.wcs``, with its distortions, ``all_pix2world``) to
``(RA, Dec)`` in degrees. Offsets from the image centre (the model's origin, pixel
``((N - 1) / 2, (N - 1) / 2)``) are the gnomonic standard coordinates about the centre's
sky position ``(a0, d0)``:

    xi  = cos d sin(a - a0) / D,
    eta = (cos d0 sin d - sin d0 cos d cos(a - a0)) / D,
    D   = sin d0 sin d + cos d0 cos d cos(a - a0),

in arcsec: ``xi`` east, ``eta`` north. They differ from ``(dRA cos(Dec), dDec)`` by terms
of order ``sep^2 tan(Dec)`` (``5e-5`` arcsec for an offset of 3.5" in both directions at
``Dec = 60 deg``), and for a TAN (gnomonic) WCS whose reference pixel is the image
centre they are exactly ``CD @ (dX, dY)`` (the intermediate world coordinates).

Position angles
---------------
A direction at angle ``phi`` in the model frame, ``u = (cos phi, sin phi)``, points on the
sky along ``(E, N) = J u``, where ``J = d(xi, eta) / d(x, y)`` is the WCS's local
Jacobian at the object (the CD matrix, or PC times CDELT, divided by the pixel scale,
plus any distortion; computed by central differences of the sky positions, in the
tangent plane of the object itself). Its position angle east of north is

    PA = atan2(E, N)        (degrees, from north through east),

taken modulo 180 deg for an ellipse's major axis or a shear (headless directions). For
the usual north-up, east-left image (``CD = diag(-s, s)``, ``+y`` north, ``+x`` west)
this is

    PA = phi + 90 deg  (mod 180),

and for an image whose ``+y`` axis points at position angle ``theta`` with the usual
parity (HST's ``ORIENTAT``; ``CD = s [[-cos theta, sin theta], [sin theta, cos theta]]``)

    PA = phi + theta + 90 deg  (mod 180).

A mirrored image (east to the right when north is up, ``det CD > 0``) reverses the
sense: ``PA = 90 deg - phi`` for ``CD = diag(s, s)``. The rotation and the parity come
from the WCS matrix, never from assumptions.

For an ellipticity ``phi`` is the major axis; for an external shear ``phi`` is the
direction along which it stretches images (the perturbing mass lies perpendicular to
it, at ``PA + 90``).

:func:`sky_summary` applies all this to every posterior draw of a fit and summarises the
transformed draws (mean, std, 16/50/84 percentiles; angles unwrapped around their
circular mean), so that the intervals are those of the sky quantities, not transformed
means.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from .._validation import positive_float, positive_int

__all__ = ["SkyFrame", "tangent_offsets", "sky_summary", "format_sky_summary"]

_ARCSEC_PER_DEG = 3600.0


def tangent_offsets(ra, dec, ra0, dec0):
    r"""Gnomonic standard coordinates ``(xi, eta)`` in arcsec of ``(ra, dec)`` about the
    tangent point ``(ra0, dec0)`` (all in degrees, broadcast): ``xi`` towards the east,
    ``eta`` towards the north; ``~ (dRA cos Dec, dDec)`` for small separations (see the
    module docs for the formulas)."""
    a, d = np.radians(np.asarray(ra, np.float64)), np.radians(np.asarray(dec, np.float64))
    a0, d0 = np.radians(np.asarray(ra0, np.float64)), np.radians(np.asarray(dec0, np.float64))
    da = a - a0
    den = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(da)
    xi = np.cos(d) * np.sin(da) / den
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(da)) / den
    return np.degrees(xi) * _ARCSEC_PER_DEG, np.degrees(eta) * _ARCSEC_PER_DEG


def _celestial_wcs(header):
    """The 2-axis celestial ``astropy.wcs.WCS`` of ``header`` in degrees, or ``None``."""
    if header is None or not any(str(k).upper().startswith("CTYPE") for k in header.keys()):
        return None
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. FITSFixedWarning on old date cards
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            wcs = wcs.celestial
    except Exception:  # a header whose WCS astropy cannot parse: no sky frame
        return None
    if wcs.naxis != 2 or any(str(u) not in ("deg", "") for u in wcs.wcs.cunit):
        return None
    return wcs


@dataclasses.dataclass(frozen=True, eq=False)
class SkyFrame:
    """The model's pixel frame (module docs) on the sky, through an image's celestial WCS.

    Build it with :meth:`from_header`. Attributes: ``wcs`` (the celestial
    ``astropy.wcs.WCS`` of the array as stored), ``num_pix`` (``N``), ``pixel_scale``
    (arcsec: the model's, which converts its arcsec to pixels), ``flip_y`` (the stored
    array is upside down: model row ``i`` is stored row ``N - 1 - i``).
    """

    wcs: object
    num_pix: int
    pixel_scale: float
    flip_y: bool = False

    @classmethod
    def from_header(cls, header, num_pix: int, pixel_scale: float,
                    flip_y: bool = False) -> "SkyFrame | None":
        """The frame of a FITS ``header`` with a celestial WCS in degrees (``RA---TAN``,
        ``DEC--TAN``, ...), or ``None`` when it has none (or one astropy cannot read).

        Args:
          header: an ``astropy.io.fits.Header`` (or ``None``).
          num_pix: pixels per side of the (square) image.
          pixel_scale: the model's pixel scale in arcsec (> 0).
          flip_y: the header's image is stored with row 0 at ``+y``.
        """
        num_pix = positive_int(num_pix, "num_pix")
        pixel_scale = positive_float(pixel_scale, "pixel_scale")
        wcs = _celestial_wcs(header)
        if wcs is None:
            return None
        return cls(wcs, num_pix, pixel_scale, bool(flip_y))

    # ------------------------------------------------------------- mappings
    def pixel(self, x, y):
        """0-based pixel coordinates ``(X - 1, Y - 1)`` (column, row of the array as
        stored) of model positions ``(x, y)`` in arcsec (numpy, broadcast)."""
        c = 0.5 * (self.num_pix - 1)
        col = np.asarray(x, np.float64) / self.pixel_scale + c
        row = np.asarray(y, np.float64) / self.pixel_scale + c
        if self.flip_y:
            row = (self.num_pix - 1) - row
        return np.broadcast_arrays(col, row)

    def world(self, x, y):
        """``(ra, dec)`` in degrees of model positions ``(x, y)`` (arcsec)."""
        col, row = self.pixel(x, y)
        shape = col.shape
        ra, dec = self.wcs.all_pix2world(col.ravel(), row.ravel(), 0)
        return np.reshape(ra, shape), np.reshape(dec, shape)

    @property
    def centre(self):
        """``(ra, dec)`` in degrees of the image centre (the model's origin)."""
        ra, dec = self.world(0.0, 0.0)
        return float(ra), float(dec)

    def offsets(self, x, y):
        """``(east, north)`` in arcsec of model positions ``(x, y)`` from the image centre:
        gnomonic standard coordinates about the centre (:func:`tangent_offsets`)."""
        ra, dec = self.world(x, y)
        return tangent_offsets(ra, dec, *self.centre)

    def jacobian(self, x=0.0, y=0.0):
        """``J [..., 2, 2]``: ``d(east, north) / d(x, y)`` at model positions ``(x, y)``
        (arcsec per arcsec; rows east, north), in the tangent plane at each position;
        central differences of half a pixel."""
        x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        h = 0.5 * self.pixel_scale
        ra0, dec0 = self.world(x, y)
        cols = []
        for dx, dy in ((h, 0.0), (0.0, h)):
            ep, np_ = tangent_offsets(*self.world(x + dx, y + dy), ra0, dec0)
            em, nm = tangent_offsets(*self.world(x - dx, y - dy), ra0, dec0)
            cols.append(np.stack([(ep - em) / (2 * h), (np_ - nm) / (2 * h)], axis=-1))
        return np.stack(cols, axis=-1)

    def position_angle(self, phi, x=0.0, y=0.0, period: float = 180.0):
        """Position angle east of north (degrees in ``[0, period)``) of the model direction
        ``phi`` (radians from ``+x`` towards ``+y``) at model position ``(x, y)``;
        ``period`` 180 for headless directions (ellipse axes, shear), 360 for vectors."""
        phi = np.asarray(phi, np.float64)
        jac = self.jacobian(x, y)
        u = np.stack(np.broadcast_arrays(np.cos(phi), np.sin(phi)), axis=-1)
        v = np.einsum("...ij,...j->...i", jac, u)
        # (rounded to 1e-10 deg so that a direction at PA -1e-14 reads 0, not 180)
        return np.mod(np.round(np.degrees(np.arctan2(v[..., 0], v[..., 1])), 10), period)

    @property
    def y_axis_pa(self) -> float:
        """Position angle east of north (degrees, ``[0, 360)``) of the model's ``+y`` axis at
        the image centre (HST's ``ORIENTAT`` for an array not flipped)."""
        return float(self.position_angle(0.5 * math.pi, period=360.0))

    @property
    def parity(self) -> int:
        """``+1`` when east is 90 deg counter-clockwise from north in the model frame (as on
        the sky: north up, east left), ``-1`` for a mirrored frame."""
        return 1 if np.linalg.det(self.jacobian()) < 0 else -1

    def describe(self) -> dict:
        """The frame as a JSON-ready dict: centre, pixel scale, orientation, parity."""
        ra, dec = self.centre
        return {"ra_deg": ra, "dec_deg": dec, "pixel_scale_arcsec": self.pixel_scale,
                "y_axis_pa_deg": self.y_axis_pa,
                "parity": "standard (east left of north)" if self.parity > 0
                else "mirrored (east right of north)",
                "ctype": [str(c) for c in self.wcs.wcs.ctype], "flip_y": self.flip_y,
                "num_pix": self.num_pix}


# --------------------------------------------------------------- posterior summaries
_DEFINITION = (
    "Sky frame from the image's celestial WCS (astropy.wcs; tfstronglens.io.sky). "
    "positions: ra_deg, dec_deg, and dra_cosdec_arcsec, ddec_arcsec: gnomonic offsets "
    "east and north of the image centre (frame.ra_deg, frame.dec_deg). position_angles: "
    "pa_deg east of north (from north through east, mod 180) of phi = atan2(e2, e1)/2 "
    "(ellipticity: major axis) or atan2(gamma2, gamma1)/2 (shear: the direction it "
    "stretches images), through the WCS's local Jacobian at the component's centre. Each "
    "statistic (mean, std, p16, p50, p84) is of the transformed posterior draws; angles "
    "and RA are unwrapped around their circular mean (percentiles may fall outside "
    "[0, 180) or [0, 360)); best_fit is the transformed MAP.")

# the parameter pairs that give a position angle, and what it is of
_ANGLE_PAIRS = (("e1", "e2", "ellipticity"), ("gamma1", "gamma2", "shear"))


def _unwrap(values, period):
    """``values`` (an angle of the given ``period``) shifted by multiples of ``period``
    into the window of width ``period`` centred on their circular mean, then all moved by
    one multiple of ``period`` so that their mean lies in ``[0, period)``."""
    ang = 2 * math.pi * values / period
    mu = math.atan2(np.mean(np.sin(ang)), np.mean(np.cos(ang))) * period / (2 * math.pi)
    out = _wrap_near(values, mu, period)
    return out - math.floor(float(np.mean(out)) / period) * period


def _wrap_near(values, centre, period):
    """``values`` shifted by multiples of ``period`` into ``[centre - period/2, centre +
    period/2)``."""
    return centre + np.mod(values - centre + 0.5 * period, period) - 0.5 * period


def _stats(draws, best=None, period=None) -> dict:
    v = np.asarray(draws, np.float64).ravel()
    if period is not None:
        v = _unwrap(v, period)
    p16, p50, p84 = np.percentile(v, [16, 50, 84])
    out = {"mean": float(np.mean(v)), "std": float(np.std(v)), "p16": float(p16),
           "p50": float(p50), "p84": float(p84)}
    if best is not None:
        best = float(best)
        out["best_fit"] = (best if period is None
                           else float(_wrap_near(best, out["mean"], period)))
    return out


def sky_summary(frame: SkyFrame, param_names, samples, best_fit=None,
                max_draws: int = 20000) -> dict:
    """The ``sky`` section of a fit's ``summary.json``: the posterior of the sky positions
    and position angles of the fitted components (module docs).

    Args:
      frame: the image's :class:`SkyFrame`.
      param_names: the ``D`` flat parameter names of the draws (``lens.0.center_x``, ...).
      samples: ``[..., D]`` posterior draws (e.g. ``FitResult.samples``,
        ``[draws, chains, D]``); thinned to at most ``max_draws``.
      best_fit: optional ``{name: value}`` (the MAP), transformed as ``best_fit``.

    Returns:
      A JSON-ready dict: ``frame`` (:meth:`SkyFrame.describe`), ``definition``,
      ``positions`` ``{component: {ra_deg, dec_deg, dra_cosdec_arcsec, ddec_arcsec}}``
      for every component whose ``center_x`` and ``center_y`` are both free parameters
      (lens, source, lens light, subhalos), and ``position_angles`` ``{component: {of,
      pa_deg}}`` for every free ``e1, e2`` pair (``of = "ellipticity"``) and ``gamma1,
      gamma2`` pair (``"shear"``); each entry a dict of ``mean, std, p16, p50, p84`` (and
      ``best_fit``) of the transformed draws.
    """
    if not isinstance(frame, SkyFrame):
        raise ValueError(f"frame must be a SkyFrame, got {frame!r}")
    names = [str(n) for n in param_names]
    draws = np.asarray(samples, np.float64)
    if draws.ndim < 1 or draws.shape[-1] != len(names):
        raise ValueError(f"samples must have shape [..., {len(names)}] (one column per "
                         f"name of param_names), got shape {draws.shape}")
    draws = draws.reshape(-1, len(names))
    draws = draws[:: max(1, -(-len(draws) // int(max_draws)))]
    index = {n: k for k, n in enumerate(names)}
    best = dict(best_fit or {})

    def col(name):
        return draws[:, index[name]]

    def best_pair(a, b):
        if a in best and b in best:
            return float(np.ravel(best[a])[0]), float(np.ravel(best[b])[0])
        return None

    prefixes = []
    for n in names:
        prefix = n.rsplit(".", 1)[0]
        if "." in n and prefix not in prefixes:
            prefixes.append(prefix)

    positions, angles = {}, {}
    for p in prefixes:
        cx, cy = f"{p}.center_x", f"{p}.center_y"
        if cx in index and cy in index:
            x, y = col(cx), col(cy)
            ra, dec = frame.world(x, y)
            east, north = frame.offsets(x, y)
            b = best_pair(cx, cy)
            bw = frame.world(*b) if b else (None, None)
            bo = frame.offsets(*b) if b else (None, None)
            positions[p] = {"ra_deg": _stats(ra, bw[0], period=360.0),
                            "dec_deg": _stats(dec, bw[1]),
                            "dra_cosdec_arcsec": _stats(east, bo[0]),
                            "ddec_arcsec": _stats(north, bo[1])}
        for a, b_name, what in _ANGLE_PAIRS:
            na, nb = f"{p}.{a}", f"{p}.{b_name}"
            if na not in index or nb not in index:
                continue
            x = col(cx) if cx in index else 0.0
            y = col(cy) if cy in index else 0.0
            phi = 0.5 * np.arctan2(col(nb), col(na))
            pa = frame.position_angle(phi, x, y)
            bp = best_pair(na, nb)
            best_pa = None
            if bp:
                bxy = best_pair(cx, cy) or (0.0, 0.0)
                best_pa = frame.position_angle(0.5 * math.atan2(bp[1], bp[0]), *bxy)
            angles[p] = {"of": what, "pa_deg": _stats(pa, best_pa, period=180.0)}
    return {"frame": frame.describe(), "definition": _DEFINITION, "positions": positions,
            "position_angles": angles}


def format_sky_summary(sky: dict) -> str:
    """A few lines of text for the ``sky`` section made by :func:`sky_summary`."""
    f = sky["frame"]
    lines = [f"sky (from the image's WCS): image centre RA {f['ra_deg']:.6f}, Dec "
             f"{f['dec_deg']:+.6f} deg; the +y axis points at PA {f['y_axis_pa_deg']:.1f} "
             f"deg east of north, {f['parity']}"]
    for name, s in sky["positions"].items():
        lines.append(f"  {name:<12} RA {s['ra_deg']['mean']:.7f}  Dec "
                     f"{s['dec_deg']['mean']:+.7f} deg;  offset east "
                     f"{s['dra_cosdec_arcsec']['mean']:+.4f} +- "
                     f"{s['dra_cosdec_arcsec']['std']:.4f}\", north "
                     f"{s['ddec_arcsec']['mean']:+.4f} +- {s['ddec_arcsec']['std']:.4f}\"")
    for name, s in sky["position_angles"].items():
        pa = s["pa_deg"]
        lines.append(f"  {name:<12} {s['of']} PA {pa['mean']:.1f} +- {pa['std']:.1f} deg "
                     f"east of north (68%: {pa['p16']:.1f} to {pa['p84']:.1f})")
    return "\n".join(lines)
