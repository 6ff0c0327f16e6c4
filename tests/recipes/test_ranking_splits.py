"""ranking_v2's splits over datasets: train / val / test, K folds, split_seed, clear errors."""

import pytest
import torch

from engine.core.errors import UserError
from engine.io.layering import Layer, build_config, parse_set
from recipes.ranking_v2 import build_model
from recipes.ranking_v2.baselines import compute_baselines, heldout_baselines_of
from recipes.ranking_v2.config import RankingConfig
from recipes.ranking_v2.loader import build_loaders
from recipes.ranking_v2.splits import split_datasets

N = 23  # not a multiple of 5: folds of 5 and 4 datasets


def config(tmp_path, *sets):
    """A small synthetic config, with `--set` flags as the command line gives them."""
    layers = [Layer({"train": {"output_dir": str(tmp_path / "out"), "batch_size": 8},
                     "data": {"num_candidates": 4, "synthetic_datasets": N,
                              "synthetic_models": 6}}, "test")]
    return build_config(RankingConfig, layers + [parse_set(flag) for flag in sets])


def parts(loaders) -> dict[str, set[int]]:
    val = loaders.val.dataset
    return {"train": set(loaders.train.dataset.rows.tolist()), "val": set(val.rows.tolist()),
            "test": set(val.held_out.rows.tolist())}


def assert_partition(p: dict[str, set[int]], n: int) -> None:
    assert all(p.values()), p
    assert not (p["train"] & p["val"] or p["train"] & p["test"] or p["val"] & p["test"])
    assert p["train"] | p["val"] | p["test"] == set(range(n))


def test_default_split_sizes_and_seeds(tmp_path):
    """test = round(0.15 N), val = round(0.2 of the rest); a function of data.split_seed only:
    train.seed leaves it alone, split_seed changes it."""
    base = parts(build_loaders(config(tmp_path)))
    assert_partition(base, N)
    assert (len(base["test"]), len(base["val"])) == (3, 4)  # 0.15 * 23 = 3.45, 0.2 * 20 = 4
    assert parts(build_loaders(config(tmp_path, "train.seed=7"))) == base
    assert parts(build_loaders(config(tmp_path, "data.split_seed=1"))) != base


def test_five_folds_give_disjoint_test_sets_covering_every_dataset(tmp_path):
    """`--set data.folds=5 --set data.fold=k`, k = 0..4: disjoint test sets whose union is
    every dataset, sizes 5 or 4; val and train come from the other folds; each a partition."""
    tests = []
    for k in range(5):
        p = parts(build_loaders(config(tmp_path, "data.folds=5", f"data.fold={k}")))
        assert_partition(p, N)
        tests.append(p["test"])
    assert sorted(len(t) for t in tests) == [4, 4, 5, 5, 5]
    assert set().union(*tests) == set(range(N)) and sum(map(len, tests)) == N


def test_a_dataset_keeps_its_candidate_list_in_every_fold(tmp_path):
    """Val and test lists are fixed per dataset (from split_seed), whichever part it is in."""
    lists = {}
    for k in (0, 1):
        val = build_loaders(config(tmp_path, "data.folds=2", f"data.fold={k}")).val.dataset
        for part in (val, val.held_out):
            for row, cands in zip(part.rows.tolist(), part.candidates, strict=True):
                assert torch.equal(lists.setdefault(row, cands), cands)
    assert len(lists) == N


def test_test_baselines_count_popularity_on_training_datasets_only(tmp_path):
    """The test's popularity baseline is the training datasets' mean scores, on the test
    lists."""
    loaders = build_loaders(config(tmp_path))
    train, test = loaders.train.dataset, loaders.val.dataset.held_out
    expected = compute_baselines(train.scores, test.candidates,
                                 torch.gather(test.scores, 1, test.candidates))
    assert heldout_baselines_of(loaders) == expected


@pytest.mark.parametrize(("sets", "key"), [
    (["data.folds=5", "data.fold=7"], "data.fold"),
    (["data.folds=5", "data.fold=-1"], "data.fold"),
    (["data.fold=2"], "data.fold"),
    (["data.folds=1"], "data.folds"),
    (["data.test_fraction=0"], "data.test_fraction"),
    (["data.val_fraction=1.0"], "data.val_fraction"),
])
def test_bad_fold_settings_are_config_errors(tmp_path, sets, key):
    """Out-of-range folds and fractions are refused when the config is built (one message
    naming the key), before any data is read or any run folder made."""
    with pytest.raises(UserError) as e:
        config(tmp_path, *sets)
    assert f"'{key}'" in str(e.value)


@pytest.mark.parametrize(("sets", "key", "found"), [
    (["data.folds=24"], "data.folds = 24", "23 datasets"),
    (["data.test_fraction=0.01"], "data.test_fraction = 0.01", "= 0"),
    (["data.val_fraction=0.01"], "data.val_fraction = 0.01", "= 0"),
    (["data.test_fraction=0.99"], "data.test_fraction = 0.99", "all 23 datasets are test"),
    (["data.val_fraction=0.99"], "data.val_fraction = 0.99", "left after test are val"),
])
def test_splits_that_leave_a_part_empty_name_the_key(tmp_path, sets, key, found):
    """More folds than datasets, or fractions that empty a part: a UserError naming the key,
    raised by build_model and build_loaders alike (both run before the run folder exists)."""
    cfg = config(tmp_path, *sets)
    for build in (build_model, build_loaders):
        with pytest.raises(UserError) as e:
            build(cfg)
        assert key in str(e.value) and found in str(e.value), str(e.value)


def test_split_datasets_directly():
    """Three datasets split into one each; folds of a tiny set still partition it."""
    cfg = config_like(test_fraction=0.34, val_fraction=0.5)
    split = split_datasets(3, cfg)
    assert sorted(split.train.tolist() + split.val.tolist() + split.test.tolist()) == [0, 1, 2]
    for k in range(3):
        folds = split_datasets(3, config_like(folds=3, fold=k, val_fraction=0.5))
        assert len(folds.test) == 1 and len(folds.val) == 1 and len(folds.train) == 1


def config_like(**data):
    return build_config(RankingConfig, [Layer({"data": data}, "test")]).data
