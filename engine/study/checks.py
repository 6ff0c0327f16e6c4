"""Every mistake in a sweep's flags, found before anything runs: one block per mistake, and no
study directory made (exit code 2).

Each key and value is tried against the recipe's config the way `--set` would set it; the
objective is checked against the recipe's history columns, known from one forward pass on a
validation batch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import tomli_w

from engine.core import rng
from engine.core.building import call_recipe, loader_sizes, seed_everything
from engine.core.config import to_dict
from engine.core.devices import resolve_device
from engine.core.errors import UserError, UserErrors, close_match, first_line, raise_all
from engine.core.preflight import first_batch, forward_error
from engine.core.recipe import StepContext
from engine.core.state import COLUMNS
from engine.io.registry import find_registry, resolve
from engine.study import spec as specs
from engine.study.spec import StudySpec
from engine.study.store import open_storage

MAX_RUNS = 100_000   # a bound on one study: more is a typo (and pair records by the million)


def value_set(key: str, value: Any) -> str:
    """`KEY=VALUE` with VALUE as TOML, as `--set` takes it."""
    return f"{key}={tomli_w.dumps({'v': value}).partition('=')[2].strip()}"


def _leaves(exc: UserError | UserErrors) -> list[UserError]:
    return list(exc.errors) if isinstance(exc, UserErrors) else [exc]


def _flag_syntax(args: Any) -> tuple[dict, list]:
    """The flags' own syntax: {"grid", "search", "replicate", ...} and the mistakes found."""
    errors: list[UserError] = []
    found: dict = {"grid": {}, "search": {}, "bounds": {}, "replicate": None}

    def attempt(fn: Any, *a: Any) -> Any:
        try:
            return fn(*a)
        except UserError as exc:
            errors.append(exc)
            return None

    for text in args.grid or ():
        parsed = attempt(specs.parse_key_values, "--grid", text)
        if parsed and parsed[0] in found["grid"]:
            errors.append(UserError("--grid names a key twice", where=f"--grid {text}",
                                    expected="each key in one --grid flag", found=parsed[0]))
        elif parsed:
            found["grid"][parsed[0]] = parsed[1]
    for text in args.search or ():
        parsed = attempt(specs.parse_search, text)
        if parsed and parsed[0] in found["search"]:
            errors.append(UserError("--search names a key twice", where=f"--search {text}",
                                    expected="each key in one --search flag", found=parsed[0]))
        elif parsed:
            found["search"][parsed[0]] = parsed[1]
            found["bounds"][parsed[0]] = parsed[2]
    if args.replicate:
        found["replicate"] = attempt(specs.parse_key_values, "--replicate", args.replicate)
    found["objective"] = attempt(specs.parse_objective, args.objective or "val_loss:min")
    errors += _combination_errors(args, found)
    return found, errors


def _combination_errors(args: Any, found: dict) -> list[UserError]:
    errors = []
    if args.seeds is not None and args.seeds < 1:
        errors.append(UserError("--seeds needs at least one seed", where=f"--seeds {args.seeds}",
                                expected="N >= 1 (train.seed = 0..N-1)", found=str(args.seeds)))
    if args.seeds is not None and args.replicate:
        errors.append(UserError("--seeds and --replicate together", where=f"--seeds "
                                f"{args.seeds} --replicate {args.replicate}",
                                expected="one of them: replicates over seeds or over one key",
                                found="both"))
    if found["grid"] and (args.search or ()):
        errors.append(UserError("--grid and --search together", where="--grid ... --search ...",
                                expected="a grid, or a search (a configuration is one point of "
                                "the grid or one search trial)", found="both",
                                hint="put the grid's values in the search: --search "
                                "KEY=choice:V1,V2"))
    if args.trials is not None and not (args.search or ()):
        errors.append(UserError("--trials without --search", where=f"--trials {args.trials}",
                                expected="--search KEY=SPEC with --trials N",
                                found="no --search"))
    if args.trials is not None and args.trials < 1:
        errors.append(UserError("--trials needs at least one trial", where=f"--trials "
                                f"{args.trials}", expected="N >= 1", found=str(args.trials)))
    if args.sampler is not None and not (args.search or ()):
        errors.append(UserError("--sampler without --search", where=f"--sampler {args.sampler}",
                                expected="--search KEY=SPEC with --sampler", found="no --search",
                                hint="a grid runs every configuration: it samples nothing"))
    runs = _runs_asked(args, found)
    if runs > MAX_RUNS:
        errors.append(UserError("the study is too large", where=_size_flags(args),
                                expected=f"at most {MAX_RUNS:,} runs (configurations x "
                                "replicates)", found=f"{runs:,} runs"))
    if args.workers is not None and args.workers < 1:
        errors.append(UserError("--workers needs at least one worker", where=f"--workers "
                                f"{args.workers}", expected="N >= 1", found=str(args.workers)))
    replicate_key = found["replicate"][0] if found["replicate"] else specs.NO_REPLICATE
    if args.seeds is not None or found["replicate"]:
        for key in (*found["grid"], *found["search"]):
            if key == replicate_key:
                errors.append(UserError("a key is both a configuration and a replicate",
                                        where=f"{key}", expected="replicates over another key "
                                        "than the grid or the search", found=key))
    return errors


