"""The text of a wired recipe's `data.py` and `__init__.py` (its `forward_batch` and the
docstring that says what `engine new --model` inferred)."""

from __future__ import annotations

import attrs

from engine.tools.infer import Task
from engine.tools.render_code import (
    LOSS_WORDS,
    SCHEDULE_WORDS,
    SETTINGS,
    Plan,
    class_name,
    py_value,
    wrap,
)
from engine.tools.wire import forward_params, shown_fields


def _dataset_call(plan: Plan, target: str, extra: str = "") -> str:
    """`    target = Dataset(a=data.a, ...)`, one argument a line when it is too long."""
    cls = plan.data.cls
    args = [f"{n}=data.{n}" for n in plan.data.values if n != "val_fraction"]
    args += [extra] if extra else []
    line = f"    {target} = {cls.__name__}({', '.join(args)})"
    if len(line) <= 100:
        return line
    return f"    {target} = {cls.__name__}(\n" + "".join(f"        {a},\n" for a in args) + "    )"


def _collate_text(plan: Plan, is_attrs: bool) -> str:
    fields = "attrs.fields" if is_attrs else "dataclasses.fields"
    record_name = type(plan.data.sample).__name__
    return (f'\n\ndef collate(samples: list) -> object:\n    """One {record_name}'
            f' of stacked fields (default_collate does not know records)."""\n'
            f"    kind = type(samples[0])\n    return kind(**{{f.name: default_collate("
            f"[getattr(s, f.name) for s in samples])\n"
            f"                    for f in {fields}(kind)}})\n")


def data_py(plan: Plan) -> str:
    """recipes/NAME/data.py: build_loaders over the user's dataset (its split or a seeded one)."""
    cls, split, cfg_cls = plan.data.cls, plan.data.split, class_name(plan.name)
    record = plan.fields.kind == "record"
    if split:
        name, train_value, val_value = split
        how = f"validation is {cls.__name__}({name}={py_value(val_value)})"
        body = (_dataset_call(plan, "train_set", f"{name}={py_value(train_value)}") + "\n"
                + _dataset_call(plan, "val_set", f"{name}={py_value(val_value)}") + "\n"
                "    return train_set, val_set\n")
    else:
        how = "validation is a seeded random share data.val_fraction of it"
        body = (_dataset_call(plan, "full") + "\n"
                "    n_val = max(1, round(len(full) * data.val_fraction))\n"
                "    n_val = min(n_val, len(full) - 1)  # keep a sample to train on\n"
                "    generator = torch.Generator().manual_seed(data.split_seed)\n"
                "    train_set, val_set = random_split(full, [len(full) - n_val, n_val],\n"
                "                                      generator=generator)\n"
                "    return train_set, val_set\n")
    uses_data = "data." in body
    is_attrs = record and attrs.has(type(plan.data.sample))
    collate = _collate_text(plan, is_attrs) if record else ""
    extra = ", collate_fn=collate" if record else ""
    names = ["DataLoader", "Dataset", *(["default_collate"] if record else []),
             *([] if split else ["random_split"])]
    stdlib = "import dataclasses\n\n" if record and not is_attrs else ""
    third = ("import attrs\n" if is_attrs else "") + ("" if split else "import torch\n")
    first = stdlib + third + f"from torch.utils.data import {', '.join(names)}\n"
    own = "\n".join(sorted([f"from {cls.__module__} import {cls.__name__}",
                            "from engine import Loaders"], key=lambda t: t.split()[1]))
    return f'''"""The data: {cls.__name__} from {cls.__module__}, imported (not copied), built from
[data]; {how}."""

{first}
{own}

from .config import {cfg_cls}


def build_datasets(cfg: {cfg_cls}) -> tuple[Dataset, Dataset]:
    """The training and validation sets."""
{"    data = cfg.data" + chr(10) if uses_data else ""}{body}{collate}

def build_loaders(cfg: {cfg_cls}) -> Loaders:
    """Shuffled training batches and validation batches of train.batch_size."""
    train_set, val_set = build_datasets(cfg)
    train = cfg.train
    return Loaders(
        train=DataLoader(train_set, batch_size=train.batch_size, shuffle=True,
                         num_workers=train.num_workers{extra}),
        val=DataLoader(val_set, batch_size=train.batch_size,
                       num_workers=train.num_workers{extra}),
    )
'''


