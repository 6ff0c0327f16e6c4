"""The trial store (Optuna) and the study's configurations.

Optuna holds the trials: a journal file `optuna.journal` in the study directory by default
(several processes, or machines sharing the folder), or a database (`--storage
postgresql://...`). One trial per configuration, told the mean objective over its replicates
once they have all finished; with `--prune`, one more trial per run in the pruning study of
its replicate (the run is compared with the other configurations' runs of that replicate).

Which (configuration, replicate) is done is not read from Optuna's trial states (parallel
workers can draw the same parameters, Optuna #1547): `engine.study.claims` keeps that record.
`configurations/NNNN.json` holds each configuration's parameters and its trial's number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.core.errors import UserError, first_line
from engine.io.files import atomic_write_json
from engine.study.claims import read_record
from engine.study.spec import StudySpec, distribution

PRUNE_STARTUP = 2   # runs of a replicate that finish before the median pruner prunes any


def quiet_optuna() -> Any:
    """Optuna, imported on first use, with its INFO lines off."""
    import optuna  # deferred: start-up time
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(url: str, study_dir: Path | None) -> Any:
    """The Optuna storage a study's URL names ("journal": the file in the study directory)."""
    optuna = quiet_optuna()
    if url == "journal":
        from optuna.storages import JournalStorage  # deferred: start-up time
        from optuna.storages.journal import JournalFileBackend  # deferred: start-up time
        return JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    for plain in ("postgres://", "postgresql://"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the engine ships psycopg2
        if url.startswith(plain):
            url = "postgresql+psycopg2://" + url[len(plain):]
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def open_study_storage(spec: StudySpec, study_dir: Path) -> Any:
    """The storage of an existing study, or a UserError naming it."""
    journal = study_dir / "optuna.journal"
    if spec.storage == "journal" and not journal.is_file():   # Optuna would make an empty one
        raise UserError("the study's trial journal is missing", where=str(journal),
                        expected="the optuna.journal sweep made with the study",
                        found="no such file", hint="restore it from a copy (the runs and "
                        "their pair records are kept, but the trials live there)")
    try:
        return open_storage(spec.storage, study_dir)
    except Exception as exc:
        raise UserError("the study's trial store cannot be opened",
                        where=where_trials(spec, study_dir),
                        expected="the journal file or database the study was made with",
                        found=first_line(exc)) from None


def _sampler(spec: StudySpec) -> Any:
    optuna = quiet_optuna()
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler()
    return optuna.samplers.TPESampler()


def optuna_study(spec: StudySpec, study_id: str, storage: Any, *, create: bool = False,
                 study_dir: Path | None = None) -> Any:
    """The study's Optuna study in `storage` (made with `create=True`; else loaded, and a
    UserError naming the journal in `study_dir` or the database when that fails)."""
    optuna = quiet_optuna()
    direction = "minimize" if spec.direction == "min" else "maximize"
    if create:
        return optuna.create_study(storage=storage, study_name=study_id, direction=direction,
                                   sampler=_sampler(spec))
    try:
        return optuna.load_study(study_name=study_id, storage=storage, sampler=_sampler(spec))
    except Exception as exc:   # a damaged or missing journal, another database, a lost table
        raise UserError("the study's trials cannot be read from its trial store",
                        where=where_trials(spec, study_dir),
                        expected=f"the Optuna study {study_id} that sweep made there",
                        found=first_line(exc),
                        hint="the journal is append-only: restore it from a copy (the runs "
                             "and their pair records are kept, but the search's trials and "
                             "the pruner's history live there)") from None


def where_trials(spec: StudySpec, study_dir: Path | None) -> str:
    """Where the trials live: the journal file's path, or the database URL."""
    if spec.storage == "journal" and study_dir is not None:
        return str(study_dir / "optuna.journal")
    return spec.storage


def pruning_study(spec: StudySpec, study_id: str, storage: Any, replicate: int) -> Any:
    """The pruning study of one replicate (created by the first run that needs it)."""
    optuna = quiet_optuna()
    direction = "minimize" if spec.direction == "min" else "maximize"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP, n_warmup_steps=0)
    return optuna.create_study(storage=storage, study_name=f"{study_id}.prune.r{replicate}",
                               direction=direction, pruner=pruner, load_if_exists=True)