def _runs_asked(args: Any, found: dict) -> int:
    """How many runs the flags ask for, without listing them."""
    configurations = (args.trials or 10) if found["search"] else math.prod(
        len(v) for v in found["grid"].values())
    replicates = (len(found["replicate"][1]) if found["replicate"] else
                  max(args.seeds or 1, 1))
    return configurations * replicates


def _size_flags(args: Any) -> str:
    flags = [f"--grid {g}" for g in args.grid or ()] + [f"--search {s}" for s in
                                                         args.search or ()]
    for flag in ("trials", "seeds"):
        if getattr(args, flag) is not None:
            flags.append(f"--{flag} {getattr(args, flag)}")
    text = " ".join(flags)
    return text if len(text) <= 200 else text[:197] + "..."


def _value_errors(name: str, args: Any, sets: list, found: dict) -> list[UserError]:
    """Each grid, search and replicate value tried on the config, as `--set` would set it."""
    tries = [(f"--grid {k}={','.join(map(str, v))}", k, v) for k, v in found["grid"].items()]
    for key, (kind, values) in found["bounds"].items():
        values = [float(v) for v in values] if kind in ("uniform", "loguniform") else values
        tries.append((f"--search {key}={found['search'][key]}", key, values))
    if found["replicate"]:
        key, values = found["replicate"]
        tries.append((f"--replicate {args.replicate}", key, values))
    errors: list[UserError] = []
    seen: set = set()
    for flag, key, values in tries:
        for value in values:
            extra = value_set(key, value)
            try:
                resolve(name, recipes=args.recipes, config_file=args.config,
                        sets=[*sets, extra])
            except (UserError, UserErrors) as exc:
                for leaf in _leaves(exc):
                    if leaf.where == f"--set {extra}":
                        leaf.where = flag
                    # an unknown key is one mistake, whatever the number of values
                    same = ((leaf.what, leaf.where) if leaf.what.startswith("unknown config")
                            else leaf.render())
                    if same not in seen:
                        seen.add(same)
                        errors.append(leaf)
    return errors


def history_columns(recipe: Any, cfg: Any) -> tuple[str, ...]:
    """The history's columns of a run of `recipe`: the engine's own and `val_<metric>` for
    each metric forward_batch returns on the first validation batch (the RNG is restored)."""
    import torch  # deferred: start-up time

    import steps  # deferred: start-up time

    saved = rng.rng_state()
    try:
        seed_everything(cfg.train.seed)
        device = resolve_device(cfg.train.device)
        model = call_recipe(recipe, "build_model", cfg).to(device)
        loaders = call_recipe(recipe, "build_loaders", cfg)
        loader_sizes(recipe, loaders)
        batch = first_batch(recipe, loaders.val, "validation")
        if recipe.move_batch:
            batch = steps.move_to_device(batch, device)
        model.eval()
        try:
            with torch.no_grad():
                out = recipe.forward_batch(model, batch, StepContext(device, False, 0, 0))
        except UserError:
            raise
        except Exception as exc:
            raise forward_error(exc, recipe, [], batch, "the first validation batch") from exc
    finally:
        rng.set_rng_state(saved)
    metrics = getattr(out, "metrics", None) or {}
    return (*COLUMNS, *(f"val_{k}" for k in metrics))


