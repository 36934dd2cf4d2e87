"""What a stored row must be to be loaded and served, and how to name the rows that are not.

A row is servable when its vector is a blob of ``dim`` little-endian float32 forming a finite
unit vector (``index.vectors``), its tags are NULL or two integers in [0, 2^32) and its brief is
bytes. Writes check this before the database (``LibraryService.store_vector``, export imports);
loading and repairs check rows already stored, which older versions or a damaged disk may hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from same_search.contsign import ContSign
from same_search.index.vectors import row_problems
from same_search.records import BadRows, RawItem

UINT32 = 1 << 32


def tags_problem(tags: object) -> str | None:
    """Why ``tags`` are not None or two integers in [0, 2^32), or None when they are fine."""
    if tags is None:
        return None
    if not isinstance(tags, tuple | list) or len(tags) != 2:
        return f"tags must be two integers, got {tags!r}"
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < UINT32 for t in tags):
        return f"tags must be two integers from 0 to {UINT32 - 1}, got {list(tags)!r}"
    return None


def raw_item_problems(chunk: Sequence[RawItem], dim: int) -> list[tuple[int, str]]:
    """(key, problem) for rows of ``chunk`` that cannot be loaded or served as they are."""
    problems: dict[int, str] = {}
    shaped: list[RawItem] = []
    for raw in chunk:
        if not isinstance(raw.vector, bytes) or len(raw.vector) != 4 * dim:
            size = len(raw.vector) if isinstance(raw.vector, bytes) else type(raw.vector).__name__
            problems[raw.key] = f"vector of {size} bytes, expected {4 * dim} ({dim} float32)"
            continue
        shaped.append(raw)
        if not isinstance(raw.brief, bytes):
            problems[raw.key] = f"brief is stored as {type(raw.brief).__name__}, not bytes"
        elif raw.tag1 is not None or raw.tag2 is not None:
            problem = tags_problem((raw.tag1, raw.tag2))
            if problem is not None:
                problems[raw.key] = problem
    if shaped:
        blob = b"".join(r.vector for r in shaped if isinstance(r.vector, bytes))
        matrix = np.frombuffer(blob, dtype="<f4").reshape(len(shaped), dim)
        for row, problem in row_problems(matrix, dim):
            problems.setdefault(shaped[row].key, problem)
    return [(raw.key, problems[raw.key]) for raw in chunk if raw.key in problems]


def bad_rows_text(rows: Sequence[tuple[int, str]]) -> str:
    """The first few (key, problem) pairs, with contsigns, for logs and error messages."""
    shown = "; ".join(f"contsign {ContSign.from_key(key)}: {problem}" for key, problem in rows[:3])
    more = f" (and {len(rows) - 3} more)" if len(rows) > 3 else ""
    return f"rows that cannot be loaded: {shown}{more}"


def load_failure_reason(exc: BaseException) -> str:
    """An operator-readable reason for a library that could not be loaded."""
    if isinstance(exc, BadRows):
        return bad_rows_text(exc.rows)
    return f"{type(exc).__name__}: {exc}"
