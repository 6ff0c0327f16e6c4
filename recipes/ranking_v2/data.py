"""ranking_v2's data file: its format, loading with clear errors, and a synthetic generator.

File format: a `.pt` file written by `torch.save` and read with `torch.load(path,
weights_only=True)`, holding a dict of tensors:

    dataset_tokens  float [N, Td, D]   tokens describing each dataset (e.g. sample embeddings)
    model_tokens    float [M, Tm, D]   tokens describing each model (e.g. layer statistics)
    scores          float [N, M]       fine-tuning result of model m on dataset n, higher is
                                       better; NaN where unknown
    dataset_mask    bool  [N, Td]      optional; True = real token (default: all real)
    model_mask      bool  [M, Tm]      optional; True = real token (default: all real)

D, Td, Tm, N and M are read from the file. Every dataset row needs at least one known score and
every token set at least one real token. With no `data.path`, the data is synthetic (seeded by
`data.synthetic_seed` and the other `data.synthetic_*` settings, never by `train.seed`):
`config_data` reads it from its cache, `{train.output_dir}/data/ranking_v2-synthetic-<hash of
the settings>.pt`, or generates it in memory when there is none, and checks it like any user
file; only a run writes the cache (`ensure_data_file`, atomically, when the run starts), so
`engine check` writes nothing.

Synthetic generation: datasets and models have hidden factors u_n, v_m; the score is
`sigmoid(0.5 + b_m + u_n . v_m / sqrt(F) + noise)` with a per-model popularity b_m (so "pick the
model best on average" is a real baseline) and an interaction (so a per-dataset ranking beats
it); tokens are noisy linear views of the factors (a model's tokens also see b_m); token counts
vary (masks); a few scores are NaN.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import attrs
import torch

from engine import UserError, atomic_torch_save, raise_all

FORMAT = ("a dict saved with torch.save: dataset_tokens [N, Td, D], model_tokens [M, Tm, D], "
          "scores [N, M] (NaN = unknown), optional dataset_mask [N, Td] and model_mask [M, Tm]")
SYNTHETIC_VERSION = 1  # bump when the generator changes, so old cache files are not reused


@attrs.frozen(eq=False)
class RankingData:
    """A loaded, checked data file (all tensors on the CPU; masks filled in when absent)."""

    path: Path
    dataset_tokens: torch.Tensor  # [N, Td, D] float32
    dataset_mask: torch.Tensor    # [N, Td] bool
    model_tokens: torch.Tensor    # [M, Tm, D] float32
    model_mask: torch.Tensor      # [M, Tm] bool
    scores: torch.Tensor          # [N, M] float32, NaN = unknown
    # how messages name it: the file, or the synthetic data not yet written to `path`
    name: str = attrs.field(default="")

    def __attrs_post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", str(self.path))

    @property
    def token_dim(self) -> int:
        return int(self.dataset_tokens.shape[-1])

    @property
    def num_models(self) -> int:
        return int(self.model_tokens.shape[0])


def _shape(t: Any) -> str:
    return f"[{', '.join(str(d) for d in t.shape)}]" if isinstance(t, torch.Tensor) else (
        type(t).__name__)


def _arrays(obj: dict) -> str:
    return ", ".join(f"{k} {_shape(v)}" for k, v in obj.items()) or "an empty dict"


def _read(path: Path) -> dict:
    if not path.is_file():
        raise UserError("data file not found", where=f"data.path = \"{path}\"",
                        expected=f"an existing .pt file: {FORMAT}",
                        found="no such file" if not path.exists() else "not a file")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # junk and unsafe pickles both land here, with long messages
        raise UserError("data file is not a valid .pt file", where=str(path),
                        expected=f"{FORMAT}, loadable with torch.load(weights_only=True)",
                        found=_load_failure(exc)) from None
    if not isinstance(obj, dict):
        raise UserError("data file does not hold a dict of arrays", where=str(path),
                        expected=FORMAT, found=type(obj).__name__)
    return obj


def _load_failure(exc: Exception) -> str:
    """torch.load's reason in one line (its weights_only message is a page long, and advises
    weights_only=False, which we never do: keep only the unpickler's own reason)."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
        return f"refused by the safe loader: {' '.join(reason.split())[:200]}"
    first = text.splitlines()[0][:200] if text else "the file ends early or is empty"
    return f"{type(exc).__name__}: {first}"


