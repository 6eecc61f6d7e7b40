"""The classify stage: a sequence-classification head trained on `text`/`label` rows, and its metrics.

    python scripts/run_classify.py recipes/tiny/classify/config.yaml   # CPU, after `alignment tiny build`

Gap filled: TRL has no classification trainer (its RewardTrainer trains one output on preference
pairs). Here transformers' `Trainer` does the training: `ClassifyConfig` is its `TrainingArguments`
with the keys the data layer and the loader read (as TRL's configs have them), `class_names` turns the
rows' labels into the model's classes before the model loads, and `ClassificationTrainer` takes what a
TRL trainer takes (raw rows, `processing_class`, `peft_config`), tokenises them, pads each batch to
its longest row and evaluates. The metrics are computed here with numpy (scikit-learn is no dependency
of this project): accuracy, macro F1, per-class precision, recall and F1, and the confusion matrix,
written to `output_dir` as JSON and a PNG after training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import Trainer, TrainingArguments

from alignment.data.cache import fresh_map
from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

CONFUSION_JSON = "confusion_matrix.json"
CONFUSION_PNG = "confusion_matrix.png"
PER_CLASS = ("precision", "recall", "f1")  # each class's metrics, logged as `eval_<kind>/<label>`


@dataclass
class ClassifyConfig(TrainingArguments):
    """transformers' `TrainingArguments` and the keys a stage config has for the data layer and the loader."""

    max_length: int | None = field(
        default=512,
        metadata={
            "help": "Tokens kept of each text: longer ones are truncated (counted in data_report.json). "
            "None: the tokenizer's own limit."
        },
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Processes that convert and tokenise the data (None: this one)."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the Python code of the model's repository (keep off unless read)."},
    )


# --- Labels --------------------------------------------------------------------------------------------


def class_names(datasets: Any) -> list[str]:
    """The classes in id order, read from the training rows' labels; the eval rows' labels checked against them.

    String labels are sorted and numbered in that order; integer labels are their own ids, so they
    must be 0..K-1 for the K classes the training rows hold. Refused in one line naming the row, before
    the model loads: a negative or gapped integer label, a single class, and an eval label that no
    training row has (the head could never predict it). The names become the model's `id2label`.
    """
    train = list(datasets["train"]["label"])  # not `.data`: that ignores the rows a curation step selected
    if train and all(isinstance(label, int) for label in train):
        classes = len(set(train))
        bad = next((i for i, label in enumerate(train) if not 0 <= label < classes), None)
        if bad is not None:
            missing = sorted(set(range(classes)) - set(train))
            why = "which is negative" if train[bad] < 0 else f"but no row has {missing[0]}"
            raise RecipeError(
                f"`label`: training row {bad + 1} ({_snippet(datasets['train'][bad]['text'])}) has label {train[bad]}, "
                f"{why}: integer labels are class ids 0..{classes - 1} for the {classes} classes the training "
                "rows hold; renumber them, or write the labels as strings"
            )
        names = [str(i) for i in range(classes)]
    else:
        names = sorted({str(label) for label in train})
    if len(names) < 2:
        raise RecipeError(
            f"`label`: every training row has the label {names[0] if names else None!r}; a classifier needs "
            "rows of at least two classes"
        )
    if "test" in datasets and (i := unknown_label(datasets["test"]["label"], names)) is not None:
        test = datasets["test"]
        raise RecipeError(
            f"`label`: eval row {i + 1} ({_snippet(test[i]['text'])}) has label {test[i]['label']!r}, which no "
            f"training row has (classes: {', '.join(names)}); the model could never predict it: fix "
            "the label or add training rows of that class"
        )
    return names


def unknown_label(labels: Any, names: list[str]) -> int | None:
    """The index of the first label that is none of the classes `names`, or None."""
    return next((i for i, label in enumerate(labels) if str(label) not in names), None)


def _snippet(text: str, width: int = 40) -> str:
    return json.dumps(text if len(text) <= width else text[: width - 3] + "...")


def encode_rows(
    batch: dict[str, list], *, tokenizer: Any, label2id: dict[str, int], max_length: int | None
) -> dict:
    """Batched map fn: the text tokenised (with the tokenizer's special tokens, cut to `max_length`, as the data
    report counts it) and `labels`, the class ids. Padding is left to the collator, per batch."""
    encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
    encoded["labels"] = [label2id[str(label)] for label in batch["label"]]
    return encoded


