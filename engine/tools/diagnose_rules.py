"""The rules `engine diagnose` applies to a run's history: each a pure function of the loaded
metrics.json and `[train]` table returning `Finding`s (thresholds: engine.tools.diagnose_view)."""

from __future__ import annotations

from collections.abc import Mapping

from engine.tools.diagnose_view import (
    _NONFINITE,
    BURST,
    CLIPPED_MOST,
    FIRST_SPIKE,
    FLAT,
    FLAT_MIN_VALIDATIONS,
    GAP,
    GIVE_BACK,
    GIVE_BACK_OF_MIN,
    GRAD_ZERO,
    JUMP,
    OVERFIT_MIN_AFTER,
    OVERFIT_OF_FIRST,
    OVERFIT_RISE,
    PLATEAU_MIN,
    RISE_FROM_START,
    Finding,
    View,
    best_of,
    error_where,
    g,
    lr_reduced,
    num,
    rel_drop,
)


def _failed(v: View, train: Mapping) -> list[Finding]:
    """The run failed: a non-finite loss is divergence; anything else is reported as it is."""
    if v.error is None:
        return []
    message = str(v.error.get("message", ""))
    if _NONFINITE.search(message):
        return []  # _diverging cites it
    return [Finding("failed", "error", f"run failed{error_where(v.error)}: {message}",
                    "the run stopped on an error that is not about the loss: fix it (train.log "
                    "holds the traceback), then diagnose the next run")]


def _diverging(v: View, train: Mapping) -> list[Finding]:
    # each signal: (evidence or None, whether it alone makes the finding an error)
    rising = _train_rising(v)
    signals = [(_nonfinite(v), True), (_skipped(v), False), (rising, True),
               (_first_epoch_spike(v), False), (_jump(v), False), (_burst(v), True),
               (None if rising else _worse_everywhere(v), True)]
    evidence = [text for text, _ in signals if text]
    if not evidence:
        return []
    severe = any(text and is_error for text, is_error in signals)
    clip = train.get("gradient_clip_value")
    clip_note = (f"turn gradient clipping on (train.gradient_clip_value, now {clip})"
                 if clip == 0 else "keep gradient clipping on (train.gradient_clip_value)")
    return [Finding(
        "diverging", "error" if severe else "warning", "; ".join(evidence),
        f"the learning rate is likely too high (train.learning_rate = "
        f"{train.get('learning_rate', '?')}): try it 10x lower, or find one with `python -m "
        f"engine lr-find NAME`; {clip_note}; add warmup (train.warmup_steps); check the data "
        "for inf/NaN and the loss for log(0) or division by zero")]


def _nonfinite(v: View) -> str | None:
    """The run failed on a non-finite loss, or the history holds a null loss or norm."""
    if v.error is not None and _NONFINITE.search(str(v.error.get("message", ""))):
        return f"run failed{error_where(v.error)}: {v.error.get('message')}"
    for name in ("train_loss", "grad_norm"):
        if name in v.cols and None in v.cols[name]:
            return f"{name} non-finite at epoch {v.epochs[v.cols[name].index(None)]}"
    return None


def _skipped(v: View) -> str | None:
    """Steps skipped as non-finite (nan_policy skip or rollback) while the run went on."""
    skipped = [(i, x) for i, x in v.finite("nonfinite_steps") if x > 0]
    if not skipped:
        return None
    return (f"{int(sum(x for _, x in skipped))} non-finite step(s), first in epoch "
            f"{v.epochs[skipped[0][0]]}")


def _train_rising(v: View) -> str | None:
    """Training loss above where it started, or climbing back most of the way it fell."""
    f = v.finite("train_loss")
    if len(f) < 2:
        return None
    (i0, first), (il, last) = f[0], f[-1]
    ilo, low = min(f, key=lambda p: p[1])
    if last - first > RISE_FROM_START * max(abs(first), 1e-12):
        return (f"train_loss rose from {g(first)} (epoch {v.epochs[i0]}) to {g(last)} "
                f"(epoch {v.epochs[il]})")
    if (il > ilo and last - low > GIVE_BACK * (first - low)
            and last - low > GIVE_BACK_OF_MIN * max(abs(low), 1e-12)):
        return (f"train_loss fell to {g(low)} (epoch {v.epochs[ilo]}) then rose to "
                f"{g(last)} (epoch {v.epochs[il]})")
    return None


