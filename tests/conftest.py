"""Shared test settings: a fast hypothesis profile by default (HYPOTHESIS_PROFILE=thorough for
more examples), the project root and tests/ on sys.path (tests live in one folder per layer)."""

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
# the project root (for `recipes`, `tests.ddp_recipe`) and tests/ itself (for the shared helper
# modules: helpers, strategies, scripted, the small recipes) wherever a test file sits below it
for folder in (ROOT, ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

settings.register_profile("fast", max_examples=20, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
