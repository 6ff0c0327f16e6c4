"""`engine new NAME --model MOD:CLASS --dataset MOD:CLASS`: a recipe wired to the user's classes.

The contracts are read first (`engine.tools.wire`, `engine.tools.infer`): the batch structure
of dataset[0], which field feeds which parameter of forward, the model's sizes, the loss and the
kind. The recipe is then rendered into a staging folder outside the project, registered in a
staging recipes.toml, and run through every check of `engine check` (the same functions), for a
few learning rates and seeds: the rate written is one that passed the overfit probe for every
seed. Only then are `recipes/NAME/` and its section written, by `engine.tools.new`'s
all-or-nothing writer. A failed check refuses with its messages and writes nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from engine.core import rng
from engine.core.building import first_line
from engine.core.errors import UserError, UserErrors, close_match, raise_all
from engine.core.preflight import describe
from engine.io.layering import parse_set, tomllib
from engine.tools import check, infer, scaffold_checks, sizes, wire
from engine.tools import new as scaffold
from engine.tools.check_steps import OVERFIT_MARGIN
from engine.tools.new import _shown
from engine.tools.render_code import SETTINGS, Plan, config_py, model_py, section
from engine.tools.render_step import data_py, inferred_lines, init_py

SEEDS = (0, 1, 2)
TABLES = ("train", "model", "data")


def _sets_by_table(sets: Sequence[str]) -> dict[str, dict]:
    out: dict[str, dict] = {t: {} for t in TABLES}
    errors = []
    for flag in sets:
        data = parse_set(flag).data
        (table, values), = data.items()
        if table not in TABLES or not isinstance(values, dict) or any(
                isinstance(v, dict) for v in values.values()):
            errors.append(UserError("new --set takes train.KEY, model.KEY or data.KEY",
                                    where=f"--set {flag}", expected="one of the tables "
                                    + ", ".join(TABLES), found=flag.split("=", 1)[0]))
            continue
        out[table].update(values)
    raise_all(errors)
    return out


def _forward(model: torch.nn.Module, plan_inputs: tuple, fields: wire.Fields,
             n_required: int, where: str) -> Any:
    args = [fields.get(k) for _, k in plan_inputs[:n_required]]
    kwargs = {a: fields.get(k) for a, k in plan_inputs[n_required:]}
    model.eval()
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    except Exception as exc:
        feeds = ", ".join(f"{a} <- {fields.shown(k)}: {describe(fields.get(k))}"
                          for a, k in plan_inputs)
        raise UserError(f"the model cannot take a batch of two samples: {type(exc).__name__}",
                        where=where, expected="forward to run on the batch fields wired to it",
                        found=first_line(exc), hint=f"wired: {feeds}; --map ARG=FIELD "
                        "changes the wiring, --set model.KEY=VALUE the sizes") from exc


def make_plan(name: str, model_spec: str, dataset_spec: str, kind: str | None,
              maps: Sequence[str], sets: Sequence[str]) -> Plan:
    """Read the classes and infer everything the recipe needs (nothing written)."""
    classes, errors = [], []
    for spec, flag, base, what in (
            (model_spec, "--model", torch.nn.Module, "a torch.nn.Module subclass"),
            (dataset_spec, "--dataset", torch.utils.data.Dataset,
             "a Dataset (a class with __getitem__ and __len__)")):
        try:
            classes.append(wire.load_class(spec, flag, base, what))
        except UserError as exc:
            errors.append(exc)
    raise_all(errors)
    model_cls, dataset_cls = classes
    by_table = _sets_by_table(sets)
    scaffold_checks.set_keys(by_table, model_cls, dataset_cls)
    data = infer.plan_data(dataset_cls, by_table["data"])
    wire.sample_fields(data.sample, f"--dataset {dataset_spec}: dataset[0]")   # its structure
    n = min(2, len(data.train_set))
    batch = infer._call("collating dataset[0] and dataset[1]", f"--dataset {dataset_spec}",
                        infer.collate, [data.train_set[i] for i in range(n)])
    batch_fields = wire.sample_fields(batch, "a batch of two samples")
    # dataset[0] as the loader delivers it (numbers and arrays made tensors), for the shapes
    fields = wire.first_of(batch_fields)
    required, optional = wire.forward_params(model_cls)
    wiring = wire.wire(fields, required, optional, wire.parse_maps(maps))
    where = f"--model {model_spec}"

    def accepts(trial: dict) -> bool:
        try:
            _forward(model_cls(**trial), wiring.inputs, batch_fields, len(required), where)
        except Exception:   # this combination of sizes does not fit: the next one
            return False
        return True

    values, notes, req, kept = sizes.model_values(model_cls, fields, wiring, data.train_set,
                                                  by_table["model"], accepts)
    scaffold_checks.sizes_matter(model_cls, values, notes, fields, accepts)
    model = infer._call(f"{model_cls.__name__}(...)", where, model_cls, **values)
    out = _forward(model, wiring.inputs, batch_fields, len(required), where)
    task = infer.infer_task(out, fields, wiring, batch_fields)
    kind, why = (kind, "given with --kind") if kind else infer.infer_kind(model, task)
    size = len(data.train_set)
    batch_size = 32 if size >= 128 else max(2, size // 4)
    train = {"epochs": 10, "batch_size": batch_size, **SETTINGS[kind][2], **by_table["train"]}
    train.pop("learning_rate", None)   # the probe chooses it (or checks the one given)
    return Plan(name, model_spec, dataset_spec, model_cls, data, fields, wiring, values, notes,
                req, kept, task, kind, why, train)


def render(plan: Plan, learning_rate: float, probe: list[str]) -> tuple[dict[str, str], str]:
    """The recipe's files and recipes.toml section for a wiring plan and settings."""
    modules = {"__init__.py": init_py(plan, probe), "config.py": config_py(plan),
               "data.py": data_py(plan), "model.py": model_py(plan)}
    return modules, section(plan, learning_rate)