# --- Metrics -------------------------------------------------------------------------------------------


def confusion_matrix(labels: Any, predictions: Any, classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): row = true label, column = predicted label."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def classification_metrics(confusion: np.ndarray, names: list[str]) -> dict[str, float]:
    """Accuracy, macro F1, and each class's precision, recall and F1 (`precision/<label>`, ...), from a confusion.

    A ratio with nothing to divide (no row predicted as, or labelled, a class) is 0, as scikit-learn's
    default; the macro F1 averages over the classes that occur as a label or a prediction (as
    scikit-learn does when not given the labels), so a class the eval rows lack does not count as a miss.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    hits, predicted, actual = np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    present = (predicted + actual) > 0
    metrics = {
        "accuracy": float(hits.sum() / confusion.sum()) if confusion.sum() else 0.0,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
    }
    for kind, values in zip(PER_CLASS, (precision, recall, f1), strict=True):
        metrics.update({f"{kind}/{name}": float(value) for name, value in zip(names, values, strict=True)})
    return metrics


class ConfusionMatrix(dict):
    """{true label: {predicted label: count}}, as the eval metrics hold it.

    A dict, so `eval_results.json` and `all_results.json` hold it as JSON; printed (the model card's
    metrics table) as one line: `true ham: 410 ham, 2 spam; true spam: 6 ham, 82 spam`.
    """

    @classmethod
    def of(cls, confusion: np.ndarray, names: list[str]) -> ConfusionMatrix:
        return cls(
            {
                true: dict(zip(names, map(int, row), strict=True))
                for true, row in zip(names, confusion, strict=True)
            }
        )

    def __str__(self) -> str:
        return "; ".join(
            f"true {true}: " + ", ".join(f"{count} {predicted}" for predicted, count in row.items())
            for true, row in self.items()
        )


def write_confusion(output_dir: Path, confusion: np.ndarray, names: list[str]) -> list[Path]:
    """confusion_matrix.json and, when matplotlib is installed, confusion_matrix.png in `output_dir`."""
    from alignment.eval_plots import NO_MATPLOTLIB, can_plot, plot_confusion

    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / CONFUSION_JSON
    content = {"labels": names, "rows": "true label", "columns": "predicted label",
               "matrix": [[int(n) for n in row] for row in confusion]}  # fmt: skip
    path.write_text(json.dumps(content, indent=2) + "\n")
    written = [path]
    if can_plot():
        written.append(plot_confusion(confusion, names, output_dir / CONFUSION_PNG))
    else:
        logger.info(f"{CONFUSION_PNG} not drawn: {NO_MATPLOTLIB}; {CONFUSION_JSON} has the numbers")
    logger.info(f"confusion matrix written to {', '.join(str(p) for p in written)}")
    return written


def predicted_classes(logits: Any, labels: Any) -> Any:
    """The class each row is given, instead of its logits: what the metrics read, K times less to gather."""
    return logits.argmax(dim=-1)


# --- A saved classifier on held-out rows (`alignment eval`) ----------------------------------------------


def saved_class_names(model_dir: str | Path) -> list[str]:
    """The class names of a saved classifier, in id order, read from its config.json (no weights loaded)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    id2label = config.get("id2label") or {}
    return [id2label[key] for key in sorted(id2label, key=int)]


def check_eval_labels(rows: list[dict], names: list[str], source: str) -> None:
    """Every row's label is one of the model's classes, or a one-line error naming the row (before loading)."""
    if (i := unknown_label([row["label"] for row in rows], names)) is not None:
        raise RecipeError(
            f"{source}: row {i + 1} ({_snippet(rows[i]['text'])}) has label {rows[i]['label']!r}, which the "
            f"classifier does not know (its classes: {', '.join(names)})"
        )


