"""``python -m gradwatch``: the command line (the same as the ``gradwatch`` script)."""

from .monitor.cli import main

raise SystemExit(main())
