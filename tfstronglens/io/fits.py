"""FITS input/output for images, PSFs, noise maps and their truth parameters.

Files are written atomically (a temporary file in the same directory, then
``os.replace``) and never overwrite an existing file unless asked.

Header keywords
---------------
FITS keywords are at most 8 characters of ``A-Z 0-9 _ -``. Longer keywords (such as the
truth parameters ``LENS0_THETA_E``) are written as ESO ``HIERARCH`` cards, which astropy,
DS9 and most FITS readers understand; astropy looks them up without the ``HIERARCH``
prefix (``header["LENS0_THETA_E"]``), case-insensitively. A card is 80 characters:
comments that do not fit are truncated, and a keyword/value pair that does not fit is
refused with a ``ValueError``. astropy writes a float value in at most 20 characters, so
header floats keep 13 to 17 significant digits (store exact values in an extension).

Truth parameters
----------------
:func:`params_to_header` turns lenstronomy-style parameter lists into cards named
``{KIND}{index}_{PARAM}`` in upper case (``LENS0_THETA_E``, ``SOURCE0_R_SERSIC``,
``LENS_LIGHT0_N_SERSIC``) plus ``{KIND}{index}_MODEL`` with the profile name;
:func:`params_from_header` reads them back into parameter dicts for a simulator with the
same components, and :func:`truths_from_header` into the flat names of a fitted model
(``lens.0.theta_E``), so that ``fit`` can mark the truths of a simulated image.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from collections.abc import Mapping

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from ._atomic import atomic_output

__all__ = ["write_fits", "read_fits", "params_to_header", "params_from_header",
           "truths_from_header"]

_KINDS = ("lens", "source", "lens_light")
_STANDARD_KEY = re.compile(r"^[A-Z0-9_-]{1,8}$")
_STRUCTURAL = re.compile(r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|END|EXTNAME|EXTVER"
                         r"|BSCALE|BZERO|BLANK|GROUPS|CHECKSUM|DATASUM)$")
_COMMENTARY = ("COMMENT", "HISTORY", "")


# --------------------------------------------------------------------- helpers
def _as_array(value, name: str) -> np.ndarray:
    """Convert image-like input (numpy, TF tensor, nested lists) to a FITS-able array."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype.kind == "f":
        if arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)
        elif arr.dtype.itemsize > 8:
            arr = arr.astype(np.float64)
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a real-valued numeric array, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty array with at least 1 dimension, "
                         f"got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _card_value(key: str, value):
    """A header value as a plain Python bool/int/float/str/None, or ValueError."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        if np.size(value) != 1:
            raise ValueError(f"header value for {key!r} must be a scalar, got shape {np.shape(value)}")
        value = np.asarray(value).reshape(()).item()
    if value is None or isinstance(value, (bool, str)):
        pass
    elif isinstance(value, numbers.Integral):
        value = int(value)
    elif isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"header value for {key!r} must be finite, got {value!r}")
    else:
        raise ValueError(f"header value for {key!r} must be a number, bool, string or None, "
                         f"got {value!r}")
    if isinstance(value, str) and not (value.isascii() and value.isprintable()):
        raise ValueError(f"header value for {key!r} must be printable ASCII, got {value!r}")
    return value


def _fits_key(key) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"header keyword must be a non-empty string, got {key!r}")
    key = key.strip()
    if key.upper().startswith("HIERARCH "):
        key = key[len("HIERARCH "):].strip()
    if not (key.isascii() and key.isprintable()) or "=" in key:
        raise ValueError(f"header keyword must be printable ASCII without '=', got {key!r}")
    return key.upper()


def _iter_header_items(header):
    """Yield ``(key, value, comment)`` from a Header, a mapping or (key, value[, comment])s."""
    if header is None:
        return
    if isinstance(header, fits.Header):
        for card in header.cards:
            key = card.keyword
            if _STRUCTURAL.match(key.upper()):
                continue  # managed by astropy for the data written here
            yield key, card.value, card.comment
        return
    items = header.items() if isinstance(header, Mapping) else header
    for item in items:
        try:
            key, spec = item
        except (TypeError, ValueError):
            if isinstance(item, tuple) and len(item) == 3:
                yield item
                continue
            raise ValueError(f"header entries must be (key, value) or (key, value, comment), "
                             f"got {item!r}") from None
        if isinstance(spec, tuple):
            if len(spec) != 2:
                raise ValueError(f"header value for {key!r} must be a value or a (value, comment) "
                                 f"pair, got {spec!r}")
            yield key, spec[0], spec[1]
        else:
            yield key, spec, ""


def _build_header(header, where: str) -> fits.Header:
    out = fits.Header()
    for key, value, comment in _iter_header_items(header):
        key = _fits_key(key)
        comment = "" if comment is None else str(comment)
        if key in ("COMMENT", "HISTORY"):
            texts = [value] if isinstance(value, str) else list(value)
            for text in texts:
                out.add_comment(str(text)) if key == "COMMENT" else out.add_history(str(text))
            continue
        if _STRUCTURAL.match(key):
            raise ValueError(f"{where}: header keyword {key!r} is reserved (it describes the data "
                             "and is written automatically)")
        value = _card_value(key, value)
        card_key = key if _STANDARD_KEY.match(key) else f"HIERARCH {key}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)  # long comments are truncated
            out[card_key] = (value, comment)
    _check_header_roundtrip(out, where)
    return out


def _check_header_roundtrip(header: fits.Header, where: str):
    """Refuse cards that astropy would silently mangle (e.g. a key + value over 80 chars)."""
    with warnings.catch_warnings():
        # a mangled card also warns; the ValueError below says what is wrong
        warnings.simplefilter("ignore", VerifyWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        back = fits.Header.fromstring(header.tostring())
    for card in header.cards:
        key = card.keyword
        if key in _COMMENTARY:
            continue
        value = card.value
        ok = key in back and type(back[key]) is type(value)
        if ok and isinstance(value, float):
            # astropy writes floats in at most 20 characters: >= 13 significant digits
            ok = math.isclose(back[key], value, rel_tol=1e-12, abs_tol=0.0)
        elif ok:
            ok = back[key] == value
        if not ok:
            raise ValueError(f"{where}: header card {key!r} = {card.value!r} does not fit in an "
                             "80-character FITS card; use a shorter keyword or value")


# ------------------------------------------------------------------ writing
def write_fits(path, image, header=None, overwrite: bool = False, *, pixel_scale=None,
               bunit=None, **extra_hdus):
    """Write ``image`` (and optional extensions) to the FITS file ``path``, atomically.

    The primary HDU holds ``image`` with its dtype (float32 and float64 are kept as given;
    float16 becomes float32; integers are kept). Header cards:

    * ``PIXSCALE``: ``pixel_scale`` in arcsec per pixel, if given;
    * ``BUNIT``: the data unit string ``bunit``, if given;
    * every entry of ``header``: an ``astropy.io.fits.Header`` (its structural cards such
      as ``NAXIS`` are skipped), a mapping ``{key: value}`` or ``{key: (value, comment)}``,
      or a sequence of ``(key, value[, comment])``. Keys longer than 8 characters (or with
      characters outside ``A-Z0-9_-``) become ``HIERARCH`` cards; keys are upper-cased.
      ``COMMENT``/``HISTORY`` take a string or a list of strings.

    Each further keyword argument ``NAME=array`` (or ``NAME=(array, header)``) adds an image
    extension with ``EXTNAME = NAME`` (upper-cased), e.g. ``PSF=kernel, NOISE=sigma_map``;
    ``NAME=None`` is skipped.

    The file is written to a temporary file in the same directory and moved into place
    with ``os.replace``, so ``path`` is never left half-written.

    Args:
      path: output file name (``.fits``; ``.fits.gz`` is gzip-compressed).
      image: array-like (numpy array or tensor) with at least one dimension.
      header: extra header cards (see above) or ``None``.
      overwrite: replace an existing file (default ``False``: ``FileExistsError``).
      pixel_scale: pixel side in arcsec (positive), written as ``PIXSCALE``.
      bunit: unit of the pixel values, written as ``BUNIT``.

    Returns:
      The path written, as a string.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is false.
      FileNotFoundError: the directory of ``path`` does not exist.
      ValueError: invalid image, header entry or extension.
    """
    data = _as_array(image, "image")
    hdr = _build_header(header, "write_fits")
    if pixel_scale is not None:
        if (isinstance(pixel_scale, bool) or not isinstance(pixel_scale, numbers.Real)
                or not math.isfinite(pixel_scale) or pixel_scale <= 0):
            raise ValueError(f"pixel_scale must be a positive number (arcsec), got {pixel_scale!r}")
        hdr["PIXSCALE"] = (float(pixel_scale), "[arcsec/pixel] pixel scale")
    if bunit is not None:
        hdr["BUNIT"] = (_card_value("BUNIT", str(bunit)), "unit of the pixel values")
    hdus = [fits.PrimaryHDU(data=data, header=hdr)]
    seen = {"PRIMARY"}
    for name, spec in extra_hdus.items():
        if spec is None:
            continue
        extname = _fits_key(name)
        if len(extname) > 68:
            raise ValueError(f"extension name must be at most 68 characters, got {name!r}")
        if extname in seen:
            raise ValueError(f"extension name {extname!r} is used twice (names are case-insensitive"
                             " and PRIMARY is reserved)")
        seen.add(extname)
        ext_header = None
        if isinstance(spec, tuple):
            if len(spec) != 2:
                raise ValueError(f"extension {name!r} must be an array or (array, header), "
                                 f"got a tuple of length {len(spec)}")
            spec, ext_header = spec
        ext_data = _as_array(spec, f"extension {name!r}")
        ext_hdr = _build_header(ext_header, f"write_fits extension {name!r}")
        hdus.append(fits.ImageHDU(data=ext_data, header=ext_hdr, name=extname))
    hdul = fits.HDUList(hdus)
    with atomic_output(path, overwrite=overwrite) as tmp:
        hdul.writeto(tmp, overwrite=True, output_verify="exception")
    return os.fspath(path)


# ------------------------------------------------------------------ reading
def _is_image(hdu) -> bool:
    return isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def _has_data(hdu) -> bool:
    return _is_image(hdu) and int(hdu.header.get("NAXIS", 0)) > 0


def _describe(hdul) -> str:
    names = [f"{i}: {h.name or '(unnamed)'} ({type(h).__name__})" for i, h in enumerate(hdul)]
    return "; ".join(names)


def read_fits(path, hdu=None):
    """Read an image and its header from a FITS file.

    Args:
      path: the FITS file.
      hdu: which HDU to read: ``None`` (default) for the primary HDU if it holds image
        data, otherwise the first image extension that does; an ``int`` index; or an
        extension name (``EXTNAME``, case-insensitive; ``"PRIMARY"`` is the primary HDU).

    Returns:
      ``(image, header)``: a numpy array in native byte order (dtype as stored, or float
      when ``BSCALE``/``BZERO`` scaling applies) and a copy of the HDU's
      ``astropy.io.fits.Header``. The rows are in the file's order: ``image[0]`` is the
      first row stored, which the FITS standard puts at the bottom of the image (pixel
      coordinate ``Y = 1``, ``Y`` growing upward), and the package's images follow it
      (row 0 at ``-y``, :class:`~tfstronglens.PixelGrid`). Arrays written the other way
      up (row 0 at ``+y``, as PyAutoLens writes them) are reversed by
      :func:`~tfstronglens.io.load_lens_image`'s ``flip_y`` (``fit --flip-y``), not here.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not a FITS file, no image data, or an unknown / non-image HDU.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"path must be a string or path-like, got {path!r}") from None
    if not os.path.exists(path):
        raise FileNotFoundError(f"FITS file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a FITS file")
    if hdu is not None and (isinstance(hdu, bool) or not isinstance(hdu, (numbers.Integral, str))):
        raise ValueError(f"hdu must be None, an integer index or an extension name, got {hdu!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            with fits.open(path, memmap=False) as hdul:
                hdul.readall()
                chosen, label = _select_hdu(hdul, hdu, path)
                data = chosen.data
                header = chosen.header.copy()
                if data is None:
                    raise ValueError(f"HDU {label} of {path!r} has no image data")
                data = np.array(data)
    except OSError as exc:
        raise ValueError(f"{path!r} is not a readable FITS file: {exc}") from None
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    return data, header


def _select_hdu(hdul, hdu, path):
    if hdu is None:
        for i, h in enumerate(hdul):
            if _has_data(h):
                return h, f"{i} ({h.name or 'unnamed'})"
        raise ValueError(f"{path!r} has no HDU with image data (HDUs: {_describe(hdul)})")
    if isinstance(hdu, str):
        wanted = hdu.strip().upper()
        for i, h in enumerate(hdul):
            if (h.name or "").upper() == wanted or (i == 0 and wanted == "PRIMARY"):
                chosen, label = h, repr(hdu)
                break
        else:
            raise ValueError(f"{path!r} has no HDU named {hdu!r} (HDUs: {_describe(hdul)})")
    else:
        n = len(hdul)
        if not -n <= int(hdu) < n:
            raise ValueError(f"hdu index {hdu} is out of range for {path!r}, which has {n} "
                             f"HDU(s) ({_describe(hdul)})")
        chosen, label = hdul[int(hdu)], str(int(hdu))
    if not _is_image(chosen):
        raise ValueError(f"HDU {label} of {path!r} is a {type(chosen).__name__}, not an image")
    if not _has_data(chosen):
        raise ValueError(f"HDU {label} of {path!r} has no image data")
    return chosen, label


# ------------------------------------------------------------ truth params
def _scalar_param(value, where: str) -> float:
    arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"{where} must be a single value to go into a FITS header, got shape "
                         f"{list(arr.shape)}; write one file per lens")
    return float(arr.reshape(()))


