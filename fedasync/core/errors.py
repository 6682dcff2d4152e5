"""The one error tree of fedasync.

Every error carries a short machine-readable `reason` (recorded on rejected updates and
counted in reports) and a message that names the task, the client and the version and
says what was expected.
"""

from __future__ import annotations


class FedAsyncError(Exception):
    """Base of every error fedasync raises on purpose."""

    reason = "error"
    # An update rejected for what its own object holds, the object verified under the
    # client's prefix with the record's SHA-256: the client's word, which no other silo
    # could have written (see fedasync.core.verdicts.settles).
    attributed = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(FedAsyncError, ValueError):
    """A task configuration is invalid."""

    reason = "config"


class SchemaError(FedAsyncError, ValueError):
    """A message or payload does not match the expected schema or format."""

    reason = "schema"


class UnknownClientError(SchemaError):
    """The client is not one of the task's clients (or spoofs another's prefix)."""

    reason = "unknown_client"


class IncompatibleUpdateError(FedAsyncError, ValueError):
    """Tensor names, shapes or dtypes differ from the global model."""

    reason = "incompatible"


class InvalidWeightsError(FedAsyncError, ValueError):
    """Weights contain NaN/Inf or exceed the configured norm bound."""

    reason = "invalid_weights"


class GlobalRefusedError(InvalidWeightsError):
    """Accepted updates would make a new global model that is not finite (`global_non_finite`)
    or that moves further than the task's norm bound allows (`global_norm`); the head stays.

    `discarded`: how many buffered (already accepted) updates a refused FedBuff step drops."""

    reason = "global_non_finite"

    def __init__(self, message: str, *, reason: str | None = None, discarded: int = 0) -> None:
        super().__init__(message, reason=reason)
        self.discarded = discarded


class PayloadTooLargeError(SchemaError):
    """A model payload exceeds the size limit."""

    reason = "too_large"


class StaleUpdateError(FedAsyncError):
    """An update's staleness exceeds `max_staleness` (or targets a closed round)."""

    reason = "stale"


class SiloInBufferError(FedAsyncError):
    """Central DP with FedBuff: the silo already has an update in the buffer being filled
    (one contribution per silo per release bounds the flush's sensitivity)."""

    reason = "dp_silo_in_buffer"


class DuplicateUpdateError(FedAsyncError):
    """The same update was already applied."""

    reason = "duplicate"


class RegistryError(FedAsyncError):
    """A stored object is missing or its SHA-256 does not match its record."""

    reason = "registry"


class MissingObjectError(RegistryError):
    """The object a record names is not in the bucket (or not readable, which S3 says the
    same way to a role without s3:ListBucket)."""

    reason = "missing_object"


class ChecksumMismatchError(RegistryError):
    """SHA-256 of the bytes differs from the one recorded."""

    reason = "checksum"


class TaskNotFoundError(FedAsyncError, LookupError):
    """No task of that name exists."""

    reason = "unknown_task"


class TaskFinishedError(FedAsyncError):
    """The task is no longer running; nothing more is applied to it."""

    reason = "task_finished"
