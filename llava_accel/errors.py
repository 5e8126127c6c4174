"""User-facing errors: each one is a single line that says what went wrong and what to do.

The CLI prints these without a traceback; anything else that escapes is a bug and keeps its traceback.
"""


class LlavaAccelError(Exception):
    """Base class for errors caused by the user's input or machine, not by a bug in llava_accel."""


class OptionError(LlavaAccelError, ValueError):
    """An option value that is not one of the choices (a dtype, a loop, a draft tree, a batch size...)."""


class UnknownBackendError(LlavaAccelError):
    pass


class BackendUnavailableError(LlavaAccelError):
    pass


class ModelNotFoundError(LlavaAccelError):
    pass


class ImageError(LlavaAccelError):
    pass


class DatasetError(LlavaAccelError):
    """An unknown task, or a dataset source that is missing, unreachable or lacks a field the task needs."""


class PromptTooLongError(LlavaAccelError):
    """A prompt that ``max_input_len`` cannot fit without cutting its template or answer instruction."""


class MetricUnavailableError(LlavaAccelError):
    """A metric option that needs a package or runtime that is not here (pycocoevalcap's Java tools)."""


def install_hint(extra: str) -> str:
    """How to get an optional extra: the package is installed from a checkout (it is not on a package index)."""
    return f"pip install -e '.[{extra}]' in a llava_accel checkout"


class ResultsFileError(LlavaAccelError):
    """A result or results file (``--reference``, ``report``'s inputs) that is missing or holds no result."""
