"""Errors.  One base class; errors about a reply carry its classification."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._classify.classifier import Classification

__all__ = ["InvalidMessageError", "ResilientSMTPError", "SMTPFailure"]


class ResilientSMTPError(Exception):
    """Base class of every error this library raises."""


class InvalidMessageError(ResilientSMTPError, ValueError):
    """The message or its envelope cannot be sent as given (raised before
    any network traffic)."""


class SMTPFailure(ResilientSMTPError):
    """A send failed; ``classification`` says why and what to do."""

    def __init__(self, message: str, classification: Classification) -> None:
        super().__init__(message)
        self.classification = classification
