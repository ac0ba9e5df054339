"""Integration: the framework plugin registry and the command line.

- `plugins`: the `FrameworkPlugin` protocol and its registry (entry points
  of the group ``ncgeom.plugins``).
- `cli`: the ``ncgeom`` command, with subcommands from the entry-point group
  ``ncgeom.commands``.

Depends on `ncgeom.measure`, `ncgeom.theory` and `ncgeom._lib`; nothing in the
library depends on it apart from `ncgeom.testing`.
"""
