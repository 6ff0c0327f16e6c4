"""ranking_v2's data file, loader and baselines: format checks, padding, masks, splits."""

import math

import attrs
import pytest
import torch

from engine.core.errors import UserError, UserErrors
from engine.io.layering import Layer, build_config
from recipes.ranking_v2 import build_model
from recipes.ranking_v2.baselines import compute_baselines, popularity
from recipes.ranking_v2.config import RankingConfig
from recipes.ranking_v2.data import config_data, ensure_data_file, load_data
from recipes.ranking_v2.loader import build_loaders, collate, true_ranks

NAN = float("nan")


def make_file(path, n=6, m=5, d=4, **changes):
    """A small valid data file (or an invalid one, through `changes`)."""
    g = torch.Generator().manual_seed(0)
    obj = {"dataset_tokens": torch.randn(n, 3, d, generator=g),
           "model_tokens": torch.randn(m, 2, d, generator=g),
           "scores": torch.rand(n, m, generator=g)}
    obj.update(changes)
    obj = {k: v for k, v in obj.items() if v is not None}
    torch.save(obj, path)
    return path


def config(tmp_path, **data):
    layers = [Layer({"train": {"output_dir": str(tmp_path / "out"), "batch_size": 4},
                     "data": {"num_candidates": 3, **data}}, "test")]
    return build_config(RankingConfig, layers)


def message(exc_info) -> str:
    return str(exc_info.value)


def test_a_valid_file_loads_with_default_masks(tmp_path):
    """Masks default to all real tokens; dims come from the file."""
    data = load_data(make_file(tmp_path / "d.pt"))
    assert data.token_dim == 4 and data.num_models == 5
    assert data.dataset_mask.shape == (6, 3) and data.dataset_mask.all()
    assert data.model_mask.shape == (5, 2) and data.model_mask.all()


def test_missing_file(tmp_path):
    """A missing data file names the file."""
    with pytest.raises(UserError) as e:
        build_loaders(config(tmp_path, path=str(tmp_path / "nope.pt")))
    assert "not found" in message(e) and "nope.pt" in message(e)


