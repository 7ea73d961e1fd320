"""Assertions on the bundle's typed errors (:mod:`bundle.errors`), raised directly or wrapped by MONAI's parser."""

from __future__ import annotations

import contextlib
import re

import pytest

from bundle.errors import error_line, find_error


@contextlib.contextmanager
def raises_error(kind: type, match: str = ""):
    """Expect a bundle error of ``kind`` somewhere in the raised exception's chain, whose printed line
    (:func:`bundle.errors.error_line`, what a user sees) matches ``match``; yields pytest's ``ExceptionInfo``."""
    with pytest.raises(Exception) as info:
        yield info
    own = find_error(info.value)
    line = error_line(info.value)
    assert isinstance(own, kind), f"expected a {kind.__name__}, got: {line}"
    assert "\n" not in line
    assert re.search(match, line), line
