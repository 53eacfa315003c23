"""The orchestrator's error vocabulary and the one place that maps it to HTTP answers."""

from __future__ import annotations

from enum import StrEnum

from node.shared.errors import DataError, FedavgError, ProtocolError, SpecError, WeightsError
from server.core.aggregation import AggregationError
from server.datasets import DatasetError, DatasetExists, OutsideImportRoots, UnknownDataset
from server.settings import SettingsError


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    MISDIRECTED_REQUEST = "misdirected_request"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ApiError(FedavgError):
    """An error with a place in the HTTP vocabulary."""

    status = 400
    code = ErrorCode.BAD_REQUEST

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.code.value  # a short label for metrics


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    status = 401
    code = ErrorCode.UNAUTHORIZED


class Forbidden(ApiError):
    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(ApiError):
    status = 404
    code = ErrorCode.NOT_FOUND


class Conflict(ApiError):
    status = 409
    code = ErrorCode.CONFLICT


class IdTaken(Conflict):
    """A hello for a node id that is bound to another secret."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="id_taken")


class RequestTimeout(ApiError):
    status = 408
    code = ErrorCode.TIMEOUT


class TooLarge(ApiError):
    status = 413
    code = ErrorCode.TOO_LARGE


class UnsupportedMediaType(ApiError):
    status = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class MisdirectedRequest(ApiError):
    status = 421
    code = ErrorCode.MISDIRECTED_REQUEST


def http_status(exc: BaseException) -> tuple[int, ErrorCode]:
    """Status and code for any exception; anything unknown is a 500 (and gets logged)."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code
    if isinstance(exc, UnknownDataset):
        return 404, ErrorCode.NOT_FOUND
    # The user's data (an import): a path outside the roots, an id taken, a bad file or field.
    if isinstance(exc, OutsideImportRoots):
        return 403, ErrorCode.FORBIDDEN
    if isinstance(exc, DatasetExists):
        return 409, ErrorCode.CONFLICT
    if isinstance(exc, DataError):
        return 400, ErrorCode.BAD_REQUEST
    if isinstance(exc, DatasetError):
        return 503, ErrorCode.UNAVAILABLE
    # A SettingsError in a request is a job setting the request asked for, out of range.
    if isinstance(exc, ProtocolError | SpecError | WeightsError | AggregationError | SettingsError):
        return 400, ErrorCode.BAD_REQUEST
    return 500, ErrorCode.INTERNAL
