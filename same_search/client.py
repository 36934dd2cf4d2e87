"""Python clients for a same_search daemon: :class:`Client` (blocking) and :class:`AsyncClient` (aiohttp).

Both speak the wire contract of ``docs/api.md`` (ports 8025 and 8120) and the management API on
8103, and turn its envelope into Python: results become dataclasses, any ``err_no != 0`` becomes a
:class:`SameSearchError` subclass, and anything that is not a well-formed HTTP 200 reply becomes a
:class:`TransportError`, so callers never inspect ``err_no`` themselves.

What each route sends and how its reply is read is described once (:class:`_Requests` builds a
:class:`_Call`, :func:`_decode` reads the answer); the two clients differ only in how the bytes travel.
The module imports neither torch nor the server, so scripts that only talk to a daemon start fast.
"""

from __future__ import annotations

import base64
import http.client
import json
import struct
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np

from same_search.config import Config
from same_search.contsign import ContSign
from same_search.proto import imgfeature_pb2

__all__ = [
    "AlreadySignedUp",
    "AsyncClient",
    "AuthFailed",
    "BadImage",
    "BadRequest",
    "Busy",
    "Client",
    "ClientError",
    "ContSign",
    "Duplicate",
    "Endpoints",
    "Hit",
    "Item",
    "ItemPage",
    "NotFound",
    "NotSignedUp",
    "SameSearchError",
    "SearchResult",
    "TransportError",
    "contsign_of",
]

FEA_BRIEF = 1000
FEA_TAGS = 999
FEA_DESCRIPTOR = 2001
FEA_CONTSIGN = 2002
FEA_MODEL = 2003
TOKEN_HEADER = "X-Same-Token"
DEFAULT_SOURCE = "same_search.client"

ContSignLike = ContSign | tuple[int, int] | str
Tags = tuple[int, int]


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

    err_no_class = 1


class AuthFailed(SameSearchError):
    """err_no 12: missing or wrong token."""

    err_no_class = 12


class Busy(SameSearchError):
    """err_no 99: the embedder queue is full; retrying later is the intended reaction."""

    err_no_class = 99


class BadImage(SameSearchError):
    """err_no 100: the image is empty, undecodable or out of the accepted size range."""

    err_no_class = 100

    @property
    def sub_code(self) -> int | None:
        """The spec's sub-code (216200, 216201, 216202) that leads ``err_msg``."""
        head = self.err_msg.split(":", 1)[0].strip()
        return int(head) if head.isdigit() else None


class Duplicate(SameSearchError):
    """err_no 101: the image is already stored; :attr:`item` is what the library holds."""

    err_no_class = 101

    @property
    def item(self) -> Item | None:
        """The stored item, so a caller can compare briefs without another request."""
        items = self.body.get("data_items") or []
        return _item_from_wire(items[0]) if items else None


class NotFound(SameSearchError):
    """err_no 102: the item named by an update (or a management look-up) is not stored."""

    err_no_class = 102


class NotSignedUp(SameSearchError):
    """err_no 103: the library does not exist."""

    err_no_class = 103


class AlreadySignedUp(SameSearchError):
    """err_no 104: signup (or create_library) of a library that exists."""

    err_no_class = 104


_ERRORS: dict[int, type[SameSearchError]] = {
    cls.err_no_class: cls
    for cls in (BadRequest, AuthFailed, Busy, BadImage, Duplicate, NotFound, NotSignedUp, AlreadySignedUp)
    if cls.err_no_class is not None
}


def _raise_for(body: Mapping[str, Any]) -> None:
    err_no = body.get("err_no")
    if err_no == 0:
        return
    cls = _ERRORS.get(err_no, SameSearchError) if isinstance(err_no, int) else SameSearchError
    raise cls(err_no if isinstance(err_no, int) else -1, str(body.get("err_msg", "")), body)


# ---------------------------------------------------------------------------------------------- values


def contsign_of(image: bytes) -> ContSign:
    """The contsign the daemon will give ``image``: computed locally, no request needed."""
    return ContSign.of_image(image)


def _as_contsign(value: ContSignLike) -> ContSign:
    if isinstance(value, ContSign):
        return value
    if isinstance(value, str):
        sign1, sign2 = (int(part) for part in value.split(","))
        return ContSign(sign1, sign2)
    sign1, sign2 = value
    return ContSign(int(sign1), int(sign2))


