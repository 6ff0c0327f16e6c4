"""The text of a recipe wired to the user's own classes (`engine new NAME --model --dataset`).

Plain Python a researcher edits afterwards: `model.py` and `data.py` import the user's classes
and build them from the config, `__init__.py` holds `forward_batch` and says in its docstring
what was inferred and from what, `config.py` lists every constructor parameter as a field.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from engine.tools.infer import DataPlan, Task
from engine.tools.wire import Fields, Wiring, annotation_text, constructor_params

# kind: (optimizer, schedule, the [train] values it reads, learning rates the probe tries)
SETTINGS: dict[str, tuple[str, str, dict, tuple[float, ...]]] = {
    "mlp": ("adam", "plateau_on_val_loss", {}, (3e-3, 1e-3, 1e-2)),
    "autoencoder": ("adam", "plateau_on_val_loss", {}, (3e-3, 1e-3, 1e-2)),
    "ranking": ("adam", "plateau_on_val_loss", {}, (3e-3, 1e-3, 1e-2)),
    "transformer": ("adamw", "warmup_cosine", {"weight_decay": 0.01, "warmup_steps": 10,
                                               "min_lr": 1e-5}, (1e-3, 2e-3, 5e-4)),
    "cnn": ("sgd_nesterov", "step_decay", {"weight_decay": 5e-4, "momentum": 0.9,
                                           "step_size": 3, "gamma": 0.3}, (0.03, 0.1, 0.01)),
}
SCHEDULE_WORDS = {"adam": "Adam", "adamw": "AdamW (no decay on biases and norms)",
                  "sgd_nesterov": "SGD with Nesterov momentum",
                  "plateau_on_val_loss": "ReduceLROnPlateau on the validation loss",
                  "warmup_cosine": "a linear warmup then a cosine decay, per step",
                  "step_decay": "a step decay (train.gamma every train.step_size epochs)"}
LOSS_WORDS = {"classification": ("cross-entropy", "accuracy"),
              "regression": ("mean squared error", "mean absolute error"),
              "reconstruction": ("mean squared reconstruction error", "explained variance"),
              "ranking": ("ListNet (steps.ranking.listnet_loss) on standardized scores",
                          "NDCG@1/3/5, Kendall's tau, top-1 hit, regret@1")}


@attrs.frozen(eq=False)
class Plan:
    """Everything the files say: the classes, the wiring and what was inferred."""

    name: str
    model_spec: str
    dataset_spec: str
    model_cls: type
    data: DataPlan
    fields: Fields
    wiring: Wiring
    model_values: dict
    model_notes: dict
    model_required: tuple
    model_kept: tuple
    task: Task
    kind: str
    kind_why: str
    train: dict


def toml_value(value: Any) -> str:
    """A Python value as a TOML value for the recipes.toml section."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def py_value(value: Any) -> str:
    """A value as Python source, strings in double quotes."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(py_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def wrap(text: str, indent: str, width: int = 100) -> list[str]:
    """`text` in lines of at most `width`, each starting with `indent`."""
    lines, current = [], ""
    for word in _words(text):
        if current and len(indent) + len(current) + 1 + len(word) > width:
            lines.append(indent + current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return [*lines, indent + current] if current else lines


def _words(text: str) -> list[str]:
    """The words of `text`, a shape such as `float32[B, 2]` kept as one."""
    words, current, depth = [], "", 0
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char.isspace() and depth <= 0:
            words += [current] if current else []
            current = ""
        else:
            current += char
    return words + ([current] if current else [])


def _kept(names: tuple) -> str:
    if not names:
        return ""
    return (", ".join(names) + (" is" if len(names) == 1 else " are")
            + " left to the constructor's default (not a TOML value).")


def _doc(title: str, body: str) -> str:
    """A class docstring: the title line, then the body wrapped (when there is one)."""
    if not body:
        return f'    """{title}"""'
    return f'    """{title}\n\n' + "\n".join(wrap(body, "    ")) + '\n    """'


def class_name(name: str) -> str:
    """The config class prefix for a recipe name: `fusion` -> `Fusion`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_")) + "Config"


