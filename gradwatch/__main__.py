"""``python -m gradwatch``: the command line (the same as the ``gradwatch`` script)."""

from .cli import main

raise SystemExit(main())
