"""Python clients for a same_search daemon: :class:`Client` (blocking) and :class:`AsyncClient` (aiohttp).

Usage::

    from same_search.client import Client, NotSignedUp

    client = Client("127.0.0.1", search_port=8025, feature_port=8120, admin_port=8103,
                    token=None, appid="catalogue")
    client.signup()                                    # create the library (AlreadySignedUp if it exists)
    sign = client.add(open("shoe.jpg", "rb").read(), "shoe.jpg", tags=(3, 0))
    for hit in client.search(image=open("query.jpg", "rb").read(), rn=10, min_score=0.5):
        print(hit.score, hit.contsign, hit.brief_text)  # brief: bytes as stored; brief_text: str
    client.search(image=photo, region={"x": 0.1, "y": 0.1, "w": 0.5, "h": 0.5, "unit": "fraction"})
    stats = client.add_folder("/photos", signup=True)   # every image under a folder, brief = relative path
    print(stats.summary())

    async with AsyncClient("127.0.0.1", appid="catalogue") as aclient:   # same methods, awaited
        hits = await aclient.search(contsign=sign)

    Client.from_config(same_search.config.load("config.toml"))  # the ports and token the daemon reads

Both speak the wire contract of ``docs/api.md`` (ports 8025 and 8120) and the management API on
8103 (``docs/admin.md``), and turn its envelope into Python: results become dataclasses
(:class:`Hit`, :class:`Item`, :class:`SearchResult`), any ``err_no != 0`` becomes a
:class:`SameSearchError` subclass (:class:`NotSignedUp`, :class:`Duplicate`, :class:`BadImage`,
...), and anything that is not a well-formed HTTP 200 reply becomes a :class:`TransportError`, so
callers never inspect ``err_no`` themselves. A brief may be sent as ``str`` (UTF-8) or ``bytes``;
it comes back as the stored bytes in ``.brief`` (the wire carries bytes, and a brief need not be
text) and as ``str`` in ``.brief_text``.

How it is built: each request is written once in :class:`_Base`, as a method decorated with
``@_request`` that describes the exchange (a :class:`_Call`: where, what is sent, how the reply is
read), or, for a management request whose only arguments are its path's placeholders, one line of
:func:`_route`. Both clients derive their public methods, signature and docstring included, from
that one description; they differ only in how the bytes travel (``urllib`` or aiohttp) and in
returning a value or a coroutine. A new route is one method here plus its path in
:mod:`same_search.wire`. The module imports neither torch nor the server, so scripts that only talk
to a daemon start fast.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import inspect
import json
import os
import string
import types
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    Self,
    TextIO,
    TypeVar,
    overload,
)

import numpy as np

from same_search import client_values as values
from same_search import wire
from same_search.client_values import (
    AlreadySignedUp,
    AuthFailed,
    BadImage,
    BadRequest,
    Busy,
    ClientError,
    ContSign,
    ContSignLike,
    CopyRegion,
    Duplicate,
    Endpoints,
    Hit,
    Item,
    ItemPage,
    NotFound,
    NotSignedUp,
    SameSearchError,
    SearchResult,
    Tags,
    TransportError,
    contsign_of,
)
from same_search.config import Config
from same_search.proto import imgfeature_pb2
from same_search.wire import FEA_DESCRIPTOR, TOKEN_HEADER

if TYPE_CHECKING:
    from same_search.cli.folder_import import ImportStats

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
    "CopyRegion",
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

DEFAULT_SOURCE = "same_search.client"
P = ParamSpec("P")
T = TypeVar("T")


# ------------------------------------------------------------------------------------ request specs

Reply = Literal["envelope", "probe", "text", "bytes"]


@dataclass(frozen=True)
class _Call(Generic[T]):
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
    parse: Callable[[Any], T] = values.without_envelope  # type: ignore[assignment]

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


def _decode(call: _Call[T], url: str, status: int, content_type: str, raw: bytes) -> T:
    """Turn one HTTP answer into the call's result, or raise the matching error."""
    accepted = (200, 503) if call.reply == "probe" else (200,)
    if status not in accepted:
        raise TransportError(f"{url}: HTTP {status}", url, status)
    if call.reply in ("text", "bytes") and content_type != "application/json":
        return raw.decode("utf-8") if call.reply == "text" else raw  # type: ignore[return-value]
    body = _json(raw, url, status)
    if call.reply != "probe":
        values.raise_for(body)
    return call.parse(body)


