"""The tensorboard tracker: event files in RUN_DIR/tensorboard/.

- each history column as a scalar per validation (tag = the column's name, step = epoch);
- the training loss per log interval (tag `train_loss_step`, step = optimizer step): STEP_END
  carries `recent_loss`, which changes only at log intervals, so a step costs a comparison;
- at the end, the flattened config as hparams with the best figures (`best/val_loss`, ...).

A resumed run adds a new event file to the same folder; TensorBoard reads them as one run.
"""

from __future__ import annotations

import math
from typing import Any

from engine.core.events import Event
from engine.io.trackers import figures, flat_config


def make(run: Any) -> TensorBoardWriter:
    """The TensorBoard tracker for a run (`train.loggers` names "tensorboard")."""
    from torch.utils.tensorboard import SummaryWriter  # deferred: start-up time
    return TensorBoardWriter(SummaryWriter)


def _hparam(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class TensorBoardWriter:
    """Event files in RUN_DIR/tensorboard/: history columns per validation, the training loss per
    log interval, hparams."""
    events = frozenset({Event.FIT_START, Event.STEP_END, Event.VALIDATION_END, Event.FIT_END})

    def __init__(self, writer_class: Any) -> None:
        self.writer_class = writer_class
        self.writer: Any = None
        self.last_loss: float | None = None

    def __call__(self, event: Event, state: Any) -> None:
        if event is Event.FIT_START:
            # made here, once train.log is open, so a folder that cannot be made is logged
            # there; the writer's thread flushes on its own, and we flush at each validation
            self.writer = self.writer_class(log_dir=str(state.run.run_dir / "tensorboard"),
                                            flush_secs=60)
            return
        if event is Event.STEP_END:
            loss = state.recent_loss
            if loss is not None and loss != self.last_loss:
                self.last_loss = loss
                self.writer.add_scalar("train_loss_step", loss, state.step)
            return
        if event is Event.VALIDATION_END:
            epoch = state.history["epoch"][-1]
            for tag, value in figures(state).items():
                self.writer.add_scalar(tag, value, epoch)
            self.writer.flush()
            return
        # FIT_END: the config with the best figures, for the HParams tab
        self._hparams(state)
        self.close()

    def _hparams(self, state: Any) -> None:
        from torch.utils.tensorboard.summary import hparams  # deferred: start-up time
        best = {"best/epoch": state.best_epoch, "best/val_loss": state.best_val_loss}
        if state.best_epoch is not None:
            i = list(state.history["epoch"]).index(state.best_epoch)
            for column, values in state.history.items():
                if column.startswith("val_") and column != "val_loss":
                    best[f"best/{column}"] = values[i]
        best = {k: float(v) for k, v in best.items()
                if isinstance(v, (int, float)) and math.isfinite(v)}
        params = {k: _hparam(v) for k, v in flat_config(state.run.cfg).items()}
        params["engine.status"] = state.status
        exp, ssi, sei = hparams(params, best)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        for tag, value in best.items():
            self.writer.add_scalar(tag, value, 0)

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
