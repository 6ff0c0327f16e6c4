"""`sweep --resume STUDY_DIR`: the study in that folder, and the refusal of another
specification (every flag given must match study.toml; exit code 2, nothing runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.config import flatten, to_dict
from engine.core.errors import UserError, UserErrors, raise_all
from engine.io.registry import resolve
from engine.study import claims
from engine.study import spec as specs
from engine.study.checks import registry_of
from engine.study.spec import StudySpec
from engine.study.study_toml import load


def open_study(path: str) -> tuple[Path, StudySpec, str]:
    """The study directory PATH names (refused when it holds no study.toml)."""
    study_dir = Path(path)
    if not (study_dir / "study.toml").is_file():
        raise UserError("not a study directory", where=str(study_dir),
                        expected="a folder made by `python -m engine sweep` (with study.toml)",
                        found="no study.toml" if study_dir.is_dir() else "no such folder")
    spec, study_id = load(study_dir)
    check_layout(study_dir)
    return study_dir, spec, study_id


_LAYOUT = {"runs": "folder", "pairs": "folder", "configurations": "folder", "lock": "file",
           "optuna.journal": "file", "results.json": "file", "results.md": "file",
           "study.png": "file"}


def check_layout(study_dir: Path) -> None:
    """Each of the study's own entries, where it exists, is the kind sweep makes: a folder
    where a file should be would fail a write deep in a worker; a file in place of
    configurations/ would read as a study with no configurations."""
    errors = []
    for name, kind in _LAYOUT.items():
        path = study_dir / name
        if path.exists() and path.is_dir() != (kind == "folder"):
            errors.append(UserError("the study directory is damaged", where=str(path),
                                    expected=f"a {kind}", found="a folder" if path.is_dir()
                                    else "a file", hint="sweep made it: restore it from a "
                                    "copy (nothing was changed)"))
    raise_all(errors)


def check_runnable(spec: StudySpec, study_dir: Path, recipes: str | None) -> None:
    """The study's recipe and [base] config still resolve, as each of its runs will: a
    renamed recipe or an edited study.toml stops here, not as one failure per run (nor,
    with every run done, unnoticed)."""
    resolve(spec.recipe, recipes=registry_of(spec, recipes), base=spec.base,
            base_source=f"{study_dir / 'study.toml'} [base]")


def _given(args: Any, spec: StudySpec, sets: list) -> dict:
    """The parts of the specification the flags give, as study.toml would hold them."""
    given: dict = {}
    if args.name:
        given["recipe"] = args.name
    if args.grid:
        given["grid"] = dict(specs.parse_key_values("--grid", t) for t in args.grid)
    if args.search:
        given["search"] = {k: s for k, s, _ in map(specs.parse_search, args.search)}
    for flag in ("trials", "sampler"):
        if getattr(args, flag) is not None:
            given[flag] = getattr(args, flag)
    if args.prune:
        given["prune"] = True
    if args.seeds is not None:
        # a different count is refused below; a huge one is not listed to be compared
        seeds = range(args.seeds)
        given["replicates"] = (specs.NO_REPLICATE, tuple(seeds) if len(seeds) <= len(
            spec.replicates) else seeds)
    if args.replicate:
        key, values = specs.parse_key_values("--replicate", args.replicate)
        given["replicates"] = (key, tuple(values))
    if args.objective:
        given["objective"] = specs.parse_objective(args.objective)
    if args.storage:
        given["storage"] = args.storage
    if sets or args.config:
        # the flags over the study's own config: one that repeats it is no change
        _, _, cfg = resolve(spec.recipe, recipes=registry_of(spec, args.recipes),
                            base=spec.base, base_source="study.toml [base]",
                            config_file=args.config, sets=sets)
        given["base"] = to_dict(cfg)
    return given


def check_same(args: Any, spec: StudySpec, study_dir: Path, sets: list) -> None:
    """Refuse a resume whose flags say another study than study.toml (one block each)."""
    try:
        given = _given(args, spec, sets)
    except UserErrors as exc:
        raise_all(exc.errors)
    stored = {"recipe": spec.recipe, "grid": spec.grid, "search": spec.search,
              "trials": spec.trials, "sampler": spec.sampler, "prune": spec.prune,
              "replicates": (spec.replicate_key, tuple(spec.replicates)),
              "objective": (spec.metric, spec.direction), "storage": spec.storage,
              "base": spec.base}
    errors = []
    for part, value in given.items():
        if value != stored[part]:
            keys = _differing(stored[part], value) if isinstance(value, dict) else []
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            errors.append(UserError(
                f"the study was made with another {part}" + (f" (it differs at {shown})"
                                                             if keys else ""),
                where=str(study_dir / "study.toml"),
                expected=f"{part} as the study has it: " + (
                    _at(stored[part], keys) if keys else _show(stored[part])),
                found=(_at(value, keys) if keys else _show(value)) + " from the flags",
                hint="a resumed study keeps its specification: leave the flags out, or start "
                     "a new study without --resume"))
    raise_all(errors)


def _differing(stored: dict, given: dict) -> list[str]:
    """The dotted keys at which two tables differ."""
    a, b = flatten(stored), flatten(given)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _NONE) != b.get(k, _NONE))


def _at(table: dict, keys: list[str]) -> str:
    flat = flatten(table)
    return _show({k: flat.get(k, "(not set)") for k in keys[:5]})


_NONE = object()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def retry_failed(study_dir: Path) -> int:
    """Mark the study's failed pairs as to run again; how many."""
    with claims.study_lock(study_dir):
        return claims.retry_failed(study_dir)
