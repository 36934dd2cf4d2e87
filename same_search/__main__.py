"""``python -m same_search [COMMAND]``: run the daemon, or a client command against a running one."""

from same_search.cli import main

raise SystemExit(main())
