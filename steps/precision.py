"""Mixed precision as two small pieces: an autocast context and a GradScaler."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> Any:
    """A context that runs the forward pass in `precision` ("fp32": a no-op context)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def autocast_or_none(device: torch.device, precision: str) -> Any:
    """`autocast` for a loop that skips the `with` in fp32: None there (no context to enter,
    a batch at a time), else the reusable autocast context."""
    return None if precision == "fp32" else autocast(device, precision)


def make_scaler(device: torch.device, precision: str) -> Any:
    """A GradScaler for fp16 on CUDA (it keeps small gradients from underflowing), else None.

    Its `step` reads `found_inf` on the host every optimizer step: a sync the user opts into
    by choosing fp16, like nan_policy skip and rollback (bf16 needs no scaler and no sync)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
