"""The mlflow tracker: one MLflow run per engine run, through `MlflowClient` (never the fluent
global API, so two runs in one process keep apart).

- tracking URI `train.mlflow_uri`, default `sqlite:///{output_dir, absolute}/mlflow.db`, with
  artifacts beside the database (`mlartifacts/`), never in the current folder;
- experiment = the registry key; run name = run_id; params = the flattened config;
- metrics = each history column per validation (step = epoch);
- tags `engine.status` (running, then the final status), `engine.run_dir`, `engine.study_id`;
- at the end metrics.png and config.toml as artifacts.

The MLflow run's id goes into metrics.json (`"mlflow": {"run_id", ...}`): a resumed run carries
on in the same MLflow run. HTTP requests are bounded (no retries, a short timeout) so an
unreachable server costs seconds, not MLflow's default minutes. Parallel runs on one SQLite
file all get recorded: a new database is opened in turn (a lock file), and MLflow waits for a
busy file itself (up to 20 s per call; a file locked for longer turns the tracker off).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any

from engine.core.events import Event
from engine.io.plot_service import wait_for_plots
from engine.io.trackers import figures, flat_config

# set before mlflow reads them; a user's own settings win
_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_FINAL = {"completed": "FINISHED", "early_stopped": "FINISHED", "interrupted": "KILLED",
          "failed": "FAILED"}
# not "database is locked": MLflow's sessions already wait 20 s for a busy SQLite file
_BUSY = ("already exists", "unique constraint", "database schema has")
_BUSY_SECONDS = 5.0
_FIRST_OPEN_SECONDS = 60.0   # another process making the tables (once per database)
# MLflow retries opening a database 10 times with a growing pause (about 100 s in all) for a
# server that is down or a file that cannot be opened: two tries keep that to a second
_DB_OPEN_TRIES = 2


def tracking_uri(train: Any) -> str:
    """`train.mlflow_uri`, or the SQLite file in the (absolute) output folder."""
    if train.mlflow_uri:
        return train.mlflow_uri
    return f"sqlite:///{Path(train.output_dir).resolve() / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite file; a server decides."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


def make(run: Any) -> MlflowRun:
    """The MLflow tracker for a run: its client, experiment and (on resume) its MLflow run."""
    for key, value in _BOUNDS.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient  # deferred: start-up time
    # after the import (mlflow sets its level on import): mlflow logs a failed SQL call as an
    # ERROR with its traceback; the tracker's one warning says it instead
    logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _bound_database_retries()
    return MlflowRun(MlflowClient, tracking_uri(run.cfg.train))


def _bound_database_retries() -> None:
    try:
        from mlflow.store.db import utils  # deferred: start-up time
    except ImportError:   # a build without the SQL stores: nothing to bound
        return
    if getattr(utils, "MAX_RETRY_COUNT", 0) > _DB_OPEN_TRIES:
        utils.MAX_RETRY_COUNT = _DB_OPEN_TRIES


def _sqlite_file(uri: str) -> Path:
    """The database file of a `sqlite:///` URI, its folder made (as MLflow itself makes it);
    a folder where the file should be is refused at once, not after MLflow's retries."""
    db = Path(uri[len("sqlite:///"):])
    if db.is_dir():
        raise IsADirectoryError(f"train.mlflow_uri {uri} names a folder, not a database file "
                                f"(e.g. sqlite:///{db / 'mlflow.db'})")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"train.mlflow_uri {uri}: cannot make its folder {db.parent}: "
                      f"{exc.strerror or exc}") from exc
    return db


