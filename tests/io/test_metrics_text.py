"""metrics.json's text: what `dumps` writes reads back as the record, non-finite as null."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.io.metrics import _clean, dumps

_numbers = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True))
_columns = st.dictionaries(st.text(max_size=6), st.lists(_numbers, max_size=6), max_size=4)
_entries = st.recursive(st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=4)),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3)), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(_columns, st.dictionaries(st.text(max_size=6).filter(lambda k: k != "history"),
                                 _entries, max_size=3))
def test_the_text_reads_back_as_the_record(history, extra):
    data = {"recipe": "r", "status": "running", "history": history, **extra}
    text = dumps(data)
    assert json.loads(text) == json.loads(json.dumps(_clean(data)))
    constants = []   # NaN, Infinity: not JSON, and refused by strict readers
    json.loads(text, parse_constant=constants.append)
    assert constants == []


def test_a_history_column_is_one_line():
    text = dumps({"recipe": "r", "history": {"epoch": [0, 1, 2], "val_loss": [0.5, math.inf,
                                                                          0.25]}})
    assert '    "epoch": [0, 1, 2],\n' in text
    assert '    "val_loss": [0.5, null, 0.25]\n' in text