def _burst(v: View) -> str | None:
    """An epoch whose mean training loss is far above every validation loss up to and right
    after it: the loss blew up during that epoch (and the model partly recovered, or died).

    Epoch 1 is left out: its mean includes the untrained model, which may be far off. Later
    means sit near the validation losses (dropout or augmentation: a few times above them).
    """
    tl, vl = v.col("train_loss"), v.col("val_loss")
    seen: list[float] = [abs(vl[0])] if v.n and vl[0] is not None else []
    for i in range(1, v.n):
        if vl[i] is not None:
            seen.append(abs(vl[i]))
        t = tl[i]
        if t is not None and seen and t > BURST * max(max(seen), 1e-12):
            return (f"train_loss {g(t)} in epoch {v.epochs[i]} against val_loss at most "
                    f"{g(max(seen))} until then: the loss blew up during the epoch")
    return None


def _first_epoch_spike(v: View) -> str | None:
    """Epoch 1's mean training loss far above the validation loss right after it."""
    if not v.n:
        return None
    t, val = v.col("train_loss")[0], v.col("val_loss")[0]
    if t is None or val is None or val <= 0 or t <= FIRST_SPIKE * val:
        return None
    return (f"epoch 1's mean train_loss {g(t)} is {t / val:.3g}x the val_loss after it "
            f"({g(val)}): the loss spiked early (or the start was far off, e.g. targets "
            "not standardized)")


def _jump(v: View) -> str | None:
    """The validation loss more than doubling from one validation to the next."""
    vl = v.col("val_loss")
    first = next((x for x in vl if x is not None), None)
    for i in range(1, v.n):
        a, b = vl[i - 1], vl[i]
        if None in (a, b) or a <= 0:
            continue
        if b > JUMP * a and b - a > OVERFIT_OF_FIRST * abs(first):
            return (f"val_loss jumped from {g(a)} (epoch {v.epochs[i - 1]}) to {g(b)} "
                    f"(epoch {v.epochs[i]})")
    return None


def _worse_everywhere(v: View) -> str | None:
    """Validation loss rising from the first validation on, with the training loss no lower
    than it: the model got worse on all data (not overfitting, which has a gap)."""
    vals = v.finite("val_loss")
    if len(vals) < OVERFIT_MIN_AFTER + 1:
        return None
    (i0, first), (il, last) = vals[0], vals[-1]
    t_last = v.col("train_loss")[il]
    if min(x for _, x in vals) < first or t_last is None:
        return None
    if last - first > RISE_FROM_START * max(abs(first), 1e-12) and not _gap(t_last, last):
        return (f"val_loss rose from {g(first)} (epoch {v.epochs[i0]}) to {g(last)} (epoch "
                f"{v.epochs[il]}) with train_loss {g(t_last)} no lower")
    return None


def _gap(train_loss: float, val_loss: float) -> bool:
    """A generalization gap: training loss clearly below validation loss."""
    return train_loss < val_loss - GAP * abs(val_loss)


def not_learning(v: View, train: Mapping) -> list[Finding]:
    """Losses that barely move, or gradients that are all but zero."""
    norms = v.finite("grad_norm")
    if norms and max(x for _, x in norms) < GRAD_ZERO:
        return [Finding(
            "not-learning", "error",
            f"grad_norm at most {g(max(x for _, x in norms))} over all {len(norms)} "
            "validation(s): no parameter gets a gradient",
            "parameters are frozen (requires_grad=False), missing from the optimizer, or "
            "disconnected from the loss (a .detach(), .item() or torch.no_grad() in "
            "forward_batch, or a loss that does not use the model's output)")]
    f = v.finite("train_loss")
    if len(f) < FLAT_MIN_VALIDATIONS:
        return []
    first, low = f[0][1], min(x for _, x in f)
    vals = v.finite("val_loss")
    val_flat = len(vals) < 2 or rel_drop(vals[0][1], min(x for _, x in vals)) < FLAT
    if rel_drop(first, low) >= FLAT or not val_flat:
        return []
    return [Finding(
        "not-learning", "error",
        f"train_loss {g(first)} (epoch {v.epochs[f[0][0]]}) -> best {g(low)} over "
        f"{len(f)} validations ({100 * rel_drop(first, low):.2g}% lower)"
        + (f"; grad_norm {g(norms[0][1])} -> {g(norms[-1][1])}" if norms else ""),
        f"the learning rate may be far too low (train.learning_rate = "
        f"{train.get('learning_rate', '?')}): find one with `python -m engine lr-find NAME`; "
        "otherwise parameters may be frozen or not in the optimizer, or the loss may not "
        "depend on them. (If the first epoch already reached the best loss possible, this "
        "is expected.)")]


