"""The exception that carries the spec's error numbers (:class:`ErrNo`, in ``wire``) to the envelope.

Every failure a client can see is an :class:`ApiError` with an :class:`ErrNo`; one middleware
(``routes.envelope``) turns it into ``{"err_no", "err_msg"}`` with HTTP 200, because the spec's
sample clients treat any other status as a transport failure.
"""

from __future__ import annotations

import reprlib
from typing import Any

# The numbers themselves are wire vocabulary, shared with the client; imported from here as before.
from same_search.wire import ErrNo, ImageSubCode

#: The spec's short messages, used when a handler has nothing more precise to say.
DEFAULT_MESSAGES: dict[ErrNo, str] = {
    ErrNo.INIT_FAILED: "service init failed",
    ErrNo.OK: "OK",
    ErrNo.BAD_REQUEST: "invalid request parameter",
    ErrNo.FEATURE_TIMEOUT: "feature service timeout",
    ErrNo.BS_TIMEOUT: "bs service timeout",
    ErrNo.META_TIMEOUT: "meta service timeout",
    ErrNo.FEATURE_UNAVAILABLE: "feature service unavailable",
    ErrNo.BS_UNAVAILABLE: "bs service unavailable",
    ErrNo.META_UNAVAILABLE: "meta service unavailable",
    ErrNo.FEATURE_FAILED: "feature extraction failed",
    ErrNo.BS_FAILED: "bs request failed",
    ErrNo.META_FAILED: "meta request failed",
    ErrNo.INTERNAL: "internal error",
    ErrNo.AUTH_FAILED: "authentication failed",
    ErrNo.BUSY: "service busy",
    ErrNo.BAD_IMAGE: "feature extraction failed because of the input image",
    ErrNo.DUPLICATED_ADD: "duplicated add",
    ErrNo.UPDATE_MISSING: "update of an item not in the table",
    ErrNo.NOT_SIGNED_UP: "appid not signed up",
    ErrNo.ALREADY_SIGNED_UP: "appid already signed up",
}


class ApiError(Exception):
    """A failure with a spec error number; ``extra`` fields are merged into the JSON body."""

    def __init__(self, err_no: ErrNo, err_msg: str | None = None, **extra: Any) -> None:
        self.err_no = ErrNo(err_no)
        self.err_msg = err_msg or DEFAULT_MESSAGES[self.err_no]
        self.extra = extra
        super().__init__(f"{int(self.err_no)}: {self.err_msg}")

    def body(self) -> dict[str, Any]:
        """The JSON envelope for this error."""
        return {"err_no": int(self.err_no), "err_msg": self.err_msg, **self.extra}


#: Longest quote of a client's value in an err_msg: enough to recognise it, never a flood.
ECHO_MAX = 60
_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxlist, _ECHO.maxdict = 2, 4, 4
_ECHO.maxstring = _ECHO.maxlong = _ECHO.maxother = ECHO_MAX


def shown(value: object) -> str:
    """A value a client sent, as an error message quotes it: its repr cut short, with the full
    length said when it was cut, so a 100,000-character string or a number of 4,000 digits
    (JSON allows 4,300) never comes back whole in the answer, or in a log line that quotes it."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * ECHO_MAX:
        return f"an integer of about {round(value.bit_length() * 0.30103)} digits"
    text = _ECHO.repr(value)[: 2 * ECHO_MAX]
    return f"{text} ({len(value)} characters)" if isinstance(value, str) and len(value) > ECHO_MAX else text


def bad_request(message: str) -> ApiError:
    """Shorthand for the most common error: a malformed or missing field (err_no 1)."""
    return ApiError(ErrNo.BAD_REQUEST, message)


def bad_image(sub: ImageSubCode, detail: str) -> ApiError:
    """err_no 100 with the spec's sub-code leading ``err_msg`` so clients can parse it."""
    return ApiError(ErrNo.BAD_IMAGE, f"{int(sub)}: {detail}")
