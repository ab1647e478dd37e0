"""Errors that reach users. Each one names what was wrong and where (file, line, field or option)."""

from __future__ import annotations

from pathlib import Path


class EditgateError(Exception):
    """Base class: a user-facing problem, reported as one clear line instead of a traceback."""


class DataError(EditgateError):
    """A data file (task data, edit requests) is missing or malformed."""

    def __init__(
        self, message: str, *, path: str | Path | None = None, line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path, self.line, self.field = path, line, field
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            where += f"field '{field}': "
        super().__init__(where + message)


class DataMissing(DataError):
    """A data file that is not there at all (as opposed to one that is malformed)."""


class ConfigError(EditgateError):
    """An option, a config file or a registry name is wrong."""


class ModelLoadError(EditgateError):
    """A model name or path cannot be resolved or loaded."""


class EditFailure(EditgateError):
    """An editor produced an unusable delta (e.g. non-finite weights). A failed gate, not a crash."""


class KernelUnavailable(ConfigError):
    """This machine has no kernel for the asked precision (e.g. bf16 attention on some CPUs)."""
