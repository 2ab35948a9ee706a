"""Atomic file output: write to a temporary file beside the target, then ``os.replace``.

A reader (or a crash) never sees a half-written file: the target either keeps its old
content or gets the complete new one. The temporary file keeps the target's extension
(``.tmp-<random>-<name>``) so that writers that infer the format from the name (astropy's
``.fits.gz``) behave as for the real name, and it is created with the usual permissions
(``0o666`` masked by the umask), not the ``0o600`` of :mod:`tempfile`.
"""

from __future__ import annotations

import contextlib
import os
import secrets

__all__ = ["atomic_output", "atomic_directory", "check_output_path"]


def check_output_path(path, overwrite: bool = False) -> str:
    """Return ``path`` as a string after checking that it may be written.

    Raises ``FileNotFoundError`` if its directory does not exist, ``IsADirectoryError`` if
    ``path`` is a directory and ``FileExistsError`` if it exists and ``overwrite`` is false.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"path must be a string or path-like, got {path!r}") from None
    if not isinstance(path, str) or not path:
        raise ValueError(f"path must be a non-empty string, got {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a directory")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path!r} already exists; pass overwrite=True to replace it")
    return path


def _create_temporary(directory: str, name: str) -> str:
    for _ in range(100):
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(4)}-{name}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file in {directory!r}")  # pragma: no cover


@contextlib.contextmanager
def atomic_output(path, overwrite: bool = False):
    """Context manager yielding a temporary path to write; on success it replaces ``path``.

    If the body raises, the temporary file is removed and ``path`` is left untouched.

    >>> with atomic_output("out.fits", overwrite=True) as tmp:   # doctest: +SKIP
    ...     hdul.writeto(tmp, overwrite=True)
    """
    path = check_output_path(path, overwrite)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _create_temporary(directory, os.path.basename(path))
    try:
        yield tmp
        if not overwrite and os.path.lexists(path):
            raise FileExistsError(f"{path!r} was created while writing; not replacing it")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path, overwrite: bool = False):
    """Context manager yielding a temporary directory path (not yet created) to write a
    directory into (e.g. a SavedModel); on success it replaces ``path`` by it, else it is
    removed and ``path`` is left untouched.

    Raises ``FileNotFoundError`` if the parent directory does not exist and
    ``FileExistsError`` if ``path`` exists and ``overwrite`` is false. An existing
    ``path`` is moved aside, the new one renamed into place, then the old one deleted.
    """
    import shutil
    import tempfile

    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"path must be a string or path-like, got {path!r}") from None
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {path!r}: directory {parent!r} does not exist")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path!r} already exists; pass overwrite=True to replace it")
    holder = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    out = os.path.join(holder, os.path.basename(path) or "out")
    try:
        yield out
        if os.path.lexists(path):
            old = os.path.join(holder, ".old")
            os.replace(path, old)
            os.replace(out, path)
        else:
            os.replace(out, path)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