def evaluate_classifier(model_dir: str | Path, rows: list[dict], batch_size: int) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix of a saved classifier on
    `text`/`label` rows: the numbers its training run reports, on any held-out rows. Texts are cut to the
    model's positions, as the classify stage cuts them; the confusion matrix is written to MODEL_DIR/eval/."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignment.evaluation import eval_device

    names = saved_class_names(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    model.to(eval_device()).eval()
    limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None) or 10**9)
    predicted: list[int] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            texts = [row["text"] for row in rows[start : start + batch_size]]
            batch = tokenizer(texts, truncation=True, max_length=limit, padding=True, return_tensors="pt")
            predicted += model(**batch.to(model.device)).logits.argmax(-1).tolist()
    label2id = {name: i for i, name in enumerate(names)}
    confusion = confusion_matrix([label2id[str(row["label"])] for row in rows], predicted, len(names))
    write_confusion(Path(model_dir) / "eval", confusion, names)
    return {
        **classification_metrics(confusion, names),
        "confusion_matrix": str(ConfusionMatrix.of(confusion, names)),
    }


# --- Trainer -------------------------------------------------------------------------------------------


class ClassificationTrainer(Trainer):
    """transformers' Trainer on `text`/`label` rows, taking what TRL's trainers take (the gap: TRL has none).

    The model's `id2label` (set when it loaded, from `class_names`) numbers the labels; the rows are
    tokenised here and padded per batch (DataCollatorWithPadding); a `peft_config` wraps the model, as
    TRL's trainers do. Evaluation reports accuracy, macro F1, per-class precision/recall/F1 and, in the
    metrics `evaluate` returns, the confusion matrix, which is written to `output_dir` (JSON, PNG) by
    the evaluation after training. It is kept out of the step log: trackers take numbers.
    """

    def __init__(
        self,
        model: Any,
        args: ClassifyConfig,
        train_dataset: Any,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        from transformers import DataCollatorWithPadding

        self.class_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.confusion: np.ndarray | None = None
        encode = {
            "tokenizer": processing_class,
            "label2id": {name: i for i, name in enumerate(self.class_names)},
            "max_length": args.max_length,
        }

        def tokenised(rows: Any, name: str) -> Any:
            return fresh_map(rows, encode_rows, batched=True, fn_kwargs=encode, remove_columns=rows.column_names,
                            num_proc=args.dataset_num_proc, desc=f"Tokenising {name}")  # fmt: skip

        with args.main_process_first(desc="tokenising"):
            train_dataset = tokenised(train_dataset, "train")
            eval_dataset = tokenised(eval_dataset, "eval") if eval_dataset is not None else None
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        kwargs.setdefault("data_collator", DataCollatorWithPadding(processing_class))
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=self.score_predictions,
            preprocess_logits_for_metrics=predicted_classes,
            **kwargs,
        )

    def score_predictions(self, prediction: Any) -> dict[str, float]:
        """`compute_metrics`: the numbers from the confusion of the gathered predictions, kept for `evaluate`."""
        self.confusion = confusion_matrix(prediction.label_ids, prediction.predictions, len(self.class_names))
        return classification_metrics(self.confusion, self.class_names)

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict:
        self.confusion = None
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.confusion is not None:  # after the step log (numbers only) was written
            metrics[f"{metric_key_prefix}_confusion_matrix"] = ConfusionMatrix.of(
                self.confusion, self.class_names
            )
            if not self.is_in_train and self.is_world_process_zero():  # the evaluation after training
                write_confusion(Path(self.args.output_dir), self.confusion, self.class_names)
        return metrics

    def log_metrics(self, split: str, metrics: dict[str, Any]) -> None:
        """The Trainer's aligned table of numbers, then the confusion matrix, one row per true label."""
        numbers = {k: v for k, v in metrics.items() if not isinstance(v, ConfusionMatrix)}
        super().log_metrics(split, numbers)
        if not self.is_world_process_zero():
            return
        for key, matrix in metrics.items():
            if isinstance(matrix, ConfusionMatrix):
                width = max(len(str(n)) for row in matrix.values() for n in [*row, *row.values()])
                print(f"  {key} (rows: true label, columns: predicted)")
                print(f"  {'':<{width}}  " + "  ".join(f"{name:>{width}}" for name in matrix))
                for true, row in matrix.items():
                    print(f"  {true:<{width}}  " + "  ".join(f"{count:>{width}}" for count in row.values()))
