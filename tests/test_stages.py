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

from alignment.evaluation import completion_logprobs, load_for_eval, preference_accuracy, read_jsonl
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


def text_loss(model_dir: Path | str, texts: list[str]) -> float:
    """Mean next-token loss per token over `texts` (each with EOS, as SFTTrainer trains on plain text)."""
    import torch

    model, tokenizer = load_for_eval(model_dir)
    total = count = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(
                text + tokenizer.eos_token, return_tensors="pt", add_special_tokens=False
            ).input_ids
            total += model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


@dataclass
class PreferenceScores:
    """A model's preferences on the held-out pairs (data/tiny/dpo/test.jsonl, never trained on)."""

    accuracy: float  # share of pairs with log p(chosen) > log p(rejected)
    count_accuracy: float  # the same on the count pairs: the skill the SFT demonstrations got wrong
    chosen_logp: float  # mean log p of the chosen (correct) answers


def preference_scores(model_dir: Path | str, pairs: list[dict]) -> PreferenceScores:
    model, tokenizer = load_for_eval(model_dir)
    counts = [p for p in pairs if p["prompt"][0]["content"].startswith("count ")]
    chosen = [completion_logprobs(model, tokenizer, p["prompt"], p["chosen"]) for p in pairs]
    return PreferenceScores(
        accuracy=preference_accuracy(model, tokenizer, pairs),
        count_accuracy=preference_accuracy(model, tokenizer, counts),
        chosen_logp=sum(chosen) / len(chosen),
    )


def assert_preferences_improved(before: PreferenceScores, after: PreferenceScores) -> None:
    """Better on the held-out pairs as a whole, and much better on the miscounts SFT imitated.

    Measured on the session's SFT model (80 steps): 0.76 of all pairs and 0.48 of the count pairs; after
    20 steps of each stage 0.835-0.855 and 0.74-0.80, no skill falling by more than a pair or two.
    """
    assert after.accuracy >= before.accuracy + 0.05, (before, after)
    assert after.count_accuracy >= before.count_accuracy + 0.2, (before, after)


@pytest.fixture(scope="module")
def held_out_pairs(tiny_data: Path) -> list[dict]:
    return read_jsonl(tiny_data / "data" / "tiny" / "dpo" / "test.jsonl")


@pytest.fixture(scope="module")
def sft_scores(sft_model: Path, held_out_pairs: list[dict]) -> PreferenceScores:
    return preference_scores(sft_model, held_out_pairs)


def test_cpt_packs_text_and_lowers_the_held_out_loss(workdir, monkeypatch, tiny_data):
    """Continued pretraining is for modelling text: its held-out next-token loss must fall far below the
    random base model's (~ln(vocabulary)), and the rows must be packed (more tokens per step than 16
    whole texts could hold)."""
    texts = [row["text"] for row in read_jsonl(tiny_data / "data" / "tiny" / "cpt" / "test.jsonl")]
    base = text_loss(tiny_data / "data" / "tiny" / "model", texts)
    steps = 20
    out = train("cpt", TINY / "cpt" / "config.yaml", workdir, monkeypatch, "--max_steps", str(steps))
    trained = text_loss(out, texts)
    assert base > 4.0  # random init: about ln(len(vocabulary))
    assert trained < 0.7 * base, (base, trained)
    final_eval = json.loads((out / "eval_results.json").read_text())
    assert final_eval["eval_loss"] == pytest.approx(trained, rel=0.1)  # bfd isolates texts: same loss packed
    _, tokenizer = load_for_eval(out)
    longest = max(len(tokenizer(text).input_ids) + 1 for text in texts)  # + EOS
    tokens_per_step = [e for e in log_history(out) if "num_tokens" in e][-1]["num_tokens"] / steps
    assert tokens_per_step > 16 * longest, (tokens_per_step, longest)  # 16 rows a step, ~2 texts a row


def test_kto_from_labelled_answers_ranks_held_out_pairs_better(
    workdir, monkeypatch, sft_model, sft_scores, held_out_pairs
):
    """KTO never sees a pair, only single answers labelled good or bad; its job is to make the good kind
    likelier and the bad kind less likely. Preference accuracy on held-out pairs (prompts it never saw)
    measures exactly that, and most on the count answers the SFT model learnt wrong; KTO's own held-out
    rewards must separate the two labels as well."""
    out = train("kto", TINY / "kto" / "config.yaml", workdir, monkeypatch, "--model_name_or_path",
                str(sft_model), "--max_steps", "20")  # fmt: skip
    assert_preferences_improved(sft_scores, preference_scores(out, held_out_pairs))
    final_eval = json.loads((out / "eval_results.json").read_text())
    assert final_eval["eval_rewards/chosen"] > final_eval["eval_rewards/rejected"]


def test_orpo_raises_the_chosen_answers_and_their_margin_at_once(
    workdir, monkeypatch, sft_model, sft_scores, held_out_pairs
):
    """ORPO is SFT and preference in one stage, with no reference model: the held-out chosen answers must
    become likelier (its NLL term) and be ranked above the rejected ones more often (its odds-ratio term)."""
    out = train("orpo", TINY / "orpo" / "config.yaml", workdir, monkeypatch, "--model_name_or_path",
                str(sft_model), "--max_steps", "20")  # fmt: skip
    after = preference_scores(out, held_out_pairs)
    assert_preferences_improved(sft_scores, after)
    assert after.chosen_logp > sft_scores.chosen_logp, (sft_scores, after)


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