def params_to_header(simulator, lens=None, source=None, lens_light=None) -> dict:
    """Header cards recording the parameters of one simulated lens.

    Args:
      simulator: the :class:`~tfstronglens.Simulator` whose components the parameters
        belong to (it checks them and fills defaults).
      lens, source, lens_light: lenstronomy-style lists of parameter dicts, one per
        component; every value must be a single number (a batch of one is accepted).

    Returns:
      An ordered ``dict`` ``{key: (value, comment)}`` for :func:`write_fits`'s ``header``,
      with keys ``{KIND}{i}_MODEL`` (the profile name) and ``{KIND}{i}_{PARAM}``
      (upper case), e.g. ``LENS0_THETA_E``; the comment gives the original parameter name.
      Map-valued parameters (with an event shape) cannot be stored in a header and raise
      ``ValueError``.
    """
    cards = {}
    given = {"lens": lens, "source": source, "lens_light": lens_light}
    for kind in _KINDS:
        simulator.prepare(kind, given[kind])  # checks names, values and the count
        for i, prof in enumerate(simulator.components(kind)):
            # the values as given (not their float32 tensors), defaults filled in
            params = {**prof.defaults, **given[kind][i]}
            prefix = f"{kind}{i}".upper()
            cards[f"{prefix}_MODEL"] = (prof.name, f"{kind}[{i}] profile")
            for pname in prof.param_names:
                where = f"{kind}[{i}].{pname}"
                if prof.param_event_ndims.get(pname, 0):
                    raise ValueError(f"{where} is a map and cannot be stored in a FITS header; "
                                     "write it as an extension instead")
                cards[f"{prefix}_{pname}".upper()] = (_scalar_param(params[pname], where),
                                                      f"{kind}[{i}] {prof.name} {pname}")
    return cards