def _contsign_from_wire(value: Mapping[str, Any]) -> ContSign:
    return ContSign(int(value["sign1"]), int(value["sign2"]))


@dataclass(frozen=True)
class Item:
    """A stored item: its contsign, the brief given at add/update time, its tags if any."""

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
class Hit(Item):
    """A search result: an item and its cosine similarity to the query."""

    score: float = 0.0


class SearchResult(list[Hit]):
    """One page of search hits, best first, plus whether more exist beyond it."""

    def __init__(self, hits: Iterable[Hit] = (), has_more: bool = False) -> None:
        super().__init__(hits)
        self.has_more = has_more


@dataclass(frozen=True)
class ItemPage:
    """One page of a library's items as the management API lists them."""

    total: int
    offset: int
    items: list[Item] = field(default_factory=list)
    has_more: bool = False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _pack_tags(tags: Tags) -> bytes:
    return struct.pack("<II", int(tags[0]), int(tags[1]))


def _features(brief: bytes | str | None, tags: Tags | None) -> list[dict[str, Any]]:
    features = []
    if brief is not None:
        raw = brief.encode("utf-8") if isinstance(brief, str) else bytes(brief)
        features.append({"fea_id": FEA_BRIEF, "fea_data": _b64(raw)})
    if tags is not None:
        features.append({"fea_id": FEA_TAGS, "fea_data": _b64(_pack_tags(tags))})
    return features


def _item_from_wire(value: Mapping[str, Any], score: float | None = None) -> Item:
    """A ``data_items`` entry (retrieval API) as an :class:`Item` or, with a score, a :class:`Hit`."""
    features = {f["fea_id"]: base64.b64decode(f["fea_data"]) for f in value.get("features", [])}
    tags = struct.unpack("<II", features[FEA_TAGS]) if FEA_TAGS in features else None
    contsign = _contsign_from_wire(value["contsign"])
    brief = features.get(FEA_BRIEF, b"")
    if score is None:
        return Item(contsign, brief, tags)
    return Hit(contsign, brief, tags, score=float(score))


def _item_from_admin(value: Mapping[str, Any]) -> Item:
    """An item as the management API shows it (base64 brief, tags as a list, timestamps)."""
    tags = tuple(value["tags"]) if value.get("tags") is not None else None
    return Item(
        _contsign_from_wire(value["contsign"]),
        base64.b64decode(value.get("brief", "")),
        tags,  # type: ignore[arg-type]
        value.get("created"),
        value.get("updated"),
    )


def _search_result(body: Mapping[str, Any]) -> SearchResult:
    hits = [_item_from_wire(item, item.get("score", 0.0)) for item in body.get("data_items", [])]
    return SearchResult(hits, bool(body.get("has_more")))  # type: ignore[arg-type]


def _item_page(body: Mapping[str, Any]) -> ItemPage:
    items = [_item_from_admin(item) for item in body.get("items", [])]
    return ItemPage(int(body["total"]), int(body["offset"]), items, bool(body.get("has_more")))


def _features_of(body: Mapping[str, Any]) -> dict[int, bytes]:
    response = imgfeature_pb2.FeatureResponse()
    response.ParseFromString(base64.b64decode(body["result"]))
    return {fea.fea_id: fea.fea_data for fea in response.features}


def _payload(body: Mapping[str, Any]) -> dict[str, Any]:
    """The reply without its envelope fields."""
    return {k: v for k, v in body.items() if k not in ("err_no", "err_msg")}


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
    search_port: int = 8025
    feature_port: int = 8120
    admin_port: int = 8103
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


# ------------------------------------------------------------------------------------ request specs

Reply = Literal["envelope", "probe", "text", "bytes"]


def _identity(body: Any) -> Any:
    return body


@dataclass(frozen=True)
class _Call:
    """One HTTP exchange, described independently of the library that performs it."""

    service: str
    path: str
    method: str = "POST"
    body: dict[str, Any] | None = None
    data: bytes | None = None
    query: dict[str, str] | None = None
    #: envelope: HTTP 200 + JSON, err_no checked; probe: 200 or 503 + JSON, not checked;
    #: text/bytes: HTTP 200 payload (a JSON envelope instead means an error).
    reply: Reply = "envelope"
    parse: Callable[[Any], Any] = _identity

    def payload(self) -> tuple[bytes | None, dict[str, str]]:
        """The request body and its content type header."""
        if self.body is not None:
            return json.dumps(self.body).encode(), {"Content-Type": "application/json"}
        if self.data is not None:
            return self.data, {"Content-Type": "application/zip"}
        return None, {}