@contextlib.contextmanager
def staged(plan: Plan, modules: dict[str, str], text: str) -> Iterator[str]:
    """The rendered recipe in a folder outside the project, importable as a package of its
    own, with a recipes.toml naming it; yields that recipes.toml."""
    package = f"_engine_new_{plan.name}_{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.mkdtemp(prefix="engine-new-"))
    try:
        (root / package).mkdir()
        for module, body in modules.items():
            (root / package / module).write_text(body, encoding="utf-8")
        registry = root / "recipes.toml"
        registry.write_text(text.replace(f'"recipes.{plan.name}:recipe"',
                                         f'"{package}:recipe"', 1), encoding="utf-8")
        yield str(registry)
    finally:
        for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[key]
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root.resolve()))
        importlib.invalidate_caches()
        shutil.rmtree(root, ignore_errors=True)


def run_checks(name: str, registry: str, sets: Sequence[str]) -> tuple[list, list]:
    """`engine check`'s checks on the staged recipe: (lines, errors); the RNG kept as it was."""
    lines: list[tuple[str, str, str]] = []
    saved = rng.rng_state()
    try:
        errors = check.run_checks({"name": name, "recipes": registry, "config_file": None,
                                   "sets": tuple(sets)}, lambda *line: lines.append(line))
    finally:
        rng.set_rng_state(saved)
    return lines, errors


def _flat(errors: list, registry: str) -> list[UserError]:
    """The errors one by one, the staged package named as the written one will be."""
    tables = tomllib.loads(Path(registry).read_text(encoding="utf-8"))
    (name, entry), = tables.items()
    package = entry["recipe"].partition(":")[0]
    flat = [e for err in errors for e in (err.errors if isinstance(err, UserErrors) else [err])]
    # the staging copy's names mean nothing to the user: say what they stand for
    staged_file = str(Path(registry))
    for error in flat:
        for label in ("what", "where", "expected", "found", "hint"):
            value = getattr(error, label)
            if isinstance(value, str):
                value = value.replace(staged_file, "the recipes.toml section engine new "
                                      "would write (from --set and what it inferred)")
                setattr(error, label, value.replace(package, f"recipes.{name}"))
    return flat


_FALL = re.compile(r"\((-?\d+)% lower\)")