def _step_body(plan: Plan) -> tuple[str, str, str]:
    """(third-party imports, first-party imports, body) of forward_batch for the task."""
    task: Task = plan.task
    f, w = plan.fields, plan.wiring
    required = [a for a, _ in w.inputs][:len(w.inputs)]
    args = ", ".join(f.expr(k) if a in required[:_n_positional(plan)] else f"{a}={f.expr(k)}"
                     for a, k in w.inputs)
    call = f"model({args})" + ("[0]  # forward returns a tuple: the first is the prediction"
                               if task.first_output else "")
    target = f.expr(w.target) if w.target else None
    if task.kind == "classification":
        return "import torch.nn.functional as F\n", "", (
            f"    logits = {call}\n    target = {target}.long()\n"
            "    accuracy = (logits.argmax(dim=-1) == target).float().mean()\n"
            '    return StepOutput(F.cross_entropy(logits, target), {"accuracy": accuracy})\n')
    if task.kind == "regression":
        return "import torch.nn.functional as F\n", "", (
            f"    pred = {call}\n    target = {target}.to(pred.dtype)\n"
            "    pred = pred.reshape(target.shape)\n"
            "    mae = (pred.detach() - target).abs().mean()\n"
            '    return StepOutput(F.mse_loss(pred, target), {"mae": mae})\n')
    if task.kind == "reconstruction":
        x = f.expr(w.inputs[0][1])
        return "import torch.nn.functional as F\n", "", (
            f"    x = {x}\n    reconstruction = {call.replace(x, 'x', 1)}\n"
            "    loss = F.mse_loss(reconstruction, x)\n"
            "    # the share of the variance around the batch mean that the model reproduces\n"
            "    spread = (x - x.mean(dim=0)).pow(2).mean().clamp(min=1e-12)\n"
            "    explained = 1 - loss.detach() / spread\n"
            '    return StepOutput(loss, {"explained_variance": explained})\n')
    ranks = w.target.lower().startswith("rank")
    scores = f"-{target}.float()  # rank 1 is the best: higher scores are better" if ranks \
        else f"{target}.float()"
    mask = f.expr(w.mask) + ".bool()" if w.mask else "None"
    return "", "from steps import ranking\n", (
        f"    pred = {call}\n    scores = {scores}\n    mask = {mask}\n"
        "    # z-scores per list: a softmax target that does not depend on the scores' scale\n"
        "    target = ranking.standardize_scores(scores, mask)\n"
        "    loss = ranking.listnet_loss(pred, target, ranking.observed_mask(scores, mask))\n"
        "    return StepOutput(loss, ranking.ranking_metrics(pred, scores, mask))\n")


def _n_positional(plan: Plan) -> int:
    return len(forward_params(plan.model_cls)[0])


def inferred_lines(plan: Plan, probe: list[str]) -> list[str]:
    """The docstring's list of what was inferred and from what."""
    f, w, t = plan.fields, plan.wiring, plan.task
    feeds = ", ".join(f"{a} <- {f.shown(k)}" for a, k in w.inputs)
    target = f.shown(w.target) if w.target else "none"
    out = [f"- the batch: {shown_fields(f)} (dataset[0] of the training set)",
           f"- forward's inputs: {feeds} ({w.how}); the target: {target}"
           + (f"; the mask: {f.shown(w.mask)}" if w.mask else "")]
    out += [f"- model.{n} = {plan.model_values[n]!r}: {note}"
            for n, note in plan.model_notes.items()]
    loss, metrics = LOSS_WORDS[t.kind]
    out.append(f"- the loss: {loss}, with {metrics}: {t.why}")
    optimizer, schedule, _, _ = SETTINGS[plan.kind]
    out.append(f"- kind {plan.kind} ({plan.kind_why}): {SCHEDULE_WORDS[optimizer]} and "
               f"{SCHEDULE_WORDS[schedule]}")
    return out + probe


def init_py(plan: Plan, probe: list[str]) -> str:
    """recipes/NAME/__init__.py: forward_batch (the batch mapped to forward, the loss) and the
    Recipe."""
    imports, own, body = _step_body(plan)
    optimizer, schedule, _, _ = SETTINGS[plan.kind]
    spec = f"--model {plan.model_spec}\n        --dataset {plan.dataset_spec}"
    lines = "\n".join(_bullet(line) for line in inferred_lines(plan, probe))
    return f'''"""{plan.name}: a recipe that `engine new` wired to your own model and dataset:

    python -m engine new {plan.name}
        {spec}

It trains {plan.model_cls.__name__} on {plan.data.cls.__name__}, both imported from your modules
(not copied: edit them there). What `engine new` inferred, and from what:

{lines}

The tables of recipes.toml set its config; to print it:

    python -m engine show {plan.name}
"""

import torch
{imports}
from engine import Recipe, StepContext, StepOutput, optimizers, schedules
{own}
from .config import {class_name(plan.name)}
from .data import build_loaders
from .model import build_model


def forward_batch(model: torch.nn.Module, batch, ctx: StepContext) -> StepOutput:
    """The loss of one batch (already on ctx.device) and the metrics a validation logs."""
{body}

recipe = Recipe(
    name="{plan.name}",
    config={class_name(plan.name)},
    build_model=build_model,
    build_loaders=build_loaders,
    forward_batch=forward_batch,
    build_optimizer=optimizers.{optimizer},
    build_scheduler=schedules.{schedule},
)
'''


def _bullet(line: str) -> str:
    """A `- ...` bullet wrapped at 96 columns, continuation lines under its text."""
    first, *rest = wrap(line, "", 96)
    return "\n".join([first, *wrap(" ".join(rest), "  ", 96)]) if rest else first
