"""Entry point of the single-file build: the same `backup-manager` command as `make run`."""

from server.cli import main

raise SystemExit(main())
