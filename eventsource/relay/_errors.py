"""The relay's errors: an unreachable sink, a target that does not fit, a malformed message."""

from __future__ import annotations

from eventsource._errors import EventSourceError

__all__ = ["MalformedMessage", "SinkMisconfigured", "SinkUnavailable"]


class SinkUnavailable(EventSourceError):
    """The streaming engine could not be reached (an outage: the relay waits it out)."""


class SinkMisconfigured(EventSourceError):
    """The target stream exists with settings that the relay cannot work with.

    ``setting`` names the setting (``subjects``, ``duplicate_window``, ...).
    """

    def __init__(self, message: str, *, setting: str) -> None:
        """An error about ``setting`` of the target stream."""
        super().__init__(message)
        self.setting = setting


class MalformedMessage(EventSourceError):
    """A message on a relayed subject lacks a relay header or carries a malformed one."""
