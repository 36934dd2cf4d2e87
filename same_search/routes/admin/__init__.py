"""Library management, port 8103: health, metrics and the management API under ``/api``.

Replies use the same JSON envelope as the other ports (HTTP 200, ``err_no``), except the
probes (``/healthz``, ``/readyz``) and ``/metrics``, which monitoring reads by status and format.
When ``[auth] tokens`` are set, ``/api`` needs the ``"*"`` token (the operator's). One module per
area; this one only lists the routes (paths from :mod:`same_search.wire`, shared with the
client, so the two cannot disagree on a path).
"""

from __future__ import annotations

from aiohttp import web

from same_search import wire
from same_search.routes.admin import (
    duplicates,
    items,
    jobs,
    libraries,
    probes,
    reembed,
    settings,
    sync,
    transfer,
)


def add_routes(app: web.Application) -> None:
    """Register every management route."""
    for method, path, handler in (
        ("GET", wire.HEALTHZ, probes.healthz),
        ("GET", wire.READYZ, probes.readyz),
        ("GET", wire.METRICS, probes.metrics),
        ("GET", wire.LIBRARIES, libraries.list_libraries),
        ("POST", wire.LIBRARIES, libraries.create_library),
        ("GET", wire.LIBRARY, libraries.library_stats),
        ("DELETE", wire.LIBRARY, libraries.delete_library),
        ("POST", wire.SAVE, libraries.save_index),
        ("POST", wire.REBUILD, libraries.rebuild_index),
        ("GET", wire.REBUILD, libraries.rebuild_status),
        ("POST", wire.RECALL, libraries.measure_recall),
        ("POST", wire.COMPACT, libraries.rebuild_index),
        ("POST", wire.REPAIR, libraries.repair_library),
        ("POST", wire.LOCAL_FEATURES, libraries.refill_local_features),
        ("GET", wire.LOCAL_FEATURES, libraries.local_features_status),
        ("PUT", wire.DUP_POLICY, settings.set_dup_policy),
        ("POST", wire.DUP_POLICY, settings.set_dup_policy),
        ("PUT", wire.RANKING, settings.set_ranking),
        ("POST", wire.RANKING, settings.set_ranking),
        ("PUT", wire.SPACE, libraries.set_space),
        ("POST", wire.SPACE, libraries.set_space),
        ("GET", wire.ITEMS, items.list_items),
        ("GET", wire.ITEM, items.get_item),
        ("DELETE", wire.ITEM, items.delete_item),
        ("PATCH", wire.ITEM, items.edit_item),
        ("GET", wire.THUMBNAIL, items.thumbnail),
        ("POST", wire.LIBRARY_SEARCH, items.search_image),
        ("GET", wire.EXPORT, transfer.export_library),
        ("POST", wire.IMPORT, transfer.import_library),
        ("POST", wire.JOBS, jobs.create_job),
        ("POST", wire.JOB_UPLOAD, jobs.upload_job),
        ("GET", wire.JOBS, jobs.list_jobs),
        ("GET", wire.JOB, jobs.get_job),
        ("POST", wire.JOB_CANCEL, jobs.cancel_job),
        ("POST", wire.DUPLICATES, duplicates.start_scan),
        ("GET", wire.DUPLICATES_SCAN, duplicates.get_scan),
        ("POST", wire.DUPLICATES_REMOVE, duplicates.remove_extras),
        ("POST", wire.DUPLICATES_CANCEL, duplicates.cancel_scan),
        ("POST", wire.REEMBED, reembed.start_reembed),
        ("GET", wire.REEMBED, reembed.list_reembeds),
        ("GET", wire.REEMBED_JOB, reembed.get_reembed),
        ("POST", wire.REEMBED_CANCEL, reembed.cancel_reembed),
        ("GET", wire.SYNC, sync.get_schedule),
        ("PUT", wire.SYNC, sync.set_schedule),
        ("POST", wire.SYNC, sync.set_schedule),
        ("DELETE", wire.SYNC, sync.delete_schedule),
        ("POST", wire.SYNC_RUN, sync.run_now),
        ("GET", wire.SYNCS, sync.list_schedules),
    ):
        app.router.add_route(method, path, handler)
