"""`python -m engine`."""

import gc
import os

# On a small machine whose other cores are busy, OpenMP threads that spin while waiting for
# each other can slow a run tenfold (PITFALLS.md); a passive wait costs nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.cli import main  # noqa: E402

code = main()
# The interpreter's last collections walk every object torch, torch._dynamo and sympy made:
# 0.6-0.8 s of exit here. Frozen, they are skipped; the teardown (atexit, flushing files,
# freeing modules) runs as always.
gc.freeze()
raise SystemExit(code)
