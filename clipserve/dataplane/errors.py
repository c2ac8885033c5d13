"""Why the data plane refuses a request; the REST layer maps each to its HTTP status."""

from __future__ import annotations

from clipserve.errors import ClipserveError


class ServiceBusyError(ClipserveError):
    """Too many consumers are attached, or the service is shutting down."""


class UnknownConsumerError(ClipserveError, KeyError):
    """No consumer with this id is attached."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConsumerRequestError(ClipserveError, ValueError):
    """The attach request cannot be served (start step out of range, more ranks than videos)."""


class ConsumerConflictError(ClipserveError):
    """The request conflicts with the consumer's state (wrong transport, stream already open)."""
