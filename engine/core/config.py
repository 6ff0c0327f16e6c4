"""`TrainConfig`, the fields every recipe shares, and their ranges.

A recipe's config is its own frozen attrs class holding `train: TrainConfig` (and whatever tables
the recipe needs, e.g. `model`, `data`). Reading it from TOML layers is `engine.io.layering`'s;
here is what a valid config is.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from engine.core.errors import UserError, close_match

# --- TrainConfig and its ranges --------------------------------------------------------------

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

MAX_WORKERS = 256

# One table serves both the attrs validators (Python API) and the all-at-once check (CLI).
RANGES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    # each worker is a process: a typo (1000, 10**20) would fork until the machine gives out
    "num_workers": (lambda v: 0 <= v <= MAX_WORKERS, f"0 <= num_workers <= {MAX_WORKERS}"),
    "seed": (lambda v: -2**63 <= v < 2**63, "a 64-bit integer (what torch.manual_seed takes)"),
    "gradient_clip_value": (lambda v: v >= 0, ">= 0 (0 turns clipping off)"),
    "validate_every_n_epochs": (lambda v: v >= 1, ">= 1"),
    "early_stopping_patience": (lambda v: v >= 0, ">= 0 (0 turns early stopping off)"),
    "early_stopping_min_delta": (lambda v: v >= 0, ">= 0"),
    "lr_decay_factor": (lambda v: 0 < v < 1, "0 < lr_decay_factor < 1"),
    "lr_patience": (lambda v: v >= 0, ">= 0"),
    "device": (lambda v: bool(_DEVICE.match(v)), '"auto", "cpu", "cuda", "cuda:N" or "mps"'),
    "precision": (lambda v: v in ("fp32", "bf16", "fp16"), 'one of "fp32", "bf16", "fp16"'),
    "grad_accum_steps": (lambda v: v >= 1, ">= 1"),
    "log_every_n_steps": (lambda v: v >= 1, ">= 1"),
    "checkpoint_every_n_steps": (lambda v: v >= 0, ">= 0 (0: only at epoch ends)"),
    "nan_policy": (lambda v: v in ("stop", "skip", "rollback"),
                   'one of "stop", "skip", "rollback"'),
    "max_skipped_steps": (lambda v: v >= 0, ">= 0"),
    "keep_last": (lambda v: v >= 0, ">= 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "step_size": (lambda v: v >= 1, ">= 1"),
    "gamma": (lambda v: 0 < v <= 1, "0 < gamma <= 1"),
    "momentum": (lambda v: 0 <= v < 1, "0 <= momentum < 1"),
    "min_lr": (lambda v: v >= 0, ">= 0"),
    "output_dir": (lambda v: v != "", "a non-empty path"),
}


def _in_range(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    ok, expected = RANGES[attribute.name]
    if isinstance(value, float) and not math.isfinite(value):   # inf passes "> 0"
        raise ValueError(f"train.{attribute.name} must be a finite number, {expected}, got "
                         f"{value!r}")
    if not ok(value):
        raise ValueError(f"train.{attribute.name} must be {expected}, got {value!r}")


def _f(default: Any) -> Any:
    return attrs.field(default=default, validator=_in_range)


# --- trackers (DESIGN.md 8): which loggers exist, and what a tracking URI looks like --------

# each logger with the package it needs (None: the standard library is enough)
LOGGERS: dict[str, str | None] = {"tensorboard": "tensorboard", "mlflow": "mlflow", "csv": None}
_URI_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class Refused(ValueError):
    """A validator's refusal with the parts of a UserError (expected, found, hint)."""

    def __init__(self, message: str, expected: str, found: str, hint: str | None = None):
        super().__init__(message)
        self.expected, self.found, self.hint = expected, found, hint


def _as_tuple(value: Any) -> Any:
    # the Python API may pass a list; a lone string is left for the validator to refuse
    return tuple(value) if isinstance(value, list) else value


