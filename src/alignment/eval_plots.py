"""PNG plots of a run and of a pipeline: loss curves, preference margins, stages side by side, a classifier's
confusion matrix.

matplotlib comes with the `eval` extra (`pip install -e ".[eval]"`); without it no plot is drawn and
the caller says so in one line, while every number still goes to results.json and the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# trainer_state.json keys worth a panel, by what they show: (title, [(label, key)])
PREFERENCE_PANELS = [
    ("reward margin (chosen - rejected)", [("train", "rewards/margins"), ("eval", "eval_rewards/margins")]),
    ("preference accuracy", [("train", "rewards/accuracies"), ("eval", "eval_rewards/accuracies")]),
]
RL_PANELS = [("mean reward", [("train", "reward")])]
GENERATION_PANELS = [("exact match (generation eval)", [("greedy", "eval_exact_match")])]  # eval_generation_*


NO_MATPLOTLIB = 'matplotlib is not installed (pip install -e ".[eval]")'


def can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training node
    import matplotlib.pyplot as plt

    return plt


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """The (step, value) points of `key` in a trainer's log history."""
    points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
    return [s for s, _ in points], [float(v) for _, v in points]


def training_panels(history: list[dict]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The loss panel, then each preference or RL panel whose keys the run logged."""
    panels = [("loss", [("train", "loss"), ("eval", "eval_loss")])]
    return panels + [
        p
        for p in PREFERENCE_PANELS + RL_PANELS + GENERATION_PANELS
        if any(series(history, key)[0] for _, key in p[1])
    ]


def plot_training(run_dir: str | Path, out: str | Path) -> Path | None:
    """Loss curves (train, eval) and, where logged, reward margins and accuracies (preference stages) or the
    mean reward (online RL), from `run_dir/trainer_state.json`; None when the folder has no such file."""
    state = Path(run_dir) / "trainer_state.json"
    if not state.is_file():
        return None
    history = json.loads(state.read_text())["log_history"]
    panels = training_panels(history)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (title, lines) in zip(axes[0], panels, strict=True):
        for label, key in lines:
            steps, values = series(history, key)
            if steps:
                axis.plot(steps, values, marker="o" if len(steps) < 12 else None, label=label)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend()
    figure.suptitle(Path(run_dir).name)
    figure.tight_layout()
    path = Path(out)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_stages(results: dict[str, dict[str, Any]], out: str | Path, metrics: list[str]) -> Path:
    """Grouped bars: each stage's value of each metric (a stage without one has no bar), for a pipeline."""
    plt = _pyplot()
    stages = [name for name, numbers in results.items() if any(m in numbers for m in metrics)]
    figure, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(stages) * len(metrics) / 3), 4))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        xs = [j + i * width for j, stage in enumerate(stages) if metric in results[stage]]
        values = [100 * results[stage][metric] for stage in stages if metric in results[stage]]
        axis.bar(xs, values, width, label=metric)
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(stages))], stages)
    axis.set_ylabel("%")
    axis.set_ylim(0, 105)
    axis.legend(fontsize="small", ncols=min(len(metrics), 4))
    figure.tight_layout()
    path = Path(out)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion(confusion: Any, names: list[str], out: str | Path) -> Path:
    """A classifier's confusion matrix as a heat map, each cell with its count (rows: true label)."""
    plt = _pyplot()
    size = min(3 + 0.5 * len(names), 14)
    figure, axis = plt.subplots(figsize=(size, size * 0.85))
    image = axis.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axis)
    ticks = range(len(names))
    axis.set_xticks(ticks, names, rotation=45 if max(map(len, names)) > 4 else 0, ha="right")
    axis.set_yticks(ticks, names)
    axis.set_xlabel("predicted label")
    axis.set_ylabel("true label")
    if len(names) <= 30:  # beyond that the numbers no longer fit their cells
        high = max(max(row) for row in confusion) if len(confusion) else 0
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                color = "white" if count > high / 2 else "black"
                axis.text(j, i, str(int(count)), ha="center", va="center", color=color)
    total = sum(sum(row) for row in confusion)
    right = sum(confusion[i][i] for i in range(len(names)))
    axis.set_title(f"confusion matrix: {int(total)} rows, accuracy {right / total if total else 0:.3f}")
    figure.tight_layout()
    path = Path(out)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