def _quote(value: str | int) -> str:
    return urllib.parse.quote(str(value), safe="")


def _naming(image: bytes | None, contsign: ContSignLike | None) -> dict[str, Any]:
    """The fields that name an item: its image and/or its contsign (``None`` ones are left out)."""
    return {"image": values.image_b64(image), "contsign": values.contsign_json(contsign)}


def _job_source(directory: str | None, manifest: str | None, sync: str | None) -> dict[str, str]:
    given = {
        kind: path for kind, path in (("dir", directory), ("manifest", manifest), ("sync", sync)) if path
    }
    if len(given) != 1:
        raise ValueError(
            "a job needs exactly one of directory=, manifest= or sync= (a path on the daemon's host)"
        )
    return given


class _Request(Generic[P, T]):
    """A public method of both clients, written once as the function that describes its request.

    On a :class:`Client` it runs the described :class:`_Call` and returns the result; on an
    :class:`AsyncClient` it is a coroutine function of the same. Name, docstring and signature
    are those of the describing function (its ``-> _Call[X]`` shown as ``-> X``), so ``help()``
    and editors show the same text for both clients.
    """

    def __init__(self, describe: Callable[Concatenate[Any, P], _Call[T]]) -> None:
        self.describe = describe
        self.__doc__ = describe.__doc__
        self._methods: dict[type, Callable[..., Any]] = {}

    def __set_name__(self, owner: type, name: str) -> None:
        self.describe.__name__ = name

    @overload
    def __get__(
        self, client: AsyncClient, owner: type | None = None
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, client: Client, owner: type | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: None, owner: type) -> Callable[..., Any]: ...
    def __get__(self, client: Any, owner: type | None = None) -> Any:
        owner = owner or type(client)
        method = self._methods.get(owner) or self._derive(owner)
        return method if client is None else types.MethodType(method, client)

    def _derive(self, owner: type) -> Callable[..., Any]:
        method = owner._method(self.describe)
        functools.update_wrapper(method, self.describe)
        method.__qualname__ = f"{owner.__qualname__}.{self.describe.__name__}"
        signature = inspect.signature(self.describe)
        returns = signature.return_annotation
        if isinstance(returns, str):  # "_Call[X]" -> "X": what the method gives its caller
            signature = signature.replace(return_annotation=returns.removeprefix("_Call[").removesuffix("]"))
        method.__signature__ = signature  # type: ignore[attr-defined]
        self._methods[owner] = method
        return method


_request = _Request  # the decorator's name: ``@_request`` reads as what it marks

#: Each placeholder of a management path as a method argument: its annotation, how it enters the path.
_PLACEHOLDERS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "appid": ("str", _quote),
    "contsign": ("ContSignLike", values.path_key),
    "job_id": ("int | str", _quote),
    "scan_id": ("int | str", _quote),
}


def _route(
    method: str,
    path: str,
    doc: str,
    parse: Callable[[Any], T] = values.without_envelope,
    reply: Reply = "envelope",
) -> _Request[..., T]:
    """A management request whose arguments are the placeholders of ``path``, in order."""
    names = [name for _, name, _, _ in string.Formatter().parse(path) if name]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind, annotation=_PLACEHOLDERS[n][0]) for n in names]
    signature = inspect.Signature([inspect.Parameter("self", kind), *params])

    def describe(self: _Base, *args: Any, **kwargs: Any) -> _Call[T]:
        given = signature.bind(self, *args, **kwargs).arguments
        filled = path.format(**{n: _PLACEHOLDERS[n][1](given[n]) for n in names})
        return _Call("admin", filled, method, parse=parse, reply=reply)

    describe.__doc__ = doc
    describe.__signature__ = signature  # type: ignore[attr-defined]
    return _Request(describe)


# ------------------------------------------------------------------------------------------- clients


