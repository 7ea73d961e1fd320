"""The bundle's refusals: typed exceptions with one-line messages, and the one formatter that turns them into a line.

Library code raises these (never ``SystemExit``); the entry points (``scripts/*``, and the workflows through
:func:`install_excepthook`, the first step of every ``initialize``) turn them into one ``ERROR <category>: ...`` line
and an exit status, as MONAI's own code raises typed exceptions and leaves exiting to its CLI.

MONAI's config parser wraps an error raised inside a ``$`` expression or a component in a ``RuntimeError``; the
formatter finds the bundle's error in the chain (:func:`find_error`), so the line is the same wherever it came from.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "InputError",
    "OutputError",
    "TrainingInterrupted",
    "WeightsError",
    "entry_point",
    "error_line",
    "exit_status",
    "find_error",
    "install_excepthook",
    "one_line",
]


class BundleError(Exception):
    """A refusal the user can act on; the message is one line naming the file or setting and what to do.

    ``category`` is the word after ``ERROR`` in the printed line; ``exit_status`` the entry points' exit status.
    """

    category = ""
    exit_status = 2


class ConfigError(BundleError, ValueError):
    """A config file or setting that cannot be used (a missing file, an unknown option)."""

    category = "config"


class WeightsError(BundleError, ValueError):
    """A checkpoint (or its plan) that is missing, unreadable or does not fit the network."""

    category = "weights"


class DataError(BundleError, ValueError):
    """Training or evaluation data that cannot be used (the message names the entry or file)."""

    category = "data"


class InputError(BundleError, ValueError):
    """Nothing of what an assessment was given could be assessed (the report is still written); exit status 1."""

    category = "input"
    exit_status = 1


class OutputError(BundleError, OSError):
    """An output that cannot be written without losing something already there (the message names it and the fix)."""

    category = "output"


class TrainingInterrupted(BundleError):
    """A training stopped by Ctrl-C or SIGTERM after its tracking run was closed; the message (printed alone) says
    what was kept and how to continue. Exit status 1."""

    exit_status = 1


def one_line(e: BaseException) -> str:
    """``<Type>: <first line of the message>`` (the type alone for an empty message): any exception in one line."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def find_error(e: BaseException | None) -> BaseException | None:
    """The first :class:`BundleError` in ``e``'s chain of causes and contexts (MONAI wraps them), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, BundleError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def error_line(e: BaseException) -> str:
    """The one line an entry point prints for ``e``: ``ERROR <category>: <message>`` for the bundle's own errors
    (found anywhere in the chain), the message alone for an interrupt, ``ERROR: <Type>: <message>`` otherwise."""
    own = find_error(e)
    if isinstance(own, TrainingInterrupted):
        return str(own)
    if own is not None:
        text = str(own).strip().splitlines()[0] if str(own).strip() else type(own).__name__
        return f"ERROR {own.category}: {text}" if own.category else f"ERROR: {text}"
    return f"ERROR: {one_line(e)}"


def exit_status(e: BaseException) -> int:
    """The exit status for ``e``: the bundle error's own (2; 1 for :class:`InputError` and
    :class:`TrainingInterrupted`), 2 for anything else."""
    own = find_error(e)
    return int(own.exit_status) if own is not None else 2


def _excepthook(kind, value, tb) -> None:
    if find_error(value) is not None:
        print(error_line(value), file=sys.stderr)
        return
    _default_hook(kind, value, tb)


_default_hook = sys.excepthook


def install_excepthook() -> bool:
    """Make an uncaught bundle error print as one line (no traceback) when a workflow runs from the command line
    (``python -m monai.bundle run ...``); other exceptions keep Python's traceback. Idempotent; returns True.

    The interpreter still ends with status 1, as for any uncaught exception.
    """
    sys.excepthook = _excepthook
    return True


def entry_point(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a script's ``main``: a bundle error raised anywhere below it (wrapped by MONAI or not) becomes its one
    line on stderr and its exit status; other exceptions pass unchanged. Third-party noise is quieted first
    (:func:`bundle.utils.quiet_third_party`)."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        from bundle.utils import quiet_third_party  # bundle.utils imports this module

        quiet_third_party()
        try:
            return main(*args, **kwargs)
        except Exception as e:
            if find_error(e) is None:
                raise
            print(error_line(e), file=sys.stderr)
            return exit_status(e)

    return run
