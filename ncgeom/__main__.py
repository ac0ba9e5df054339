"""``python -m ncgeom``: the ``ncgeom`` command."""

from .integrations.cli import main

raise SystemExit(main())
