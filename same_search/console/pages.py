"""Console pages: libraries overview, search by picture, item detail, import jobs.

Rendered on the server with escaped f-strings (no template engine, no build step, no CDN);
``static/console.js`` adds the interactive parts by calling the management API. Every appid and
contsign in a link is percent-encoded as one path segment (``href``/``src`` below), so names with
``/``, ``?``, ``#``, ``%``, spaces or non-ASCII characters lead where they say. When ``[auth] tokens``
are set the pages need the operator's login (``console.login``).
"""

from __future__ import annotations

import time
import urllib.parse
from html import escape
from importlib import resources

from aiohttp import web

from same_search.console.login import FRAME_HEADERS, LOGOUT, operator_only
from same_search.console.panels import edit_form, sync_panel
from same_search.contsign import ContSign
from same_search.errors import ApiError, ErrNo
from same_search.libraries import Library
from same_search.routes.fields import check_library_name, is_decimal
from same_search.services import SERVICES, Services

STATIC = resources.files("same_search.console").joinpath("static")
PAGE_SIZE = 48
#: SQLite's OFFSET is a signed 64-bit integer; past this nothing is listed anyway.
MAX_OFFSET = 1 << 62


def segment(text: str) -> str:
    """``text`` as one URL path segment: every reserved, space or non-ASCII character percent-encoded."""
    return urllib.parse.quote(text, safe="")


def linkable(appid: str) -> bool:
    """Whether a browser can carry ``appid`` in a path: it resolves "." and ".." segments, even encoded."""
    return appid not in (".", "..")


def library_href(appid: str) -> str:
    """The console page of a library (HTML-escaped, ready for an attribute)."""
    return escape(f"/libraries/{segment(appid)}")


def item_href(appid: str, key: str) -> str:
    """The console page of one item."""
    return escape(f"/libraries/{segment(appid)}/items/{segment(key)}")


def thumbnail_src(appid: str, key: str) -> str:
    """The thumbnail of one item under the management API (a placeholder image when none is stored)."""
    return escape(f"/api/libraries/{segment(appid)}/items/{segment(key)}/thumbnail?placeholder=1")


def _library_link(appid: str) -> str:
    if not linkable(appid):
        title = "a browser cannot open this name as a URL path; use the API or the CLI"
        return f'<span title="{escape(title)}">{escape(appid)}</span>'
    return f'<a href="{library_href(appid)}">{escape(appid)}</a>'


