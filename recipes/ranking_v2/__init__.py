"""ranking_v2: a similarity transformer that ranks pre-trained models for an unseen dataset.

It learns, from datasets whose fine-tuning results are known, which candidate models will do best
on a dataset it has never seen, and reports NDCG@k, Kendall's tau, top-1 hit and regret@1
against random, popularity and oracle baselines. Modules: `config` (the config tables), `data`
(the file format, loading with clear errors, the synthetic generator), `loader` (candidate lists
and the padding collate), `model` (the network and `forward_batch`), `baselines`.
"""

from __future__ import annotations

from typing import Any

from engine import Recipe
from recipes.ranking_v2.baselines import baselines_callback
from recipes.ranking_v2.config import RankingConfig
from recipes.ranking_v2.loader import build_loaders, check_input_dim, load_checked
from recipes.ranking_v2.model import SimilarityTransformer, forward_batch, make_model


def build_model(cfg: Any) -> SimilarityTransformer:
    """The model, its input width read from the data file (generated first if synthetic)."""
    return make_model(check_input_dim(cfg, load_checked(cfg)), cfg.model)


recipe = Recipe(
    name="ranking_v2",
    config=RankingConfig,
    build_model=build_model,
    build_loaders=build_loaders,
    forward_batch=forward_batch,
    callbacks=(baselines_callback,),
)

__all__ = ["RankingConfig", "build_loaders", "build_model", "forward_batch", "recipe"]