# --- configurations --------------------------------------------------------------------------

def _config_path(study_dir: Path, number: int) -> Path:
    return study_dir / "configurations" / f"{number:04d}.json"


def read_configurations(study_dir: Path, spec: StudySpec) -> list[dict]:
    """Every configuration made so far, in order: {"configuration", "params", "trial"};
    a UserError naming the file when one is damaged or does not fit the specification."""
    records = _read_all(study_dir)
    grid = spec.configurations()
    if grid is not None and len(records) != len(grid):
        raise UserError("a study's configuration records are missing",
                        where=str(study_dir / "configurations"),
                        expected=f"the grid's {len(grid)} configurations, one file each",
                        found=f"{len(records)} file(s)", hint="restore them from a copy")
    for record in records:
        number, params = record["configuration"], record["params"]
        expected = grid[number] if grid is not None else None
        if (params != expected) if grid is not None else (set(params) != set(spec.search)):
            raise UserError("a study's configuration record does not fit its specification",
                            where=str(_config_path(study_dir, number)),
                            expected=f"params {expected}" if grid is not None else
                            f"params for the search's keys {sorted(spec.search)}",
                            found=f"params {params}", hint="restore it from a copy")
    return records


def _read_all(study_dir: Path) -> list[dict]:
    folder = study_dir / "configurations"
    if not folder.is_dir():
        return []
    records = [_read_configuration(p) for p in sorted(folder.glob("[0-9]*.json"))]
    for number, record in enumerate(records):
        if record["configuration"] != number:   # one lost: later numbers would shift
            raise UserError("a study's configuration record is missing",
                            where=str(_config_path(study_dir, number)),
                            expected=f"configurations 0 to {len(records) - 1}, one file each",
                            found=f"no file for configuration {number}")
    return records


def _read_configuration(path: Path) -> dict:
    return read_record(path, _configuration_problem, lambda found: UserError(
        "a study's configuration record is damaged", where=str(path),
        expected='a JSON object {"configuration", "params", "trial"} as sweep writes it',
        found=found, hint="restore it from a copy: its runs are kept under runs/"))


def _configuration_problem(path: Path, record: object) -> str | None:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    number = record.get("configuration")
    if type(number) is not int or path.name != f"{number:04d}.json":
        return f"configuration = {number!r}, not the number its name says"
    if not isinstance(record.get("params"), dict):
        return f"params = {record.get('params')!r}, not an object"
    if type(record.get("trial")) is not int:
        return f"trial = {record.get('trial')!r}, not a trial's number"
    return None


def _write_configuration(study_dir: Path, number: int, params: dict, trial: int) -> dict:
    record = {"configuration": number, "params": params, "trial": trial}
    (study_dir / "configurations").mkdir(exist_ok=True)
    atomic_write_json(_config_path(study_dir, number), record)
    return record


def create_grid(spec: StudySpec, study: Any, study_dir: Path) -> None:
    """A grid's configurations, made once when the study starts: trial k is configuration k."""
    for number, params in enumerate(spec.configurations()):
        trial = study.ask()
        trial.set_user_attr("params", json.dumps(params))
        _write_configuration(study_dir, number, params, trial.number)


def ask_configuration(spec: StudySpec, study: Any, study_dir: Path, number: int) -> dict:
    """The search's next configuration, from the sampler (called under the study lock, so
    trial numbers follow configuration numbers)."""
    trial = study.ask({key: distribution(text) for key, text in spec.search.items()})
    return _write_configuration(study_dir, number, dict(trial.params), trial.number)


def tell_configuration(study: Any, trial_number: int, values: list, pruned: bool) -> None:
    """Tell a configuration's trial its mean objective (or pruned / failed); a trial told
    before (a retried failure) stays as it was told."""
    from optuna.trial import TrialState  # deferred: start-up time
    try:
        if values:
            study.tell(trial_number, sum(values) / len(values))
        else:
            study.tell(trial_number, state=TrialState.PRUNED if pruned else TrialState.FAIL)
    except (ValueError, RuntimeError):
        pass
