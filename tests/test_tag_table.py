"""The in-memory tag table answers filters exactly as the database query it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from same_search.index.tags import TagTable


def reference(items: dict[int, tuple[int, int]], tags: tuple[int, int], match_all: bool) -> set[int]:
    wanted = [t for t in tags if t]
    hits = set()
    for label, pair in items.items():
        found = [t in pair for t in wanted]
        if (all(found) if match_all else any(found)) if wanted else True:
            hits.add(label)
    return hits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_adds_updates_removes_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    table, items = TagTable(capacity=16), {}
    for _ in range(30):
        labels = rng.integers(0, 5000, size=200).astype(np.uint64)
        tags = rng.integers(0, 6, size=(200, 2)).astype(np.uint32)
        table.set(labels, tags)
        for label, pair in zip(labels.tolist(), tags.tolist(), strict=True):
            items[label] = tuple(pair)
        gone = rng.integers(0, 5000, size=150).astype(np.uint64)
        table.remove(gone)
        for label in gone.tolist():
            items.pop(label, None)
        assert len(table) == len(items)
        for query in ((1, 0), (0, 2), (1, 2), (3, 3), (0, 0), (5, 4)):
            for match_all in (True, False):
                got = table.select(query, match_all)
                assert len(got) == len(set(got.tolist()))
                assert set(got.tolist()) == reference(items, query, match_all)


def test_compaction_keeps_every_live_label():
    table = TagTable()
    labels = np.arange(10_000, dtype=np.uint64)
    table.set(labels, np.tile([7, 0], (10_000, 1)))
    table.remove(labels[:9_000])
    assert sorted(table.select((7, 0), True).tolist()) == list(range(9_000, 10_000))
    table.set(np.array([5], np.uint64), np.array([[7, 8]]))
    assert set(table.select((7, 8), True).tolist()) == {5}
