"""``python -m emulators``: the local sandbox's own entry point (see emulators/sandbox_cli.py)."""

from emulators.sandbox_cli import main

raise SystemExit(main())