def _objective_errors(recipe: Any, cfg: Any, metric: str, direction: str) -> list[UserError]:
    """The objective against the history columns (from the base config, which resolved)."""
    try:
        columns = history_columns(recipe, cfg)
    except (UserError, UserErrors) as exc:
        return _leaves(exc)
    if metric in columns:
        return []
    return [UserError("the objective is not a history column", where=f"--objective "
                      f"{metric}:{direction}", expected="one of " + ", ".join(columns),
                      found=metric, hint=close_match(metric, columns))]


def storage_errors(storage: str | None, workers: int) -> list[UserError]:
    """The trial store's URL: a journal file (default), PostgreSQL, or SQLite for one worker."""
    if storage is None:
        return []
    where = f"--storage {storage}"
    if storage.startswith("sqlite:"):
        if workers > 1:
            return [UserError("SQLite storage is refused for more than one worker", where=where,
                              expected="the default journal file, or postgresql://... for many "
                              "machines", found=f"sqlite with --workers {workers}",
                              hint="SQLite locks the whole database on every write: parallel "
                              "workers fail with 'database is locked' (Optuna's FAQ advises "
                              "against it)")]
        return _sqlite_errors(storage, where)
    if not storage.startswith(specs.DATABASE_PREFIXES):
        return [UserError("unknown storage", where=where, expected="postgresql://USER@HOST:"
                          "PORT/DB (or sqlite:///FILE for one worker); without --storage a "
                          "journal file in the study directory", found=storage)]
    try:
        open_storage(storage, None)
    except Exception as exc:
        return [UserError("the database cannot be reached", where=where,
                          expected="a PostgreSQL server this user can connect to",
                          found=first_line(exc))]
    return []


def _sqlite_errors(url: str, where: str) -> list[UserError]:
    """sqlite:///FILE with FILE in an existing, writable folder (a file, not memory)."""
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return [UserError("SQLite storage needs a file", where=where,
                          expected="sqlite:///RELATIVE/FILE.db or sqlite:////ABSOLUTE/FILE.db",
                          found=url if url.startswith("sqlite:///") else f"{url} (no file)",
                          hint="a database in memory would lose the trials with the process")]
    if Path(path).is_dir():
        return [UserError("the SQLite file is a folder", where=where,
                          expected="sqlite:///FOLDER/FILE.db", found=f"{path} is a folder")]
    folder = Path(path).parent
    if not folder.is_dir():
        return [UserError("the SQLite file's folder does not exist", where=where,
                          expected="a file in an existing folder", found=f"no folder {folder}")]
    if not os.access(folder, os.W_OK):
        return [UserError("the SQLite file's folder is not writable", where=where,
                          expected="a folder this user can write", found=str(folder))]
    return []


def specify(args: Any, sets: list) -> tuple[StudySpec, Any, Any, Any]:
    """The study's specification from the sweep's flags, or every mistake in them at once."""
    found, errors = _flag_syntax(args)
    errors += storage_errors(args.storage, args.workers or 1)
    try:
        entry, recipe, cfg = resolve(args.name, recipes=args.recipes, config_file=args.config,
                                     sets=sets)
    except (UserError, UserErrors) as exc:
        raise_all(errors + _leaves(exc))
        raise
    errors += _value_errors(args.name, args, sets, found)
    if found["objective"] is not None:
        errors += _objective_errors(recipe, cfg, *found["objective"])
    raise_all(errors)
    metric, direction = found["objective"]
    rep_key, rep_values = (found["replicate"] if found["replicate"] else
                           (specs.NO_REPLICATE, list(range(args.seeds)) if args.seeds
                            else [cfg.train.seed]))
    spec = StudySpec(recipe=entry.name, recipes_file=str(Path(entry.file).resolve()),
                     base=to_dict(cfg), grid=found["grid"], search=found["search"],
                     trials=(args.trials or 10) if found["search"] else 0,
                     sampler=args.sampler or "tpe", prune=bool(args.prune),
                     replicate_key=rep_key, replicates=tuple(rep_values), metric=metric,
                     direction=direction, storage=args.storage or "journal")
    return spec, entry, recipe, cfg


def registry_of(spec: StudySpec, explicit: str | None) -> str:
    """The recipes.toml a worker uses: --recipes, the study's own if it is still there, or
    the one found from here (another machine may hold the project elsewhere)."""
    if explicit:
        return explicit
    if Path(spec.recipes_file).is_file():
        return spec.recipes_file
    return str(find_registry(None))
