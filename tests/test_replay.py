"""Replay in an SFT mixture: plain text trained with a language-modelling loss beside the conversations.

The token ids and labels are compared with TRL's own tokenisation of the same rows (conversations
with assistant-only loss, text as language modelling), the rows are counted in the report and the
card, a text source is refused outside sft and cpt, and a tiny SFT with replay (recipes/tiny/sft/
config_replay.yaml, from the random-init model) trains and lowers the held-out text perplexity that SFT
without replay leaves high.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignment.data.mixture import MixtureConfig, build_mixture
from alignment.data.prepare import prepare_data
from alignment.data.probe import probe_mixture
from alignment.data.replay import tokenize_batch, trainer_args
from alignment.data.report import REPORT_FILE
from alignment.errors import RecipeError
from alignment.model import load_tokenizer
from alignment.recipe import parse_recipe
from tests.conftest import QUICK, RECIPES, TINY_SFT, run_script

TINY_REPLAY = RECIPES / "tiny" / "sft" / "config_replay.yaml"
REPLAY = {"id": "data/tiny/cpt", "split": "train", "format": "text"}
END = "<|im_end|>"  # the tiny template's end of turn, trained with each answer (and its newline)


def replay_recipe(folder: Path, samples: int | None = 100) -> Path:
    """recipes/tiny/sft/config_replay.yaml from the random-init model (the session has no CPT model), with
    `samples` rows of the cpt text as replay (None: its text source left out)."""
    recipe = yaml.safe_load(TINY_REPLAY.read_text())
    sources = recipe["dataset_mixture"]["datasets"]
    [text] = [source for source in sources if source.get("format") == "text"]
    assert {key: text[key] for key in REPLAY} == REPLAY
    if samples is None:
        sources.remove(text)
    else:
        text["samples"] = samples
    recipe["model_name_or_path"] = "data/tiny/model"
    path = folder / f"sft-replay-{samples}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def tokenizer(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    return load_tokenizer(parse_recipe("sft", [str(TINY_SFT)]))


def trl_tokenised(workdir: Path, tokenizer, rows: list[dict], assistant_only_loss: bool) -> list[dict]:
    """TRL 1.16's SFTTrainer's own preparation of `rows` (no truncation): its input_ids and labels."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(workdir / "trl"), assistant_only_loss=assistant_only_loss, max_length=None,
        bf16=False, use_cpu=True, report_to="none", activation_checkpointing=False,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(workdir / "data" / "tiny" / "model")
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    return trainer.train_dataset.select_columns(["input_ids", "labels"]).to_list()


def ours(tokenizer, batch: dict[str, list], assistant_only_loss: bool = True) -> list[dict]:
    out = tokenize_batch(
        batch, tokenizer=tokenizer, assistant_only_loss=assistant_only_loss, chat_template=None,
        eos_token=tokenizer.eos_token,
    )  # fmt: skip
    return [{"input_ids": i, "labels": y} for i, y in zip(out["input_ids"], out["labels"], strict=True)]


# --- Tokens and labels -----------------------------------------------------------------------------------


def test_conversations_are_tokenised_and_masked_exactly_as_trl_does(workdir, tokenizer):
    user, assistant = "user", "assistant"
    conversations = [
        [{"role": user, "content": "reverse abc"}, {"role": assistant, "content": "cba"}],
        [{"role": "system", "content": "be brief"}, {"role": user, "content": "upper ab"},
         {"role": assistant, "content": "AB"}, {"role": user, "content": "count abcd"},
         {"role": assistant, "content": "4"}],
    ] + [row["messages"] for row in read_jsonl(workdir / "data" / "tiny" / "sft" / "train.jsonl")[:40]]  # fmt: skip
    rows = [{"messages": messages, "tools": None} for messages in conversations]
    mine = ours(
        tokenizer, {"messages": conversations, "tools": [None] * len(rows), "text": [None] * len(rows)}
    )
    assert mine == trl_tokenised(workdir, tokenizer, rows, assistant_only_loss=True)
    # exactly the assistant turns are labels, each with its end of turn (and the newline after it)
    labelled = [tokenizer.decode([t for t in row["labels"] if t != -100]) for row in mine[:2]]
    assert labelled == [f"cba{END}\n", f"AB{END}\n4{END}\n"]
    # without assistant_only_loss, every token (TRL's language-modelling case for conversations)
    everything = ours(tokenizer, {"messages": conversations[:1], "tools": [None]}, assistant_only_loss=False)
    assert everything[0]["labels"] == everything[0]["input_ids"]


