"""``python -m same_search``: start the daemon."""

from same_search.cli import main

raise SystemExit(main())
