"""The command line's values, checked when parsed: each type below fails with what is wrong
and what to give instead, and the parser (``OneLineParser``) prints that as ONE line naming
the option, exit code 2, as README promises for bad input."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

STDOUT = "-"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``gradwatch <verb>: argument --x: what
    is wrong; what to give`` (argparse's own prints the usage first), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str) -> str:
    """``text`` on one line: a YAML or OS error may span several."""
    return " ".join(str(text).split())


def input_file(text: str) -> str:
    """An existing file to read."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; name a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no file {text!r}; name an existing file")
    return text


def existing_path(text: str) -> str:
    """A file or folder that exists (a run, a folder of runs)."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"nothing at {text!r}; name a run folder (e.g. "
                                         f"lightning_logs/version_0) or a folder of runs")
    return text


def output_file(text: str) -> str:
    """A file to write (its folder is created), or ``-`` for stdout."""
    if text == STDOUT:
        return text
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; name a file in it, or - "
                                         f"for stdout")
    _creatable(path.parent, text)
    return text


def output_folder(text: str) -> str:
    """A folder to write into (created if missing), or ``-`` for stdout."""
    if text == STDOUT:
        return text
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; name a folder (created if "
                                         f"missing), or - for stdout")
    _creatable(path, text)
    return text


def _creatable(folder: Path, text: str) -> None:
    """A file on the way to ``folder`` would make it impossible to create."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r}: {str(parent)!r} is a file, not a "
                                                 f"folder; name a path under a folder")
            return


def http_url(text: str) -> str:
    """An http(s) URL with a host."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL; give one like "
                                         f"http://127.0.0.1:9090")
    return text


def port(text: str) -> int:
    """A TCP port, 0 for any free one."""
    return _integer(text, 0, 65535, "a port between 0 and 65535 (0: any free port)")


def positive_int(text: str) -> int:
    return _integer(text, 1, None, "an integer >= 1")


def _integer(text: str, low: int, high: int | None, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"got {text!r}; give {wanted}")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    return _number(text, "a number of seconds > 0, e.g. 5", allow_zero=False)


def seconds_or_zero(text: str) -> float:
    """A finite number of seconds >= 0 (0: do not wait)."""
    return _number(text, "a number of seconds >= 0 (0: do not wait)", allow_zero=True)


def _number(text: str, wanted: str, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"got {text!r}; give {wanted}")
    return value


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a host name or address")
    return text


def fail(command: str, message: str) -> int:
    """Say ``message`` in one line for ``gradwatch <command>``; the exit code of bad input."""
    print(f"gradwatch {command}: {one_line(message)}", file=sys.stderr)
    return 2