class _Base:
    """What both clients share: endpoints, token, construction from config, and every request."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        search_port: int = wire.SEARCH_PORT,
        feature_port: int = wire.FEATURE_PORT,
        admin_port: int = wire.ADMIN_PORT,
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
        self.source = source

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

    @staticmethod
    def _method(describe: Callable[..., _Call[Any]]) -> Callable[..., Any]:
        """The public method of this kind of client for one request description (see _Request).

        Here, on the shared base, a method that only says which class to use: ``help()`` and
        ``inspect`` look every attribute up on each class of the MRO, so this must not raise.
        """

        def method(self: _Base, *args: Any, **kwargs: Any) -> Any:
            raise TypeError(f"{type(self).__name__} sends nothing: use Client or AsyncClient")

        return method

    def _headers(self, call: _Call[Any]) -> tuple[bytes | None, dict[str, str]]:
        data, headers = call.payload()
        if self.token:
            headers[TOKEN_HEADER] = self.token
        return data, headers

    def _settings(self) -> dict[str, Any]:
        """The constructor arguments that make another client of this daemon (any kind)."""
        ends = self.endpoints
        return {
            "host": ends.host,
            "search_port": ends.search_port,
            "feature_port": ends.feature_port,
            "admin_port": ends.admin_port,
            "admin_host": ends.admin_host,
            "token": self.token,
            "appid": self.appid,
            "timeout": self.timeout,
            "source": self.source,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoints!r}, appid={self.appid!r})"

    # ---- how requests are described (shared by the methods below)

    def _rts(self, route: str, appid: str | None, parse: Callable[[Any], T], **fields: Any) -> _Call[T]:
        name = appid or self.appid
        if not name:
            raise ValueError("no appid: pass appid= or construct the client with one")
        body = {"from": self.source, "appid": name, **{k: v for k, v in fields.items() if v is not None}}
        return _Call("search", wire.rts(route), body=body, parse=parse)

    def _classify(self, image: bytes, featureids: str | Iterable[int]) -> _Call[dict[int, bytes]]:
        ids = featureids if isinstance(featureids, str) else ",".join(str(i) for i in featureids)
        request = imgfeature_pb2.FeatureRequest(image=image, query_sign="0,0", featureids=ids)
        body = {"from": self.source, "format": "json", "data": values.b64(request.SerializeToString())}
        if self.appid:
            body["appid"] = self.appid
        return _Call("feature", wire.CLASSIFY, body=body, parse=values.features_of)

    # ---- retrieval, port 8025

    @_request
    def signup(self, *, appid: str | None = None, model: str | None = None) -> _Call[None]:
        """Create the library (AlreadySignedUp if it exists), for the model profile ``model``
        (an extension; None: the daemon's default model)."""
        return self._rts("signup", appid, lambda body: None, model=model)

    @_request
    def add(
        self, image: bytes, brief: bytes | str, tags: Tags | None = None, *, appid: str | None = None
    ) -> _Call[ContSign]:
        """Store an image with its brief; Duplicate (with the stored item) if already stored."""
        features = values.features_json(brief, tags)
        return self._rts("add", appid, values.contsign_reply, image=values.b64(image), features=features)

    @_request
    def add_with_policy(
        self,
        image: bytes,
        brief: bytes | str,
        tags: Tags | None = None,
        *,
        dup_policy: str | None = None,
        dup_min_score: float | None = None,
        appid: str | None = None,
    ) -> _Call[dict[str, Any]]:
        """``add`` with the near-duplicate policy (an extension; None: the library's default).

        Returns the reply: ``contsign`` and, under ``warn``, the near-duplicates in ``data_items``;
        under ``reject`` a near-duplicate raises Duplicate carrying them.
        """
        features = values.features_json(brief, tags)
        fields = {"dup_policy": dup_policy, "dup_min_score": dup_min_score}
        return self._rts("add", appid, dict, image=values.b64(image), features=features, **fields)

    @_request
    def update(
        self,
        *,
        image: bytes | None = None,
        contsign: ContSignLike | None = None,
        brief: bytes | str | None = None,
        tags: Tags | None = None,
        appid: str | None = None,
    ) -> _Call[ContSign]:
        """Replace the brief and/or tags of a stored item (NotFound if it is not stored)."""
        if image is None and contsign is None:
            raise ValueError("update needs image= or contsign=")
        if brief is None and tags is None:
            raise ValueError("update needs brief= and/or tags=")
        features = values.features_json(brief, tags)
        return self._rts(
            "update", appid, values.contsign_reply, **_naming(image, contsign), features=features
        )

    @_request
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
        min_score: float | None = None,
        region: dict[str, Any] | None = None,
        same_picture: bool = False,
        query_expansion: int | None = None,
        promote_same_picture: bool | None = None,
    ) -> _Call[SearchResult]:
        """Items most similar to an image (or to a stored item's vector).

        In the library's ranking: by descending score (the spec's order) unless the library
        chose re-ranking (:meth:`set_ranking`); ``result.ranking`` says which answered.
        ``tags`` filters; ``tag_logic`` 0/"all" needs every non-zero tag, 1/"any" one of them.
        Extensions (docs/api.md): ``min_score`` keeps hits scoring at least that; ``region``
        (``{"x", "y", "w", "h"}`` in pixels, or with ``"unit": "fraction"``) searches that box of
        the image; ``same_picture`` keeps only the hits judged the same picture, possibly edited;
        ``query_expansion`` (0 = off) and ``promote_same_picture`` override the library's
        ranking for this search (None: the library's).
        """
        if (image is None) == (contsign is None):
            raise ValueError("search needs exactly one of image= or contsign=")
        logic = {"all": 0, "any": 1}.get(tag_logic, tag_logic) if isinstance(tag_logic, str) else tag_logic
        filters = (
            {"features": values.features_json(None, tags), "tag_logic": logic} if tags is not None else {}
        )
        return self._rts(
            "search",
            appid,
            values.search_result,
            **_naming(image, contsign),
            pn=pn,
            rn=rn,
            min_score=min_score,
            region=region,
            same_picture=1 if same_picture else None,
            query_expansion=query_expansion,
            promote_same_picture=None if promote_same_picture is None else int(promote_same_picture),
            **filters,
        )

    @_request
    def remove(
        self,
        *,
        contsigns: Iterable[ContSignLike] | None = None,
        contsign: ContSignLike | None = None,
        image: bytes | None = None,
        appid: str | None = None,
    ) -> _Call[int]:
        """Remove items; returns how many were stored (remove is idempotent)."""
        listed = [values.as_contsign(c).to_json() for c in contsigns] if contsigns is not None else None
        if not listed and contsign is None and image is None:
            raise ValueError("remove needs contsigns=, contsign= or image=")
        named = _naming(image, contsign)
        return self._rts("remove", appid, values.pick("removed", int), contsigns=listed or None, **named)

    @_request
    def snapshot(self, *, appid: str | None = None) -> _Call[dict[str, int]]:
        """The spec's snapshot block: index_size, index_capacity, queue_size."""
        return self._rts("snapshot", appid, values.pick("snapshot", dict))

    # ---- feature, port 8120

    @_request
    def classify(self, image: bytes, featureids: str | Iterable[int] = "") -> _Call[dict[int, bytes]]:
        """Raw features of an image: fea_id (2001 descriptor, 2002 contsign, 2003 model) -> bytes."""
        return self._classify(image, featureids)

    @_request
    def descriptor(self, image: bytes) -> _Call[np.ndarray]:
        """The L2-normalised float32 vector search uses; the dot product of two is their score."""
        return replace(self._classify(image, str(FEA_DESCRIPTOR)), parse=values.descriptor_of)

    # ---- management, port 8103 (requests whose only arguments are the path's placeholders: _route)

    health = _route("GET", wire.HEALTHZ, "Version, serving model, number of libraries, uptime.")
    ready = _route(
        "GET",
        wire.READYZ,
        "Whether the model and every library's index are loaded.",
        values.ready_of,
        reply="probe",
    )
    metrics = _route("GET", wire.METRICS, "Prometheus text exposition.", reply="text")
    libraries = _route("GET", wire.LIBRARIES, "Stats of every library.", values.pick("libraries", list))
    library = _route("GET", wire.LIBRARY, "Stats of one library.", values.pick("library", dict))
    item = _route(
        "GET",
        wire.ITEM,
        "One stored item with its timestamps (NotFound if absent).",
        values.pick("item", values.item_from_admin),
    )
    delete_item = _route(
        "DELETE",
        wire.ITEM,
        "Remove one item; returns 1 if it was stored, else 0.",
        values.pick("removed", int),
    )
    thumbnail = _route("GET", wire.THUMBNAIL, "The small JPEG stored with an item.", reply="bytes")
    save = _route("POST", wire.SAVE, "Write the library's index snapshot now.")
    rebuild = _route(
        "POST",
        f"{wire.REBUILD}?wait=1",
        "Rebuild the library's index from the database; returns when it has ended (the library "
        "serves meanwhile).",
    )
    compact = _route(
        "POST", f"{wire.COMPACT}?wait=1", "Rebuild without the slots of removed items; returns when done."
    )
    rebuild_status = _route(
        "GET",
        wire.REBUILD,
        "The library's running rebuild, else its last one (state, phase, done, total, eta_s, error).",
        values.pick("rebuild", lambda state: state),
    )
    jobs = _route("GET", wire.JOBS, "Every import job the daemon knows.", values.pick("jobs", list))
    job = _route(
        "GET",
        wire.JOB,
        "One job's progress: status, total, done, failed, duplicates, images_per_s, eta_s, errors.",
        values.pick("job", dict),
    )
    cancel_job = _route("POST", wire.JOB_CANCEL, "Ask a running job to stop.", values.job_or_payload)
    reembeds = _route(
        "GET", wire.REEMBED, "A library's re-embed jobs, newest first.", values.pick("jobs", list)
    )
    reembed = _route(
        "GET",
        wire.REEMBED_JOB,
        "One re-embed job: status, done, total, resumed, message.",
        values.pick("job", dict),
    )
    cancel_reembed = _route(
        "POST",
        wire.REEMBED_CANCEL,
        "Stop a re-embed job; the library keeps its model.",
        values.pick("job", dict),
    )

    sync_schedule = _route(
        "GET",
        wire.SYNC,
        "The library's folder-sync schedule (folder, every, next_run, last_run, last_job), or None.",
        values.pick("schedule", lambda schedule: schedule),
    )
    sync_schedules = _route(
        "GET", wire.SYNCS, "Every library's folder-sync schedule.", values.pick("schedules", list)
    )
    delete_sync = _route(
        "DELETE",
        wire.SYNC,
        "Stop following the folder (a sync in progress runs on); 1 if there was a schedule, else 0.",
        values.pick("removed", int),
    )
    run_sync = _route(
        "POST",
        wire.SYNC_RUN,
        "Sync the library's folder now (its schedule's beat is kept): {job, started}; started is "
        "False when its sync job was already queued or running (that job is returned).",
    )

    cancel_duplicates = _route(
        "POST", wire.DUPLICATES_CANCEL, "Stop a running duplicates scan.", values.pick("scan", dict)
    )
    remove_duplicate_extras = _route(
        "POST",
        wire.DUPLICATES_REMOVE,
        "Remove every extra a scan found; returns how many.",
        values.pick("removed", int),
    )

    @_request
    def start_duplicates(self, appid: str, min_score: float | None = None) -> _Call[dict[str, Any]]:
        """Start a scan for groups of near-duplicates (an extension); returns the scan."""
        body = {} if min_score is None else {"min_score": min_score}
        path = wire.DUPLICATES.format(appid=_quote(appid))
        return _Call("admin", path, body=body, parse=values.pick("scan", dict))

    @_request
    def duplicates(
        self, appid: str, scan_id: int | str, offset: int = 0, limit: int = 100
    ) -> _Call[dict[str, Any]]:
        """A scan's progress and one page of its groups."""
        path = wire.DUPLICATES_SCAN.format(appid=_quote(appid), scan_id=_quote(scan_id))
        query = {"offset": str(offset), "limit": str(limit)}
        return _Call("admin", path, "GET", query=query, parse=values.pick("scan", dict))

    @_request
    def set_ranking(
        self,
        appid: str,
        order: Literal["score", "reranked"] | None = None,
        *,
        query_expansion: int | None = None,
        promote_same_picture: bool | None = None,
    ) -> _Call[dict[str, Any]]:
        """Choose how a library ranks searches by image (an extension); returns its stats.

        ``order="score"``: the spec's order, nearest neighbours by descending score (the
        default); ``order="reranked"``: query expansion 2 and promotion of confirmed copies, not
        in score order. Or set ``query_expansion`` (0-10) and/or ``promote_same_picture``.
        """
        body: dict[str, Any] = {}
        if order is not None:
            body["order"] = order
        if query_expansion is not None:
            body["query_expansion"] = query_expansion
        if promote_same_picture is not None:
            body["promote_same_picture"] = promote_same_picture
        path = wire.RANKING.format(appid=_quote(appid))
        return _Call("admin", path, "PUT", body=body, parse=values.pick("library", dict))

    @_request
    def set_space(
        self, appid: str, space: Literal["learned", "native"], *, wait: bool = False
    ) -> _Call[dict[str, Any]]:
        """Move a library into its learned space or back to native cosine (an extension);
        returns its stats.

        ``space="learned"``: searches rank and score in a space fitted on the library's own items
        (better category precision, a few edited copies lose their place: docs/quality.md);
        ``"native"``: native cosine, every library's default. The move is a background rebuild
        while the library serves; ``wait=True`` returns once it has ended.
        """
        path = wire.SPACE.format(appid=_quote(appid))
        query = {"wait": "1"} if wait else None
        return _Call(
            "admin", path, "PUT", body={"space": space}, query=query, parse=values.pick("library", dict)
        )

    @_request
    def set_sync(
        self,
        appid: str,
        folder: str,
        every: str | int,
        *,
        remove_missing: bool = False,
        start_at: float | None = None,
    ) -> _Call[dict[str, Any]]:
        """Make a library follow a folder on the daemon's host (an extension): a sync job every
        ``every`` (seconds, or "15m", "6h", "1d"; at least a minute), removing the items whose
        file is gone when ``remove_missing``. The first run is due at ``start_at`` (epoch
        seconds; None: at once). Replaces the library's schedule if it had one; returns it."""
        body: dict[str, Any] = {"folder": folder, "every": every, "remove_missing": remove_missing}
        if start_at is not None:
            body["start_at"] = start_at
        path = wire.SYNC.format(appid=_quote(appid))
        return _Call("admin", path, "PUT", body=body, parse=values.pick("schedule", dict))

    @_request
    def edit_item(
        self, appid: str, contsign: ContSignLike, brief: str | bytes | None = None, tags: Tags | None = None
    ) -> _Call[Item]:
        """Change a stored item's brief and/or tags through the management API (what the spec's
        ``update`` does); returns the item as it is now (NotFound if it is not stored)."""
        body: dict[str, Any] = {}
        if isinstance(brief, str):
            body["brief_text"] = brief
        elif brief is not None:
            body["brief"] = values.b64(brief)
        if tags is not None:
            body["tags"] = list(tags)
        path = wire.ITEM.format(appid=_quote(appid), contsign=values.path_key(contsign))
        return _Call("admin", path, "PATCH", body=body, parse=values.pick("item", values.item_from_admin))

    @_request
    def create_library(self, appid: str, model: str | None = None) -> _Call[dict[str, Any]]:
        """Create a library through the management API (for the model profile ``model``, None:
        the default); returns its stats."""
        body = {"appid": appid} if model is None else {"appid": appid, "model": model}
        return _Call("admin", wire.LIBRARIES, body=body, parse=values.pick("library", dict))

    @_request
    def start_reembed(self, appid: str, model: str) -> _Call[dict[str, Any]]:
        """Start re-embedding a library with the model profile ``model`` from its kept originals
        (an extension); returns the job."""
        path = wire.REEMBED.format(appid=_quote(appid))
        return _Call("admin", path, body={"model": model}, parse=values.pick("job", dict))

    @_request
    def delete_library(self, appid: str, confirm: bool = True) -> _Call[int]:
        """Delete a library and its items; returns how many items it held.

        The daemon wants ``?confirm=<appid>``; ``confirm=False`` leaves it out (the daemon refuses).
        """
        path, query = wire.LIBRARY.format(appid=_quote(appid)), {"confirm": appid} if confirm else None
        return _Call("admin", path, "DELETE", query=query, parse=values.pick("items", int))

    @_request
    def items(self, appid: str, offset: int = 0, limit: int = 50) -> _Call[ItemPage]:
        """One page of a library's items, oldest first."""
        query = {"offset": str(offset), "limit": str(limit)}
        return _Call(
            "admin", wire.ITEMS.format(appid=_quote(appid)), "GET", query=query, parse=values.item_page
        )

    @_request
    def create_job(
        self,
        appid: str,
        *,
        directory: str | None = None,
        manifest: str | None = None,
        sync: str | None = None,
        remove_missing: bool = False,
        dup_policy: Literal["off", "warn", "reject"] | None = None,
        dup_min_score: float | None = None,
    ) -> _Call[dict[str, Any]]:
        """Start a server-side bulk import of a directory or manifest on the daemon's host
        (absolute paths), with its own near-duplicate policy if given; returns the job.

        ``sync=folder`` makes the library follow that folder instead: new files are added,
        changed ones replace their item, moved ones keep theirs; with ``remove_missing`` the
        items whose file is gone are removed (docs/admin.md, "Folder sync"). Run it again to
        sync again: nothing changes when the folder did not."""
        body: dict[str, Any] = {"appid": appid, "source": _job_source(directory, manifest, sync)}
        if remove_missing:
            body["remove_missing"] = True
        if dup_policy is not None:
            body["dup_policy"] = dup_policy
        if dup_min_score is not None:
            body["dup_min_score"] = dup_min_score
        return _Call("admin", wire.JOBS, body=body, parse=values.pick("job", dict))

    @_request
    def upload_job(self, appid: str, zip_bytes: bytes) -> _Call[dict[str, Any]]:
        """Start a server-side bulk import of the images in a ZIP sent with the request."""
        query = {"appid": appid}
        return _Call("admin", wire.JOB_UPLOAD, data=zip_bytes, query=query, parse=values.pick("job", dict))

    @_request
    def export_library(self, appid: str, vectors: bool = False, originals: bool = True) -> _Call[bytes]:
        """The library as a ZIP (with its vectors when asked; with its kept originals unless not)."""
        query = {"vectors": "1"} if vectors else {}
        if not originals:
            query["originals"] = "0"
        return _Call("admin", wire.EXPORT.format(appid=_quote(appid)), "GET", query=query, reply="bytes")

    @_request
    def import_library(self, appid: str, zip_bytes: bytes) -> _Call[dict[str, Any]]:
        """Load an export ZIP into a library; returns {"imported": n, "duplicates": n}."""
        return _Call("admin", wire.IMPORT.format(appid=_quote(appid)), data=zip_bytes)


