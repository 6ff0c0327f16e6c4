"""ranking_v2: a similarity transformer that ranks pre-trained models for an unseen dataset.

It learns, from datasets whose fine-tuning results are known, which candidate models will do best
on a dataset it has never seen. Datasets are split into train, val (chooses the best epoch) and
a held-out test, evaluated once at the end with the best weights; it reports weighted Kendall
tau, NDCG@k, Kendall's tau, top-1 hit, regret@1 and rel@1 against random, popularity and oracle
baselines. Modules: `config` (the config tables), `data` (the file format, loading with clear
errors, the synthetic generator), `splits` (train/val/test and folds over datasets), `loader`
(candidate lists and the padding collate), `model` (the network and `forward_batch`),
`baselines`, `report` (what a run adds to metrics.json and its log).
"""

from __future__ import annotations

from typing import Any

from engine import Recipe
from recipes.ranking_v2.config import RankingConfig
from recipes.ranking_v2.loader import build_loaders, check_input_dim, load_checked
from recipes.ranking_v2.model import SimilarityTransformer, forward_batch, make_model
from recipes.ranking_v2.report import report_callback


def build_model(cfg: Any) -> SimilarityTransformer:
    """The model, its input width read from the data (nothing is written: synthetic data
    without a cache file is generated in memory)."""
    data, _ = load_checked(cfg)
    return make_model(check_input_dim(cfg, data), cfg.model)


recipe = Recipe(
    name="ranking_v2",
    config=RankingConfig,
    build_model=build_model,
    build_loaders=build_loaders,
    forward_batch=forward_batch,
    callbacks=(report_callback,),
)

__all__ = ["RankingConfig", "build_loaders", "build_model", "forward_batch", "recipe"]
