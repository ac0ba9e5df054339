"""``python -m ncgeom``: the ``ncgeom`` command."""

from .cli import main

raise SystemExit(main())