def _json(raw: bytes, url: str, status: int) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransportError(f"{url}: reply is not JSON ({exc})", url, status) from None
    if not isinstance(body, dict) or "err_no" not in body:
        raise TransportError(f"{url}: reply is not a same_search envelope", url, status)
    return body


def _decode(call: _Call, url: str, status: int, content_type: str, raw: bytes) -> Any:
    """Turn one HTTP answer into the call's result, or raise the matching error."""
    accepted = (200, 503) if call.reply == "probe" else (200,)
    if status not in accepted:
        raise TransportError(f"{url}: HTTP {status}", url, status)
    if call.reply in ("text", "bytes") and content_type != "application/json":
        return raw.decode("utf-8") if call.reply == "text" else raw
    body = _json(raw, url, status)
    if call.reply != "probe":
        _raise_for(body)
    return call.parse(body)


def _quote(appid: str) -> str:
    return urllib.parse.quote(appid, safe="")


def _key(contsign: ContSignLike) -> str:
    c = _as_contsign(contsign)
    return f"{c.sign1},{c.sign2}"


class _Requests:
    """Builds the :class:`_Call` of every route; shared by both clients so they cannot drift apart."""

    def __init__(self, source: str, appid: str | None) -> None:
        self.source = source
        self.appid = appid

    # retrieval, port 8025

    def _rts(self, route: str, appid: str | None, parse: Callable[[Any], Any], **fields: Any) -> _Call:
        name = appid or self.appid
        if not name:
            raise ValueError("no appid: pass appid= or construct the client with one")
        body = {"from": self.source, "appid": name, **{k: v for k, v in fields.items() if v is not None}}
        return _Call("search", f"/RTSAsService/{route}", body=body, parse=parse)

    def signup(self, appid: str | None) -> _Call:
        return self._rts("signup", appid, lambda body: None)

    def add(self, image: bytes, brief: bytes | str, tags: Tags | None, appid: str | None) -> _Call:
        return self._rts(
            "add",
            appid,
            lambda body: _contsign_from_wire(body["contsign"]),
            image=_b64(image),
            features=_features(brief, tags),
        )

    def update(
        self,
        image: bytes | None,
        contsign: ContSignLike | None,
        brief: bytes | str | None,
        tags: Tags | None,
        appid: str | None,
    ) -> _Call:
        if image is None and contsign is None:
            raise ValueError("update needs image= or contsign=")
        if brief is None and tags is None:
            raise ValueError("update needs brief= and/or tags=")
        return self._rts(
            "update",
            appid,
            lambda body: _contsign_from_wire(body["contsign"]),
            image=_b64(image) if image is not None else None,
            contsign=_as_contsign(contsign).to_json() if contsign is not None else None,
            features=_features(brief, tags),
        )

    def search(
        self,
        image: bytes | None,
        contsign: ContSignLike | None,
        pn: int,
        rn: int | None,
        tags: Tags | None,
        tag_logic: int | str,
        appid: str | None,
    ) -> _Call:
        if (image is None) == (contsign is None):
            raise ValueError("search needs exactly one of image= or contsign=")
        logic = {"all": 0, "any": 1}.get(tag_logic, tag_logic) if isinstance(tag_logic, str) else tag_logic
        return self._rts(
            "search",
            appid,
            _search_result,
            image=_b64(image) if image is not None else None,
            contsign=_as_contsign(contsign).to_json() if contsign is not None else None,
            pn=pn,
            rn=rn,
            features=_features(None, tags) if tags is not None else None,
            tag_logic=logic if tags is not None else None,
        )

    def remove(
        self,
        contsigns: Iterable[ContSignLike] | None,
        contsign: ContSignLike | None,
        image: bytes | None,
        appid: str | None,
    ) -> _Call:
        listed = [_as_contsign(c).to_json() for c in contsigns] if contsigns is not None else None
        if not listed and contsign is None and image is None:
            raise ValueError("remove needs contsigns=, contsign= or image=")
        return self._rts(
            "remove",
            appid,
            lambda body: int(body["removed"]),
            contsigns=listed or None,
            contsign=_as_contsign(contsign).to_json() if contsign is not None else None,
            image=_b64(image) if image is not None else None,
        )

    def snapshot(self, appid: str | None) -> _Call:
        return self._rts("snapshot", appid, lambda body: dict(body["snapshot"]))

    # feature, port 8120

    def classify(self, image: bytes, featureids: str | Iterable[int]) -> _Call:
        ids = featureids if isinstance(featureids, str) else ",".join(str(i) for i in featureids)
        request = imgfeature_pb2.FeatureRequest(image=image, query_sign="0,0", featureids=ids)
        body: dict[str, Any] = {
            "from": self.source,
            "format": "json",
            "data": _b64(request.SerializeToString()),
        }
        if self.appid:
            body["appid"] = self.appid
        return _Call("feature", "/GeneralClassifyService/classify", body=body, parse=_features_of)

    # management, port 8103

    @staticmethod
    def _admin(
        method: str,
        path: str,
        parse: Callable[[Any], Any] = _payload,
        **extra: Any,
    ) -> _Call:
        return _Call("admin", path, method=method, parse=parse, **extra)

    def health(self) -> _Call:
        return self._admin("GET", "/healthz")

    def ready(self) -> _Call:
        return self._admin("GET", "/readyz", lambda body: bool(body.get("ready")), reply="probe")

    def metrics(self) -> _Call:
        return self._admin("GET", "/metrics", reply="text")

    def libraries(self) -> _Call:
        return self._admin("GET", "/api/libraries", lambda body: list(body["libraries"]))

    def create_library(self, appid: str) -> _Call:
        return self._admin(
            "POST", "/api/libraries", lambda body: dict(body["library"]), body={"appid": appid}
        )

    def library(self, appid: str) -> _Call:
        return self._admin("GET", f"/api/libraries/{_quote(appid)}", lambda body: dict(body["library"]))

    def delete_library(self, appid: str, confirm: bool) -> _Call:
        query = {"confirm": appid} if confirm else None
        return self._admin(
            "DELETE", f"/api/libraries/{_quote(appid)}", lambda body: int(body["items"]), query=query
        )

    def items(self, appid: str, offset: int, limit: int) -> _Call:
        query = {"offset": str(offset), "limit": str(limit)}
        return self._admin("GET", f"/api/libraries/{_quote(appid)}/items", _item_page, query=query)

    def item(self, appid: str, contsign: ContSignLike, method: str = "GET") -> _Call:
        path = f"/api/libraries/{_quote(appid)}/items/{_key(contsign)}"
        if method == "DELETE":
            return self._admin("DELETE", path, lambda body: int(body["removed"]))
        return self._admin("GET", path, lambda body: _item_from_admin(body["item"]))

    def thumbnail(self, appid: str, contsign: ContSignLike) -> _Call:
        path = f"/api/libraries/{_quote(appid)}/items/{_key(contsign)}/thumbnail"
        return self._admin("GET", path, reply="bytes")

    def maintenance(self, appid: str, action: str) -> _Call:
        return self._admin("POST", f"/api/libraries/{_quote(appid)}/{action}")

    def create_job(self, appid: str, source: dict[str, str]) -> _Call:
        body = {"appid": appid, "source": source}
        return self._admin("POST", "/api/jobs", lambda body: dict(body["job"]), body=body)

    def upload_job(self, appid: str, zip_bytes: bytes) -> _Call:
        return self._admin(
            "POST", "/api/jobs/upload", lambda body: dict(body["job"]), data=zip_bytes, query={"appid": appid}
        )

    def jobs(self) -> _Call:
        return self._admin("GET", "/api/jobs", lambda body: list(body["jobs"]))

    def job(self, job_id: int | str) -> _Call:
        return self._admin("GET", f"/api/jobs/{_quote(str(job_id))}", lambda body: dict(body["job"]))

    def cancel_job(self, job_id: int | str) -> _Call:
        return self._admin(
            "POST",
            f"/api/jobs/{_quote(str(job_id))}/cancel",
            lambda body: dict(body.get("job", _payload(body))),
        )

    def export(self, appid: str, vectors: bool) -> _Call:
        query = {"vectors": "1"} if vectors else None
        return self._admin("GET", f"/api/libraries/{_quote(appid)}/export", reply="bytes", query=query)

    def import_zip(self, appid: str, zip_bytes: bytes) -> _Call:
        return self._admin("POST", f"/api/libraries/{_quote(appid)}/import", data=zip_bytes)