def section(plan: Plan, learning_rate: float) -> str:
    """The recipes.toml section."""
    model, data = plan.model_cls.__name__, plan.data.cls.__name__
    lines = [f"[{plan.name}]", f'recipe = "recipes.{plan.name}:recipe"',
             f"description = {json.dumps(f'{model} on {data} (made by engine new --model)')}",
             "", f"[{plan.name}.train]"]
    train = {**plan.train, "learning_rate": learning_rate}
    lines += [f"{k} = {toml_value(v)}" for k, v in train.items()]
    for table, values in (("model", plan.model_values), ("data", plan.data.values)):
        if values:
            lines += ["", f"[{plan.name}.{table}]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _fields_block(cls: type, values: dict, required: tuple, notes: dict,
                  extra: tuple = ()) -> list[str]:
    params = {p.name: p for p in constructor_params(cls)}
    out = []
    for name in sorted(values, key=lambda n: n not in required):   # attrs: required first
        p = params.get(name)
        annotation = p.annotation if p else annotation_text(None, values[name])
        if name in required:
            out.append(f"    {name}: {annotation}  # required (no default in {cls.__name__}); "
                       "set in recipes.toml")
            continue
        value = py_value(values[name])
        note = f"  # inferred: {notes[name]}" if name in notes else ""
        line = f"    {name}: {annotation} = {value}{note}"
        out.append(line if len(line) <= 100 else f"    # {notes[name]}\n"
                   f"    {name}: {annotation} = {value}")
    return out + list(extra)


def config_py(plan: Plan) -> str:
    """recipes/NAME/config.py: the model and data tables from the constructors."""
    model, data = plan.model_cls, plan.data.cls
    model_lines = _fields_block(model, plan.model_values, plan.model_required, plan.model_notes)
    extra = () if plan.data.split else (
        "    split_seed: int = 0  # the seed of the train/validation split (not train.seed)",)
    data_values = {k: v for k, v in plan.data.values.items() if k != "val_fraction"}
    data_lines = _fields_block(data, data_values, plan.data.required, {}, extra)
    if not plan.data.split:
        data_lines.insert(0, "    val_fraction: float = 0.2  # the share of samples held out")
    uses_any = any(": Any" in line for line in model_lines + data_lines)
    split = (f"The validation set is {data.__name__}({plan.data.split[0]}="
             f"{py_value(plan.data.split[2])})." if plan.data.split else
             "The validation set is a seeded random share val_fraction of the dataset.")
    model_doc = _doc(f"[model]: the parameters of {model.__name__}.__init__ "
                     f"({model.__module__}).", _kept(plan.model_kept))
    data_doc = _doc(f"[data]: the parameters of {data.__name__}.__init__ ({data.__module__}).",
                    " ".join([split, _kept(plan.data.kept)]).strip())
    return f'''"""The config of recipe {plan.name}.

The defaults here are overridden by the recipe's tables in recipes.toml:
[{plan.name}.train] (TrainConfig), [{plan.name}.model] and [{plan.name}.data].
"""

{"from typing import Any" + chr(10) + chr(10) if uses_any else ""}import attrs

from engine import TrainConfig


@attrs.frozen
class ModelConfig:
{model_doc}

{chr(10).join(model_lines)}


@attrs.frozen
class DataConfig:
{data_doc}

{chr(10).join(data_lines)}


@attrs.frozen
class {class_name(plan.name)}:
    """Everything the recipe reads: [train] plus its own tables."""

    train: TrainConfig = attrs.Factory(TrainConfig)
    model: ModelConfig = attrs.Factory(ModelConfig)
    data: DataConfig = attrs.Factory(DataConfig)
'''


def model_py(plan: Plan) -> str:
    """recipes/NAME/model.py: build_model, constructing the user's class from the config."""
    cls = plan.model_cls
    args = ", ".join(f"{n}=model.{n}" for n in plan.model_values)
    call = f"    model = cfg.model\n    return {cls.__name__}({args})"
    if not plan.model_values:
        call = f"    return {cls.__name__}()"
    elif len(call.splitlines()[-1]) > 100:
        call = f"    model = cfg.model\n    return {cls.__name__}(\n" + "".join(
            f"        {n}=model.{n},\n" for n in plan.model_values) + "    )"
    return f'''"""The model: {cls.__name__} from {cls.__module__}, imported (not copied), built from
[model]."""

from torch import nn

from {cls.__module__} import {cls.__name__}

from .config import {class_name(plan.name)}


def build_model(cfg: {class_name(plan.name)}) -> nn.Module:
    """{cls.__name__} with the values of [model]."""
{call}
'''