def _overfitting(v: View, train: Mapping) -> list[Finding]:
    best = best_of(v)
    if best is None:
        return []
    b, v_min = best
    after = [(i, x) for i, x in v.finite("val_loss") if i > b]
    if len(after) < OVERFIT_MIN_AFTER:
        return []
    il, v_last = after[-1]
    t_best, t_last = v.col("train_loss")[b], v.col("train_loss")[il]
    v_first = v.finite("val_loss")[0][1]
    if (v_last - v_min <= OVERFIT_RISE * max(abs(v_min), 1e-12)
            or v_last - v_min <= OVERFIT_OF_FIRST * abs(v_first)):
        return []
    if t_best is None or t_last is None or not t_last < t_best:
        return []
    if not _gap(t_last, v_last):
        return []  # worse on training data too: that is divergence, not overfitting
    return [Finding(
        "overfitting", "warning",
        f"from epoch {v.epochs[b]}: val_loss lowest there ({g(v_min)}), rose to {g(v_last)} "
        f"by epoch {v.epochs[il]} while train_loss fell {g(t_best)} -> {g(t_last)}",
        f"model.pt keeps the best weights (epoch {v.epochs[b]}); regularize "
        "(train.weight_decay, dropout), add or augment data, or use a smaller model; early "
        "stopping (train.early_stopping_patience) ends such runs sooner")]


def _clipping(v: View, train: Mapping) -> list[Finding]:
    clip = train.get("gradient_clip_value")
    fractions = [x for _, x in v.finite("clipped_fraction")]
    if clip == 0 or not fractions:
        return []
    mean = sum(fractions) / len(fractions)
    if mean <= CLIPPED_MOST:
        return []
    norms = [x for _, x in v.finite("grad_norm")]
    norm_note = f"; mean grad_norm {g(sum(norms) / len(norms))}" if norms else ""
    return [Finding(
        "clipping-always", "warning",
        f"{100 * mean:.0f}% of steps clipped over {len(fractions)} validation(s)"
        f"{norm_note} against gradient_clip_value {clip}",
        "clipping nearly every step turns updates into fixed-size steps and hides the "
        "gradient scale: raise train.gradient_clip_value above the typical norm, or lower "
        "train.learning_rate; a norm that keeps growing means the run is diverging")]


def plateau(v: View, train: Mapping) -> list[Finding]:
    """Many validations without improvement while the learning rate never dropped."""
    best = best_of(v)
    if best is None or v.status == "early_stopped":
        return []  # early stopping already ended a plateau: see stopped-early-before-decay
    b, v_min = best
    since = sum(1 for i, _ in v.finite("val_loss") if i > b)
    lr_patience = int(num(train.get("lr_patience")) or 0)
    if since < max(PLATEAU_MIN, 2 * (lr_patience + 1)):
        return []
    reduced, lr_note = lr_reduced(v)
    advice = ("the model has stopped improving even at a lower rate: stop sooner "
              "(train.early_stopping_patience), or change capacity, data or regularization"
              if reduced else
              "the rate never decayed: use a scheduler that reduces it (the default "
              "ReduceLROnPlateau with train.lr_patience), or lower train.learning_rate; "
              "train.early_stopping_patience stops a run that has settled")
    return [Finding(
        "plateau", "info" if reduced else "warning",
        f"no improvement of val_loss for {since} validations since epoch {v.epochs[b]} "
        f"(best {g(v_min)}); {lr_note}", advice)]


def _stopped_before_decay(v: View, train: Mapping) -> list[Finding]:
    if v.status != "early_stopped" or not v.finite("learning_rate"):
        return []
    reduced, lr_note = lr_reduced(v)
    if reduced:
        return []
    best = best_of(v)
    evidence = (f"early stopping fired at epoch {v.epochs[-1]}"
                + (f" (best epoch {v.epochs[best[0]]})" if best else "") + f"; {lr_note}")
    lr_p, es_p = num(train.get("lr_patience")), num(train.get("early_stopping_patience"))
    if lr_p is not None and es_p is not None and lr_p >= es_p:
        evidence += (f"; lr_patience {int(lr_p)} >= early_stopping_patience {int(es_p)}, so the "
                     "scheduler could never act first")
    return [Finding(
        "stopped-early-before-decay", "warning", evidence,
        "set train.lr_patience below train.early_stopping_patience (e.g. half of it) or raise "
        "the patience, so the rate decays before training stops; a recipe with "
        "build_scheduler=None never decays the rate")]


RULES = (_failed, _diverging, not_learning, _overfitting, _clipping, plateau,
         _stopped_before_decay)
