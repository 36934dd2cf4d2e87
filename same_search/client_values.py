"""What :mod:`same_search.client` hands its callers, and how each is read from or written to the wire.

The errors a client raises (one :class:`SameSearchError` subclass per err_no a caller may want to
catch, plus :class:`TransportError`), the values it returns (:class:`Item`, :class:`Hit`,
:class:`SearchResult`, :class:`ItemPage`), and the small functions that convert between those and
the JSON of ``docs/api.md``; and :class:`Endpoints`, where a daemon listens. Import them from
:mod:`same_search.client`; this module exists so the client itself holds only the requests and
how they travel. Like the client, it imports neither torch nor the daemon.
"""

from __future__ import annotations

import base64
import struct
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from same_search.contsign import ContSign
from same_search.proto import imgfeature_pb2
from same_search.wire import ADMIN_PORT, FEA_BRIEF, FEA_DESCRIPTOR, FEA_TAGS, FEATURE_PORT, SEARCH_PORT, ErrNo

ContSignLike = ContSign | tuple[int, int] | str
Tags = tuple[int, int]
T = TypeVar("T")


# --------------------------------------------------------------------------------------------- errors


class ClientError(Exception):
    """Base of everything this module raises, so one ``except`` can catch both kinds of failure."""


class TransportError(ClientError):
    """The daemon could not be reached, or answered something other than a well-formed HTTP 200.

    Kept apart from :class:`SameSearchError` because the remedy differs: retry or fix the address,
    rather than fix the request.
    """

    def __init__(self, message: str, url: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class SameSearchError(ClientError):
    """The daemon answered with ``err_no != 0``; ``body`` is the whole reply for anything extra."""

    err_no_class: int | None = None

    def __init__(self, err_no: int, err_msg: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{err_no}: {err_msg}")
        self.err_no = err_no
        self.err_msg = err_msg
        self.body: Mapping[str, Any] = body or {}


class BadRequest(SameSearchError):
    """err_no 1: a malformed or missing field, an unknown route, a body too large."""

    err_no_class = ErrNo.BAD_REQUEST


class AuthFailed(SameSearchError):
    """err_no 12: missing or wrong token."""

    err_no_class = ErrNo.AUTH_FAILED


class Busy(SameSearchError):
    """err_no 99: the embedder queue is full; retrying later is the intended reaction."""

    err_no_class = ErrNo.BUSY


class BadImage(SameSearchError):
    """err_no 100: the image is empty, undecodable or out of the accepted size range."""

    err_no_class = ErrNo.BAD_IMAGE

    @property
    def sub_code(self) -> int | None:
        """The spec's sub-code (216200, 216201, 216202) that leads ``err_msg``."""
        head = self.err_msg.split(":", 1)[0].strip()
        return int(head) if head.isdigit() else None


class Duplicate(SameSearchError):
    """err_no 101: the image is already stored; :attr:`item` is what the library holds."""

    err_no_class = ErrNo.DUPLICATED_ADD

    @property
    def item(self) -> Item | None:
        """The stored item, so a caller can compare briefs without another request."""
        items = self.body.get("data_items") or []
        return item_from_wire(items[0]) if items else None


class NotFound(SameSearchError):
    """err_no 102: the item named by an update (or a management look-up) is not stored."""

    err_no_class = ErrNo.UPDATE_MISSING


class NotSignedUp(SameSearchError):
    """err_no 103: the library does not exist."""

    err_no_class = ErrNo.NOT_SIGNED_UP


class AlreadySignedUp(SameSearchError):
    """err_no 104: signup (or create_library) of a library that exists."""

    err_no_class = ErrNo.ALREADY_SIGNED_UP


_ERRORS: dict[int, type[SameSearchError]] = {
    cls.err_no_class: cls
    for cls in (BadRequest, AuthFailed, Busy, BadImage, Duplicate, NotFound, NotSignedUp, AlreadySignedUp)
    if cls.err_no_class is not None
}


def raise_for(body: Mapping[str, Any]) -> None:
    err_no = body.get("err_no")
    if err_no == ErrNo.OK:
        return
    cls = _ERRORS.get(err_no, SameSearchError) if isinstance(err_no, int) else SameSearchError
    raise cls(err_no if isinstance(err_no, int) else -1, str(body.get("err_msg", "")), body)


# ---------------------------------------------------------------------------------------------- values


def contsign_of(image: bytes) -> ContSign:
    """The contsign the daemon will give ``image``: computed locally, no request needed."""
    return ContSign.of_image(image)


def as_contsign(value: ContSignLike) -> ContSign:
    if isinstance(value, ContSign):
        return value
    if isinstance(value, str):
        sign1, sign2 = (int(part) for part in value.split(","))
        return ContSign(sign1, sign2)
    sign1, sign2 = value
    return ContSign(int(sign1), int(sign2))


def contsign_from_wire(value: Mapping[str, Any]) -> ContSign:
    return ContSign(int(value["sign1"]), int(value["sign2"]))


@dataclass(frozen=True)
class Item:
    """A stored item: its contsign, the brief given at add/update time, its tags if any.

    The client's own counterpart of the daemon's ``libraries.Item`` (same meaning, same name on
    purpose): the client must not import the daemon, which pulls in torch, and this one also
    carries what the management API adds (timestamps). Likewise :class:`Hit` is the daemon's
    ``libraries.Hit`` flattened, so a hit reads like the item it is.
    """

    contsign: ContSign
    brief: bytes
    tags: Tags | None = None
    #: Unix times, known only for items read through the management API.
    created: float | None = None
    updated: float | None = None

    @property
    def brief_text(self) -> str:
        """The brief as text (undecodable bytes replaced), for display."""
        return self.brief.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class CopyRegion:
    """Where a confirmed copy lies (a hit's ``region``, docs/api.md): ``[left, top, right,
    bottom]`` boxes in pixels of the stored picture and of the query, and their sizes."""

    stored: tuple[int, int, int, int]
    query: tuple[int, int, int, int]
    stored_size: tuple[int, int]
    query_size: tuple[int, int]


@dataclass(frozen=True)
class Hit(Item):
    """A search result: an item and its cosine similarity to the query."""

    score: float = 0.0
    #: In a re-ranked answer: the same-picture check confirmed it (why a lower score may lead).
    same_picture: bool = False
    #: Where the copy lies, for a hit the check's geometry confirmed (None otherwise).
    region: CopyRegion | None = None


class SearchResult(list[Hit]):
    """One page of search hits plus whether more exist beyond it, and the ranking that ordered
    them: ``"score"`` (the spec's order, descending score) or ``"reranked"`` (the library's or
    the request's choice; see docs/api.md)."""

    def __init__(self, hits: Iterable[Hit] = (), has_more: bool = False, ranking: str = "score") -> None:
        super().__init__(hits)
        self.has_more = has_more
        self.ranking = ranking


@dataclass(frozen=True)
class ItemPage:
    """One page of a library's items as the management API lists them."""

    total: int
    offset: int
    items: list[Item] = field(default_factory=list)
    has_more: bool = False


def sync_result(schedule: Mapping[str, Any]) -> str:
    """What a folder-sync schedule's last run did, in one line (the CLI and the console's first
    render write it; the console's script writes the same when it refreshes)."""
    job = schedule["last_job"]
    line = (
        "none yet"
        if job is None
        else f"job {job['id']} {job['status']}: {job['done']} added, {job['updated']} updated, "
        f"{job['removed']} removed, {job['duplicates']} unchanged, {job['failed']} failed"
    )
    return line + (f" ({schedule['last_message']})" if schedule["last_message"] else "")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pack_tags(tags: Tags) -> bytes:
    return struct.pack("<II", int(tags[0]), int(tags[1]))


def features_json(brief: bytes | str | None, tags: Tags | None) -> list[dict[str, Any]]:
    features = []
    if brief is not None:
        raw = brief.encode("utf-8") if isinstance(brief, str) else bytes(brief)
        features.append({"fea_id": FEA_BRIEF, "fea_data": b64(raw)})
    if tags is not None:
        features.append({"fea_id": FEA_TAGS, "fea_data": b64(pack_tags(tags))})
    return features


def item_from_wire(value: Mapping[str, Any], score: float | None = None) -> Item:
    """A ``data_items`` entry (retrieval API) as an :class:`Item` or, with a score, a :class:`Hit`."""
    features = {f["fea_id"]: base64.b64decode(f["fea_data"]) for f in value.get("features", [])}
    tags = struct.unpack("<II", features[FEA_TAGS]) if FEA_TAGS in features else None
    contsign = contsign_from_wire(value["contsign"])
    brief = features.get(FEA_BRIEF, b"")
    if score is None:
        return Item(contsign, brief, tags)
    region = value.get("region")
    return Hit(
        contsign,
        brief,
        tags,
        score=float(score),
        same_picture=bool(value.get("same_picture")),
        region=None if not isinstance(region, dict) else _copy_region(region),
    )


def _copy_region(value: Mapping[str, Any]) -> CopyRegion:
    return CopyRegion(
        tuple(value["stored"]),  # type: ignore[arg-type]
        tuple(value["query"]),  # type: ignore[arg-type]
        tuple(value["stored_size"]),  # type: ignore[arg-type]
        tuple(value["query_size"]),  # type: ignore[arg-type]
    )


def item_from_admin(value: Mapping[str, Any]) -> Item:
    """An item as the management API shows it (base64 brief, tags as a list, timestamps)."""
    tags = tuple(value["tags"]) if value.get("tags") is not None else None
    return Item(
        contsign_from_wire(value["contsign"]),
        base64.b64decode(value.get("brief", "")),
        tags,  # type: ignore[arg-type]
        value.get("created"),
        value.get("updated"),
    )


def search_result(body: Mapping[str, Any]) -> SearchResult:
    hits = [item_from_wire(item, item.get("score", 0.0)) for item in body.get("data_items", [])]
    ranking = body.get("ranking", "score")
    return SearchResult(hits, bool(body.get("has_more")), ranking)  # type: ignore[arg-type]


def item_page(body: Mapping[str, Any]) -> ItemPage:
    items = [item_from_admin(item) for item in body.get("items", [])]
    return ItemPage(int(body["total"]), int(body["offset"]), items, bool(body.get("has_more")))


def features_of(body: Mapping[str, Any]) -> dict[int, bytes]:
    response = imgfeature_pb2.FeatureResponse()
    response.ParseFromString(base64.b64decode(body["result"]))
    return {fea.fea_id: fea.fea_data for fea in response.features}


def without_envelope(body: Mapping[str, Any]) -> dict[str, Any]:
    """The reply without its envelope fields."""
    return {k: v for k, v in body.items() if k not in ("err_no", "err_msg")}


def path_key(contsign: ContSignLike) -> str:
    c = as_contsign(contsign)
    return f"{c.sign1},{c.sign2}"


def contsign_json(contsign: ContSignLike | None) -> dict[str, int] | None:
    return as_contsign(contsign).to_json() if contsign is not None else None


def image_b64(image: bytes | None) -> str | None:
    return b64(image) if image is not None else None


def descriptor_of(body: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(features_of(body)[FEA_DESCRIPTOR], dtype="<f4").astype(np.float32)


def pick(name: str, convert: Callable[[Any], T]) -> Callable[[Mapping[str, Any]], T]:
    """A reply reader that picks the field ``name`` of a reply and converts it."""
    return lambda body: convert(body[name])


contsign_reply = pick("contsign", contsign_from_wire)


def ready_of(body: Mapping[str, Any]) -> bool:
    return bool(body.get("ready"))


def job_or_payload(body: Mapping[str, Any]) -> dict[str, Any]:
    return dict(body.get("job", without_envelope(body)))


# ---------------------------------------------------------------------------------------- endpoints


def connect_host(host: str) -> str:
    """Where to connect for a daemon bound to ``host``: a wildcard bind address means its loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


@dataclass(frozen=True)
class Endpoints:
    """Where the three services of one daemon listen."""

    host: str = "127.0.0.1"
    search_port: int = SEARCH_PORT
    feature_port: int = FEATURE_PORT
    admin_port: int = ADMIN_PORT
    #: The management port may be bound elsewhere (loopback) than the APIs; ``None`` means ``host``.
    admin_host: str | None = None

    def base(self, service: str) -> str:
        """``http://host:port`` of ``service`` ("search", "feature" or "admin")."""
        if service == "admin":
            host, port = self.admin_host or self.host, self.admin_port
        else:
            host = self.host
            port = self.search_port if service == "search" else self.feature_port
        host = connect_host(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def url(self, service: str, path: str, query: Mapping[str, str] | None = None) -> str:
        """The full URL of ``path`` on ``service``."""
        tail = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"{self.base(service)}{path}{tail}"
