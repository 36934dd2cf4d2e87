"""The nearest-neighbour kernel of the same-picture check gives exact distances.

``matching.nearest_two`` computes squared descriptor distances with an int8 product after
shifting uint8 descriptors by 128; these compare it with the plain definition on descriptors
that use the whole uint8 range, sets of uneven sizes (padding), and queries shorter than the
int8 product's minimum row count.
"""

from __future__ import annotations

import numpy as np
import pytest

from same_search.verify import matching


def plain_nearest_two(query: np.ndarray, stored: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """The definition: every squared distance, sorted."""
    firsts, seconds, nearests = [], [], []
    for descriptors in stored:
        distances = ((query[:, None, :].astype(np.int64) - descriptors[None].astype(np.int64)) ** 2).sum(-1)
        order = np.argsort(distances, axis=1, kind="stable")
        firsts.append(np.take_along_axis(distances, order[:, :1], 1)[:, 0])
        seconds.append(np.take_along_axis(distances, order[:, 1:2], 1)[:, 0])
        nearests.append(order[:, 0])
    return np.stack(firsts, 1), np.stack(seconds, 1), np.stack(nearests, 1)


@pytest.fixture(params=[True, False], ids=["int8 product", "float32 product"])
def kernel(request, monkeypatch):
    """Both products: torch's int8 one (VNNI / AMX CPUs) and float32 BLAS (the others)."""
    monkeypatch.setattr(matching.cpu, "INT8_MATMUL", request.param)


@pytest.mark.parametrize("query_rows", [2, 16, 17, 300])
def test_distances_are_exact_over_the_whole_uint8_range(query_rows, kernel):
    rng = np.random.default_rng(query_rows)
    query = rng.integers(0, 256, (query_rows, 128), dtype=np.uint8)
    stored = [rng.integers(0, 256, (n, 128), dtype=np.uint8) for n in (2, 7, 300, 45)]
    first, second, nearest = matching.nearest_two(query, stored)
    want_first, want_second, want_nearest = plain_nearest_two(query, stored)
    np.testing.assert_array_equal(first, want_first)
    np.testing.assert_array_equal(second, want_second)
    np.testing.assert_array_equal(nearest, want_nearest)


def test_a_repeated_descriptor_is_nearest_and_second_at_once(kernel):
    """Two stored copies of the query's descriptor: both distances 0, so the ratio test refuses it."""
    rng = np.random.default_rng(3)
    query = rng.integers(0, 256, (20, 128), dtype=np.uint8)
    stored = rng.integers(0, 256, (10, 128), dtype=np.uint8)
    stored[4] = stored[8] = query[0]
    first, second, nearest = matching.nearest_two(query, [stored])
    assert first[0, 0] == second[0, 0] == 0
    assert nearest[0, 0] in (4, 8)
