"""fit adds at most ~20 function calls per optimizer step to a hand-written loop (callbacks off).

Not a timing: cProfile counts every Python and C function call, which does not depend on the
machine's load. The figure is benchmarks/overhead.py's: (calls of a 3-epoch fit - calls of a
1-epoch fit) / extra steps, minus the same for the hand-written loop, on its tiny MLP.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import attrs
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead.py"


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("bench_overhead", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # attrs and dataclasses look the module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_engine_adds_at_most_20_calls_per_step(overhead, tmp_path):
    tiny = overhead.make_workloads(tmp_path, "cpu", "fp32", quick=False)["tiny"]
    warm_up = attrs.evolve(tiny, cfg=attrs.evolve(tiny.cfg, samples=256))
    tiny = attrs.evolve(tiny, cfg=attrs.evolve(tiny.cfg, samples=4096))   # 64 steps an epoch
    runners = {"hand": overhead.run_hand, "engine": overhead.run_engine}
    for fn in runners.values():
        fn(warm_up, 1)   # first calls import and cache things: not what a step costs
    calls = overhead.call_counts(tiny, runners, explain=None)
    # the reference is a real loop: forward, backward, clipping and Adam make hundreds of calls
    assert calls["hand_total"] > 200, calls
    assert calls["engine"] <= 20, calls
