"""One page of a ranking: hits ``pn .. pn+rn-1`` with their stored rows.

Every page of a search is cut from one ranking that reaches one hit past the page, so pages
concatenate without gaps or repeats and ``has_more`` is exact, on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from same_search.records import ItemRow, Library
from same_search.search.reads import LibraryReads, Ranked


@dataclass(frozen=True)
class RankedPage:
    """A page as (key, score) with the rows of its items, and whether more hits follow."""

    hits: Ranked
    rows: dict[int, ItemRow]
    has_more: bool


async def cut(
    reads: LibraryReads, lib: Library, found: Ranked, rows: dict[int, ItemRow], pn: int, rn: int
) -> RankedPage:
    """Hits ``pn .. pn+rn-1`` of ``found`` with their rows.

    An item removed while the search ran (its row gone, e.g. a confirmed copy removed during
    the same-picture check) is left out of the ranking and the page filled from the hits after
    it, which the search read anyway: a page is never short while ``has_more`` says more exist.
    """
    while True:
        window = found[pn : pn + rn]
        missing = [key for key, _ in window if key not in rows]
        if missing:
            rows = {**rows, **await reads.rows(lib, missing)}
        gone = {key for key in missing if key not in rows}
        if not gone:
            return RankedPage(window, {key: rows[key] for key, _ in window}, len(found) > pn + rn)
        found = [hit for hit in found if hit[0] not in gone]