def params_from_header(header, simulator) -> dict:
    """Read back the parameters written by :func:`params_to_header`.

    Args:
      header: an ``astropy.io.fits.Header`` (or any mapping with case-insensitive lookup of
        the upper-case keys).
      simulator: a :class:`~tfstronglens.Simulator` with the same components, in the same
        order, as the one used to write the header.

    Returns:
      ``{"lens": [...], "source": [...], "lens_light": [...]}`` lists of parameter dicts
      (floats), ready to pass to the simulator.

    Raises:
      ValueError: a component's ``_MODEL`` card names another profile, or a required
        parameter is missing.
    """
    out = {}
    for kind in _KINDS:
        plist = []
        for i, prof in enumerate(simulator.components(kind)):
            prefix = f"{kind}{i}".upper()
            model = header.get(f"{prefix}_MODEL")
            if model is not None and str(model).upper() != prof.name.upper():
                raise ValueError(f"header says {kind}[{i}] is {model!r} but the simulator has "
                                 f"{prof.name!r}")
            params = {}
            for pname in prof.param_names:
                key = f"{prefix}_{pname}".upper()
                if key in header:
                    params[pname] = float(header[key])
                elif pname not in prof.defaults:
                    raise ValueError(f"header has no card {key!r} for the required parameter "
                                     f"{kind}[{i}].{pname}")
            plist.append(params)
        out[kind] = plist
    return out