def _job_source(directory: str | None, manifest: str | None) -> dict[str, str]:
    if (directory is None) == (manifest is None):
        raise ValueError("a job needs exactly one of directory= or manifest= (a path on the daemon's host)")
    return {"dir": directory} if directory is not None else {"manifest": manifest}  # type: ignore[dict-item]


def _descriptor(features: dict[int, bytes]) -> np.ndarray:
    return np.frombuffer(features[FEA_DESCRIPTOR], dtype="<f4").astype(np.float32)


# ------------------------------------------------------------------------------------------- clients


class _Base:
    """What both clients share: endpoints, token, the request builders, construction from config."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        search_port: int = 8025,
        feature_port: int = 8120,
        admin_port: int = 8103,
        *,
        admin_host: str | None = None,
        token: str | None = None,
        appid: str | None = None,
        timeout: float = 60.0,
        source: str = DEFAULT_SOURCE,
    ) -> None:
        self.endpoints = Endpoints(host, search_port, feature_port, admin_port, admin_host)
        self.token = token
        self.appid = appid
        self.timeout = timeout
        self._requests = _Requests(source, appid)

    @classmethod
    def from_config(
        cls, cfg: Config, *, token: str | None = None, appid: str | None = None, **kwargs: Any
    ) -> Self:
        """A client for the daemon ``cfg`` describes (the same config.toml the daemon reads).

        Without an explicit ``token`` the operator's ``"*"`` token from ``[auth] tokens`` is used
        (it opens every route), else the token of ``appid``.
        """
        server = cfg.server
        tokens = cfg.auth.tokens
        chosen = token or tokens.get("*") or (tokens.get(appid) if appid else None)
        return cls(
            server.host,
            server.search_port,
            server.feature_port,
            server.admin_port,
            admin_host=server.admin_host,
            token=chosen,
            appid=appid,
            **kwargs,
        )

    def _headers(self, call: _Call) -> tuple[bytes | None, dict[str, str]]:
        data, headers = call.payload()
        if self.token:
            headers[TOKEN_HEADER] = self.token
        return data, headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoints!r}, appid={self.appid!r})"


class Client(_Base):
    """Blocking client (stdlib ``urllib`` only): one request at a time, for scripts and tools.

    Environment proxies are ignored, as aiohttp does by default: the daemon is on-prem, and a
    corporate ``http_proxy`` must not capture requests meant for it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (urllib keeps no connections); here for symmetry with AsyncClient."""

    def _run(self, call: _Call) -> Any:
        url = self.endpoints.url(call.service, call.path, call.query)
        data, headers = self._headers(call)
        request = urllib.request.Request(url, data=data, method=call.method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, ctype, raw = response.status, response.headers.get_content_type(), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, ctype, raw = exc.code, exc.headers.get_content_type(), exc.read()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransportError(f"{call.method} {url}: {reason}", url) from exc
        return _decode(call, url, status, ctype, raw)

    # retrieval

    def signup(self, *, appid: str | None = None) -> None:
        """Create the library (AlreadySignedUp if it exists)."""
        self._run(self._requests.signup(appid))

    def add(
        self, image: bytes, brief: bytes | str, tags: Tags | None = None, *, appid: str | None = None
    ) -> ContSign:
        """Store an image with its brief; Duplicate (with the stored item) if already stored."""
        return self._run(self._requests.add(image, brief, tags, appid))

    def update(
        self,
        *,
        image: bytes | None = None,
        contsign: ContSignLike | None = None,
        brief: bytes | str | None = None,
        tags: Tags | None = None,
        appid: str | None = None,
    ) -> ContSign:
        """Replace the brief and/or tags of a stored item (NotFound if it is not stored)."""
        return self._run(self._requests.update(image, contsign, brief, tags, appid))

    def search(
        self,
        *,
        image: bytes | None = None,
        contsign: ContSignLike | None = None,
        pn: int = 0,
        rn: int | None = None,
        tags: Tags | None = None,
        tag_logic: int | str = 0,
        appid: str | None = None,
    ) -> SearchResult:
        """Items most similar to an image (or to a stored item's vector), best first.

        ``tags`` filters; ``tag_logic`` 0/"all" needs every non-zero tag, 1/"any" one of them.
        """
        return self._run(self._requests.search(image, contsign, pn, rn, tags, tag_logic, appid))

    def remove(
        self,
        *,
        contsigns: Iterable[ContSignLike] | None = None,
        contsign: ContSignLike | None = None,
        image: bytes | None = None,
        appid: str | None = None,
    ) -> int:
        """Remove items; returns how many were stored (remove is idempotent)."""
        return self._run(self._requests.remove(contsigns, contsign, image, appid))

    def snapshot(self, *, appid: str | None = None) -> dict[str, int]:
        """The spec's snapshot block: index_size, index_capacity, queue_size."""
        return self._run(self._requests.snapshot(appid))

    # feature

    def classify(self, image: bytes, featureids: str | Iterable[int] = "") -> dict[int, bytes]:
        """Raw features of an image: fea_id (2001 descriptor, 2002 contsign, 2003 model) -> bytes."""
        return self._run(self._requests.classify(image, featureids))

    def descriptor(self, image: bytes) -> np.ndarray:
        """The L2-normalised float32 vector search uses; the dot product of two is their score."""
        return _descriptor(self.classify(image, str(FEA_DESCRIPTOR)))

    # management

    def health(self) -> dict[str, Any]:
        """Version, serving model, number of libraries, uptime."""
        return self._run(self._requests.health())

    def ready(self) -> bool:
        """Whether the model and every library's index are loaded."""
        return self._run(self._requests.ready())

    def metrics(self) -> str:
        """Prometheus text exposition."""
        return self._run(self._requests.metrics())

    def libraries(self) -> list[dict[str, Any]]:
        """Stats of every library."""
        return self._run(self._requests.libraries())

    def create_library(self, appid: str) -> dict[str, Any]:
        """Create a library through the management API; returns its stats."""
        return self._run(self._requests.create_library(appid))

    def library(self, appid: str) -> dict[str, Any]:
        """Stats of one library."""
        return self._run(self._requests.library(appid))

    def delete_library(self, appid: str, confirm: bool = True) -> int:
        """Delete a library and its items; returns how many items it held.

        The daemon wants ``?confirm=<appid>``; ``confirm=False`` leaves it out (the daemon refuses).
        """
        return self._run(self._requests.delete_library(appid, confirm))

    def items(self, appid: str, offset: int = 0, limit: int = 50) -> ItemPage:
        """One page of a library's items, oldest first."""
        return self._run(self._requests.items(appid, offset, limit))

    def iter_items(self, appid: str, page: int = 1000) -> Iterator[Item]:
        """Every item of a library, fetched page by page."""
        offset = 0
        while True:
            result = self.items(appid, offset, page)
            yield from result.items
            offset += len(result.items)
            if not result.has_more or not result.items:
                return

    def item(self, appid: str, contsign: ContSignLike) -> Item:
        """One stored item with its timestamps (NotFound if absent)."""
        return self._run(self._requests.item(appid, contsign))

    def delete_item(self, appid: str, contsign: ContSignLike) -> int:
        """Remove one item; returns 1 if it was stored, else 0."""
        return self._run(self._requests.item(appid, contsign, "DELETE"))

    def thumbnail(self, appid: str, contsign: ContSignLike) -> bytes:
        """The small JPEG stored with an item."""
        return self._run(self._requests.thumbnail(appid, contsign))

    def save(self, appid: str) -> dict[str, Any]:
        """Write the library's index snapshot now."""
        return self._run(self._requests.maintenance(appid, "save"))

    def rebuild(self, appid: str) -> dict[str, Any]:
        """Rebuild the library's index from the database."""
        return self._run(self._requests.maintenance(appid, "rebuild"))

    def compact(self, appid: str) -> dict[str, Any]:
        """Rebuild without the slots of removed items."""
        return self._run(self._requests.maintenance(appid, "compact"))

    def create_job(
        self, appid: str, *, directory: str | None = None, manifest: str | None = None
    ) -> dict[str, Any]:
        """Start a server-side bulk import of a directory or manifest on the daemon's host."""
        return self._run(self._requests.create_job(appid, _job_source(directory, manifest)))

    def upload_job(self, appid: str, zip_bytes: bytes) -> dict[str, Any]:
        """Start a server-side bulk import of the images in a ZIP sent with the request."""
        return self._run(self._requests.upload_job(appid, zip_bytes))

    def jobs(self) -> list[dict[str, Any]]:
        """Every import job the daemon knows."""
        return self._run(self._requests.jobs())

    def job(self, job_id: int | str) -> dict[str, Any]:
        """One job's progress: status, total, done, failed, duplicates, images_per_s, eta_s, errors."""
        return self._run(self._requests.job(job_id))

    def cancel_job(self, job_id: int | str) -> dict[str, Any]:
        """Ask a running job to stop."""
        return self._run(self._requests.cancel_job(job_id))

    def export_library(self, appid: str, vectors: bool = False) -> bytes:
        """The library as a ZIP (with its vectors when asked)."""
        return self._run(self._requests.export(appid, vectors))

    def import_library(self, appid: str, zip_bytes: bytes) -> dict[str, Any]:
        """Load an export ZIP into a library; returns {"imported": n, "duplicates": n}."""
        return self._run(self._requests.import_zip(appid, zip_bytes))


class AsyncClient(_Base):
    """Asynchronous client on aiohttp: many requests in flight over one pooled session.

    Use it as ``async with AsyncClient(...) as client:``; the session opens on first use and
    :meth:`close` releases it.
    """

    def __init__(self, *args: Any, limit: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limit = limit
        self._session: Any = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def _run(self, call: _Call) -> Any:
        import aiohttp
        from yarl import URL

        url = self.endpoints.url(call.service, call.path, call.query)
        data, headers = self._headers(call)
        try:
            async with self._open().request(
                call.method, URL(url, encoded=True), data=data, headers=headers
            ) as response:
                status, ctype, raw = response.status, response.content_type, await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{call.method} {url}: {exc or type(exc).__name__}", url) from exc
        return _decode(call, url, status, ctype, raw)

    # retrieval

    async def signup(self, *, appid: str | None = None) -> None:
        """Create the library (AlreadySignedUp if it exists)."""
        await self._run(self._requests.signup(appid))

    async def add(
        self, image: bytes, brief: bytes | str, tags: Tags | None = None, *, appid: str | None = None
    ) -> ContSign:
        """Store an image with its brief; Duplicate (with the stored item) if already stored."""
        return await self._run(self._requests.add(image, brief, tags, appid))

    async def update(
        self,
        *,
        image: bytes | None = None,
        contsign: ContSignLike | None = None,
        brief: bytes | str | None = None,
        tags: Tags | None = None,
        appid: str | None = None,
    ) -> ContSign:
        """Replace the brief and/or tags of a stored item (NotFound if it is not stored)."""
        return await self._run(self._requests.update(image, contsign, brief, tags, appid))

    async def search(
        self,
        *,
        image: bytes | None = None,
        contsign: ContSignLike | None = None,
        pn: int = 0,
        rn: int | None = None,
        tags: Tags | None = None,
        tag_logic: int | str = 0,
        appid: str | None = None,
    ) -> SearchResult:
        """Items most similar to an image (or to a stored item's vector), best first."""
        return await self._run(self._requests.search(image, contsign, pn, rn, tags, tag_logic, appid))

    async def remove(
        self,
        *,
        contsigns: Iterable[ContSignLike] | None = None,
        contsign: ContSignLike | None = None,
        image: bytes | None = None,
        appid: str | None = None,
    ) -> int:
        """Remove items; returns how many were stored."""
        return await self._run(self._requests.remove(contsigns, contsign, image, appid))

    async def snapshot(self, *, appid: str | None = None) -> dict[str, int]:
        """The spec's snapshot block: index_size, index_capacity, queue_size."""
        return await self._run(self._requests.snapshot(appid))

    # feature

    async def classify(self, image: bytes, featureids: str | Iterable[int] = "") -> dict[int, bytes]:
        """Raw features of an image: fea_id -> bytes."""
        return await self._run(self._requests.classify(image, featureids))

    async def descriptor(self, image: bytes) -> np.ndarray:
        """The L2-normalised float32 vector search uses."""
        return _descriptor(await self.classify(image, str(FEA_DESCRIPTOR)))

    # management

    async def health(self) -> dict[str, Any]:
        """Version, serving model, number of libraries, uptime."""
        return await self._run(self._requests.health())

    async def ready(self) -> bool:
        """Whether the model and every library's index are loaded."""
        return await self._run(self._requests.ready())

    async def metrics(self) -> str:
        """Prometheus text exposition."""
        return await self._run(self._requests.metrics())

    async def libraries(self) -> list[dict[str, Any]]:
        """Stats of every library."""
        return await self._run(self._requests.libraries())

    async def create_library(self, appid: str) -> dict[str, Any]:
        """Create a library through the management API; returns its stats."""
        return await self._run(self._requests.create_library(appid))

    async def library(self, appid: str) -> dict[str, Any]:
        """Stats of one library."""
        return await self._run(self._requests.library(appid))

    async def delete_library(self, appid: str, confirm: bool = True) -> int:
        """Delete a library and its items; returns how many items it held."""
        return await self._run(self._requests.delete_library(appid, confirm))

    async def items(self, appid: str, offset: int = 0, limit: int = 50) -> ItemPage:
        """One page of a library's items, oldest first."""
        return await self._run(self._requests.items(appid, offset, limit))

    async def iter_items(self, appid: str, page: int = 1000) -> AsyncIterator[Item]:
        """Every item of a library, fetched page by page."""
        offset = 0
        while True:
            result = await self.items(appid, offset, page)
            for item in result.items:
                yield item
            offset += len(result.items)
            if not result.has_more or not result.items:
                return

    async def item(self, appid: str, contsign: ContSignLike) -> Item:
        """One stored item with its timestamps (NotFound if absent)."""
        return await self._run(self._requests.item(appid, contsign))

    async def delete_item(self, appid: str, contsign: ContSignLike) -> int:
        """Remove one item; returns 1 if it was stored, else 0."""
        return await self._run(self._requests.item(appid, contsign, "DELETE"))

    async def thumbnail(self, appid: str, contsign: ContSignLike) -> bytes:
        """The small JPEG stored with an item."""
        return await self._run(self._requests.thumbnail(appid, contsign))

    async def save(self, appid: str) -> dict[str, Any]:
        """Write the library's index snapshot now."""
        return await self._run(self._requests.maintenance(appid, "save"))

    async def rebuild(self, appid: str) -> dict[str, Any]:
        """Rebuild the library's index from the database."""
        return await self._run(self._requests.maintenance(appid, "rebuild"))

    async def compact(self, appid: str) -> dict[str, Any]:
        """Rebuild without the slots of removed items."""
        return await self._run(self._requests.maintenance(appid, "compact"))

    async def create_job(
        self, appid: str, *, directory: str | None = None, manifest: str | None = None
    ) -> dict[str, Any]:
        """Start a server-side bulk import of a directory or manifest on the daemon's host."""
        return await self._run(self._requests.create_job(appid, _job_source(directory, manifest)))

    async def upload_job(self, appid: str, zip_bytes: bytes) -> dict[str, Any]:
        """Start a server-side bulk import of the images in a ZIP sent with the request."""
        return await self._run(self._requests.upload_job(appid, zip_bytes))

    async def jobs(self) -> list[dict[str, Any]]:
        """Every import job the daemon knows."""
        return await self._run(self._requests.jobs())

    async def job(self, job_id: int | str) -> dict[str, Any]:
        """One job's progress."""
        return await self._run(self._requests.job(job_id))

    async def cancel_job(self, job_id: int | str) -> dict[str, Any]:
        """Ask a running job to stop."""
        return await self._run(self._requests.cancel_job(job_id))

    async def export_library(self, appid: str, vectors: bool = False) -> bytes:
        """The library as a ZIP (with its vectors when asked)."""
        return await self._run(self._requests.export(appid, vectors))

    async def import_library(self, appid: str, zip_bytes: bytes) -> dict[str, Any]:
        """Load an export ZIP into a library; returns {"imported": n, "duplicates": n}."""
        return await self._run(self._requests.import_zip(appid, zip_bytes))
