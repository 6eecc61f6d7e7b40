"""The classify stage: labels to class ids, the metrics, headerless TSV data, and a tiny spam classifier end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from alignment.classification import ConfusionMatrix, class_names, classification_metrics, confusion_matrix
from alignment.data.mixture import MixtureConfig, build_mixture
from alignment.data.probe import read_head
from alignment.data.sources import DatasetSource
from alignment.errors import RecipeError
from alignment.tiny.spam import SpamTaskConfig, generate_spam, write_tsv

from .conftest import QUICK, RECIPES, run_script

TINY_CLASSIFY = RECIPES / "tiny" / "classify" / "config.yaml"


def rows(labels: list, texts: list[str] | None = None) -> Dataset:
    return Dataset.from_dict({"text": texts or [f"message {i}" for i in range(len(labels))], "label": labels})


# --- Labels --------------------------------------------------------------------------------------------


def test_string_labels_are_sorted_into_ids_and_integer_labels_are_their_own_ids():
    assert class_names(DatasetDict(train=rows(["spam", "ham", "spam", "promo"]))) == ["ham", "promo", "spam"]
    assert class_names(DatasetDict(train=rows([2, 0, 1, 0]))) == ["0", "1", "2"]
    # eval labels may be a subset of the training ones
    assert class_names(DatasetDict(train=rows(["b", "a"]), test=rows(["a", "a"]))) == ["a", "b"]
    # the rows curation kept (a selection of the table), not every row the table holds
    assert class_names(DatasetDict(train=rows([0, 1, 7]).select([0, 1]))) == ["0", "1"]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            [0, 2, 0],
            r"^`label`: training row 2 \(\"message 1\"\) has label 2, but no row has 1: integer labels",
        ),
        ([0, -1, 1], r"^`label`: training row 2 \(\"message 1\"\) has label -1, which is negative"),
        (
            ["ham", "ham"],
            r"^`label`: every training row has the label 'ham'; a classifier needs rows of at least two",
        ),
    ],
    ids=["gap", "negative", "one-class"],
)
def test_bad_training_labels_are_refused_naming_the_row(labels, message):
    with pytest.raises(RecipeError, match=message) as refused:
        class_names(DatasetDict(train=rows(labels)))
    assert "\n" not in str(refused.value)


def test_an_eval_label_no_training_row_has_is_refused_naming_the_row():
    data = DatasetDict(train=rows(["ham", "spam"]), test=rows(["ham", "promo"], ["hi", "50% off today"]))
    with pytest.raises(RecipeError, match=r"^`label`: eval row 2 \(\"50% off today\"\) has label 'promo', which no "
                                          r"training row has \(classes: ham, spam\)"):  # fmt: skip
        class_names(data)


# --- Metrics -------------------------------------------------------------------------------------------


def test_metrics_of_a_hand_made_confusion():
    # rows: true a, b, c; columns: predicted. c never occurs: it does not count in the macro F1.
    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    labels = [0] * 6 + [1] * 5
    predictions = [0, 0, 0, 0, 0, 1] + [0, 0, 1, 1, 1]
    assert (confusion_matrix(labels, predictions, 3) == confusion).all()
    metrics = classification_metrics(confusion, ["a", "b", "c"])
    assert metrics == pytest.approx({
        "accuracy": 8 / 11,
        "precision/a": 5 / 7, "recall/a": 5 / 6, "f1/a": 10 / 13,
        "precision/b": 3 / 4, "recall/b": 3 / 5, "f1/b": 2 / 3,
        "precision/c": 0.0, "recall/c": 0.0, "f1/c": 0.0,
        "f1_macro": (10 / 13 + 2 / 3) / 2,
    })  # fmt: skip
    table = ConfusionMatrix.of(confusion, ["a", "b", "c"])
    assert json.loads(json.dumps(table)) == {"a": {"a": 5, "b": 1, "c": 0}, "b": {"a": 2, "b": 3, "c": 0},
                                             "c": {"a": 0, "b": 0, "c": 0}}  # fmt: skip
    assert str(table) == "true a: 5 a, 1 b, 0 c; true b: 2 a, 3 b, 0 c; true c: 0 a, 0 b, 0 c"


def test_every_metric_the_classifier_logs_can_pick_the_best_model():
    from alignment.recipe_checks import _classifier_metric

    names = ["eval_loss", *(f"eval_{k}" for k in classification_metrics(np.eye(2), ["ham", "spam"]))]
    assert all(_classifier_metric(name) for name in names), names
    assert _classifier_metric("accuracy") and _classifier_metric("f1/ham")
    assert not any(map(_classifier_metric, ["eval_acc", "f1", "precision/", "rewards/accuracies"]))


# --- Data: headerless TSV, as the SMS Spam Collection ships ----------------------------------------------


def test_a_headerless_tsv_is_read_whole_quotes_and_tabs_kept(tmp_path):
    sms = tmp_path / "sms.tsv"
    sms.write_text('ham\tGo until jurong point, "crazy".. Available\nspam\tFree entry\tin 2 a wkly comp\n\n'
                   'ham\t"Ok lar... Joking wif u oni...\n')  # fmt: skip
    mixture = MixtureConfig.from_dict({"datasets": [{"id": str(sms), "column_names": ["label", "text"]}]})
    data, reports, _ = build_mixture(mixture, "classify")
    assert data["train"].remove_columns("_source").to_list() == [
        {"label": "ham", "text": 'Go until jurong point, "crazy".. Available'},
        {"label": "spam", "text": "Free entry\tin 2 a wkly comp"},  # a tab inside the text stays in it
        {"label": "ham", "text": '"Ok lar... Joking wif u oni...'},  # a quote opens no multi-line field
    ]
    assert reports[0].rows_read == 3
    head = read_head(mixture.datasets[0], "train")  # the dry run's and the smoke run's reader: the same rows
    assert head.columns == ["label", "text"] and [r["text"] for r in head.rows] == data["train"]["text"]


def test_a_headerless_txt_with_integer_labels_types_them_like_a_csv(tmp_path):
    (tmp_path / "train.txt").write_text("1\tWIN cash now\n0\tsee you at 6\n")
    source = {"id": str(tmp_path / "train.txt"), "column_names": ["label", "text"]}
    data, _, _ = build_mixture(MixtureConfig.from_dict({"datasets": [source]}), "classify")
    assert data["train"]["label"] == [1, 0]


def test_headerless_faults_are_refused_in_one_line(tmp_path):
    short = tmp_path / "short.tsv"
    short.write_text("ham\thello\nspam\n")
    source = {"id": str(short), "column_names": ["label", "text"]}
    with pytest.raises(
        RecipeError, match=rf"^{short}:2: 1 field\(s\), but `column_names` names 2 \(label, text\)$"
    ):
        build_mixture(MixtureConfig.from_dict({"datasets": [source]}), "classify")
    with pytest.raises(RecipeError, match=rf"^{short}:2: 1 field"):  # the dry run's reader says the same
        read_head(DatasetSource(**source), "train")
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text('{"text": "hi", "label": "ham"}\n')
    with pytest.raises(RecipeError, match=r"`column_names` is for files without a header row"):
        build_mixture(
            MixtureConfig.from_dict({"datasets": [{"id": str(rows_file), "column_names": ["x"]}]}), "classify"
        )
    with pytest.raises(
        RecipeError, match=r"`dataset_mixture.datasets\[0\].column_names` must be a list of distinct"
    ):
        MixtureConfig.from_dict({"datasets": [{"id": str(short), "column_names": ["text", "text"]}]})


# --- The generated task ---------------------------------------------------------------------------------


def test_the_spam_task_is_deterministic_realistic_and_loses_no_row_to_curation(tmp_path):
    config = SpamTaskConfig(train=600, test=200)
    splits = generate_spam(config)
    assert splits == generate_spam(config)
    for split, expected in (("train", 600), ("test", 200)):
        labels = [row["label"] for row in splits[split]]
        assert len(labels) == expected and set(labels) == {"ham", "spam"}
        assert 0.15 <= labels.count("spam") / expected <= 0.30
        assert {"ham", "spam"} <= set(labels[:16])  # the smoke run reads the first 16 rows of each split
        assert max(len(row["text"]) for row in splits[split]) <= 120  # within the tiny model's 128 positions
    for split, part in splits.items():
        write_tsv(tmp_path / "spam" / f"{split}.tsv", part)
    mixture = MixtureConfig.from_dict({"datasets": [{"id": str(tmp_path / "spam"), "column_names": ["label", "text"]}],
                                       "test_split": "test"})  # fmt: skip
    _, reports, _ = build_mixture(mixture, "classify")
    assert [(r.role, r.rows_kept, r.duplicates, r.decontaminated) for r in reports] == [
        ("test", 200, 0, 0),
        ("train", 600, 0, 0),
    ]


# --- End to end -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_spam_classifier_learns_and_saves_its_labels(workdir):
    """The tiny recipe's model, trained for 40 of the recipe's 126 steps, classifies held-out texts far
    above the majority class (measured: 0.974 against 0.758); its saved config maps ids back to the labels,
    and reloading it gives the accuracy the run reported; the confusion matrix is in the metrics, as JSON,
    as a PNG and on the card."""
    out = workdir / "runs" / "classify"
    run_script("classify", TINY_CLASSIFY, *QUICK, "--output_dir", str(out), "--save_strategy", "no",
               "--max_steps", "40", cwd=workdir)  # fmt: skip
    results = json.loads((out / "eval_results.json").read_text())
    test = [line.split("\t", 1) for line in (workdir / "data/tiny/spam/test.tsv").read_text().splitlines()]
    majority = max(sum(label == c for label, _ in test) for c in ("ham", "spam")) / len(test)
    assert majority > 0.7
    assert results["eval_accuracy"] >= majority + 0.12, (results["eval_accuracy"], majority)
    assert results["eval_recall/spam"] > 0.6 and results["eval_f1_macro"] > 0.8, results
    confusion = results["eval_confusion_matrix"]
    assert sum(confusion["spam"].values()) == sum(label == "spam" for label, _ in test)
    assert json.loads((out / "confusion_matrix.json").read_text())["labels"] == ["ham", "spam"]
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert json.loads((out / "all_results.json").read_text())["eval_confusion_matrix"] == confusion

    from transformers import AutoConfig, AutoTokenizer

    config, tokenizer = AutoConfig.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert config.id2label == {0: "ham", 1: "spam"} and config.label2id == {"ham": 0, "spam": 1}
    assert config.pad_token_id == tokenizer.pad_token_id

    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    assert "A text classifier with 2 labels (ham, spam)" in card
    assert f"| eval_confusion_matrix | {ConfusionMatrix(confusion)} |" in card

    # `alignment eval` on the same held-out rows (the headerless file), reloaded from the folder, gives the
    # run's numbers.
    done = run_cli_eval(workdir, str(out), "--dataset", "data/tiny/spam", "--dataset_split", "test",
                        "--column_names", "label,text")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads((out / "eval" / "results.json").read_text())["tasks"]["classification"]
    assert scored["rows"] == len(test)
    assert scored["accuracy"] == pytest.approx(results["eval_accuracy"], abs=0.005)
    assert scored["f1_macro"] == pytest.approx(results["eval_f1_macro"], abs=0.01)
    assert json.loads((out / "eval" / "confusion_matrix.json").read_text())["labels"] == ["ham", "spam"]
    assert "| classification | accuracy |" in (out / "README.md").read_text()  # the card's eval section


def run_cli_eval(cwd, *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "alignment.cli", "eval", *args], cwd=cwd, capture_output=True,
                          text=True)  # fmt: skip


def test_an_unseen_eval_label_is_refused_before_the_model_loads(workdir, monkeypatch, capsys):
    import alignment.model

    from .test_bad_recipes import refusal, script_main

    monkeypatch.setattr(alignment.model, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.chdir(workdir)
    data = workdir / "promo"
    data.mkdir()
    (data / "train.tsv").write_text("ham\tsee you at 6\nspam\tWIN cash now\nham\ton my way\n")
    (data / "test.tsv").write_text("ham\tok\npromo\t2 for 1 pizza tonight\n")
    recipe = ["--dataset_mixture", json.dumps({"datasets": [{"id": "promo", "column_names": ["label", "text"]}],
                                                "test_split": "test"})]  # fmt: skip
    code, errors = refusal(
        script_main("classify"), [str(TINY_CLASSIFY), *recipe, "--output_dir", "runs/promo"], capsys
    )
    assert code == 2
    assert errors == [
        "error: `label`: eval row 2 (\"2 for 1 pizza tonight\") has label 'promo', which no training row has "
        "(classes: ham, spam); the model could never predict it: fix the label or add training rows of that class"
    ]


# --- Every tool that enumerates stages ----------------------------------------------------------------


def test_the_recipe_dry_runs_with_a_memory_estimate_for_a_score_head(workdir, monkeypatch):
    from alignment.check import plan
    from alignment.recipe import parse_recipe
    from alignment.target import LaunchTarget

    monkeypatch.chdir(workdir)
    recipe = parse_recipe("classify", [str(TINY_CLASSIFY), "--dry_run"])
    summary = plan(recipe, target=LaunchTarget(processes=1, distributed="single process"), memory=True)
    assert summary["stage"] == "classify" and summary["notes"] == []
    assert any("a score head" in line for line in summary["memory"]["assumptions"]), summary["memory"]


def test_a_classifier_is_no_pipeline_default_model_and_alignment_eval_checks_its_rows_before_loading(
    tmp_path,
):
    from alignment.eval_command import EvalRequest, check_request, model_kind
    from alignment.pipeline import is_policy

    assert not is_policy("classify") and not is_policy("rm") and is_policy("sft")
    folder = tmp_path / "classifier"
    folder.mkdir()
    config = {"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "ham", "1": "spam"}}
    (folder / "config.json").write_text(json.dumps(config))  # no weights: everything below is refused first
    assert model_kind(folder) == "classifier"
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [{"text": "see you at 6", "label": "ham"},
                                                            {"text": "2 for 1 pizza", "label": "promo"}]))  # fmt: skip
    with pytest.raises(RecipeError, match=r"rows.jsonl: row 2 \(\"2 for 1 pizza\"\) has label 'promo', which the "
                       r"classifier does not know \(its classes: ham, spam\)"):  # fmt: skip
        check_request(EvalRequest(str(folder), dataset=str(rows)))
    with pytest.raises(RecipeError, match=r"is a text classifier: it classifies --dataset rows \(text, label\) and "
                       "generates nothing"):  # fmt: skip
        check_request(EvalRequest(str(folder), dataset=str(rows), prompts=str(rows)))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(RecipeError, match=r"task classification needs a text classifier"):
        check_request(EvalRequest(str(folder), tasks=["classification"], dataset=str(rows)))
    with pytest.raises(RecipeError, match=r"--column_names is for the loss task, which this run leaves out: give "
                       "--dataset"):  # fmt: skip
        check_request(
            EvalRequest(str(folder), pairs=str(rows), tasks=["preference"], column_names="label,text")
        )


def test_the_stage_is_trained_by_transformers_trainer_with_our_config(away_from_the_checkout):
    from alignment.classification import ClassificationTrainer, ClassifyConfig
    from alignment.recipe import parse_recipe, stage_config_class
    from alignment.stages import stage, trl_attribute

    assert stage_config_class("classify") is ClassifyConfig
    assert trl_attribute(stage("classify").trainer) is ClassificationTrainer
    assert trl_attribute("SFTTrainer").__module__.startswith("trl.")  # TRL's names still resolve under trl
    recipe = parse_recipe("classify", [str(TINY_CLASSIFY), "--max_length", "64"])
    assert isinstance(recipe.training, ClassifyConfig) and recipe.training.max_length == 64
    with pytest.raises(RecipeError, match=r"`eval_generation_prompts`: a classifier generates nothing"):
        parse_recipe("classify", [str(TINY_CLASSIFY), "--eval_generation_prompts", "data/tiny/eval.jsonl"])
