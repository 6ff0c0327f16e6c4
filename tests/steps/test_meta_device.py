"""Every loss and metric in steps/ builds on the meta device (tensors with no data): so none
reads a value on the host (.item(), bool(tensor), .tolist(), float(tensor) all fail there), and
none makes a tensor from host data (a host-to-device copy on CUDA, every call)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import steps
from steps import ranking

# ops that read a tensor's value on the host, or bring host data in
HOST_OPS = ("aten._local_scalar_dense", "aten.lift_fresh", "aten.item")

METRIC_FUNCTIONS = [ranking.ndcg_at_k, ranking.weighted_tau, ranking.kendall_tau,
                    ranking.top1_hit, ranking.regret_at_1, ranking.rel_at_1,
                    ranking.ranking_metrics, ranking.standardize_scores, ranking.observed_mask]


class OpLog(TorchDispatchMode):
    """Records every aten op dispatched inside it that reads a value on the host, or that
    touches a tensor off the meta device (host data entering a meta computation)."""

    def __init__(self) -> None:
        super().__init__()
        self.host: list[str] = []
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += 1
        tensors = [a for a in (*args, *(kwargs or {}).values(), out) if isinstance(a, torch.Tensor)]
        name = str(func)
        if name.startswith(HOST_OPS) or any(t.device.type != "meta" for t in tensors):
            self.host.append(f"{name} on {sorted({t.device.type for t in tensors})}")
        return out


@pytest.fixture(autouse=True)
def no_tensor_from_host_data(monkeypatch):
    """`torch.tensor(value, device=d)` builds on the host and copies (on CUDA, a host-to-device
    copy per call); on meta it dispatches nothing the op log could see: refuse it here."""
    def refused(*args, **kwargs):
        raise AssertionError(f"a tensor made from host data: torch.tensor{args}")
    for name in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, refused)


def meta_batch(b: int = 3, k: int = 5):
    pred = torch.randn(b, k, device="meta", requires_grad=True)
    scores = torch.randn(b, k, device="meta")
    mask = torch.ones(b, k, dtype=torch.bool, device="meta")
    return pred, scores, mask


def test_every_public_ranking_function_is_covered():
    """A new loss or metric in steps.ranking joins the meta-device tests below."""
    public = {name for name in dir(ranking) if not name.startswith("_")
              and callable(getattr(ranking, name)) and getattr(ranking, name).__module__ ==
              ranking.__name__}
    covered = {fn.__name__ for fn in METRIC_FUNCTIONS} | {fn.__name__ for fn in
                                                           ranking.LOSSES.values()}
    assert public <= covered, public - covered


@pytest.mark.parametrize("name", list(ranking.LOSSES))
def test_losses_and_their_backward_run_on_meta(name):
    """Each loss (with and without a mask) and its backward pass run with no data."""
    pred, scores, mask = meta_batch()
    with OpLog() as log:
        for m in (None, mask):
            loss = ranking.LOSSES[name](pred, scores, m)
            assert loss.dim() == 0 and loss.device.type == "meta"
            loss.backward()
    assert log.count > 0 and not log.host, log.host


@pytest.mark.parametrize("fn", METRIC_FUNCTIONS, ids=lambda fn: fn.__name__)
def test_metrics_run_on_meta(fn):
    """Each metric returns meta tensors and dispatches no host read or host-data copy."""
    pred, scores, mask = meta_batch()
    with OpLog() as log:
        out = fn(pred.detach(), scores, mask) if fn is not ranking.observed_mask else fn(
            scores, mask)
    values = out.values() if isinstance(out, dict) else [out]
    assert all(v.device.type == "meta" for v in values)
    assert log.count > 0 and not log.host, log.host


def test_grad_norm_runs_on_meta():
    """steps.grad_norm (the per-step figure the loop accumulates) needs no host read."""
    w = torch.nn.Parameter(torch.randn(4, 3, device="meta"))
    w.grad = torch.randn(4, 3, device="meta")
    with OpLog() as log:
        norm = steps.grad_norm([w])
    assert norm.device.type == "meta" and norm.dim() == 0
    assert log.count > 0 and not log.host, log.host


def test_the_log_sees_a_host_read():
    """The op log is not blind: .item() and a tensor from the host are caught."""
    x = torch.randn(3, device="meta")
    with OpLog() as log:
        torch.where(x > 0, x, torch.ones(()))
    assert log.host, "a CPU tensor in a meta computation was not seen"
    with OpLog() as log:
        torch.randn(3).sum().item()
    assert any(op.startswith("aten._local_scalar_dense") for op in log.host), log.host
    with pytest.raises(RuntimeError, match="meta"):
        x.sum().item()
    with pytest.raises(AssertionError, match="host data"):
        torch.tensor(float("-inf"), device="meta")