_ARGUMENTS = """
    Args:
        host: address of the feature (8120) and retrieval (8025) services.
        search_port, feature_port, admin_port: the daemon's three ports (``[server]`` in its config).
        admin_host: address of the management port when it differs from ``host``.
        token: sent as ``X-Same-Token`` (``[auth] tokens``); None when the daemon wants none.
        appid: the library that retrieval methods use when they are not given ``appid=``.
        timeout: seconds one request may take.
        source: the ``from`` field of retrieval requests (it shows in the daemon's log)."""


class Client(_Base):
    """Blocking client (stdlib ``urllib`` only): one request at a time, for scripts and tools.

    ``Client("127.0.0.1", appid="catalogue").search(image=data)``; see the module's help for more.
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

    @staticmethod
    def _method(describe: Callable[..., _Call[Any]]) -> Callable[..., Any]:
        def method(self: Client, *args: Any, **kwargs: Any) -> Any:
            return self._run(describe(self, *args, **kwargs))

        return method

    def add_folder(self, path: str | os.PathLike[str], **options: Any) -> ImportStats:
        # Signature and docstring: AsyncClient.add_folder's (set below the class).
        async def run() -> ImportStats:
            async with AsyncClient(**self._settings()) as aclient:
                return await aclient.add_folder(path, **options)

        return asyncio.run(run())

    def _run(self, call: _Call[T]) -> T:
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

    def iter_items(self, appid: str, page: int = 1000) -> Iterator[Item]:
        """Every item of a library, fetched page by page."""
        offset: int | None = 0
        while offset is not None:
            result = self.items(appid, offset, page)
            yield from result.items
            offset = _next_offset(offset, result)


class AsyncClient(_Base):
    """Asynchronous client on aiohttp: many requests in flight over one pooled session.

    Use it as ``async with AsyncClient(...) as client:``; the session opens on first use and
    :meth:`close` releases it. Every request method is a coroutine function.
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

    @staticmethod
    def _method(describe: Callable[..., _Call[Any]]) -> Callable[..., Any]:
        async def method(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
            return await self._run(describe(self, *args, **kwargs))

        return method

    async def add_folder(
        self,
        path: str | os.PathLike[str],
        *,
        appid: str | None = None,
        signup: bool = False,
        concurrency: int = 8,
        dup_policy: Literal["off", "warn", "reject"] | None = None,
        dup_min_score: float | None = None,
        max_image_bytes: int | None = None,
        progress: TextIO | None = None,
    ) -> ImportStats:
        """Add every image under a folder on this machine, as ``same_search import DIR`` does.

        The folder is walked recursively and each image file is sent with ``add`` (its brief is
        its path relative to ``path``), ``concurrency`` adds in flight, "not now" answers retried.
        A file already stored counts as a duplicate, not a failure. ``signup=True`` creates the
        library when it is missing; ``dup_policy``/``dup_min_score`` apply the near-duplicate
        policy to these adds (None: the library's); files over ``max_image_bytes`` (None: the
        daemon's default limit) fail without being sent; ``progress`` (e.g. ``sys.stderr``)
        receives a progress line now and then. For a folder on the daemon's own host, a server
        job (:meth:`create_job`) avoids sending the bytes.

        Returns the counts (``added``, ``duplicates``, ``failed`` with ``failures`` as
        ``(brief, reason)`` pairs; ``summary()`` as text). Raises :class:`ClientError` when the
        folder cannot be read or the library is missing, :class:`TransportError` when the daemon
        stopped answering. ``Client.add_folder`` runs its own event loop (``asyncio.run``): from
        code already inside one, await ``AsyncClient.add_folder``.
        """
        from same_search.cli.folder_import import import_directory  # the CLI's, not a copy

        name = appid or self.appid
        if not name:
            raise ValueError("no appid: pass appid= or construct the client with one")
        if not Path(path).is_dir():  # the finder's own message speaks of a server job's folder
            raise ClientError(f"{path} is not a directory on this machine")
        chosen = {"dup_policy": dup_policy, "dup_min_score": dup_min_score}
        policy = {key: value for key, value in chosen.items() if value is not None}
        limit = max_image_bytes or Config().limits.max_image_bytes
        result = await import_directory(self, Path(path), name, signup, concurrency, progress, limit, policy)
        if isinstance(result, str):
            raise ClientError(result)
        if result.unreachable:
            raise TransportError(f"stopped after {result.processed} files: {result.unreachable}")
        return result

    def _open(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def _run(self, call: _Call[T]) -> T:
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

    async def iter_items(self, appid: str, page: int = 1000) -> AsyncIterator[Item]:
        """Every item of a library, fetched page by page."""
        offset: int | None = 0
        while offset is not None:
            result = await self.items(appid, offset, page)
            for item in result.items:
                yield item
            offset = _next_offset(offset, result)


def _client_signature(*extra: inspect.Parameter) -> inspect.Signature:
    """``_Base.__init__``'s parameters (which both clients forward) plus the client's own."""
    base = inspect.signature(_Base.__init__)
    return base.replace(parameters=[*base.parameters.values(), *extra])


# Both clients forward their arguments to _Base: show the real ones to help() and inspect.
Client.__init__.__signature__ = _client_signature()  # type: ignore[attr-defined]
Client.__doc__ = f"{Client.__doc__}{_ARGUMENTS}\n"
AsyncClient.__init__.__signature__ = _client_signature(  # type: ignore[attr-defined]
    inspect.Parameter("limit", inspect.Parameter.KEYWORD_ONLY, default=100, annotation="int")
)
AsyncClient.__doc__ = f"{AsyncClient.__doc__}{_ARGUMENTS}\n        limit: connections kept in the pool.\n"
Client.add_folder.__signature__ = inspect.signature(AsyncClient.add_folder)  # type: ignore[attr-defined]
Client.add_folder.__doc__ = AsyncClient.add_folder.__doc__


def _next_offset(offset: int, page: ItemPage) -> int | None:
    """Where the page after ``page`` (asked for at ``offset``) starts; ``None`` after the last."""
    return offset + len(page.items) if page.has_more and page.items else None
