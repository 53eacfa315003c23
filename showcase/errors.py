"""What the showcase refuses, each with a message a person can act on."""

from __future__ import annotations

from node.shared.errors import FedavgError


class ShowcaseError(FedavgError):
    """Base of every error the showcase raises on purpose; its text is shown to the user."""


class SettingsError(ShowcaseError):
    """A command-line flag or environment variable with a value we cannot use."""


class EmptyCanvasError(ShowcaseError):
    """The drawing has no ink, so there is nothing to classify."""


class BadImageError(ShowcaseError):
    """The canvas sent something that is not a PNG/JPEG data URL of a sane size."""


class NoModelError(ShowcaseError):
    """No saved model exists yet, or the chosen one has disappeared."""


class InvalidModelError(ShowcaseError):
    """A file that is not a fedavg model this app can use (bad format, shape, size, spec)."""


class SourceError(ShowcaseError):
    """The models folder or the orchestrator's REST API could not be read."""


class CannotServeError(InvalidModelError):
    """A valid model the showcase has no way to feed (say, a 5-channel or a flat input)."""
