"""Config loading: strict types, unknown keys, ranges, layers, --set values, TOML round trip."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.config import TrainConfig
from engine.core.errors import UserError, UserErrors
from engine.io.layering import Layer, build_config, parse_set, to_toml


@attrs.frozen
class ModelTable:
    hidden_dim: int = 16
    dropout: float = 0.1
    name: str = "mlp"


@attrs.frozen
class Cfg:
    train: TrainConfig = attrs.Factory(TrainConfig)
    model: ModelTable = attrs.Factory(ModelTable)


@attrs.frozen
class Checked:
    width: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    kind: str = attrs.field(default="a", validator=attrs.validators.in_(("a", "b")))


@attrs.frozen
class CheckedCfg:
    train: TrainConfig = attrs.Factory(TrainConfig)
    model: Checked = attrs.Factory(Checked)


def entry(data: dict) -> Layer:
    return Layer(data, "recipes.toml", "demo")


def errors_of(layers) -> list[UserError]:
    with pytest.raises((UserError, UserErrors)) as info:
        build_config(Cfg, layers)
    exc = info.value
    return exc.errors if isinstance(exc, UserErrors) else [exc]


def test_layers_apply_lowest_first():
    """Defaults < recipes.toml < --config < --set."""
    cfg = build_config(Cfg, [
        entry({"train": {"epochs": 3, "batch_size": 8}, "model": {"hidden_dim": 32}}),
        Layer({"train": {"epochs": 4}}, "run.toml"),
        parse_set("train.epochs=5"),
    ])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.hidden_dim) == (5, 8, 32)
    assert cfg.train.learning_rate == TrainConfig().learning_rate


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", 1.9, "int"), ("epochs", "ten", "int"), ("epochs", True, "int"),
    ("compile", "false", "bool"), ("compile", 1, "bool"), ("learning_rate", "1e-3", "float"),
    ("device", 3, "str"),
])
def test_no_silent_coercion(key, value, expected):
    """cattrs would turn 1.9 into 1 and "false" into True; the engine refuses both."""
    (error,) = errors_of([entry({"train": {key: value}})])
    assert error.what == f"wrong type for config key 'train.{key}'"
    assert error.where == "recipes.toml [demo.train]"
    assert error.expected.startswith(expected)
    assert error.found == f"{type(value).__name__} {value!r}"


def test_int_is_accepted_for_float():
    assert build_config(Cfg, [entry({"train": {"learning_rate": 1}})]).train.learning_rate == 1.0


def test_unknown_key_names_file_table_and_close_match():
    (error,) = errors_of([entry({"train": {"epocs": 3}})])
    assert error.what == "unknown config key 'train.epocs'"
    assert error.where == "recipes.toml [demo.train]"
    assert error.found == "epocs = 3"
    assert error.hint == "did you mean 'epochs'?"
    assert error.expected.startswith("one of epochs, batch_size, learning_rate")


def test_every_mistake_is_reported_at_once():
    errors = errors_of([entry({"train": {"epocs": 3, "batch_size": "x"}, "modle": {}})])
    assert {e.what for e in errors} == {"unknown config key 'train.epocs'",
                                        "wrong type for config key 'train.batch_size'",
                                        "unknown config key 'modle'"}


@pytest.mark.parametrize("key, value", [
    ("epochs", 0), ("batch_size", 0), ("learning_rate", 0.0), ("learning_rate", -1e-3),
    ("weight_decay", -0.1), ("early_stopping_patience", -1), ("lr_patience", -2),
    ("lr_decay_factor", 1.0), ("lr_decay_factor", 0.0), ("grad_accum_steps", 0),
    ("validate_every_n_epochs", 0), ("gradient_clip_value", -1.0), ("num_workers", -1),
    ("device", "tpu"), ("precision", "fp8"), ("nan_policy", "ignore"),
])
def test_out_of_range_values(key, value):
    (error,) = errors_of([entry({"train": {key: value}})])
    kind = "invalid value" if isinstance(value, str) else "config value out of range"
    assert error.what == f"{kind} for 'train.{key}'"
    assert error.where == "recipes.toml [demo.train]"
    assert error.found.startswith(f"{key} = ")


def test_range_errors_are_collected_across_layers():
    errors = errors_of([entry({"train": {"epochs": 0}}), parse_set("train.learning_rate=-1")])
    assert [(e.what.split("'")[1], e.where) for e in errors] == [
        ("train.epochs", "recipes.toml [demo.train]"),
        ("train.learning_rate", "--set train.learning_rate=-1")]


def test_a_recipe_validator_is_said_as_its_rule():
    """attrs' "'width' must be >= 1: -1" as expected ">= 1"; the value is in found."""
    with pytest.raises(UserErrors) as info:
        build_config(CheckedCfg, [parse_set("model.width=-1"), parse_set("model.kind=c")])
    width, kind = info.value.errors
    assert (width.expected, width.found) == (">= 1", "width = -1")
    assert kind.expected.startswith("must be in ") and "'c'" not in kind.expected
    assert kind.found == 'kind = "c"'


def test_python_api_validates_too():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)


@pytest.mark.parametrize("flag, value", [
    ("train.epochs=3", 3), ("train.learning_rate=1e-3", 1e-3), ("train.compile=true", True),
    ('train.device="cpu"', "cpu"), ("train.device=cuda:1", "cuda:1"),
    ("train.output_dir=runs/a-b_c.d", "runs/a-b_c.d"), ("model.sizes=[1, 2]", [1, 2]),
])
def test_set_values_are_toml_or_one_bare_word(flag, value):
    layer = parse_set(flag)
    table, key = flag.split("=")[0].split(".")
    assert layer.data == {table: {key: value}}


@pytest.mark.parametrize("flag, what", [
    ("train.epochs", "--set needs KEY=VALUE"), ("=3", "--set has an invalid key"),
    ("train.device=a b", "--set value is not a TOML value"),
    ("train.x=[1,", "--set value is not a TOML value"),
])
def test_bad_set_flags(flag, what):
    with pytest.raises(UserError) as info:
        parse_set(flag)
    assert info.value.what == what
    assert info.value.where == f"--set {flag}"


def test_set_with_unknown_key_names_the_flag():
    (error,) = errors_of([parse_set("train.epoch=3")])
    assert error.where == "--set train.epoch=3"
    assert error.hint == "did you mean 'epochs'?"


train_configs = st.builds(
    TrainConfig, epochs=st.integers(1, 1000), batch_size=st.integers(1, 4096),
    learning_rate=st.floats(1e-8, 10, allow_nan=False), compile=st.booleans(),
    lr_decay_factor=st.floats(0.01, 0.99), device=st.sampled_from(["cpu", "auto", "cuda:1"]),
    precision=st.sampled_from(["fp32", "bf16"]), output_dir=st.text(
        alphabet="abc/_- é", min_size=1, max_size=12))


@given(train=train_configs, hidden=st.integers(1, 512), name=st.text(max_size=8))
def test_toml_round_trip(tmp_path_factory, train, hidden, name):
    """config.toml (what `show` prints) read back through --config gives the same config."""
    cfg = Cfg(train=train, model=ModelTable(hidden_dim=hidden, name=name))
    import tomllib
    assert build_config(Cfg, [Layer(tomllib.loads(to_toml(cfg)), "config.toml")]) == cfg