def test_text_rows_are_tokenised_as_trl_does_with_every_token_a_label(workdir, tokenizer):
    texts = [row["text"] for row in read_jsonl(workdir / "data" / "tiny" / "cpt" / "train.jsonl")[:20]]
    texts.append(f"already ended{tokenizer.eos_token}")  # TRL appends EOS only where it is missing
    mine = ours(tokenizer, {"text": texts, "messages": [[]] * len(texts), "tools": [None] * len(texts)})
    assert mine == trl_tokenised(workdir, tokenizer, [{"text": t} for t in texts], assistant_only_loss=False)
    for row, text in zip(mine, texts, strict=True):
        assert row["labels"] == row["input_ids"]  # every token, its EOS included
        assert row["input_ids"][-1] == tokenizer.eos_token_id
        assert row["input_ids"].count(tokenizer.eos_token_id) == 1
        assert tokenizer.decode(row["input_ids"]).startswith(text[:10])


# --- The mixture and its report -----------------------------------------------------------------------


def test_replay_rows_are_mixed_in_tokenised_and_counted_apart(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    recipe = parse_recipe("sft", [str(replay_recipe(workdir, 100)), "--output_dir", "runs/replay"])
    data, report = prepare_data(recipe, load_tokenizer(recipe))
    assert set(data) == {"train", "test"}
    assert data["train"].column_names == ["input_ids", "labels"]  # tokenised here: TRL keeps the labels
    conversations = sum(s.rows_trained for s in report.sources if s.role == "train" and s.format != "text")
    train = report.splits["train"]
    assert (train.replay_rows, train.rows_trained) == (100, conversations + 100) == (100, len(data["train"]))
    # a text row has every token a label, a conversation never its first (the `<|im_start|>` of a turn)
    full = [row for row in data["train"]["labels"] if -100 not in row]
    assert len(full) == 100
    assert report.splits["test"].replay_rows == 200  # the text source's own test split, scored beside
    replayed = next(s for s in report.sources if s.role == "train" and s.format == "text")
    assert (replayed.rows_read, replayed.rows_kept, replayed.subsampled) == (2000, 100, 1900)
    line = f"{conversations} conversations, 100 replay text rows trained with a language-modelling loss"
    assert line in report.table()
    assert any(line in card for card in report.card_lines())
    assert any("| `data/tiny/cpt` | train | text (replay) |" in card for card in report.card_lines())
    saved = json.loads((workdir / "runs" / "replay" / REPORT_FILE).read_text())
    assert saved["splits"]["train"]["replay_rows"] == 100


def test_without_a_text_source_sft_data_stays_as_trl_takes_it(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    recipe = parse_recipe("sft", [str(replay_recipe(workdir, None)), "--output_dir", "runs/plain"])
    data, report = prepare_data(recipe, load_tokenizer(recipe))
    assert data["train"].column_names == ["messages", "tools"]  # TRL tokenises conversations itself
    assert report.splits["train"].replay_rows == 0
    assert "replay" not in report.table()
    assert trainer_args(recipe.training, data["train"]) is recipe.training


def test_trl_is_told_the_labels_are_made_without_changing_the_recipe(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    recipe = parse_recipe("sft", [str(replay_recipe(workdir, 10)), "--output_dir", "runs/args"])
    data, _ = prepare_data(recipe, load_tokenizer(recipe))
    told = trainer_args(recipe.training, data["train"])
    assert told.assistant_only_loss is False and recipe.training.assistant_only_loss is True
    assert told.learning_rate == recipe.training.learning_rate


def test_alignment_data_writes_replay_rows_as_text(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    recipe = parse_recipe("sft", [str(replay_recipe(workdir, 5)), "--output_dir", "runs/data"])
    data, report = prepare_data(recipe, load_tokenizer(recipe), keep_all=True)  # what `alignment data` shows
    rows = data["train"].to_list()
    replay = [row for row in rows if row["text"] is not None]
    assert len(replay) == 5 and all(row["messages"] == [] and row["tools"] is None for row in replay)
    assert all(row["messages"] for row in rows if row["text"] is None)
    assert report.splits["train"].replay_rows == 5


def test_the_dry_run_names_the_replay_source(workdir, monkeypatch):
    from alignment.check import plan

    monkeypatch.chdir(workdir)
    summary = plan(parse_recipe("sft", [str(replay_recipe(workdir, 80))]))
    assert "data/tiny/cpt [train] 80 samples (replay text)" in summary["datasets"]
    assert "data/tiny/sft [train]" in summary["datasets"]


# --- Refusals -------------------------------------------------------------------------------------------


def test_a_text_source_outside_sft_and_cpt_is_refused_in_one_line_naming_it(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    mixture = MixtureConfig.from_dict({"datasets": [{"id": "data/tiny/dpo"}, {**REPLAY, "samples": 10}]})
    for refuse in (lambda: build_mixture(mixture, "dpo"), lambda: probe_mixture(mixture, "dpo")):
        with pytest.raises(RecipeError) as error:
            refuse()
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith("dataset data/tiny/cpt: format `text` is not read by stage dpo")
        assert "(it is for cpt, sft as replay)" in message
    cpt = MixtureConfig.from_dict({"datasets": [{"id": "data/tiny/cpt", "format": "text"}]})
    assert len(build_mixture(cpt, "cpt")[0]["train"]) == 2000  # text is the cpt stage's own data


def test_an_sft_text_source_must_say_it_is_replay(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    mixture = MixtureConfig.from_dict({"datasets": [{"id": "data/tiny/sft"}, {"id": "data/tiny/cpt"}]})
    with pytest.raises(RecipeError) as error:
        probe_mixture(mixture, "sft")
    assert str(error.value) == (
        "dataset data/tiny/cpt: cannot tell the format of columns [text] for stage sft; these look like "
        "plain text (stage cpt); set `format:` to one of messages, sharegpt, alpaca, prompt_completion "
        "(or to `text` to mix plain text in as replay, trained with a language-modelling loss)"
    )


def test_an_sft_mixture_of_replay_text_alone_is_refused(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    mixture = MixtureConfig.from_dict({"datasets": [REPLAY]})
    for refuse in (lambda: build_mixture(mixture, "sft"), lambda: probe_mixture(mixture, "sft")):
        with pytest.raises(RecipeError, match="every source is plain text"):
            refuse()


# --- End to end: a tiny SFT with replay trains, and holds the text perplexity down ---------------------


@pytest.fixture(scope="module")
def replay_run(tiny_data: Path, tmp_path_factory) -> Path:
    """A tiny SFT with 400 replay texts, 30 steps from the random-init model (~20 s on 2 idle cores)."""
    work = tmp_path_factory.mktemp("replay")
    (work / "data").symlink_to(tiny_data / "data")
    out = work / "runs" / "replay"
    run_script(
        "sft", replay_recipe(work, 400), *QUICK, "--max_steps", "30", "--save_strategy", "no",
        "--eval_generation_steps", "1000", "--output_dir", str(out), cwd=work,
    )  # fmt: skip
    return out


def test_tiny_sft_with_replay_trains_and_reports_its_replay_rows(replay_run):
    report = json.loads((replay_run / REPORT_FILE).read_text())
    assert report["splits"]["train"]["replay_rows"] == 400
    metrics = json.loads((replay_run / "train_results.json").read_text())
    assert metrics["train_samples"] == report["splits"]["train"]["rows_trained"]
    history = json.loads((replay_run / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0] - 0.5  # it learnt: text and answers both
    card = (replay_run / "README.md").read_text()
    assert "400 replay text rows trained with a language-modelling loss" in card


def test_replay_gives_lower_held_out_text_perplexity_than_sft_without(replay_run, sft_model, tiny_data):
    """The session's SFT model (80 steps, no replay) against the replay run: the held-out text is modelled
    far better by the one that saw text, in fewer steps."""
    from alignment import evaluation

    texts = [row["text"] for row in read_jsonl(tiny_data / "data" / "tiny" / "cpt" / "test.jsonl")[:100]]
    perplexity = {}
    for name, out in (("plain", sft_model), ("replay", replay_run)):
        model, tokenizer = evaluation.load_for_eval(out)
        perplexity[name] = evaluation.text_loss(model, tokenizer, texts)["perplexity"]
    assert perplexity["replay"] < 0.5 * perplexity["plain"], perplexity
