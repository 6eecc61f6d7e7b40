"""The reward-model stage: the tiny recipe's score head on the session's SFT model, judged on held-out pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.evaluation import pair_skill, read_jsonl, reward_accuracy
from alignment.tiny.task import (
    TinyTaskConfig,
    generate_rm_pairs,
    generate_task,
    plausible_mistakes,
    solve,
    wrong_letter_answers,
)

from .conftest import TINY_RM, run_script


def pairs_of(root: Path, name: str) -> list[dict]:
    return read_jsonl(root / "data" / "tiny" / name)


# ---- The reward model's pairs (no training) -----------------------------------


def test_plausible_mistakes_are_every_mistake_of_each_kind_once():
    assert plausible_mistakes("reverse", "abcd") == ["cdba", "dbca", "dcab"]  # right: dcba
    assert plausible_mistakes("sort", "dcaa") == ["acad", "aadc"]  # aacd: swapping its a's is no mistake
    assert plausible_mistakes("upper", "abc") == ["aBC", "AbC", "ABc"]
    assert plausible_mistakes("count", "abcde") == ["6", "4", "7", "3"]  # the annotator's n+1, and more


def test_wrong_letter_answers_keep_the_shape_and_change_one_letter():
    """The answers RL found when the reward model had not seen them: sorted (or reversed, or capitals), one
    letter not the prompt's."""
    assert wrong_letter_answers("sort", "dcaz") == ["bcdz", "addz", "acez", "acda"]  # right: acdz
    assert wrong_letter_answers("upper", "abz") == ["BBZ", "ACZ", "ABA"]
    assert wrong_letter_answers("count", "abc") == []
    for skill, word in (("reverse", "hello"), ("sort", "qwer"), ("upper", "word")):
        right = solve(skill, word)
        for wrong in wrong_letter_answers(skill, word):
            assert len(wrong) == len(right) and sum(a != b for a, b in zip(wrong, right, strict=True)) == 1


def test_rm_pairs_are_new_prompts_and_leave_the_task_splits_alone():
    config = TinyTaskConfig(sft_train=400, dpo_train=200, eval_prompts=40, sft_test=40, dpo_test=40)
    splits = generate_task(config)
    before = json.dumps(splits)
    pairs = generate_rm_pairs(splits, config.seed, prompts=100)
    assert json.dumps(splits) == before  # nothing drawn from or added to the task's splits
    prompts = {p["prompt"][0]["content"] for p in pairs}
    assert len(prompts) == 100
    task_words = {row["prompt"][0]["content"].split()[1] for row in splits["dpo_test"] + splits["eval"]}
    assert not {prompt.split()[1] for prompt in prompts} & task_words
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    per_skill = {skill: sum(pair_skill(p) == skill for p in pairs) for skill in ("count", "upper")}
    assert per_skill["count"] == 4 * 25  # n+-1 and n+-2 for each of its 25 prompts
    upper_prompts = {p["prompt"][0]["content"] for p in pairs if pair_skill(p) == "upper"}
    letters = sum(len(prompt.split()[1]) for prompt in upper_prompts)
    assert per_skill["upper"] == 2 * letters  # each letter left lowercase, and each letter replaced
    assert generate_rm_pairs(splits, config.seed, prompts=100) == pairs  # seeded


def test_pair_skill_reads_the_prompts_first_word():
    assert pair_skill({"prompt": [{"role": "user", "content": "sort dcba"}], "chosen": []}) == "sort"
    assert pair_skill({"prompt": "count abc", "chosen": "3"}) == "count"
    assert pair_skill({"prompt": [{"role": "user", "content": "hello there"}]}) is None
    assert pair_skill({"skill": "upper", "prompt": "x"}) == "upper"


# ---- Training (the session's reward model) ------------------------------------


@pytest.mark.slow
def test_reward_model_ranks_held_out_pairs(tiny_data, sft_model, rm_model):
    import torch

    pairs = pairs_of(tiny_data, "dpo/test.jsonl")
    torch.manual_seed(0)
    before = reward_accuracy(sft_model, pairs)  # the SFT model under a fresh score head
    after = reward_accuracy(rm_model, pairs)
    # Measured on this fixture (deterministic: the head is seeded): all 0.585 -> 0.81. What a 2-layer
    # model's last token learns to check: a letter left lowercase (upper 0.36 -> 1.00), the count against
    # the word's length (0.86 -> 0.98), an out-of-order pair, partly (sort 0.52 -> 0.66; 0.86 in the
    # demo's full run). A swap in a reversed word it does not (chance: 0.60), which caps "all" near 0.87.
    assert after["all"] >= 0.75 and after["all"] >= before["all"] + 0.15, (before, after)
    assert after["upper"] >= before["upper"] + 0.5 and after["count"] >= 0.9 and after["sort"] >= 0.6, after
    # TRL's own evaluation of the same 200 pairs agrees with ours (same template, same strict ">")
    trl_eval = json.loads((rm_model / "eval_results.json").read_text())
    assert trl_eval["eval_accuracy"] == pytest.approx(after["all"], abs=0.006)


@pytest.mark.slow
def test_saved_reward_model_reloads_as_a_scorer_with_its_template(rm_model):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm_model, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(rm_model)
    assert model.config.num_labels == 1 and model.score.out_features == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id  # the head finds the last real token by it
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "count abc"}, {"role": "assistant", "content": "3"}], tokenize=False
    )
    assert text == "<|im_start|>user\ncount abc<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n"
    assert not (rm_model / "generation_config.json").exists()  # a scorer generates nothing
    card = ModelCard.load(rm_model / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "rm" in card.data.tags
    assert "A reward model (`runs/tiny/sft` with a one-output score head)" in card.text


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_trains_nothing(tiny_data, sft_model):
    done = run_script("rm", TINY_RM, "--dry_run", "--output_dir", "runs/tiny/rm-dry-run", cwd=tiny_data)
    assert "stage: rm" in done.stdout and "- data/tiny/rm [train]" in done.stdout
    assert "global_batch_size: 32" in done.stdout
    assert not (tiny_data / "runs" / "tiny" / "rm-dry-run").exists()
