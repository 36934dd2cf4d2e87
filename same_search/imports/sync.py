"""Folder sync: an import job (kind ``sync``) that makes a library follow a folder.

How a file maps to an item: the item's brief is the file's path relative to the folder (as a
folder import stores it), and the item's contsign is its content's, as for every add. So, per
file of the folder, in the job's sorted order:

- no item has this brief and the content is not stored: **added** (counted in ``done``);
- an item with this brief holds the same content: **unchanged** (counted in ``duplicates``);
- an item with this brief holds other content (the file changed): the new content is added, then
  the old item removed: **updated** (``updated``);
- the content is stored under another brief whose file is gone (the file was moved or renamed):
  that item's brief is rewritten: **updated**; if that other file is still in the folder (two
  copies of one picture), the copy is **unchanged**: one picture is one item;
- when the job was asked to (``remove_missing``), once every file is done, the items whose brief
  is no file of the folder are **removed** (``removed``): a library that follows a folder holds
  nothing else.

Every decision is taken from what is stored when the file's turn comes, so a sync is idempotent
(running it again changes nothing) and resumes after a restart like any import job: the plan is
read again from the library, the position skips what was done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from same_search.contsign import ContSign
from same_search.libraries import Item, Library, LibraryService

#: Items per page when the library is read to plan or finish a sync.
PAGE = 1000
UNCHANGED, UPDATED = "duplicate", "updated"


class SyncPlan:
    """What a library holds, by brief and by content, while a sync job runs over a folder."""

    def __init__(self, libraries: LibraryService, lib: Library, names: list[str]) -> None:
        self.libraries = libraries
        self.lib = lib
        #: The folder's files as briefs: a stored item whose brief is one of these has its file.
        self.names = {name.encode() for name in names}
        self.by_brief: dict[bytes, ContSign] = {}
        self.by_key: dict[int, bytes] = {}

    async def read(self) -> SyncPlan:
        """Read every stored item's brief and contsign (once per job run)."""
        async for item in self._items():
            self.by_brief[item.brief] = item.contsign
            self.by_key[item.contsign.key] = item.brief
        return self

    async def _items(self) -> AsyncIterator[Item]:
        offset = 0
        while page := await self.libraries.reads.items_page(self.lib, offset, PAGE):
            for item in page:
                yield item
            offset += len(page)

    async def settle(self, brief: bytes, data: bytes) -> str | ContSign | None:
        """Decide one file before it is added: ``UNCHANGED`` or ``UPDATED`` when it needs no add,
        else None (add it), or the contsign of the item it replaces (add it); then :meth:`stored`."""
        sign = ContSign.of_image(data)
        stored = self.by_brief.get(brief)
        if stored == sign:
            return UNCHANGED
        holder = self.by_key.get(sign.key)
        if holder is not None:  # this content is stored, under another brief
            if holder in self.names:  # that file is still here: two copies, one item
                return UNCHANGED
            await self.libraries.writes.update(self.lib, sign, brief, None)  # moved or renamed
            self._record(brief, sign, holder)
            if stored is not None:  # and this path held other content: that item is stale
                await self.libraries.writes.remove(self.lib, [stored])
            return UPDATED
        return stored

    async def stored(self, brief: bytes, data: bytes, old: ContSign | None) -> None:
        """The file's content is stored: note it, and remove the item of its old content if any."""
        if old is not None:
            await self.libraries.writes.remove(self.lib, [old])
            self.by_key.pop(old.key, None)
        self._record(brief, ContSign.of_image(data), None)

    def _record(self, brief: bytes, sign: ContSign, previous: bytes | None) -> None:
        if previous is not None:
            self.by_brief.pop(previous, None)
        self.by_brief[brief] = sign
        self.by_key[sign.key] = brief

    async def remove_missing(self) -> int:
        """Remove the items whose brief is no file of the folder; returns how many."""
        gone = [item.contsign async for item in self._items() if item.brief not in self.names]
        removed = 0
        for start in range(0, len(gone), PAGE):
            removed += await self.libraries.writes.remove(self.lib, gone[start : start + PAGE])
        return removed
