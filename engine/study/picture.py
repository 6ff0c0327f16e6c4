"""study.png, drawn from results.json's content: imported by the plot helper process too,
so it needs nothing but matplotlib and numpy (no torch, no scipy).

    png = render({"data": results, "curves": [[0, [history, ...]], ...]})
"""

from __future__ import annotations

import io


def params_text(params: dict) -> str:
    """A configuration's parameters as `key=value, ...` (or "(base config)")."""
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "(base config)"


def render(payload: dict) -> bytes:
    """study.png's bytes from `payload` = {"data": results.json's dict, "curves": [[configuration,
    [history, ...]], ...]}: the objective per configuration with its 95% interval and each
    run's value; the objective's validation curve per configuration, mean and min-max band
    over replicates."""
    import matplotlib  # deferred: start-up time
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: start-up time
    import numpy as np  # deferred: start-up time

    data = payload["data"]
    curves = {int(number): histories for number, histories in payload["curves"]}
    metric = data["objective"]["metric"]
    configs = data["configurations"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for x, c in enumerate(configs):
        values = [r["value"] for r in c["runs"] if r["value"] is not None and
                  r["status"] in ("completed", "early_stopped")]
        left.scatter([x] * len(values), values, s=12, alpha=0.5, color="grey")
        if c["mean"] is not None:
            low, high = c["ci95"] or (c["mean"], c["mean"])
            left.errorbar([x], [c["mean"]], yerr=[[c["mean"] - low], [high - c["mean"]]],
                          fmt="o", capsize=4)
    left.set_xticks(range(len(configs)), [str(c["configuration"]) for c in configs])
    left.set_xlabel("configuration (ranked best first)")
    left.set_ylabel(f"{metric} at best validation")
    left.set_title("objective: mean and 95% CI, runs in grey")
    for c in configs:
        histories = [h for h in curves.get(c["configuration"], []) if h.get(metric)]
        if not histories:
            continue
        length = min(len(h[metric]) for h in histories)
        epochs = np.array(histories[0]["epoch"][:length]) + 1
        values = np.array([[np.nan if v is None else v for v in h[metric][:length]]
                           for h in histories], dtype=float)
        (line,) = right.plot(epochs, np.nanmean(values, 0),
                             label=f"{c['configuration']}: {params_text(c['params'])}"[:48])
        right.fill_between(epochs, np.nanmin(values, 0), np.nanmax(values, 0),
                           color=line.get_color(), alpha=0.2)
    right.set_xlabel("epoch")
    right.set_ylabel(metric)
    right.set_title("validation curves: mean, band = min-max over replicates")
    if right.lines:
        right.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
