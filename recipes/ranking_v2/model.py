"""The similarity transformer: encode a dataset's tokens and each candidate model's tokens, then
score every candidate for the dataset.

    dataset tokens [B, Td, D] -> linear -> TransformerEncoder (masked) -> h_d [B, Td, H]
    model tokens [B, K, Tm, D] -> linear -> TransformerEncoder (masked) -> pooled m [B, K, H]
    c = cross-attention(query m, keys/values h_d)          what of the dataset the model "sees"
    score = MLP([m, c, m * c, m * mean(h_d)])               [B, K]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine import StepContext, StepOutput
from steps.ranking import LOSSES, ranking_metrics, standardize_scores


def _encoder(hidden: int, heads: int, layers: int, ff: int, dropout: float) -> nn.Module:
    layer = nn.TransformerEncoderLayer(hidden, heads, ff, dropout, batch_first=True,
                                       norm_first=True)
    # nested tensors are incompatible with norm_first (and warn); padding is masked anyway
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(h.dtype)[..., None]
    return (h * w).sum(-2) / w.sum(-2).clamp(min=1.0)


def _safe_mask(mask: torch.Tensor) -> torch.Tensor:
    # a padded candidate has no real token; attention over nothing gives NaN, so let it see its
    # (zero) first slot. Its score is ignored: its true score is NaN.
    return mask | (~mask.any(-1, keepdim=True) & (torch.arange(mask.shape[-1],
                                                               device=mask.device) == 0))


class SimilarityTransformer(nn.Module):
    """Scores K candidate models for each dataset of a batch: `forward(...) -> [B, K]`."""

    def __init__(self, input_dim: int, hidden_dim: int, num_heads: int, num_layers: int,
                 ff_dim: int, dropout: float, loss: str = "listnet",
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.input_dim = input_dim
        # what forward_batch trains this model with (it sees the model, not the config)
        self.loss_name = loss
        self.temperature = temperature
        self.dataset_in = nn.Linear(input_dim, hidden_dim)
        self.model_in = nn.Linear(input_dim, hidden_dim)
        self.dataset_encoder = _encoder(hidden_dim, num_heads, num_layers, ff_dim, dropout)
        self.model_encoder = _encoder(hidden_dim, num_heads, num_layers, ff_dim, dropout)
        self.cross = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout,
                                           batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(4 * hidden_dim), nn.Linear(4 * hidden_dim, ff_dim),
                                  nn.GELU(), nn.Linear(ff_dim, 1))

    def forward(self, dataset_tokens: torch.Tensor, dataset_mask: torch.Tensor,
                model_tokens: torch.Tensor, model_mask: torch.Tensor) -> torch.Tensor:
        b, k, tm, d = model_tokens.shape
        dataset_mask = _safe_mask(dataset_mask)
        h_d = self.dataset_encoder(self.dataset_in(dataset_tokens),
                                   src_key_padding_mask=~dataset_mask)
        flat_mask = _safe_mask(model_mask.reshape(b * k, tm))
        h_m = self.model_encoder(self.model_in(model_tokens.reshape(b * k, tm, d)),
                                 src_key_padding_mask=~flat_mask)
        m = _pool(h_m, flat_mask).view(b, k, -1)
        c, _ = self.cross(m, h_d, h_d, key_padding_mask=~dataset_mask, need_weights=False)
        pooled = _pool(h_d, dataset_mask)[:, None, :].expand_as(m)
        return self.head(torch.cat([m, c, m * c, m * pooled], -1)).squeeze(-1)


def make_model(input_dim: int, model_cfg: Any) -> SimilarityTransformer:
    """A SimilarityTransformer from `[model]` settings and the data's token width."""
    return SimilarityTransformer(input_dim, model_cfg.hidden_dim, model_cfg.num_heads,
                                 model_cfg.num_layers, model_cfg.ff_dim, model_cfg.dropout,
                                 model_cfg.loss, model_cfg.temperature)


def unwrap(model: nn.Module) -> nn.Module:
    """The SimilarityTransformer inside a DistributedDataParallel or torch.compile wrapper."""
    for _ in range(3):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
    return model


def forward_batch(model: nn.Module, batch: dict, ctx: StepContext) -> StepOutput:
    """The configured ranking loss over each batch's candidate lists; in validation also the
    ranking metrics of `steps.ranking.METRICS` (weighted tau, NDCG@k, ...) on the raw scores."""
    pred = model(batch["dataset_tokens"], batch["dataset_mask"], batch["model_tokens"],
                 batch["model_mask"])
    scores = batch["scores"]
    observed = torch.isfinite(scores)
    # per-dataset z-scores keep order and ties, and free ListNet from the file's score scale
    target = standardize_scores(scores, observed)
    inner = unwrap(model)
    if inner.loss_name == "listnet":
        loss = LOSSES["listnet"](pred, target, observed, temperature=inner.temperature)
    else:
        loss = LOSSES[inner.loss_name](pred, target, observed)
    if ctx.training:
        return StepOutput(loss)  # metrics cost time and the loop reports them from validation
    return StepOutput(loss, ranking_metrics(pred, scores))
