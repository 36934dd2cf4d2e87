"""Console pages: libraries overview, search by picture, item detail, import jobs.

Rendered on the server with escaped f-strings (no template engine, no build step, no CDN);
``static/console.js`` adds the interactive parts by calling the management API.
"""

from __future__ import annotations

import time
from html import escape
from importlib import resources

from aiohttp import web

from same_search.contsign import ContSign
from same_search.errors import ApiError
from same_search.libraries import Library
from same_search.services import SERVICES, Services

STATIC = resources.files("same_search.console").joinpath("static")
PAGE_SIZE = 48


def _when(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _page(services: Services, title: str, body: str, appid: str = "") -> web.Response:
    info = services.embed.info
    health = services.health()
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · same_search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/console.css"></head>
<body data-appid="{escape(appid)}">
<header><a class="brand" href="/">same_search</a>
<span class="status" id="status">v{escape(health["version"])} · model {escape(info.model_id)} ({info.dim}-d, {escape(info.device)})
· {health["libraries"]} libraries · up {health["uptime_s"]:.0f}s</span></header>
<main>{body}</main>
<script src="/static/console.js"></script></body></html>"""
    return web.Response(text=html, content_type="text/html")


def _error(services: Services, exc: ApiError) -> web.Response:
    body = f'<h1>Not available</h1><p class="error">err_no {int(exc.err_no)}: {escape(exc.err_msg)}</p>'
    return _page(services, "error", body)


def _results_block(label: str) -> str:
    return f'<h2>{escape(label)}</h2><div class="grid" id="results"></div><p id="search-status"></p>'


async def overview(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    libs = services.libraries
    rows = "".join(
        f'<tr><td><a href="/libraries/{escape(s["appid"])}">{escape(s["appid"])}</a></td><td>{s["items"]}</td>'
        f"<td>{s['search']}</td><td>{escape(s['model'])}</td><td>{_when(s['last_index_save'])}</td></tr>"
        for s in (libs.stats(lib) for lib in libs.libraries.values())
    )
    rows += "".join(
        f'<tr class="unavailable"><td>{escape(appid)}</td><td colspan="4" class="error">unavailable: '
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
<h1>Import jobs</h1>
<form id="new-job" class="inline"><select name="appid">{options}</select>
<input name="dir" placeholder="/absolute/folder/on/the/server" size="40" required>
<button>Import folder</button> <span class="message"></span></form>
<table class="jobs"><thead><tr><th>job</th><th>library</th><th>source</th><th>status</th><th>progress</th>
<th>failed</th><th>duplicates</th><th>images/s</th><th>ETA</th><th></th></tr></thead><tbody id="jobs"></tbody></table>
"""
    return _page(services, "libraries", body)


def _library(request: web.Request) -> tuple[Services, Library]:
    services = request.app[SERVICES]
    return services, services.libraries.get(request.match_info["appid"])


async def library(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        services, lib = _library(request)
    except ApiError as exc:
        return _error(services, exc)
    appid = lib.row.appid
    stats = services.libraries.stats(lib)
    offset = int(request.query.get("offset", "0")) if request.query.get("offset", "0").isdigit() else 0
    items = await services.libraries.items_page(lib, offset, PAGE_SIZE)
    cards = "".join(_item_card(appid, item.contsign, item.brief) for item, _, _ in items)
    nav = ""
    if offset > 0:
        nav += f'<a href="?offset={max(0, offset - PAGE_SIZE)}">&larr; previous</a> '
    if offset + len(items) < stats["items"]:
        nav += f'<a href="?offset={offset + PAGE_SIZE}">next &rarr;</a>'
    body = f"""
<h1>{escape(appid)}</h1>
<p class="stats">{stats["items"]} items · {stats["dim"]}-d {escape(stats["model"])} · {stats["search"]} search
· index saved {_when(stats["last_index_save"])}</p>
<div id="dropzone" class="dropzone">Drop a picture here, or <label class="pick">pick one
<input type="file" id="file" accept="image/*"></label>, to search this library.</div>
{_results_block("Results")}
<h2>Items {offset + 1 if items else 0}&ndash;{offset + len(items)} of {stats["items"]}</h2>
<div class="grid">{cards}</div><p class="nav">{nav}</p>
"""
    return _page(services, appid, body, appid)


def _brief_text(brief: bytes) -> str:
    try:
        return brief.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(brief)} bytes)"


def _item_card(appid: str, contsign: ContSign, brief: bytes) -> str:
    key = f"{contsign.sign1},{contsign.sign2}"
    base = f"/libraries/{escape(appid)}/items/{key}"
    return (
        f'<a class="card" href="{base}"><img loading="lazy" alt="" src="/api{base}/thumbnail">'
        f'<span class="brief">{escape(_brief_text(brief))}</span></a>'
    )


async def item(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        services, lib = _library(request)
        sign1, sign2 = (int(p) for p in request.match_info["contsign"].split(","))
        found = await services.libraries.item(lib, ContSign.from_json({"sign1": sign1, "sign2": sign2}))
    except ValueError:
        return _error(services, ApiError(1, "contsign must be sign1,sign2"))
    except ApiError as exc:
        return _error(services, exc)
    if found is None:
        return _error(services, ApiError(102, "no such item"))
    entry, created, updated = found
    key = f"{sign1},{sign2}"
    tags = ", ".join(map(str, entry.tags)) if entry.tags else "none"
    body = f"""
<p><a href="/libraries/{escape(lib.row.appid)}">&larr; {escape(lib.row.appid)}</a></p>
<div class="detail"><img src="/api/libraries/{escape(lib.row.appid)}/items/{key}/thumbnail" alt="">
<dl><dt>brief</dt><dd class="brief">{escape(_brief_text(entry.brief))}</dd>
<dt>contsign</dt><dd>{{"sign1": {sign1}, "sign2": {sign2}}}</dd><dt>tags</dt><dd>{escape(tags)}</dd>
<dt>added</dt><dd>{_when(created)}</dd><dt>updated</dt><dd>{_when(updated)}</dd></dl></div>
<button id="similar" data-contsign="{key}">Find similar</button>
{_results_block("Similar items")}
"""
    return _page(services, _brief_text(entry.brief), body, lib.row.appid)


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ("console.js", "console.css"):
        raise web.HTTPNotFound()
    kind = "application/javascript" if name.endswith(".js") else "text/css"
    return web.Response(text=STATIC.joinpath(name).read_text(), content_type=kind)


def add_routes(app: web.Application) -> None:
    """Register the console pages."""
    app.router.add_get("/", overview)
    app.router.add_get("/libraries/{appid}", library)
    app.router.add_get("/libraries/{appid}/items/{contsign}", item)
    app.router.add_get("/static/{name}", static)