def _when(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _page(services: Services, title: str, body: str, appid: str = "") -> web.Response:
    info = services.embed.info
    health = services.health()
    logout = (
        f'<button id="logout" class="logout" data-action="{LOGOUT}">Log out</button>'
        if services.cfg.auth.enabled
        else ""
    )
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · same_search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/console.css"></head>
<body data-appid="{escape(appid)}">
<header><a class="brand" href="/">same_search</a>
<span class="status" id="status">v{escape(health["version"])} · model {escape(info.model_id)} ({info.dim}-d, {escape(info.device)})
· <span id="library-count">{health["libraries"]}</span> libraries · up <span id="uptime"
data-started="{time.time() - health["uptime_s"]:.0f}">{health["uptime_s"]:.0f}s</span></span>{logout}</header>
<main>{body}</main>
<script src="/static/console.js"></script></body></html>"""
    return web.Response(text=html, content_type="text/html", headers=FRAME_HEADERS)


def _error(services: Services, exc: ApiError) -> web.Response:
    body = f'<h1>Not available</h1><p class="error">err_no {int(exc.err_no)}: {escape(exc.err_msg)}</p>'
    return _page(services, "error", body)


def _results_block(label: str) -> str:
    """Search results: the query picture beside them, a status line (count, time, order) above,
    and "More results" below while the daemon has more (console.js fills it)."""
    return (
        f'<h2>{escape(label)}</h2><div class="search-layout"><figure id="query" hidden>'
        '<img id="query-image" alt="query picture"><figcaption>query</figcaption></figure>'
        '<div class="results-column"><p id="search-status"></p><div class="grid" id="results"></div>'
        '<p><button id="more" hidden>More results</button></p></div></div>'
    )


async def overview(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    libs = services.libraries
    rows = "".join(
        f'<tr data-appid="{escape(s["appid"])}"><td>{_library_link(s["appid"])}</td><td class="items">{s["items"]}</td>'
        f"<td>{s['search']}{_rebuilding(s['rebuild'])}</td><td>{escape(s['model'])}</td>"
        f"<td>{_when(s['last_index_save'])}</td></tr>"
        for s in [await libs.stats.of(lib) for lib in await libs.registry.all()]
    )
    rows += "".join(
        f'<tr class="unavailable" data-appid="{escape(appid)}"><td>{escape(appid)}</td>'
        f'<td colspan="4" class="error">unavailable: '
        f"{escape(aside.reason)} (POST /api/libraries/{escape(appid)}/repair drops the rows that cannot "
        "be loaded)</td></tr>"
        for appid, aside in libs.unavailable.items()
    )
    options = "".join(f"<option>{escape(appid)}</option>" for appid in libs.libraries)
    body = f"""
<h1>Libraries</h1>
<table class="libraries"><thead><tr><th>appid</th><th>items</th><th>search</th><th>model</th><th>last index save</th></tr></thead>
<tbody>{rows or '<tr><td colspan="5">No library yet: create one below or sign up through the API.</td></tr>'}</tbody></table>
<form id="new-library" class="inline"><input name="appid" placeholder="new appid" required>
<button>Create library</button> <span class="message"></span></form>
{_models_table(services)}
<h1>Import jobs</h1>
<form id="new-job" class="inline"><select name="appid">{options}</select>
<input name="dir" placeholder="/absolute/folder/on/the/server" size="40" required>
<select name="kind"><option value="dir">Import folder</option><option value="sync">Sync folder (follow it)</option></select>
<label><input type="checkbox" name="remove_missing"> remove items whose file is gone (sync)</label>
<button>Start</button> <span class="message"></span></form>
<table class="jobs"><thead><tr><th>job</th><th>library</th><th>source</th><th>status</th><th>progress</th>
<th>failed</th><th>duplicates</th><th>near-duplicates</th><th>images/s</th><th>ETA</th><th></th></tr></thead><tbody id="jobs"></tbody></table>
"""
    return _page(services, "libraries", body)


async def _library(request: web.Request) -> tuple[Services, Library]:
    services = request.app[SERVICES]
    return services, await services.libraries.get(check_library_name(request.match_info["appid"]))


async def library(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        services, lib = await _library(request)
    except ApiError as exc:
        return _error(services, exc)
    appid = lib.row.appid
    stats = await services.libraries.stats.of(lib)
    text = request.query.get("offset", "0")
    offset = min(int(text), MAX_OFFSET) if is_decimal(text) else 0
    items = await services.libraries.reads.items_page(lib, offset, PAGE_SIZE)
    cards = "".join(_item_card(appid, item.contsign, item.brief) for item in items)
    nav = ""
    if offset > 0:
        nav += f'<a href="?offset={max(0, offset - PAGE_SIZE)}">&larr; previous</a> '
    if offset + len(items) < stats["items"]:
        nav += f'<a href="?offset={offset + PAGE_SIZE}">next &rarr;</a>'
    body = f"""
<h1>{escape(appid)}</h1>
<p class="stats">{stats["items"]} items · {stats["dim"]}-d {escape(stats["model"])} · {stats["search"]} search
· index saved {_when(stats["last_index_save"])}</p>
{recall_block(stats.get("recall"))}
{_rebuild_block(stats["rebuild"])}
{_ranking_form(stats["ranking"])}
{space_line(stats["space"])}
<div id="dropzone" class="dropzone">Drop a picture here, or <label class="pick">pick one
<input type="file" id="file" accept="image/*"></label>, to search this library.
<label class="option"><input type="checkbox" id="same-picture"> only the same picture (possibly
edited), boxed where the copy is</label></div>
<p class="inline"><label>Only hits scoring at least <input id="min-score" type="number" step="0.01"
min="-1" max="1" size="5" placeholder="any"></label> (applies to the next search)</p>
{_results_block("Results")}
{_library_extensions(appid)}
{_reembed_panel(services, stats)}
{await sync_panel(services, appid, f"/api/libraries/{segment(appid)}/sync")}
<h2>Items {offset + 1 if items else 0}&ndash;{offset + len(items)} of {stats["items"]}</h2>
<div class="grid">{cards}</div><p class="nav">{nav}</p>
"""
    return _page(services, appid, body, appid)


RANKINGS = {
    "score": "descending score (the spec's order)",
    "reranked": "re-ranked: query expansion and confirmed copies first (not in score order)",
}


def _ranking_form(ranking: dict) -> str:
    """How the library ranks searches by image, and the choice of the other ranking."""
    chosen = ranking["order"]
    options = "".join(
        f'<option value="{name}"{" selected" if name == chosen else ""}>{escape(text)}</option>'
        for name, text in RANKINGS.items()
    )
    return (
        f'<form id="ranking-form" class="inline"><label>Ranking of searches by image '
        f'<select name="order">{options}</select></label> <button>Save</button> '
        f'<span id="ranking-status" data-order="{chosen}"></span></form>'
    )


def space_line(space: dict) -> str:
    """The space the library's searches rank and score in, and when it was fitted."""
    if space["ranks_in"] == "learned":
        text = (
            f"Ranks in its learned space ({space['dim']}-d, weight {space['weight']:g} with native cosine), "
            f"fitted {_when(space['fitted_at'])} on {space['fitted_items']} items."
        )
    elif space["chosen"] == "learned":
        text = (
            f"Ranks in native cosine until it holds {space.get('min_items', '?')} items; then it moves "
            "into its learned space."
        )
    else:
        text = "Ranks in native cosine (PUT /api/libraries/{appid}/space moves it into its learned space)."
    return f'<p class="stats" id="space-line">{escape(text)}</p>'


def rebuild_text(state: dict | None) -> str:
    """One line about the library's running or last rebuild (console.js writes the same)."""
    if state is None:
        return "No rebuild since the daemon started."
    if state["state"] == "running":
        total = state["total"] or 0
        share = f" ({100 * state['done'] // total}%)" if total else ""
        eta = f", about {state['eta_s']:.0f} s left" if state["eta_s"] is not None else ""
        return f"Rebuild ({state['reason']}) {state['phase']}: {state['done']} of {total} items{share}{eta}"
    line = f"Last rebuild ({state['reason']}): {state['state']} after {state['seconds']:.1f} s"
    return line + (f": {state['error']}" if state["error"] else "")


def recall_block(state: dict | None) -> str:
    """The library's measured recall and the depth chosen for it; a library below target says
    so in a line of its own (``same_search.index.recall``)."""
    if not state:
        return ""
    if state["state"] == "exact":
        return '<p class="recall">Recall@10 1 (searched exactly).</p>'
    depth = f"ef {state['ef']}, {state['candidates']} candidates"
    if state.get("flat"):
        depth = (
            f"a flat scan of every item, {state['candidates']} candidates screened in RAM, the best re-ranked"
        )
    elif state.get("screened"):
        depth += " (screened in RAM, the best re-ranked)"
    image = state.get("by_image")
    if (
        image
        and not image["flat"]
        and (image["ef"], image["candidates"]) != (state["ef"], state["candidates"])
    ):
        depth += f"; searches by image walk deeper: ef {image['ef']}, {image['candidates']} candidates"
    if image and image.get("scan"):
        depth += f" and {image['scan']} from a scan of every item's sign bits"
    if "recall" not in state:
        return f'<p class="recall">Recall not measured yet ({escape(state["state"])}); searching with {depth}.</p>'
    filtered = state.get("recall_filtered")
    line = (
        f"Recall@10 {state['recall']:.3f}"
        + ("" if filtered is None else f" ({filtered:.3f} with tag {state['filter_tag']})")
        + f", measured on {state['queries']} of its {state['items']} items at {_when(state['measured_at'])};"
        + f" searching with {depth} (target {state['target']})."
    )
    if state["below_target"]:
        line += " <b>Below target</b> at the deepest setting tried."
    return f'<p class="recall{" below" if state["below_target"] else ""}">{line}</p>'


def _rebuilding(state: dict | None) -> str:
    """The note after the overview's search column while the library's index is rebuilt."""
    if state is None or state["state"] != "running":
        return ""
    return f' <span class="rebuilding">· rebuilding ({escape(state["phase"])})</span>'


def _rebuild_block(state: dict | None) -> str:
    """The rebuild line and button; console.js refreshes the line while a rebuild runs."""
    running = state is not None and state["state"] == "running"
    return (
        f'<p class="rebuild"><span id="rebuild" data-state="{"running" if running else "idle"}">'
        f"{escape(rebuild_text(state))}</span> "
        f'<button id="rebuild-start"{" disabled" if running else ""}>Rebuild index</button></p>'
    )


def _brief_text(brief: bytes) -> str:
    try:
        return brief.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(brief)} bytes)"


