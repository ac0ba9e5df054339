"""Private helpers shared by every layer: nothing here imports the rest of ncgeom.

- `backend`: the one door to array-api-compat (namespaces, devices, host
  transfers, segment sums) and the list of backends.
- `validate`: every input check, with one exception type per kind of mistake.
- `jsonable`, `progress`: strict-JSON copies of results and a progress bar.
"""
