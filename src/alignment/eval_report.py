"""Where `alignment eval` puts its numbers: MODEL_DIR/eval/results.json, a markdown table, the model card.

The card's evaluation section sits between two HTML comments, so a later evaluation replaces it rather
than stacking a second table under the first; the rest of the card (the training run's) is left as it is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CARD_BEGIN, CARD_END = "<!-- alignment eval: begin -->", "<!-- alignment eval: end -->"
NOT_METRICS = {"source", "rows", "seconds", "scored", "ranked_by", "tokens", "judge_model", "records"}
SHARE_TASKS = {"preference", "exact_match", "classification"}  # every metric of these is a share: in %
JUDGE_HOW = {
    "judge": "graded 1-10 by judge {}",
    "judge_pairwise": "against the baseline, both orders, judge {}",
}


def write_results(request: Any, results: dict[str, Any]) -> dict[str, Any]:
    """Write results.json and results.md under MODEL_DIR/eval/, and the card section unless told not to."""
    from alignment.eval_plots import NO_MATPLOTLIB, can_plot, plot_training

    out = Path(request.model_dir) / "eval"
    out.mkdir(exist_ok=True)
    results["plots"] = []
    if (Path(request.model_dir) / "trainer_state.json").is_file():
        if can_plot():
            results["plots"].append(str(plot_training(request.model_dir, out / "training.png")))
        else:
            logger.warning(f"no training plot: {NO_MATPLOTLIB}")
            results["plots_skipped"] = NO_MATPLOTLIB
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (out / "results.md").write_text(table + "\n")
    if request.card:
        figure = "\n\n![Training curves](eval/training.png)" if results["plots"] else ""
        update_card(Path(request.model_dir) / "README.md", table + figure)
    logger.info(f"evaluation written to {out}/results.json and results.md")
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """One row per metric: task, metric, value, how it was measured, on what data, rows and seconds."""
    lines = [
        "| task | metric | value | measured by | data | rows | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, numbers in results["tasks"].items():
        how = (
            numbers.get("scored")
            or numbers.get("ranked_by")
            or (JUDGE_HOW[task].format(numbers.get("judge_model")) if task in JUDGE_HOW else None)
            or numbers.get("measured_by")
            or "greedy answer equals `answer`"
        )
        for metric, value in numbers.items():
            if metric in NOT_METRICS or metric == "measured_by":
                continue
            lines.append(
                f"| {task} | {metric} | {_shown(task, metric, value)} | {how} | {numbers.get('source')} "
                f"| {numbers.get('rows')} | {numbers.get('seconds')} |"
            )
    return "\n".join(lines)


def is_share(task: str, metric: str) -> bool:
    """A share of rows (shown in %): every metric of preference and exact_match, a win rate, and lm-eval's
    accuracies and exact matches (not their standard errors)."""
    name = metric.split("/")[0]
    return (task in SHARE_TASKS or metric == "win_rate"
            or (name.startswith(("exact_match", "acc")) and not name.endswith("_stderr")))  # fmt: skip


def _shown(task: str, metric: str, value: Any) -> str:
    """A count as it is, a share in %, a loss or a mean grade to 4 digits; `-` for none (nothing judged)."""
    if value is None:
        return "-"
    if isinstance(value, str):  # a classifier's confusion matrix, as one line
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if is_share(task, metric):
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def update_card(card: Path, table: str) -> None:
    """Put `table` in the card's evaluation section, replacing an earlier one; create a card if none."""
    section = f"{CARD_BEGIN}\n## Evaluation\n\nHeld-out numbers from `alignment eval`:\n\n{table}\n{CARD_END}"
    text = card.read_text() if card.is_file() else ""
    if CARD_BEGIN in text and CARD_END in text:
        before, rest = text.split(CARD_BEGIN, 1)
        after = rest.split(CARD_END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    card.write_text(text)
