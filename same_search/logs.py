"""Logging set-up: readable lines by default, one JSON object per line for log shippers.

Request lines carry ``logid``, ``appid``, ``route``, ``err_no`` and ``latency_ms`` both in the text
and, with ``log_format = "json"``, as fields of their own.
"""

from __future__ import annotations

import json
import logging
import re
import time

#: Attributes of a LogRecord that are not "extra" fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


#: Characters that would let a client's logid, appid or URL path start a forged log line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


#: Longest value of one client-chosen field in a log line (logid, appid, route): a 2 MB logid must
#: not become a 2 MB line that floods the log and the shipper behind it.
FIELD_MAX = 200


def clip(value: object, limit: int = FIELD_MAX) -> object:
    """``value`` as logged: short values unchanged (a numeric logid stays a number), longer ones
    cut to ``limit`` characters with their full length said."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"<an integer of {value.bit_length()} bits>"  # never written out in full
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return value
    return f"{text[:limit]}...({len(text)} characters)"


def escape_controls(text: str) -> str:
    """``text`` with line breaks and other control characters written as escapes (``\\n``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """Readable lines; the message itself can never span lines (tracebacks still do)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    """Install the root handler once, at start-up."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