def _check_arrays(path: Path, obj: dict) -> list[UserError]:
    """Presence, type, rank and dtype of each array."""
    errors = []
    wanted = {"dataset_tokens": (3, "float [N, Td, D]"), "model_tokens": (3, "float [M, Tm, D]"),
              "scores": (2, "float [N, M]"), "dataset_mask": (2, "bool [N, Td]"),
              "model_mask": (2, "bool [M, Tm]")}
    for name, (ndim, spec) in wanted.items():
        if name not in obj:
            if not name.endswith("_mask"):
                errors.append(UserError(f"data file has no array '{name}'", where=str(path),
                                        expected=FORMAT, found=_arrays(obj)))
            continue
        value = obj[name]
        is_mask = name.endswith("_mask")
        ok = (isinstance(value, torch.Tensor) and value.dim() == ndim
              and (value.dtype == torch.bool if is_mask else value.is_floating_point()))
        if not ok:
            found = (f"{name} {value.dtype} {_shape(value)}" if isinstance(value, torch.Tensor)
                     else f"{name} of type {type(value).__name__}")
            errors.append(UserError(f"data file array '{name}' has the wrong type or rank",
                                    where=str(path), expected=f"{name} {spec}", found=found))
    return errors


def _check_shapes(path: Path, obj: dict) -> list[UserError]:
    """Agreement between the arrays' shapes, and their values."""
    dt, mt, sc = obj["dataset_tokens"], obj["model_tokens"], obj["scores"]
    n, m = dt.shape[0], mt.shape[0]
    errors = []

    def mismatch(what: str, a: str, b: str, expected: str) -> None:
        errors.append(UserError(what, where=str(path), expected=expected,
                                found=f"{a} {_shape(obj[a])}, {b} {_shape(obj[b])}"))

    if sc.shape[0] != n:
        mismatch("arrays 'scores' and 'dataset_tokens' disagree on the number of datasets",
                 "scores", "dataset_tokens", f"scores rows = dataset_tokens.shape[0] = {n}")
    if sc.shape[1] != m:
        mismatch("arrays 'scores' and 'model_tokens' disagree on the number of models",
                 "scores", "model_tokens", f"scores columns = model_tokens.shape[0] = {m}")
    if mt.shape[2] != dt.shape[2]:
        mismatch("arrays 'model_tokens' and 'dataset_tokens' have different token widths",
                 "model_tokens", "dataset_tokens", f"the same D in both ({dt.shape[2]})")
    for mask, tokens in (("dataset_mask", "dataset_tokens"), ("model_mask", "model_tokens")):
        if mask in obj and obj[mask].shape != obj[tokens].shape[:2]:
            mismatch(f"array '{mask}' does not match '{tokens}'", mask, tokens,
                     f"{mask} [{', '.join(map(str, obj[tokens].shape[:2]))}]")
        elif mask in obj and not obj[mask].any(-1).all():
            rows = (~obj[mask].any(-1)).nonzero().flatten().tolist()
            errors.append(UserError(f"array '{mask}' has rows with no real token",
                                    where=str(path), expected=f"at least one True per row of "
                                    f"{mask} {_shape(obj[mask])} ({tokens} {_shape(obj[tokens])})",
                                    found=f"rows {_few(rows)} all False"))
    if errors:
        return errors
    if n < 3:
        errors.append(UserError("data file has too few datasets to split", where=str(path),
                                expected="at least 3 datasets (train, val and test are "
                                "disjoint)", found=f"dataset_tokens {_shape(dt)}"))
    for name in ("dataset_tokens", "model_tokens"):
        if not torch.isfinite(obj[name]).all():
            errors.append(UserError(f"array '{name}' holds NaN or infinite values",
                                    where=str(path), expected="finite tokens",
                                    found=f"{name} {_shape(obj[name])}"))
    if torch.isinf(sc).any():
        errors.append(UserError("array 'scores' holds infinite values", where=str(path),
                                expected="finite scores, NaN where unknown",
                                found=f"scores {_shape(sc)}"))
    empty = (~torch.isfinite(sc)).all(-1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        errors.append(UserError("array 'scores' has rows with no known score", where=str(path),
                                expected="at least one non-NaN score per dataset: scores "
                                f"{_shape(sc)} against dataset_tokens {_shape(dt)}",
                                found=f"rows {_few(rows)} all NaN"))
    return errors


def _few(items: list) -> str:
    return ", ".join(map(str, items[:8])) + (f" and {len(items) - 8} more" if len(items) > 8
                                             else "")


def load_data(path: str | Path) -> RankingData:
    """Read and check a data file; every problem is a UserError naming the file and arrays."""
    path = Path(path)
    return data_from_dict(path, _read(path))


def data_from_dict(path: Path, obj: dict, name: str = "") -> RankingData:
    """Check a data file's dict (read from `path`, or generated for it) and wrap it."""
    raise_all(_check_arrays(path, obj))
    raise_all(_check_shapes(path, obj))
    dt, mt = obj["dataset_tokens"].float(), obj["model_tokens"].float()
    return RankingData(
        path=path, dataset_tokens=dt, model_tokens=mt, scores=obj["scores"].float(),
        dataset_mask=obj.get("dataset_mask", torch.ones(dt.shape[:2], dtype=torch.bool)),
        model_mask=obj.get("model_mask", torch.ones(mt.shape[:2], dtype=torch.bool)),
        name=name)


def check_candidates(data: RankingData, k: int) -> None:
    """K candidates per dataset need at least K models in the file."""
    if data.num_models < k:
        raise UserError("fewer models than candidates per dataset",
                        where=f"{data.name} and data.num_candidates = {k}",
                        expected=f"model_tokens [M, Tm, D] with M >= {k}",
                        found=f"model_tokens {_shape(data.model_tokens)}, scores "
                        f"{_shape(data.scores)} (M = {data.num_models})",
                        hint=f"set data.num_candidates to at most {data.num_models}")


# --- the synthetic file ---------------------------------------------------------------------

def synthetic_settings(cfg: Any) -> dict:
    """Everything the synthetic file depends on (its cache key)."""
    # data.synthetic_seed (as "seed"), not train.seed: seed replicates see the same datasets
    settings = {k[len("synthetic_"):]: v for k, v in attrs.asdict(cfg.data).items()
                if k.startswith("synthetic_")}
    return {"version": SYNTHETIC_VERSION, **settings}


def generate(settings: dict) -> dict[str, torch.Tensor]:
    """A synthetic data file's dict (see the module docstring), seeded by `settings["seed"]`."""
    g = torch.Generator().manual_seed(settings["seed"])
    n, m, f = settings["datasets"], settings["models"], settings["factors"]
    d, td, tm = settings["token_dim"], settings["dataset_tokens"], settings["model_tokens"]
    noise = settings["token_noise"]
    u = torch.randn(n, f, generator=g)
    v = torch.randn(m, f, generator=g)
    popularity = settings["popularity"] * torch.randn(m, generator=g)
    logit = 0.5 + popularity + u @ v.T / math.sqrt(f) + 0.1 * torch.randn(n, m, generator=g)
    scores = torch.sigmoid(logit)
    missing = torch.rand(n, m, generator=g) < settings["missing"]
    missing[torch.arange(n), torch.randint(m, (n,), generator=g)] = False  # no empty row
    scores[missing] = float("nan")

    def tokens(factors: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        view = torch.randn(factors.shape[1], d, generator=g) / math.sqrt(factors.shape[1])
        x = (factors @ view)[:, None, :] + noise * torch.randn(len(factors), count, d,
                                                               generator=g)
        lengths = torch.randint(max(1, count // 2), count + 1, (len(factors),), generator=g)
        mask = torch.arange(count)[None, :] < lengths[:, None]
        return x * mask[..., None], mask

    dataset_tokens, dataset_mask = tokens(u, td)
    model_tokens, model_mask = tokens(torch.cat([v, popularity[:, None]], 1), tm)
    return {"dataset_tokens": dataset_tokens, "model_tokens": model_tokens, "scores": scores,
            "dataset_mask": dataset_mask, "model_mask": model_mask}


def synthetic_path(cfg: Any) -> Path:
    """Where the synthetic file of these settings is cached."""
    settings = synthetic_settings(cfg)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.train.output_dir) / "data" / f"ranking_v2-synthetic-{digest}.pt"


def config_data(cfg: Any) -> RankingData:
    """The config's data: `data.path`, else the cached synthetic file, else the synthetic data
    generated in memory. Nothing is written here (`engine check` writes no file); a run writes
    the cache when it starts (`ensure_data_file`)."""
    if cfg.data.path is not None:
        return load_data(cfg.data.path)
    path = synthetic_path(cfg)
    if path.exists():
        return load_data(path)
    return data_from_dict(path, generate(synthetic_settings(cfg)),
                          f"the synthetic data (generated in memory; a run caches it as {path})")


def ensure_data_file(cfg: Any) -> Path:
    """`data.path`, or the cached synthetic file (generated and written if absent)."""
    if cfg.data.path is not None:
        return Path(cfg.data.path)
    path = synthetic_path(cfg)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(path, generate(synthetic_settings(cfg)))
        except OSError as exc:
            raise UserError("the synthetic data file cannot be written", where=str(path),
                            expected="a folder this user can create files in (train.output_dir)",
                            found=exc.strerror or str(exc)) from None
    return path
