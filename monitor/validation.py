"""Argument checks that fail at construction with a message naming the argument."""

from __future__ import annotations

import math
import os


def check_int(name: str, value: object, *, low: int, high: int | None = None) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_positive(name: str, value: object) -> None:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_text(name: str, value: object, optional: bool = True) -> None:
    """A non-empty string (or None when optional)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string{' or None' if optional else ''}, "
                         f"got {value!r}")


def check_url(name: str, value: object) -> None:
    """None or an http(s) URL."""
    if value is not None and not (isinstance(value, str)
                                  and value.startswith(("http://", "https://"))):
        raise ValueError(f"{name} must start with http:// or https://, got {value!r}")


def check_file(name: str, value: object) -> None:
    """None or the path of a readable file."""
    if value is None:
        return
    if not isinstance(value, (str, os.PathLike)) or not os.path.isfile(value):
        raise ValueError(f"{name} must be the path of an existing file, got {value!r}")
