"""Checks of the values a user passes, one function per kind, shared by the CLI and the API.

Each check returns the value unchanged or raises a one-line ``OptionError``; none reinterprets a value (``2.5`` is
not a batch size of 2, ``-1`` is not "no limit", ``0`` is not "the default"). The CLI uses the same checks as argparse
types (``arg``), so a bad option fails at parse time, before anything loads, with the message the API gives.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from .errors import OptionError


def _refuse(name: str, what: str) -> OptionError:
    """The error for ``name`` (empty on the command line, where argparse names the option itself)."""
    return OptionError(f"{name} {what}".strip())


def integer(value: Any, name: str) -> int:
    """An ``int`` (not a bool, not a float, even a whole one: a float batch size is a mistake upstream)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(name, f"must be a whole number, got {value!r}")
    return value


def positive_int(value: Any, name: str) -> int:
    if integer(value, name) < 1:
        raise _refuse(name, f"must be a positive whole number (1 or more), got {value}")
    return value


def non_negative_int(value: Any, name: str) -> int:
    if integer(value, name) < 0:
        raise _refuse(name, f"must be a whole number, 0 or more, got {value}")
    return value


def positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise _refuse(name, f"must be a positive finite number, got {value!r}")
    return float(value)


def boolean(value: Any, name: str) -> bool:
    """``True`` or ``False`` (not 1, not "yes": a string from a config file is a mistake upstream)."""
    if not isinstance(value, bool):
        raise _refuse(name, f"must be True or False, got {value!r}")
    return value


def optional(check: Callable[[Any, str], Any], value: Any, name: str) -> Any:
    """``check`` unless ``value`` is None (the documented "use the default")."""
    return None if value is None else check(value, name)


def one_of(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _refuse(name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def text(value: Any, name: str) -> str:
    """A ``str`` that is valid Unicode: no lone surrogates (what Python makes of non-UTF-8 bytes on a command line,
    or of a ``\\ud800`` escape in JSON), which no tokenizer can encode."""
    if not isinstance(value, str):
        raise _refuse(name, f"must be a str, got {type(value).__name__} {value!r:.40}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _refuse(name, f"is not valid UTF-8 text (an undecodable byte or lone surrogate at character "
                          f"{exc.start}); pass UTF-8 text") from None
    return value


def prompt(value: Any, name: str = "prompt", image_token: str = "<image>") -> str:
    """A prompt: valid text without the model's image placeholder. The chat template puts the one image before
    the prompt; a placeholder typed in the text would ask for a second image that is not there, so it is refused
    rather than silently dropped or escaped."""
    text(value, name)
    if image_token in value:
        raise _refuse(name, f"contains '{image_token}', the model's image placeholder; the image is placed "
                          f"before the prompt for you: remove '{image_token}' from the text")
    return value


def prompts(values: Any, name: str = "prompts", image_token: str = "<image>") -> list[str]:
    """A non-empty list of prompts (a bare str is refused: it would be read as one prompt per character)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise _refuse(name, f"must be a list of strings, one per image, got {type(values).__name__}")
    if not values:
        raise _refuse(name, "is empty: pass at least one image and one prompt")
    return [prompt(p, f"{name}[{i}]", image_token) for i, p in enumerate(values)]


def arg(check: Callable[[Any, str], Any], parse: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """``check`` as an argparse ``type``: the message of a refused value becomes argparse's one-line error."""
    def convert(raw: str) -> Any:
        try:
            value = parse(raw)
        except ValueError:
            value = raw
        try:
            return check(value, "")
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__
    return convert