def truths_from_header(header, param_names, profiles) -> dict:
    """The true values that :func:`params_to_header` recorded for a model's parameters.

    Args:
      header: an ``astropy.io.fits.Header`` (or a mapping with the upper-case keys).
      param_names: flat parameter names ``{kind}.{i}.{param}`` (``lens.0.theta_E``,
        ``source.0.center_x``, ``lens_light.0.R_sersic``); others (``subhalo.*``,
        ``source.z.*``) are skipped.
      profiles: ``{"{kind}.{i}": profile name}`` of the model's components (``{"lens.0":
        "SIE", "lens.1": "SHEAR", "source.0": "SERSIC_ELLIPSE"}``).

    Returns:
      ``{name: value}`` for each name whose card ``{KIND}{i}_{PARAM}`` is in ``header``
      and whose component's ``{KIND}{i}_MODEL`` card names the same profile (case
      ignored). A component without that card, or with another profile, gives nothing:
      the header describes another model. Empty when nothing matches.
    """
    out = {}
    for name in param_names:
        bits = str(name).split(".")
        if len(bits) != 3 or bits[0] not in _KINDS or not bits[1].isdigit():
            continue
        component = f"{bits[0]}.{bits[1]}"
        prefix = f"{bits[0]}{bits[1]}".upper()
        recorded = header.get(f"{prefix}_MODEL")
        wanted = profiles.get(component)
        if recorded is None or wanted is None or str(recorded).upper() != str(wanted).upper():
            continue
        key = f"{prefix}_{bits[2]}".upper()
        if key in header:
            value = header[key]
            if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                    and math.isfinite(float(value)):
                out[str(name)] = float(value)
    return out
