"""The combined similarity loader: one example = one dataset with K candidate models.

Datasets are split into train, val and test (`recipes.ranking_v2.splits`: disjoint, so val and
test ask about unseen datasets). A training example draws K candidates among the dataset's
observed models each time it is read (topped up with unobserved ones when fewer than K are
known); a val or test example has a fixed set, chosen once per dataset from `data.split_seed`
(so seed replicates and folds see the same lists). Each example keeps only its real tokens;
`collate` pads them into a batch:

    dataset_tokens [B, Td, D]     dataset_mask [B, Td]      (True = real token)
    model_tokens   [B, K, Tm, D]  model_mask   [B, K, Tm]
    true_ranks     [B, K] long    (0 = best; tied scores share a rank; -1 = unobserved/padding)
    scores         [B, K] float   (NaN = unobserved or padding)

The loaders are train and val; the test lists ride on the val set (`held_out`), read by the
end-of-run evaluation (`recipes.ranking_v2.report`) and by no loader.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from engine import Loaders, UserError
from recipes.ranking_v2.data import RankingData, check_candidates, config_data
from recipes.ranking_v2.splits import Split, split_datasets


@attrs.frozen(eq=False)
class CandidateLists:
    """A map-style dataset over some rows of a data file.

    `candidates` [n, K] fixes each example's candidate models (val, test); None draws K of
    them at every read (train). `rows` are the file's dataset indices. `held_out` (on the val
    set only) holds the test lists.
    """

    rows: torch.Tensor                       # [n] long
    dataset_tokens: tuple                    # n tensors [td, D] (real tokens only)
    model_tokens: tuple                      # M tensors [tm, D]
    scores: torch.Tensor                     # [n, M]
    num_candidates: int
    candidates: torch.Tensor | None = None   # [n, K] long
    held_out: CandidateLists | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.candidates is not None:
            chosen = self.candidates[i]
        else:  # the global RNG: DataLoader workers seed it per worker, resumes restore it
            chosen = pick_candidates(self.scores[i], self.num_candidates, None)
        return {"dataset_tokens": self.dataset_tokens[i],
                "model_tokens": [self.model_tokens[j] for j in chosen.tolist()],
                "scores": self.scores[i, chosen]}


def pick_candidates(scores: torch.Tensor, k: int, generator: torch.Generator | None):
    """K model indices for one dataset: a random K of the observed ones, then unobserved ones."""
    seen = torch.isfinite(scores)
    observed = seen.nonzero().flatten()
    unobserved = (~seen).nonzero().flatten()
    observed = observed[torch.randperm(len(observed), generator=generator)]
    if len(observed) >= k:
        return observed[:k]
    unobserved = unobserved[torch.randperm(len(unobserved), generator=generator)]
    return torch.cat([observed, unobserved[:k - len(observed)]])


def true_ranks(scores: torch.Tensor) -> torch.Tensor:
    """0-based competition ranks by score, higher first (ties share the better rank);
    -1 where the score is NaN."""
    seen = torch.isfinite(scores)
    s = torch.where(seen, scores, torch.zeros_like(scores))
    better = (seen[..., None, :] & (s[..., None, :] > s[..., :, None])).sum(-1)
    return torch.where(seen, better, torch.full_like(better, -1))


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Pad a list of examples into one batch (see the module docstring for shapes)."""
    dataset = pad_sequence([it["dataset_tokens"] for it in items], batch_first=True)
    d_len = torch.tensor([len(it["dataset_tokens"]) for it in items])
    k = max(len(it["model_tokens"]) for it in items)
    width = items[0]["dataset_tokens"].shape[-1]
    empty = torch.zeros(0, width)
    flat = [m for it in items for m in it["model_tokens"] + [empty] * (k - len(it["model_tokens"]))]
    models = pad_sequence(flat, batch_first=True)
    m_len = torch.tensor([len(m) for m in flat])
    scores = torch.full((len(items), k), float("nan"))
    for b, it in enumerate(items):
        scores[b, :len(it["scores"])] = it["scores"]
    # dataset_tokens first: the engine counts samples from the first tensor's first dimension
    return {
        "dataset_tokens": dataset,
        "dataset_mask": torch.arange(dataset.shape[1])[None, :] < d_len[:, None],
        "model_tokens": models.view(len(items), k, models.shape[1], width),
        "model_mask": (torch.arange(models.shape[1])[None, :] < m_len[:, None]).view(
            len(items), k, -1),
        "true_ranks": true_ranks(scores),
        "scores": scores,
    }


