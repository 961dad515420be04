"""The errors autolm raises.

Each subclasses the built-in a caller would already catch (`FileNotFoundError`, `ValueError`, ...)
and its message says what was looked for, what was found, and what to do next.
"""

from __future__ import annotations


class AutolmError(Exception):
    """Base of every error autolm raises on purpose.

    The message is for people; the keyword fields are for code that wants to act on the error
    (which files, which repo and revision, which config key, which model types would work).
    """

    def __init__(
        self,
        message: str = "",
        *,
        files: list[str] | None = None,
        repo_id: str | None = None,
        revision: str | None = None,
        missing_keys: list[str] | None = None,
        model_type: str | None = None,
        supported: list[str] | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.files = [str(f) for f in files] if files is not None else None
        self.repo_id = repo_id
        self.revision = revision
        self.missing_keys = list(missing_keys) if missing_keys is not None else None
        self.model_type = model_type
        self.supported = list(supported) if supported is not None else None
        self.key = key

    def __str__(self) -> str:
        return self.message


# --- files and repositories -------------------------------------------------------------------


class ModelNotFoundError(AutolmError, FileNotFoundError):
    """A name or path resolves to nothing usable (no directory, no repo, no config.json)."""


class MissingFilesError(AutolmError, FileNotFoundError):
    """Files a load needs are not available (e.g. not cached while offline)."""


class RevisionNotFoundError(AutolmError, FileNotFoundError):
    """The branch, tag or commit does not exist in the repo."""


class GatedRepoError(AutolmError, PermissionError):
    """The repo needs a token, or the token has no access."""


class HubUnreachableError(AutolmError, ConnectionError):
    """The hub could not be reached and the files are not cached."""


class DiskFullError(AutolmError, OSError):
    """The cache ran out of space during a download."""


class MissingDependencyError(AutolmError, ModuleNotFoundError):
    """An optional package a load needs is not installed (e.g. h5py for TensorFlow weights)."""


# --- content ----------------------------------------------------------------------------------


class ConfigError(AutolmError, ValueError):
    """config.json (or another JSON file) is malformed or inconsistent."""


class UnsupportedModelError(AutolmError, ValueError):
    """A `model_type` or architecture autolm has no classes for."""


class CheckpointError(AutolmError, ValueError):
    """A weight file is corrupt, truncated, missing a shard, or holds a tensor of the wrong shape."""


class TokenizerError(AutolmError, ValueError):
    """Tokenizer files are missing or malformed."""


class ChatTemplateError(AutolmError, ValueError):
    """A chat template is missing, raised an exception, or got malformed messages."""


class TemplateSecurityError(ChatTemplateError):
    """A chat template tried to reach Python internals, the file system or the OS."""


class AutolmTypeError(AutolmError, TypeError):
    """An argument of the wrong type was passed to an autolm function."""


class AutolmValueError(AutolmError, ValueError):
    """An argument with a value autolm cannot use was passed to an autolm function."""


class AutolmKeyError(AutolmError, KeyError):
    """A key that does not exist was asked for (e.g. an integer index into a BatchEncoding without encodings)."""


class AutolmOSError(AutolmError, OSError):
    """A class that is built only through from_pretrained was instantiated directly."""


class GenerationError(AutolmError, ValueError):
    """Bad arguments to generation (empty prompt, too long a prompt, max_new_tokens <= 0, ...)."""


class GGUFError(AutolmError, ValueError):
    """A GGUF file is truncated, of an unsupported architecture or quant type, or lacks metadata."""


class RemoteCodeError(AutolmError, ValueError):
    """A repo holds custom code that may not run: no consent, a pin mismatch, missing packages."""


class RemoteCodePinError(RemoteCodeError):
    """The repo's custom code differs from the pin it must match (argument or autolm.lock)."""


class RemoteCodeDependencyError(RemoteCodeError):
    """The repo's custom code imports packages that are not installed."""