def _patiently(call: Any, *args: Any, **kwargs: Any) -> Any:
    """`call(...)`, retried for a few seconds when another process made the same thing first
    (an experiment, the tables); any other error at once."""
    deadline = time.monotonic() + _BUSY_SECONDS
    pause = 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            text = str(exc).lower()
            if time.monotonic() > deadline or not any(b in text for b in _BUSY):
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _open_client(client_class: Any, uri: str) -> Any:
    """An MlflowClient on `uri`. Opening a SQLite store makes or upgrades its tables, which two
    processes must not do at once (one fails with "table ... already exists"): a lock file
    beside the database lets them take turns."""
    if not uri.startswith("sqlite:///"):
        return client_class(tracking_uri=uri)
    db = _sqlite_file(uri)
    deadline = time.monotonic() + _FIRST_OPEN_SECONDS
    with open(db.parent / f"{db.name}.lock", "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{db} is locked by another process") from None
                time.sleep(0.05)
        try:
            return _patiently(client_class, tracking_uri=uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class MlflowRun:
    """One engine run as one MLflow run: params, metrics per validation, tags, artifacts."""
    events = frozenset({Event.FIT_START, Event.VALIDATION_END, Event.FIT_END})

    def __init__(self, client_class: Any, uri: str) -> None:
        self.client_class = client_class
        self.client: Any = None
        self.uri = uri
        self.run_id: str | None = None

    def __call__(self, event: Event, state: Any) -> None:
        if event is Event.FIT_START:
            self._start(state.run)
        elif event is Event.VALIDATION_END:
            self._metrics(state)
        else:
            self._end(state)

    def _experiment(self, name: str) -> str:
        found = _patiently(self.client.get_experiment_by_name, name)
        if found is not None:
            return found.experiment_id
        try:
            return _patiently(self.client.create_experiment, name,
                              artifact_location=artifact_root(self.uri))
        except Exception:
            # another process made it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _start(self, run: Any) -> None:
        from mlflow.entities import Param, RunTag  # deferred: start-up time
        # made here, not in make(): a SQLite store opens (and makes its tables) at once, and
        # a failure now reaches train.log
        self.client = _open_client(self.client_class, self.uri)
        params = {k: str(v) for k, v in flat_config(run.cfg).items()}
        tags = {"engine.status": "running", "engine.run_dir": str(Path(run.run_dir).resolve())}
        study_id = (run.metrics_extra.get("study") or {}).get("study_id")
        if study_id is not None:
            tags["engine.study_id"] = str(study_id)
        old = self._resumed((run.metrics_extra.get("mlflow") or {}).get("run_id"))
        if old is not None:
            # params are immutable in MLflow: only new keys are added, a changed value is a tag
            tags.update({f"engine.resumed_with.{k}": v for k, v in params.items()
                         if k in old and old[k] != v})
            params = {k: v for k, v in params.items() if k not in old}
        else:
            experiment = self._experiment(run.name)
            created = _patiently(self.client.create_run, experiment, run_name=run.run_id)
            self.run_id = created.info.run_id
            run.metrics_extra["mlflow"] = {"run_id": self.run_id, "experiment_id": experiment,
                                           "tracking_uri": self.uri}
        items = [Param(k, v) for k, v in params.items()]
        batches = [items[i:i + 100] for i in range(0, len(items), 100)] or [[]]
        for i, batch in enumerate(batches):   # MLflow takes 100 params per batch
            _patiently(self.client.log_batch, self.run_id, params=batch,
                       tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])

    def _resumed(self, earlier: str | None) -> dict | None:
        """A resumed run's MLflow run, set running again: its params; None to start a new
        one (a first run, or a store that does not hold that run)."""
        if not earlier:
            return None
        from mlflow.exceptions import MlflowException  # deferred: start-up time
        try:
            params = _patiently(self.client.get_run, earlier).data.params
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        _patiently(self.client.update_run, earlier, status="RUNNING")
        self.run_id = earlier
        return dict(params)

    def _metrics(self, state: Any) -> None:
        from mlflow.entities import Metric  # deferred: start-up time
        epoch = state.history["epoch"][-1]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in figures(state).items()]
        _patiently(self.client.log_batch, self.run_id, metrics=metrics)

    def _end(self, state: Any) -> None:
        _patiently(self.client.set_tag, self.run_id, "engine.status", state.status)
        wait_for_plots()   # the plot helper's final metrics.png, not an earlier frame
        for name in ("metrics.png", "config.toml"):
            path = state.run.run_dir / name
            if path.is_file():
                _patiently(self.client.log_artifact, self.run_id, str(path))
        _patiently(self.client.set_terminated, self.run_id,
                   status=_FINAL.get(state.status, "FINISHED"))
