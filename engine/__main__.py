"""`python -m engine`."""

import os

# On a small machine whose other cores are busy, OpenMP threads that spin while waiting for
# each other can slow a run tenfold (PITFALLS.md); a passive wait costs nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.cli import main  # noqa: E402

raise SystemExit(main())
