"""End to end on the tiny task: continued pretraining, KTO, ORPO and SimPO each move the metric they are for.

Each test trains its tiny recipe for a few steps, in this process (`run_script_here`: the libraries
are imported once, not once per run), and scores held-out data the run never saw. The preference
stages start from the session's SFT model, which ranks only ~3/4 of the held-out pairs right (it
learnt a sloppy annotator's miscounts), so a preference stage has room to show what it does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from alignment.evaluation import (
    completion_logprobs,
    completion_logprobs_batch,
    load_for_eval,
    pair_skill,
    preference_wins,
    read_jsonl,
)
from alignment.smoke import run_script_here

from .conftest import QUICK, RECIPES

pytestmark = pytest.mark.slow

TINY = RECIPES / "tiny"


def train(stage: str, recipe: Path, workdir: Path, monkeypatch, *overrides: str) -> Path:
    """Run scripts/run_<stage>.py on `recipe` from `workdir`, in this process; return its output_dir."""
    monkeypatch.chdir(workdir)
    out = workdir / "runs" / stage
    status = run_script_here(stage, [str(recipe), *QUICK, "--output_dir", str(out), "--save_strategy", "no",
                                     *overrides])  # fmt: skip
    assert status == 0, f"{stage} exited {status}"
    return out


def log_history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def evaluations(output_dir: Path) -> tuple[dict, dict]:
    """The held-out evaluation before the first step (`--eval_on_start true`) and the one after the last."""
    first = next(e for e in log_history(output_dir) if "eval_loss" in e and e["step"] == 0)
    return first, json.loads((output_dir / "eval_results.json").read_text())


@dataclass
class PreferenceScores:
    """How a model ranks the held-out pairs (data/tiny/dpo/test.jsonl, never trained on): the share of
    pairs with log p(chosen) > log p(rejected), ties wrong, as `alignment.evaluation.preference_accuracy`."""

    accuracy: float
    count_accuracy: float  # on the count pairs: the skill the SFT demonstrations got wrong


def preference_scores(model_dir: Path | str, pairs: list[dict]) -> PreferenceScores:
    model, tokenizer = load_for_eval(model_dir)
    wins = preference_wins(model, tokenizer, pairs)
    counts = [win for win, pair in zip(wins, pairs, strict=True) if pair_skill(pair) == "count"]
    return PreferenceScores(accuracy=sum(wins) / len(wins), count_accuracy=sum(counts) / len(counts))


def assert_preferences_improved(before: PreferenceScores, after: PreferenceScores) -> None:
    """Better on the held-out pairs as a whole, and much better on the miscounts SFT imitated.

    Measured on the session's SFT model (80 steps): 0.76 of all pairs and 0.48 of the count pairs; after
    the steps each test trains, 0.835-0.855 and 0.74-0.80, no skill falling by more than a pair or two.
    """
    assert after.accuracy >= before.accuracy + 0.05, (before, after)
    assert after.count_accuracy >= before.count_accuracy + 0.2, (before, after)


@pytest.fixture(scope="module")
def held_out_pairs(tiny_data: Path) -> list[dict]:
    return read_jsonl(tiny_data / "data" / "tiny" / "dpo" / "test.jsonl")


@pytest.fixture(scope="module")
def sft_scores(sft_model: Path, held_out_pairs: list[dict]) -> PreferenceScores:
    """The SFT model's scores; on a few pairs, the batched scoring must equal one sequence at a time."""
    model, tokenizer = load_for_eval(sft_model)
    few = held_out_pairs[:6]
    batched = completion_logprobs_batch(model, tokenizer, [p["prompt"] for p in few], [p["rejected"] for p in few],
                                        batch_size=4)  # fmt: skip
    alone = [completion_logprobs(model, tokenizer, p["prompt"], p["rejected"]) for p in few]
    assert batched == pytest.approx(alone, abs=1e-4)
    return preference_scores(sft_model, held_out_pairs)


