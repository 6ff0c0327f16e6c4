"""Device choice: "auto", "cpu", "cuda", "cuda:N", "mps", checked against this machine."""

from __future__ import annotations

import torch

from engine.core.errors import UserError


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The torch.device for `train.device`; under torchrun "auto"/"cuda" take LOCAL_RANK's GPU."""
    where = f'train.device = "{name}"'
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("CUDA is not available on this machine", where=where,
                            expected="a machine with a CUDA GPU", found="no CUDA device",
                            hint='use device = "cpu" or "auto"')
        index = int(name.split(":")[1]) if ":" in name else (local_rank or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"no CUDA device {index}", where=where,
                            expected=f"an index below {torch.cuda.device_count()}",
                            found=name)
        return torch.device("cuda", index)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError("MPS is not available on this machine", where=where,
                            expected="an Apple GPU", found="no MPS device",
                            hint='use device = "cpu" or "auto"')
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UserError("unknown device", where=where,
                    expected='"auto", "cpu", "cuda", "cuda:N" or "mps"', found=name)


def check_precision(device: torch.device, precision: str) -> None:
    """fp16 needs CUDA (its GradScaler); bf16 and fp32 run anywhere."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError("fp16 needs a CUDA device", where='train.precision = "fp16"',
                        expected='"bf16" or "fp32" on this device', found=f"device {device}",
                        hint='use precision = "bf16" on CPU')