def _check_loggers(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    names = ", ".join(f'"{n}"' for n in LOGGERS)
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        raise Refused(f"train.loggers must be a list of names, got {value!r}",
                      f"a list of {names}", f"loggers = {value!r}")
    for name in value:
        if name not in LOGGERS:
            raise Refused(f"unknown logger {name!r}", f"any of {names}",
                          f'"{name}" in loggers = ' + toml_value(list(value)),
                          close_match(name, LOGGERS))
        package = LOGGERS[name]
        if package is not None and importlib.util.find_spec(package) is None:
            raise Refused(f"logger {name!r} needs the {package} package", f"{package} installed",
                          f"no module named {package!r}",
                          'pip install -e ".[trackers]"')


def _check_mlflow_uri(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    parts = urlsplit(value) if isinstance(value, str) else None
    scheme = parts.scheme.split("+")[0] if parts else ""
    ok = scheme in _URI_SCHEMES
    if scheme == "sqlite":
        ok = value.startswith("sqlite:///") and len(value) > len("sqlite:///")
    elif scheme in ("http", "https"):
        ok = bool(parts.hostname)
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError:
            ok = False
    if not ok:
        raise Refused(f"train.mlflow_uri is not a tracking URI: {value!r}",
                      "a tracking URI such as sqlite:///artifacts/mlflow.db or "
                      "http://127.0.0.1:5000", f"mlflow_uri = {value!r}",
                      "leave it out for sqlite:///{output_dir}/mlflow.db")


@attrs.frozen
class TrainConfig:
    """How to train: the fields every recipe shares (`[train]` in TOML).

    Epochs and steps count from 0 in the API; `gradient_clip_value` is the largest total L2
    norm of the gradients (0 = off); `early_stopping_patience` 0 = off.
    """

    epochs: int = _f(10)
    batch_size: int = _f(32)
    learning_rate: float = _f(1e-3)
    weight_decay: float = _f(0.0)
    num_workers: int = _f(0)
    gradient_clip_value: float = _f(1.0)
    validate_every_n_epochs: int = _f(1)
    early_stopping_patience: int = _f(5)
    early_stopping_min_delta: float = _f(0.0)
    lr_decay_factor: float = _f(0.5)
    lr_patience: int = _f(2)
    seed: int = _f(0)
    device: str = _f("auto")
    precision: str = _f("fp32")
    grad_accum_steps: int = _f(1)
    compile: bool = False
    output_dir: str = _f("artifacts")
    log_every_n_steps: int = _f(50)
    # resume and safety
    checkpoint_every_n_steps: int = _f(0)
    nan_policy: str = _f("stop")
    max_skipped_steps: int = _f(10)
    keep_last: int = _f(0)
    # schedule builders (engine.core.schedules)
    warmup_steps: int = _f(0)
    step_size: int = _f(10)
    gamma: float = _f(0.1)
    momentum: float = _f(0.9)
    min_lr: float = _f(0.0)
    # trackers (engine.io.trackers): any of "tensorboard", "mlflow", "csv"
    loggers: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple,
                                           validator=_check_loggers)
    mlflow_uri: str | None = attrs.field(default=None, validator=_check_mlflow_uri)




def toml_value(value: Any) -> str:
    """A value as TOML shows it in a message (`true`, `"cpu"`, `3`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def range_errors(cfg: Any, where: Any = None, prefix: tuple = ()) -> list[UserError]:
    """Run every attrs validator of `cfg` and its nested records; collect all failures."""
    where = where or (lambda path: "the config")
    errors = []
    for field in attrs.fields(type(cfg)):
        value = getattr(cfg, field.name)
        path = prefix + (field.name,)
        if attrs.has(type(value)):
            errors += range_errors(value, where, path)
        if type(value) is int and not -2**63 <= value < 2**63:   # TOML's integers are 64-bit
            errors.append(UserError(
                f"config value out of range for '{'.'.join(path)}'", where=where(path),
                expected="an integer between -2**63 and 2**63 - 1",
                found=f"{field.name} = {value}"))
            continue
        if field.validator is None:
            continue
        try:
            field.validator(cfg, field, value)
        except Refused as exc:  # a check that says what it expected itself
            errors.append(UserError(f"invalid value for '{'.'.join(path)}'", where=where(path),
                                    expected=exc.expected, found=exc.found, hint=exc.hint))
        except Exception as exc:  # a validator's own message names the rule
            rule = RANGES.get(field.name, (None, None))[1] if type(cfg) is TrainConfig else None
            if rule and isinstance(value, float) and not math.isfinite(value):
                rule = f"a finite number, {rule}"
            kind = "invalid value" if isinstance(value, str) else "config value out of range"
            errors.append(UserError(
                f"{kind} for '{'.'.join(path)}'", where=where(path),
                expected=rule or _rule_of(exc, field.name, value),
                found=f"{field.name} = {toml_value(value)}"))
    return errors


def _rule_of(exc: Exception, name: str, value: Any) -> str:
    """A validator's message as the rule alone: attrs says "'hidden_dim' must be >= 1: -1",
    and the block already names the key and shows the value."""
    # attrs' in_ raises with the message and the field as args: str(exc) would be their tuple
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = text.removesuffix(f": {value!r}").removesuffix(f" (got {value!r})")
    text = text.removeprefix(f"'{name}' ")
    if re.match(r"must be [<>=!]", text):
        text = text.removeprefix("must be ")
    return text or type(exc).__name__


def flatten(table: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: `{"train": {"epochs": 3}}` -> `{"train.epochs": 3}`."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_dict(cfg: Any) -> dict:
    """The config as nested plain dicts and lists, None values left out (TOML has no null):
    what config.toml and a checkpoint's `config` entry hold."""
    def drop_none(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [drop_none(v) for v in value]
        return value
    return drop_none(attrs.asdict(cfg))
