"""Exception hierarchy. Every error alertwarden raises on purpose derives from AlertwardenError."""


class AlertwardenError(Exception):
    """Base class of all alertwarden errors."""


class RuleError(AlertwardenError):
    """A rule definition is invalid. The message names the rule, the field and the value."""


class EventError(AlertwardenError):
    """An input record cannot become an event. `reason` is a stable SkipReason value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(AlertwardenError):
    """The state store failed to read or write. The driver's exception is the cause."""


class InvalidValueError(StoreError):
    """A value that the store rejects before any SQL runs, so a retry with it fails the same way.

    The message names the field and the value. `path` locates the value inside a JSON document,
    such as ("labels", "team"), and is empty for a plain value.
    """

    def __init__(
        self, message: str, *, field: str, value: object, path: tuple[str | int, ...] = ()
    ) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.path = path


class SinkError(AlertwardenError):
    """A notification could not be delivered after all retries."""


class OutputClosedError(SinkError):
    """The reader of stdout went away (a closed pipe); the run stops instead of retrying."""


class ConfigError(AlertwardenError):
    """A command-line option or setting is invalid."""
