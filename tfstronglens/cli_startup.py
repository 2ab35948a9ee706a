"""Start-up of the command line: TensorFlow's start-up messages are hidden unless ``--verbose``.

Importing TensorFlow prints C++ log lines to standard error (oneDNN custom operations,
missing CUDA drivers, CPU instructions the binary was not built for, and ``WARNING: All
log messages before absl::InitializeLog() is called are written to STDERR``). Since
TensorFlow 2.19 these are written before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``, so that
variable alone does not hide them. At run time TensorFlow logs more (XLA service start,
"Compiled cluster using XLA!", a failed ``cuInit`` on a machine without GPU) and warns in
Python about ``tf.function`` retracing. For a user of the command line all of this is noise
around the command's own output.

The package's ``__init__`` imports TensorFlow, so whatever the command's own code does
(``tfstronglens.cli.main``, ``tfstronglens.__main__``) runs after TensorFlow has printed its
start-up lines. The command line is therefore recognised while the package is being
imported (:func:`command_line_argv`), and the package's ``__init__`` imports TensorFlow
inside :func:`quiet_tensorflow_import`, which for the command line

- sets ``TF_CPP_MIN_LOG_LEVEL=3`` (unless the environment already sets it), which hides
  TensorFlow's C++ log lines after the import;
- sends standard error (file descriptor 2, where the C++ code writes) to a temporary file
  during the import, then writes back every line of it that is not one of TensorFlow's
  start-up log lines (:func:`is_tensorflow_startup_line`): a real error is still shown;
- sets :data:`QUIET_ENV` in the environment, so that the processes the command starts
  (``fit-many`` fits its lenses in child processes) start quietly too.

Anything else is left alone: a program that imports :mod:`tfstronglens` sees TensorFlow
exactly as it is. ``--verbose`` (anywhere in the command's arguments) turns all of this off,
and so does ``TFSTRONGLENS_QUIET=0``. The Python side (retracing warnings on the
``tensorflow`` logger) is quieted by :func:`tfstronglens.cli.main`, which also accepts
``--verbose``.

This module imports no TensorFlow (it must run before it).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

__all__ = ["VERBOSE_OPTION", "QUIET_ENV", "command_line_argv", "wants_verbose",
           "quiet_startup_requested", "quiet_tensorflow_import", "is_tensorflow_startup_line"]

#: The command-line option that keeps TensorFlow's messages.
VERBOSE_OPTION = "--verbose"
#: Environment variable: ``1`` starts quietly (set by the command line for its child
#: processes), ``0`` never does (as ``--verbose``).
QUIET_ENV = "TFSTRONGLENS_QUIET"
#: Names of the console script (``setup.cfg`` ``console_scripts``), as ``sys.argv[0]`` ends.
_SCRIPT_NAMES = ("tfstronglens", "tfstronglens.exe", "tfstronglens-script.py")
#: Modules that ``python -m`` runs as the command line.
_CLI_MODULES = ("tfstronglens", "tfstronglens.__main__", "tfstronglens.cli")

# TensorFlow's C++ log lines: absl (``I0000 00:00:1796645429.054455   29099 port.cc:153] ``)
# and TensorFlow's own older format (``2025-09-17 14:44:05.157831: I path/file.cc:32] ``),
# info, warning or error (fatal lines are kept)
_STARTUP_LINES = re.compile(
    r"(?:[IWE]\d{4} [\d:.]+\s+\d+ [\w./+-]+:\d+\] "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] [\w./+-]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate "
    r"compiler flags\.)"
)


def _dash_m(orig_argv):
    """``(MODULE, arguments after it)`` of ``python [options] -m MODULE ...`` in the
    interpreter's own command line ``orig_argv``; ``(None, [])`` when it runs a script,
    ``-c`` or nothing."""
    args = list(orig_argv[1:])
    while args:
        arg = args.pop(0)
        if arg == "-m":
            return (args[0], args[1:]) if args else (None, [])
        if arg.startswith("-m"):
            return arg[2:], args
        if arg in ("-X", "-W", "--check-hash-based-pycs"):  # options that take a value
            if args:
                args.pop(0)
            continue
        if arg in ("-c", "-") or not arg.startswith("-"):
            break
    return None, []


def command_line_argv(argv=None, orig_argv=None) -> list[str] | None:
    """The arguments of the ``tfstronglens`` command if this process is that command.

    The process is the command line when it runs the console script ``tfstronglens``
    (``sys.argv[0]`` is the script) or ``python -m tfstronglens`` (or ``-m
    tfstronglens.cli``), read from the interpreter's own arguments (``sys.orig_argv``):
    while ``python -m`` imports the package's ``__init__``, ``sys.argv`` does not hold
    them yet.

    Args:
      argv: ``sys.argv`` (default: the process's).
      orig_argv: ``sys.orig_argv``, the interpreter's arguments (default: the process's).

    Returns:
      The command's arguments (those after the program or module name), or None when
      this process is something else (a script, a notebook, pytest) that imports the
      package.
    """
    argv = list(sys.argv if argv is None else argv)
    orig_argv = list(getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv)
    if argv and os.path.basename(argv[0]).lower() in _SCRIPT_NAMES:
        return argv[1:]
    module, args = _dash_m(orig_argv)
    return args if module in _CLI_MODULES else None


def wants_verbose(args) -> bool:
    """Whether the command's arguments ``args`` ask for ``--verbose`` (before any ``--``)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == VERBOSE_OPTION:
            return True
    return False


def quiet_startup_requested(argv=None, orig_argv=None, environ=None) -> bool:
    """Whether this process should start quietly: it is the command line
    (:func:`command_line_argv`) without ``--verbose``, or :data:`QUIET_ENV` is ``1`` (a
    process started by the command line); never when :data:`QUIET_ENV` is ``0``."""
    environ = os.environ if environ is None else environ
    flag = environ.get(QUIET_ENV, "").strip()
    if flag == "0":
        return False
    args = command_line_argv(argv, orig_argv)
    if args is not None:
        return not wants_verbose(args)
    return flag == "1"


def is_tensorflow_startup_line(line: str) -> bool:
    """Whether ``line`` (one line of standard error) is one of TensorFlow's C++ log lines
    (info, warning or error; not fatal) or absl's note that precedes them."""
    return _STARTUP_LINES.match(line.lstrip("\r")) is not None


def _stderr_fd_usable() -> bool:
    try:
        os.fstat(2)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def quiet_tensorflow_import(quiet: bool | None = None):
    """Context manager around the import of TensorFlow that hides its start-up lines.

    Args:
      quiet: hide them (default: :func:`quiet_startup_requested`, i.e. only in the
        command line without ``--verbose``). When False this does nothing.

    When quiet, the block runs with standard error (file descriptor 2) redirected to a
    temporary file; afterwards the lines that :func:`is_tensorflow_startup_line` does not
    recognise are written to standard error, so an error raised or printed during the
    import is still seen. ``TF_CPP_MIN_LOG_LEVEL`` is set to ``3`` unless already set, and
    :data:`QUIET_ENV` to ``1`` for child processes.
    """
    if quiet is None:
        quiet = quiet_startup_requested()
    if not quiet or not _stderr_fd_usable():
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ[QUIET_ENV] = "1"
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not is_tensorflow_startup_line(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