def test_junk_file(tmp_path):
    """A file that torch.load refuses is reported in one line, naming the file."""
    (tmp_path / "junk.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError) as e:
        build_loaders(config(tmp_path, path=str(tmp_path / "junk.pt")))
    text = message(e)
    assert "not a valid .pt file" in text and "junk.pt" in text
    assert len(text.splitlines()) <= 5


def test_not_a_dict(tmp_path):
    """A tensor instead of a dict of arrays."""
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(UserError, match="dict of arrays"):
        load_data(tmp_path / "t.pt")


def test_missing_array(tmp_path):
    """A missing array is named, with the file and the shapes of those present."""
    path = make_file(tmp_path / "d.pt", scores=None)
    with pytest.raises(UserError) as e:
        build_loaders(config(tmp_path, path=str(path)))
    text = message(e)
    assert "'scores'" in text and str(path) in text
    assert "dataset_tokens [6, 3, 4]" in text and "model_tokens [5, 2, 4]" in text


def test_scores_rows_do_not_match_datasets(tmp_path):
    """Mismatched shapes: both arrays and both shapes are named."""
    path = make_file(tmp_path / "d.pt", scores=torch.rand(7, 5))
    with pytest.raises(UserError) as e:
        build_loaders(config(tmp_path, path=str(path)))
    text = message(e)
    assert str(path) in text and "scores [7, 5]" in text and "dataset_tokens [6, 3, 4]" in text


def test_mask_shape_and_token_width_mismatch_are_reported_together(tmp_path):
    """Several shape mistakes come back at once."""
    path = make_file(tmp_path / "d.pt", model_tokens=torch.randn(5, 2, 3),
                     dataset_mask=torch.ones(6, 4, dtype=torch.bool))
    with pytest.raises(UserErrors) as e:
        load_data(path)
    text = message(e)
    assert "model_tokens [5, 2, 3]" in text and "dataset_mask [6, 4]" in text


def test_all_nan_row(tmp_path):
    """A dataset with no known score is named by row, with the array's shape."""
    scores = torch.rand(6, 5)
    scores[2] = NAN
    path = make_file(tmp_path / "d.pt", scores=scores)
    with pytest.raises(UserError) as e:
        build_loaders(config(tmp_path, path=str(path)))
    text = message(e)
    assert "rows 2 all NaN" in text and "scores [6, 5]" in text and str(path) in text
    assert "dataset_tokens [6, 3, 4]" in text


def test_fewer_models_than_candidates(tmp_path):
    """K = 8 candidates from a file of 5 models."""
    path = make_file(tmp_path / "d.pt")
    with pytest.raises(UserError) as e:
        build_loaders(config(tmp_path, path=str(path), num_candidates=8))
    text = message(e)
    assert "fewer models" in text and "model_tokens [5, 2, 4]" in text
    assert "scores [6, 5]" in text and "num_candidates = 8" in text and str(path) in text


def test_forced_input_dim_conflict_names_both_shapes(tmp_path):
    """model.input_dim that disagrees with the file's D fails in build_model and
    build_loaders."""
    path = make_file(tmp_path / "d.pt")
    cfg = config(tmp_path, path=str(path))
    cfg = attrs.evolve(cfg, model=attrs.evolve(cfg.model, input_dim=16))
    for build in (build_model, build_loaders):
        with pytest.raises(UserError) as e:
            build(cfg)
        text = message(e)
        assert "input_dim = 16" in text and "dataset_tokens [6, 3, 4]" in text


def test_collate_pads_tokens_candidates_and_scores():
    """Variable token counts and candidate counts are padded; masks mark real entries."""
    items = [
        {"dataset_tokens": torch.ones(2, 3),
         "model_tokens": [torch.ones(1, 3), torch.ones(3, 3)],
         "scores": torch.tensor([0.5, 0.7])},
        {"dataset_tokens": torch.ones(4, 3),
         "model_tokens": [torch.ones(2, 3), torch.ones(2, 3), torch.ones(1, 3)],
         "scores": torch.tensor([0.1, NAN, 0.1])},
    ]
    batch = collate(items)
    assert list(batch) == ["dataset_tokens", "dataset_mask", "model_tokens", "model_mask",
                           "true_ranks", "scores"]
    assert batch["dataset_tokens"].shape == (2, 4, 3)
    assert batch["dataset_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert batch["model_tokens"].shape == (2, 3, 3, 3)
    assert batch["model_mask"].sum(-1).tolist() == [[1, 3, 0], [2, 2, 1]]
    assert (batch["model_tokens"][~batch["model_mask"]] == 0).all()
    assert (batch["dataset_tokens"][~batch["dataset_mask"]] == 0).all()
    assert batch["scores"][0, 2].isnan() and batch["scores"][1, 1].isnan()
    assert batch["true_ranks"].tolist() == [[1, 0, -1], [0, -1, 0]]


def test_true_ranks_share_ties():
    """Competition ranks: ties share the better rank."""
    assert true_ranks(torch.tensor([[0.2, 0.9, 0.2, 0.1]])).tolist() == [[1, 0, 1, 3]]


def test_loaders_split_by_dataset_and_fix_validation(tmp_path):
    """Validation datasets are not training datasets; validation candidates are fixed;
    training draws observed candidates; batches carry K candidates each."""
    scores = torch.rand(10, 6)
    scores[:, 0] = NAN  # model 0 is never observed: never a training candidate (6 - 1 >= K)
    path = make_file(tmp_path / "d.pt", n=10, m=6, scores=scores,
                     dataset_mask=torch.tensor([[True, False, True]] * 10))
    loaders = build_loaders(config(tmp_path, path=str(path), val_fraction=0.3))
    train, val, test = loaders.train.dataset, loaders.val.dataset, loaders.val.dataset.held_out
    assert (len(train), len(val), len(test)) == (6, 2, 2)  # test 0.15 * 10, val 0.3 * 8
    parts = [set(p.rows.tolist()) for p in (train, val, test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert parts[0] | parts[1] | parts[2] == set(range(10))
    assert test.candidates is not None and not (test.candidates == 0).any()  # model 0: NaN
    first, again = val[0], val[0]
    assert torch.equal(first["scores"], again["scores"], )
    for _ in range(5):
        assert torch.isfinite(train[0]["scores"]).all()
    batch = next(iter(loaders.val))
    assert batch["model_tokens"].shape[:2] == (2, 3) and batch["dataset_tokens"].shape == (2, 2, 4)


def test_synthetic_file_is_written_once_and_reloaded(tmp_path):
    """No data.path: a seeded file under {output_dir}/data, reused, in the documented format."""
    cfg = config(tmp_path, synthetic_datasets=20, synthetic_models=6)
    path = ensure_data_file(cfg)
    assert path.parent == tmp_path / "out" / "data" and path.name.startswith(
        "ranking_v2-synthetic-")
    stamp = path.stat().st_mtime_ns
    assert ensure_data_file(cfg) == path and path.stat().st_mtime_ns == stamp
    obj = torch.load(path, weights_only=True)
    assert obj["scores"].shape == (20, 6) and obj["dataset_mask"].dtype == torch.bool
    assert not obj["dataset_mask"].all()  # variable token counts
    other = attrs.evolve(cfg, data=attrs.evolve(cfg.data, synthetic_seed=1))
    assert ensure_data_file(other) != path
    # train.seed changes the training, never the data: seed replicates share their datasets
    replicate = attrs.evolve(cfg, train=attrs.evolve(cfg.train, seed=1))
    assert ensure_data_file(replicate) == path


def test_without_a_cache_the_synthetic_data_is_generated_in_memory(tmp_path):
    """build_model and build_loaders write nothing; the data they use is the one a run caches
    (and reads back afterwards)."""
    cfg = config(tmp_path, synthetic_datasets=20, synthetic_models=6)
    build_model(cfg)
    in_memory = config_data(cfg)
    loaders = build_loaders(cfg)
    assert not (tmp_path / "out").exists()
    assert "generated in memory" in in_memory.name
    path = ensure_data_file(cfg)
    cached = config_data(cfg)
    assert cached.path == path and cached.name == str(path)
    for name in ("dataset_tokens", "dataset_mask", "model_tokens", "model_mask", "scores"):
        torch.testing.assert_close(getattr(cached, name), getattr(in_memory, name), rtol=0,
                                   atol=0, equal_nan=True)
    again = build_loaders(cfg)
    assert torch.equal(again.val.dataset.candidates, loaders.val.dataset.candidates)


def test_popularity_and_baselines_by_hand():
    """Popularity = mean training score (NaN skipped); random = exact expectation; oracle
    perfect."""
    train = torch.tensor([[0.9, 0.1, NAN], [0.7, 0.3, NAN]])
    assert torch.allclose(popularity(train), torch.tensor([0.8, 0.2, -0.8]))
    candidates = torch.tensor([[0, 1, 2]])
    val = torch.tensor([[0.2, 0.6, 0.4]])
    b = compute_baselines(train, candidates, val)
    assert b["oracle"]["ndcg_at_5"] == pytest.approx(1.0)
    assert b["oracle"]["regret_at_1"] == pytest.approx(0.0)
    assert b["popularity"]["regret_at_1"] == pytest.approx(0.4)  # picks model 0 (0.2)
    assert b["popularity"]["top1_hit"] == pytest.approx(0.0)
    assert b["random"]["regret_at_1"] == pytest.approx(0.6 - 0.4)
    assert b["random"]["top1_hit"] == pytest.approx(1 / 3)
    assert b["random"]["kendall_tau"] == pytest.approx(0.0)
    assert all(math.isfinite(v) for name in b for v in b[name].values())


def test_too_few_datasets_to_split(tmp_path):
    """Two datasets cannot make disjoint train, val and test parts: the file is named."""
    path = make_file(tmp_path / "d.pt", n=2)
    with pytest.raises(UserError) as e:
        build_loaders(config(tmp_path, path=str(path)))
    assert "too few datasets" in message(e) and "at least 3" in message(e)
    assert "dataset_tokens [2, 3, 4]" in message(e)