def probe_rates(plan: Plan, registry: str, rates: Sequence[float]) -> tuple[float, list[str]]:
    """Try the rates in order (the kind's default first) for every seed; keep the first whose
    worst seed fell by twice the probe's margin, else the one whose worst seed fell most.
    Refuses with the checks' messages when a check other than the overfit probe fails, or when
    no rate passes for every seed."""
    results: dict[float, list[int | None]] = {}
    first_errors: list = []
    for rate in rates:
        falls: list[int | None] = []
        for seed in SEEDS:
            lines, errors = run_checks(plan.name, registry, (f"train.learning_rate={rate!r}",
                                                             f"train.seed={seed}"))
            failed = {n for s, n, _ in lines if s == "FAIL"}
            if failed - {"overfit"}:
                raise UserErrors(_flat(errors, registry))   # the wiring is wrong at any rate
            overfit = next(d for s, n, d in lines if n == "overfit")
            match = _FALL.search(overfit) if "overfit" not in failed else None
            falls.append(int(match.group(1)) if match else None)
            first_errors = first_errors or errors
        results[rate] = falls
        if all(v is not None and v >= 200 * OVERFIT_MARGIN for v in falls):
            break   # clear of the probe's edge for every seed
    passed = {r: min(f) for r, f in results.items() if all(v is not None for v in f)}
    report = [f"{r!r}: " + ", ".join(f"{v}%" if v is not None else "FAIL" for v in f)
              for r, f in results.items()]
    if not passed:
        raise UserErrors([*_flat(first_errors, registry), UserError(
            "no learning rate passed the overfit probe for every seed",
            where=f"the recipe wired from {plan.model_spec} and {plan.dataset_spec}",
            expected=f"the loss on one batch to fall by {OVERFIT_MARGIN:.0%} in 25 steps, "
            f"seeds {', '.join(map(str, SEEDS))}", found="learning rate: falls; "
            + "; ".join(report), hint="--set train.learning_rate=RATE tries another rate")])
    return max(passed, key=passed.get) if len(passed) > 1 else next(iter(passed)), report


def cli(name: str, model_spec: str, dataset_spec: str, kind: str | None,
        maps: Sequence[str], sets: Sequence[str], registry: Path) -> int:
    """`python -m engine new NAME --model MOD:CLASS --dataset MOD:CLASS` with the recipes.toml
    at `registry`: infer, check, then write (nothing written when a check fails)."""
    registry = Path(registry)
    kinds = (*scaffold.KINDS, "mlp")
    if kind is not None and kind not in kinds:
        raise UserError(f"unknown kind '{kind}'", where="--kind", expected="one of "
                        + ", ".join(kinds), found=kind, hint=close_match(kind, kinds))
    scaffold.check_new(name, kind if kind in scaffold.KINDS else scaffold.KINDS[0], registry)
    scaffold_checks.given_rate(sets)
    root = str(registry.resolve().parent)   # the user's modules, as `run` will import them
    if root not in sys.path:
        sys.path.insert(0, root)
    saved = rng.rng_state()
    try:
        plan = make_plan(name, model_spec, dataset_spec, kind, maps, sets)
        given = [s for s in sets if s.split("=", 1)[0].strip() == "train.learning_rate"]
        rates = ((_given_rate(sets),) if given else SETTINGS[plan.kind][3])
        with staged(plan, *render(plan, rates[0], [])) as first:
            rate, report = probe_rates(plan, first, rates)
        probe = [f"- train.learning_rate = {rate!r}: the overfit probe of `engine check` (the "
                 f"loss on one batch, 25 steps) fell by {_falls(report, rate)} for seeds "
                 f"{', '.join(map(str, SEEDS))} (rates tried: " + "; ".join(report) + ")"]
        modules, text = render(plan, rate, probe)
        with staged(plan, modules, text) as final:
            lines, errors = run_checks(name, final, ())
            raise_all(_flat(errors, final))
    finally:
        rng.set_rng_state(saved)
    target = scaffold.write_rendered(name, modules, text, registry, "engine new --model")
    _report(plan, lines, probe, target, registry)
    return 0


def _given_rate(sets: Sequence[str]) -> float:
    value = [parse_set(s).data["train"]["learning_rate"] for s in sets
             if s.split("=", 1)[0].strip() == "train.learning_rate"][-1]
    return float(value)


def _falls(report: list[str], rate: float) -> str:
    return next(line.split(": ", 1)[1] for line in report if line.startswith(f"{rate!r}:"))


def _report(plan: Plan, lines: list, probe: list[str], target: Path, registry: Path) -> None:
    print(f"wired {plan.model_cls.__name__} ({plan.model_cls.__module__}) to "
          f"{plan.data.cls.__name__} ({plan.data.cls.__module__}):")
    for line in inferred_lines(plan, probe):
        print("  " + line)
    counts = {s: sum(1 for st, _, _ in lines if st == s) for s in ("ok", "warn", "skip")}
    print(f"checks (engine check on the recipe as written): {counts['ok']} ok, "
          f"{counts['warn']} warn, 0 FAIL, {counts['skip']} skipped")
    for status, check_name, detail in lines:
        if status != "ok":
            print(f"  {status} {check_name}: {detail}")
    print(f"created {_shown(target)}/ (__init__.py, config.py, data.py, model.py) and "
          f"[{plan.name}] in {_shown(registry)}")
    print("next:")
    print(f"  python -m engine check {plan.name}")
    print(f"  python -m engine run {plan.name}")
    sys.stdout.flush()
