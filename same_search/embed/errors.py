"""What the embedder can refuse or fail at, in its own words.

``embed/`` knows images and vectors, not the wire API: it raises these, and
``same_search.errors.api_error`` is the one place that turns them into the spec's err_no.
"""

from __future__ import annotations

from enum import Enum


class EmbedError(Exception):
    """Base of every embedder refusal or failure; ``str(exc)`` says what happened."""


class ImageProblem(Enum):
    """Why a picture was refused."""

    EMPTY = "empty"
    UNDECODABLE = "undecodable"
    SIZE_OUT_OF_RANGE = "size out of range"


class ImageRefused(EmbedError):
    """The picture itself cannot be used (empty, not decodable, too small or too large)."""

    def __init__(self, problem: ImageProblem, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem


class RegionRefused(EmbedError):
    """The requested region does not fit the picture."""


class EmbedderBusy(EmbedError):
    """The queue is full: retry later."""


class EmbedderTimeout(EmbedError):
    """No vector within the configured time."""


class EmbedderStopping(EmbedError):
    """The embedder is shutting down."""


class EmbedFailed(EmbedError):
    """The forward pass itself failed."""
