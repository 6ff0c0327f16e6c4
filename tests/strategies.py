"""Hypothesis strategies shared by the loop's property tests.

Values are exact in binary (multiples of 1/8), so float32 validation losses, their differences
and min_delta compare exactly: ties and "beats by exactly min_delta" really happen.
"""

from hypothesis import strategies as st

val_losses = st.lists(st.sampled_from([0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25]), min_size=1,
                      max_size=8)
patience = st.integers(min_value=0, max_value=4)
min_delta = st.sampled_from([0.0, 0.125, 0.25, 0.5])
every = st.integers(min_value=1, max_value=3)
