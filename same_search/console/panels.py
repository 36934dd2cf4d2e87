"""Console panels for keeping a library in step: the folder it follows on a schedule (library
page) and the form that edits an item's brief and tags (item page). Rendered on the server from
the same data the management API answers; ``static/sync.js`` and ``console.js`` make them act."""

from __future__ import annotations

import time
from html import escape

from same_search.client_values import sync_result
from same_search.libraries import Item
from same_search.services import Services

#: A new schedule's interval as the form offers it.
DEFAULT_EVERY = "1h"


def when(ts: float | None) -> str:
    """A time as the console writes it (the daemon's local time); ``never`` for None."""
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


async def sync_panel(services: Services, appid: str, path: str) -> str:
    """The library's folder-sync schedule: folder, interval, last and next run, last result,
    *Sync now*; and the form that sets or changes it. ``path``: the schedule's API path."""
    row = await services.schedules.get(appid)
    schedule = None if row is None else await services.schedules.describe(row)
    if schedule is None:
        shown = '<p id="sync-schedule" data-state="none">This library follows no folder.</p>'
        folder, every, removes, label = "", DEFAULT_EVERY, False, "Follow this folder"
    else:
        removes = schedule["remove_missing"]
        gone = " and removes the items whose file is gone" if removes else ""
        state = "running" if schedule["running"] else "idle"
        shown = (
            f'<p id="sync-schedule" data-state="{state}">Follows <code id="sync-folder">'
            f'{escape(schedule["folder"])}</code> every <b id="sync-every">{schedule["every"]}</b>{gone}.</p>'
            f'<p>Last run <span id="sync-last-run">{when(schedule["last_run"])}</span> · next run '
            f'<span id="sync-next-run">{when(schedule["next_run"])}</span></p>'
            f'<p>Last result: <span id="sync-result">{escape(sync_result(schedule))}</span></p>'
            '<p><button id="sync-now">Sync now</button> <button id="sync-stop">Stop following</button> '
            '<span id="sync-status"></span></p>'
        )
        folder, every, label = schedule["folder"], schedule["every"], "Save schedule"
    checked = " checked" if removes else ""
    return f"""<h2>Folder sync</h2>
<div id="sync-panel" data-path="{escape(path)}">{shown}
<form id="sync-form" class="inline"><input name="folder" value="{escape(folder)}" size="40" required
placeholder="/absolute/folder/on/the/server"> every <input name="every" value="{escape(every)}" size="5"
required title="seconds, or 15m, 6h, 1d (at least 1m)"> <label><input type="checkbox"
name="remove_missing"{checked}> remove items whose file is gone</label> <button>{label}</button>
<span class="message"></span></form></div>
<script src="/static/ext/sync.js" defer></script>"""


def edit_form(item: Item, path: str) -> str:
    """The item page's form for its brief (as text) and tags, sent as a PATCH of the item."""
    try:
        text, hint = item.brief.decode("utf-8"), ""
    except UnicodeDecodeError:
        text, hint = "", f"({len(item.brief)} bytes, not text: a text saved here replaces them)"
    tag1, tag2 = item.tags if item.tags is not None else ("", "")
    return f"""<form id="edit-item" class="inline" data-path="{escape(path)}">
<label>brief <input name="brief_text" value="{escape(text)}" data-initial="{escape(text)}" size="40"
placeholder="{escape(hint)}"></label> <label>tags <input name="tag1" type="number" min="0" max="4294967295"
value="{tag1}" size="8"> <input name="tag2" type="number" min="0" max="4294967295" value="{tag2}"
size="8"></label>
<button>Save</button> <span id="edit-status"></span></form>"""
