"""The wire vocabulary: every constant the daemon and its clients must agree on, declared once.

Error numbers, feature ids, the token header, default ports and route paths. The daemon's routes
and config and :mod:`same_search.client` all import them from here, so adding a route or a
feature id is one edit. This module imports nothing from the package (the client must not pull
in torch or the server), and holds values only: how a field is read or checked stays with the
code that reads it.

Route paths use aiohttp's ``{name}`` placeholders; the server registers them as they are, the
client fills them with :meth:`str.format` (``ITEM.format(appid=..., contsign="1,2")``).
"""

from __future__ import annotations

from enum import IntEnum


class ErrNo(IntEnum):
    """Error numbers exactly as the spec's table lists them."""

    INIT_FAILED = -1
    OK = 0
    BAD_REQUEST = 1
    FEATURE_TIMEOUT = 2
    BS_TIMEOUT = 3
    META_TIMEOUT = 4
    FEATURE_UNAVAILABLE = 5
    BS_UNAVAILABLE = 6
    META_UNAVAILABLE = 7
    FEATURE_FAILED = 8
    BS_FAILED = 9
    META_FAILED = 10
    INTERNAL = 11
    AUTH_FAILED = 12
    BUSY = 99
    BAD_IMAGE = 100
    DUPLICATED_ADD = 101
    UPDATE_MISSING = 102
    NOT_SIGNED_UP = 103
    ALREADY_SIGNED_UP = 104


class ImageSubCode(IntEnum):
    """Sub-codes the spec lists under err_no 100; they lead ``err_msg`` as ``"<code>: ..."``."""

    EMPTY = 216200
    UNDECODABLE = 216201
    SIZE_OUT_OF_RANGE = 216202


# ---- feature ids ------------------------------------------------------------------------------------

#: Retrieval API ``features``: the brief, opaque bytes returned with every result.
FEA_BRIEF = 1000
#: Retrieval API ``features``: the tags, 8 bytes ``struct.pack("<II", tag1, tag2)``.
FEA_TAGS = 999
#: Feature service output: the global descriptor, ``dim`` little-endian float32, L2-normalised.
FEA_DESCRIPTOR = 2001
#: Feature service output: the image's contsign, 8 bytes ``struct.pack("<II", sign1, sign2)``.
FEA_CONTSIGN = 2002
#: Feature service output: the serving model as UTF-8 ``model_id:fingerprint:dim``.
FEA_MODEL = 2003
#: Every feature the feature service computes, in the order it answers them.
FEATURE_OUTPUTS = (FEA_DESCRIPTOR, FEA_CONTSIGN, FEA_MODEL)

# ---- headers and ports ----------------------------------------------------------------------------

#: The header carrying a client's token (``Authorization: Bearer`` and a body ``token`` also work).
TOKEN_HEADER = "X-Same-Token"

FEATURE_PORT = 8120
SEARCH_PORT = 8025
ADMIN_PORT = 8103

# ---- routes ---------------------------------------------------------------------------------------

#: Feature service, port 8120.
CLASSIFY = "/GeneralClassifyService/classify"

#: Retrieval service, port 8025: ``RTS_PREFIX + "/" + route`` for each of ``RTS_ROUTES``.
RTS_PREFIX = "/RTSAsService"
RTS_ROUTES = ("signup", "add", "update", "search", "remove", "snapshot")

# Management, port 8103 (probes, then the management API under /api).
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
API = "/api"
LIBRARIES = f"{API}/libraries"
LIBRARY = f"{LIBRARIES}/{{appid}}"
ITEMS = f"{LIBRARY}/items"
ITEM = f"{ITEMS}/{{contsign}}"
THUMBNAIL = f"{ITEM}/thumbnail"
SAVE = f"{LIBRARY}/save"
REBUILD = f"{LIBRARY}/rebuild"
RECALL = f"{LIBRARY}/recall"
COMPACT = f"{LIBRARY}/compact"
EXPORT = f"{LIBRARY}/export"
IMPORT = f"{LIBRARY}/import"
REPAIR = f"{LIBRARY}/repair"
LOCAL_FEATURES = f"{LIBRARY}/local_features"
LIBRARY_SEARCH = f"{LIBRARY}/search"
DUP_POLICY = f"{LIBRARY}/dup_policy"
RANKING = f"{LIBRARY}/ranking"
SPACE = f"{LIBRARY}/space"
JOBS = f"{API}/jobs"
JOB_UPLOAD = f"{JOBS}/upload"
JOB = f"{JOBS}/{{job_id}}"
JOB_CANCEL = f"{JOB}/cancel"
# Extensions (docs/admin.md): the duplicates view.
DUPLICATES = f"{LIBRARY}/duplicates"
DUPLICATES_SCAN = f"{DUPLICATES}/{{scan_id}}"
DUPLICATES_REMOVE = f"{DUPLICATES_SCAN}/remove"
DUPLICATES_CANCEL = f"{DUPLICATES_SCAN}/cancel"
# Extensions: re-embedding a library with another model from its kept originals.
REEMBED = f"{LIBRARY}/reembed"
REEMBED_JOB = f"{REEMBED}/{{job_id}}"
REEMBED_CANCEL = f"{REEMBED_JOB}/cancel"
# Extensions: a library that follows a folder on a schedule (a sync job every interval).
SYNC = f"{LIBRARY}/sync"
SYNC_RUN = f"{SYNC}/run"
SYNCS = f"{API}/sync"


def rts(route: str) -> str:
    """The path of one retrieval route, e.g. ``rts("add")`` -> ``/RTSAsService/add``."""
    return f"{RTS_PREFIX}/{route}"
