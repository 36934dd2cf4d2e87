"""The layers stay layered: above the library service, nobody reaches a backend or the store.

Data flows one way (request -> route -> library service -> backend -> store / index). The
service (``same_search/libraries/``) is the only caller of a backend; routes, the console, the
search pipeline, import jobs and every other module speak to it, and share records through the
neutral ``same_search.records``. This reads every module's imports, so a shortcut fails here
before anyone has to find it in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "same_search"
#: What only the library service (and the layers below it) may import.
BELOW_THE_SERVICE = ("same_search.backends", "same_search.store")
#: Where those imports belong: the service itself, and the layers below it.
ALLOWED = ("libraries", "backends", "store")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports are not used here)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_nothing_above_the_library_service_imports_a_backend_or_the_store():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ALLOWED:
            continue
        reached = sorted(m for m in imported_modules(path) if m.startswith(BELOW_THE_SERVICE))
        if reached:
            offenders[str(relative)] = reached
    assert offenders == {}


def test_the_check_sees_an_import_that_breaks_the_rule(tmp_path):
    """The scan is not vacuous: a route importing the store is found."""
    route = tmp_path / "route.py"
    route.write_text("from same_search.store.db import Store\nimport same_search.backends.milvus\n")
    assert {"same_search.store.db", "same_search.backends.milvus"} <= imported_modules(route)
