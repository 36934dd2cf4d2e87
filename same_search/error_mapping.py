"""Every domain exception a client can meet, mapped to the spec's err_no in one place.

Lower layers speak their own language (``embed/`` raises :mod:`same_search.embed.errors`); the
envelope middleware and the import jobs call :func:`api_error` to learn what a client sees.
Kept apart from ``errors.py`` so the client, which imports that module's neighbours, never
loads the daemon's packages.
"""

from __future__ import annotations

from same_search.embed import errors as embed_errors
from same_search.errors import ApiError, ErrNo, ImageSubCode, bad_image

#: The embedder's refusals and failures, in the spec's numbers (the only place they are mapped).
_EMBED_ERRNO: dict[type[embed_errors.EmbedError], ErrNo] = {
    embed_errors.ImageRefused: ErrNo.BAD_IMAGE,
    embed_errors.RegionRefused: ErrNo.BAD_REQUEST,
    embed_errors.EmbedderBusy: ErrNo.BUSY,
    embed_errors.EmbedderTimeout: ErrNo.FEATURE_TIMEOUT,
    embed_errors.EmbedderStopping: ErrNo.FEATURE_UNAVAILABLE,
    embed_errors.EmbedFailed: ErrNo.FEATURE_FAILED,
}
_IMAGE_SUBCODE = {
    embed_errors.ImageProblem.EMPTY: ImageSubCode.EMPTY,
    embed_errors.ImageProblem.UNDECODABLE: ImageSubCode.UNDECODABLE,
    embed_errors.ImageProblem.SIZE_OUT_OF_RANGE: ImageSubCode.SIZE_OUT_OF_RANGE,
}


def api_error(exc: Exception) -> ApiError:
    """The client-facing error for any domain exception (an :class:`ApiError` passes through)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, embed_errors.ImageRefused):
        return bad_image(_IMAGE_SUBCODE[exc.problem], str(exc))
    for kind, err_no in _EMBED_ERRNO.items():
        if isinstance(exc, kind):
            return ApiError(err_no, str(exc))
    return ApiError(ErrNo.INTERNAL, "internal error; see the daemon log")