def _item_card(appid: str, contsign: ContSign, brief: bytes) -> str:
    key = f"{contsign.sign1},{contsign.sign2}"
    return (
        f'<a class="card" href="{item_href(appid, key)}">'
        f'<img loading="lazy" alt="" src="{thumbnail_src(appid, key)}">'
        f'<span class="brief">{escape(_brief_text(brief))}</span></a>'
    )


async def item(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        services, lib = await _library(request)
        sign1, sign2 = (int(p) for p in request.match_info["contsign"].split(","))
        found = await services.libraries.reads.item(lib, ContSign.from_json({"sign1": sign1, "sign2": sign2}))
    except ValueError:
        return _error(services, ApiError(ErrNo.BAD_REQUEST, "contsign must be sign1,sign2"))
    except ApiError as exc:
        return _error(services, exc)
    if found is None:
        return _error(services, ApiError(ErrNo.UPDATE_MISSING, "no such item"))
    entry = found
    created, updated = entry.created_at, entry.updated_at
    key = f"{sign1},{sign2}"
    tags = ", ".join(map(str, entry.tags)) if entry.tags else "none"
    body = f"""
<p><a href="{library_href(lib.row.appid)}">&larr; {escape(lib.row.appid)}</a></p>
<div class="detail"><img src="{thumbnail_src(lib.row.appid, key)}" alt="">
<dl><dt>brief</dt><dd class="brief" id="item-brief">{escape(_brief_text(entry.brief))}</dd>
<dt>contsign</dt><dd>{{"sign1": {sign1}, "sign2": {sign2}}}</dd><dt>tags</dt><dd id="item-tags">{escape(tags)}</dd>
<dt>added</dt><dd>{_when(created)}</dd><dt>updated</dt><dd id="item-updated">{_when(updated)}</dd></dl></div>
{edit_form(entry, f"/api/libraries/{segment(lib.row.appid)}/items/{segment(key)}")}
<button id="similar" data-contsign="{key}">Find similar</button>
<button id="delete-item" data-path="{escape(f"/api/libraries/{segment(lib.row.appid)}/items/{segment(key)}")}"
data-back="{library_href(lib.row.appid)}">Delete this item</button> <span id="delete-status"></span>
{_results_block("Similar items")}
"""
    return _page(services, _brief_text(entry.brief), body, lib.row.appid)


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ("console.js", "console.css"):
        raise web.HTTPNotFound()
    kind = "application/javascript" if name.endswith(".js") else "text/css"
    return web.Response(text=STATIC.joinpath(name).read_text(), content_type=kind)


# ---- region search on the library page, the duplicates view (extensions) -----------------------------

#: Scripts of the extensions, served from ``static/`` under their own path.
EXTENSION_SCRIPTS = ("region.js", "duplicates.js", "reembed.js", "sync.js")
_EXTENSION_STYLE = """<style>
#region-stage { position: relative; display: inline-block; cursor: crosshair; user-select: none; }
#region-stage img { max-width: min(480px, 100%); display: block; }
#region-box { position: absolute; border: 2px dashed #c00; background: rgba(200, 0, 0, .1); pointer-events: none; }
.dup-group { border: 1px solid #ccc; border-radius: 6px; padding: .6em; margin: .8em 0; }
.card.kept { border: 2px solid #2a7; }
</style>"""


def _library_extensions(appid: str) -> str:
    """On a library's page: a box to drag on the query picture, and the way to the duplicates view."""
    return f"""{_EXTENSION_STYLE}
<div id="region-panel" hidden><h2>Search a part of the picture</h2>
<p>Drag a box on the picture: only that part is searched.</p>
<div id="region-stage"><img id="region-image" alt="query picture" draggable="false"><div id="region-box" hidden></div></div>
<p id="region-status"></p></div>
<p><a id="duplicates-link" href="{library_href(appid)}/duplicates">Find near-duplicates in this library</a></p>
<script src="/static/ext/region.js" defer></script>"""


# ---- a model per library, re-embedding (extension) ------------------------------------------------------


def _models_table(services: Services) -> str:
    """Every model profile, its state and the libraries it serves (the overview page)."""
    rows = ""
    for model in services.libraries.registry.models_in_use():
        names = ", ".join(model["names"])
        if model["status"] != "ok":
            rows += (
                f'<tr class="unavailable"><td>{escape(names)}</td><td colspan="3" class="error">'
                f"unavailable: {escape(model['reason'])}</td></tr>"
            )
            continue
        libs = ", ".join(_library_link(appid) for appid in model["libraries"]) or "none"
        rows += (
            f"<tr><td>{escape(names)}</td><td>{escape(model['id'])} ({model['dim']}-d, "
            f"{escape(model['device'])})</td><td><code>{escape(model['fingerprint'])}</code></td><td>{libs}</td></tr>"
        )
    return (
        '<h1>Models</h1><table class="models"><thead><tr><th>profile</th><th>model</th><th>fingerprint</th>'
        f"<th>libraries</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _reembed_panel(services: Services, stats: dict) -> str:
    """On a library's page: its model, and a button to re-embed it with another profile."""
    current = stats.get("model_name")
    others = [name for name in services.models.names if services.models.names[name] != stats["fingerprint"]]
    options = "".join(f"<option>{escape(name)}</option>" for name in others)
    originals = (
        ""
        if services.libraries.writes.keeps_originals
        else ' <span class="error">[storage] keep_originals is off: re-embedding needs kept originals.</span>'
    )
    form = (
        f'<form id="reembed-form" class="inline"><select name="model">{options}</select> '
        "<button>Re-embed with this model</button></form>"
        if others
        else "<p>No other model profile is configured ([models.&lt;name&gt;] in config.toml).</p>"
    )
    return f"""<h2>Model</h2>
<p>Served by model profile <b>{escape(current or "?")}</b> ({escape(stats["model"])}, fingerprint
<code>{escape(stats["fingerprint"])}</code>). Re-embedding builds the library again with another model
from its kept originals while it keeps serving, then switches at once.{originals}</p>
{form}<p id="reembed-progress"></p><p><button id="reembed-cancel" hidden>Cancel the re-embed</button></p>
<script src="/static/ext/reembed.js" defer></script>"""


async def duplicates_page(request: web.Request) -> web.Response:
    """The duplicates view: scan with a score floor, groups as thumbnails with scores, remove extras."""
    services = request.app[SERVICES]
    try:
        services, lib = await _library(request)
    except ApiError as exc:
        return _error(services, exc)
    appid = lib.row.appid
    floor = (await services.libraries.stats.of(lib))["dup_min_score"]
    body = f"""{_EXTENSION_STYLE}
<p><a href="{library_href(appid)}">&larr; {escape(appid)}</a></p>
<h1>Near-duplicates in {escape(appid)}</h1>
<p>Groups of pictures scoring at least the floor against the oldest copy in their group. A floor
below 0.95 also groups different photos of look-alike things: check each group before removing.</p>
<form id="dup-scan" class="inline"><label>min score
<input name="min_score" type="number" step="0.01" min="0" max="1" value="{floor:g}"></label>
<button>Find duplicates</button></form>
<p id="dup-progress"></p>
<p><button id="dup-remove" hidden>Remove the extras</button> <span id="dup-message"></span></p>
<div id="dup-groups"></div>
<script src="/static/ext/duplicates.js" defer></script>"""
    return _page(services, f"duplicates · {appid}", body, appid)


async def extension_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in EXTENSION_SCRIPTS:
        raise web.HTTPNotFound()
    return web.Response(text=STATIC.joinpath(name).read_text(), content_type="application/javascript")


def add_extension_routes(app: web.Application) -> None:
    """Register the extension pages and their scripts."""
    app.router.add_get("/libraries/{appid}/duplicates", operator_only(duplicates_page))
    app.router.add_get("/static/ext/{name}", extension_static)


def add_routes(app: web.Application) -> None:
    """Register the console pages."""
    app.router.add_get("/", operator_only(overview))
    app.router.add_get("/libraries/{appid}", operator_only(library))
    app.router.add_get("/libraries/{appid}/items/{contsign}", operator_only(item))
    app.router.add_get("/static/{name}", static)
    add_extension_routes(app)
