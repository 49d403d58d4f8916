"""Argument checks that fail at construction with a message naming the argument."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable


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


def check_directory(name: str, value: object) -> None:
    """None or a folder's path (created when missing): not the path of an existing file."""
    if value is None:
        return
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{name} must be a folder's path or None, got {value!r}")
    if os.path.exists(value) and not os.path.isdir(value):
        raise ValueError(f"{name} must be a folder (created if missing), got {value!r}: a "
                         f"file of that name exists; name a folder")


def check_number(name: str, value: object, *, low: float = -math.inf,
                 high: float = math.inf) -> None:
    """A finite number (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")


def check_callable(name: str, value: object, optional: bool = False) -> None:
    """A callable (or None when optional)."""
    if not (callable(value) or (optional and value is None)):
        raise ValueError(f"{name} must be callable{' or None' if optional else ''}, "
                         f"got {value!r}")


def check_instance(name: str, value: object, kind: type, optional: bool = True) -> None:
    """An instance of ``kind`` (or None when optional)."""
    if not (isinstance(value, kind) or (optional and value is None)):
        raise ValueError(f"{name} must be a {kind.__module__}.{kind.__qualname__}"
                         f"{' or None' if optional else ''}, got {value!r}")


def check_names(name: str, value: object, known: Iterable[str]) -> frozenset[str]:
    """A collection of names from ``known`` (a lone string is not one); returns them."""
    known = sorted(known)
    if isinstance(value, str):  # iterated, it would be its letters
        raise ValueError(f"{name} must be a collection of names, e.g. {name}=({value!r},), "
                         f"not the string {value!r}")
    if not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a collection of names from {known}, got {value!r}")
    names = frozenset(value)
    unknown = names - set(known)
    if unknown:
        raise ValueError(f"{name} has unknown names {sorted(unknown)}; known: {known}")
    return names


def check_credentials(name: str, value: object) -> tuple[str, str] | None:
    """None or a (username, password) pair of non-empty strings; returns it as a tuple.
    The message never shows the value (it holds a password)."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
            isinstance(x, str) and x for x in value):
        raise ValueError(f"{name} must be a (username, password) pair of non-empty strings")
    return value[0], value[1]


def check_activation_sample(name: str, value: object) -> None:
    """None, 0 (exact everywhere) or an int >= 1 (values per sampled large output)."""
    if value is not None:
        check_int(name, value, low=0)