def test_cpt_packs_text_and_lowers_the_held_out_loss(workdir, monkeypatch, tiny_data):
    """Continued pretraining is for modelling text: the held-out next-token loss must fall far below the
    random base model's (~ln(vocabulary), evaluated before the first step), and the rows must be packed:
    more tokens a step than the batch's rows could hold one text each."""
    steps, batch = 20, 8
    out = train("cpt", TINY / "cpt" / "config.yaml", workdir, monkeypatch, "--max_steps", str(steps),
                "--per_device_train_batch_size", str(batch), "--eval_on_start", "true")  # fmt: skip
    base, trained = evaluations(out)
    assert base["eval_loss"] > 4.0, base
    assert trained["eval_loss"] < 0.7 * base["eval_loss"], (base["eval_loss"], trained["eval_loss"])
    _, tokenizer = load_for_eval(out)
    texts = [row["text"] for row in read_jsonl(tiny_data / "data" / "tiny" / "cpt" / "train.jsonl")]
    longest = max(len(tokenizer(text).input_ids) + 1 for text in texts)  # + the EOS TRL appends
    tokens_per_step = [e for e in log_history(out) if "num_tokens" in e][-1]["num_tokens"] / steps
    assert tokens_per_step > batch * longest, (tokens_per_step, longest)  # bfd: ~2 texts a row


def test_kto_from_labelled_answers_ranks_held_out_pairs_better(
    workdir, monkeypatch, sft_model, sft_scores, held_out_pairs
):
    """KTO never sees a pair, only single answers labelled good or bad; its job is to make the good kind
    likelier and the bad kind less likely. Preference accuracy on held-out pairs (prompts it never saw)
    measures exactly that, and most on the count answers the SFT model learnt wrong; KTO's own held-out
    rewards must separate the two labels as well."""
    out = train("kto", TINY / "kto" / "config.yaml", workdir, monkeypatch, "--model_name_or_path",
                str(sft_model), "--max_steps", "14")  # fmt: skip
    assert_preferences_improved(sft_scores, preference_scores(out, held_out_pairs))
    final_eval = json.loads((out / "eval_results.json").read_text())
    assert final_eval["eval_rewards/chosen"] > final_eval["eval_rewards/rejected"]


def test_orpo_tunes_and_aligns_in_one_stage(workdir, monkeypatch, sft_model, sft_scores, held_out_pairs):
    """ORPO is SFT and preference in one stage, with no reference model: its NLL term (TRL's ORPO takes it
    over prompt and chosen answer) must fall on the held-out pairs, and its odds-ratio term must rank
    them better."""
    out = train("orpo", TINY / "orpo" / "config.yaml", workdir, monkeypatch, "--model_name_or_path",
                str(sft_model), "--max_steps", "14", "--eval_on_start", "true")  # fmt: skip
    assert_preferences_improved(sft_scores, preference_scores(out, held_out_pairs))
    before, after = evaluations(out)
    assert after["eval_nll_loss"] < 0.8 * before["eval_nll_loss"], (before, after)


def test_simpo_ranks_held_out_pairs_better_without_a_reference(
    workdir, monkeypatch, sft_model, sft_scores, held_out_pairs
):
    """SimPO (CPOTrainer with `loss_type: simpo` and no behaviour-cloning term) only widens the margin
    between chosen and rejected answers' average log-probabilities, with no reference model: held-out
    preference accuracy is its objective, measured on pairs it never saw."""
    out = train("cpo", TINY / "cpo" / "config_simpo.yaml", workdir, monkeypatch, "--model_name_or_path",
                str(sft_model), "--max_steps", "20")  # fmt: skip
    assert_preferences_improved(sft_scores, preference_scores(out, held_out_pairs))
    recorded = json.loads((out / "run_recipe.json").read_text())["values"]
    assert (recorded["loss_type"], recorded["cpo_alpha"]) == ("simpo", 0.0)
    final_eval = json.loads((out / "eval_results.json").read_text())
    assert final_eval["eval_nll_loss"] == 0.0  # cpo_alpha 0: the SimPO loss alone, no NLL term