def make_splits(data: RankingData, k: int, split: Split, split_seed: int):
    """The train, val and test CandidateLists of a loaded file (the val set holds the test
    set as `held_out`)."""
    dataset_tokens = [t[m] for t, m in zip(data.dataset_tokens, data.dataset_mask, strict=True)]
    model_tokens = tuple(t[m] for t, m in zip(data.model_tokens, data.model_mask, strict=True))
    # one fixed list per dataset, whatever part it lands in
    g = torch.Generator().manual_seed(split_seed + 1)
    fixed = torch.stack([pick_candidates(row, k, g) for row in data.scores])

    def part(rows: torch.Tensor, candidates: torch.Tensor | None, **more) -> CandidateLists:
        return CandidateLists(rows=rows, dataset_tokens=tuple(dataset_tokens[r] for r in rows),
                              model_tokens=model_tokens, scores=data.scores[rows],
                              num_candidates=k, candidates=candidates, **more)

    test = part(split.test, fixed[split.test])
    return part(split.train, None), part(split.val, fixed[split.val], held_out=test), test


def check_input_dim(cfg: Any, data: RankingData) -> int:
    """The model's input width: the file's D, or `model.input_dim` if it agrees with it."""
    forced = cfg.model.input_dim
    if forced is not None and forced != data.token_dim:
        raise UserError("the data's token width does not match the model's input width",
                        where=f"{data.name} and model.input_dim = {forced}",
                        expected=f"tokens [..., {forced}] for a model with input_dim {forced}",
                        found=f"dataset_tokens {list(data.dataset_tokens.shape)}, model_tokens "
                        f"{list(data.model_tokens.shape)} (D = {data.token_dim})",
                        hint="leave model.input_dim unset: it is read from the data file")
    return data.token_dim


def check_example(example: dict, input_dim: int, where: str) -> None:
    """`dataset[0]` against the model: both token sets must be `input_dim` wide."""
    for key in ("dataset_tokens", "model_tokens"):
        tokens = example[key]
        tokens = tokens[0] if isinstance(tokens, list) else tokens
        if tokens.shape[-1] != input_dim:
            raise UserError("an example does not fit the model", where=where,
                            expected=f"{key} [..., {input_dim}] (model input_dim {input_dim})",
                            found=f"dataset[0]['{key}'] {list(tokens.shape)}")


def load_checked(cfg: Any) -> tuple[RankingData, Split]:
    """The config's data (`data.config_data`: nothing is written), checked against K, and its
    split (checked: every part non-empty)."""
    data = config_data(cfg)
    check_candidates(data, cfg.data.num_candidates)
    return data, split_datasets(len(data.scores), cfg.data, data.name)


def build_loaders(cfg: Any) -> Loaders:
    """Training and validation loaders; every data problem is raised here, before training."""
    data, split = load_checked(cfg)
    input_dim = check_input_dim(cfg, data)
    train, val, test = make_splits(data, cfg.data.num_candidates, split, cfg.data.split_seed)
    check_example(val[0], input_dim, f"{data.name} (validation example 0)")
    workers = cfg.train.num_workers
    common = {"batch_size": cfg.train.batch_size, "collate_fn": collate, "num_workers": workers,
              "persistent_workers": workers > 0}
    return Loaders(train=DataLoader(train, shuffle=True, **common),
                   val=DataLoader(val, shuffle=False, **common))
