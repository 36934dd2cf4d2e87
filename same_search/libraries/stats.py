"""What a library looks like from outside: the management API's stats, the spec's snapshot
block, and the per-library figures of /metrics."""

from __future__ import annotations

from typing import Any

from same_search.backends.base import Library, Unavailable
from same_search.backends.capabilities import LearnedSpaces, LocalFeatures
from same_search.errors import ApiError
from same_search.libraries.maintenance import LibraryMaintenance
from same_search.libraries.records import LibraryCensus
from same_search.libraries.registry import LibraryRegistry
from same_search.near_duplicates import floors_for
from same_search.search.ranking import Ranking
from same_search.verify import decision


class LibraryStats:
    """Stats of served and set-aside libraries."""

    def __init__(self, registry: LibraryRegistry, maintenance: LibraryMaintenance) -> None:
        self.registry = registry
        self.maintenance = maintenance
        self.backend = registry.backend

    async def all(self) -> list[dict[str, Any]]:
        """Every library, served ones first, then those set aside (with their reason)."""
        served = [await self.of(lib) for lib in await self.registry.all()]
        return served + [self.of_unavailable(aside) for aside in self.registry.unavailable.values()]

    def of_unavailable(self, aside: Unavailable) -> dict[str, Any]:
        """What the management API reports about a library set aside at start."""
        return {
            "appid": aside.row.appid,
            "status": "unavailable",
            "reason": aside.reason,
            "items": None,
            "model": aside.row.model_id,
            "dim": aside.row.dim,
            "fingerprint": aside.row.fingerprint,
            "created": aside.row.created_at,
        }

    async def of(self, lib: Library) -> dict[str, Any]:
        """What the management API reports about one library."""
        row = lib.row
        floors = floors_for(row.dup_min_score)
        items = await self.registry.count(lib)
        return {
            "appid": row.appid,
            "status": "ok",
            "items": items,
            # Items the same-picture check cannot look at (no local features): judged by the
            # strict score fallback (docs/api.md, "same_picture").
            "items_without_local_features": await self._without_local_features(lib, items),
            "capacity": self.registry.cfg.limits.library_capacity,
            "model": row.model_id,
            # The model profile serving it (an extension; None when none does).
            "model_name": self.registry.models.name_of(row.fingerprint),
            "dim": row.dim,
            "fingerprint": row.fingerprint,
            "created": row.created_at,
            "backend": self.backend.name,
            **self.backend.describe(lib),
            "dup_policy": row.dup_policy,
            "dup_min_score": floors.unchecked,
            # The built-in floor for candidates the same-picture check confirms (None when the
            # library sets its own floor, which then applies to every candidate).
            "dup_verified_min_score": floors.checked if floors == decision.ADD else None,
            # How its searches by image are ranked (the library's choice).
            "ranking": Ranking(row.query_expansion, row.promote_same_picture).to_json(),
            "rebuild": self.maintenance.rebuild_state(row.appid),
            # The space its searches rank and score in (index/space.py), and when it was fitted.
            "space": self._space(lib),
        }

    def _space(self, lib: Library) -> dict[str, object]:
        if not isinstance(self.backend, LearnedSpaces):
            return {"chosen": "native", "ranks_in": "native"}
        return self.backend.space_state(lib)

    async def _without_local_features(self, lib: Library, items: int) -> int:
        if not isinstance(self.backend, LocalFeatures):
            return items
        return await self.registry.call(lib, self.backend.items_without_local_features(lib))

    async def snapshot(self, lib: Library) -> dict[str, int]:
        """The spec's snapshot block for one library."""
        return {
            "tag": 0,
            "index_size": await self.registry.count(lib),
            "index_capacity": self.registry.cfg.limits.library_capacity,
            "queue_size": self.registry.embed_for(lib).queue_size,
        }

    async def census(self) -> list[LibraryCensus]:
        """Per-library figures for /metrics, read at scrape time."""
        found = []
        for lib in list(self.registry.libraries.values()):
            try:
                items = await self.registry.count(lib)
            except ApiError:
                continue  # deleted meanwhile
            figures = self.backend.describe(lib)
            found.append(
                LibraryCensus(lib.row.appid, items, figures["last_index_save"], figures.get("recall"))
            )
        return found
