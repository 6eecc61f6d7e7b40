"""The generation eval during training (`eval_generation_prompts`): exact match logged as the model learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.errors import RecipeError
from alignment.evaluation import exact_match, load_for_eval, read_jsonl
from alignment.generation_eval import _shard, generation_eval_callback
from alignment.recipe import parse_recipe

from .conftest import TINY_DPO, TINY_RM, TINY_SFT


@pytest.mark.slow
def test_exact_match_is_logged_at_start_every_n_steps_and_end_and_rises(sft_model, tiny_data):
    """The session SFT run (80 steps; the recipe evaluates every 50): logged at 0, 50 and 80, rising from 0,
    and the last value is what `alignment eval` gets from the saved model."""
    history = json.loads((sft_model / "trainer_state.json").read_text())["log_history"]
    points = [(e["step"], e["eval_exact_match"]) for e in history if "eval_exact_match" in e]
    assert [step for step, _ in points] == [0, 50, 80]
    assert points[0][1] == 0.0  # the random-init model answers nothing right
    assert points[-1][1] > points[0][1]
    skills = {key for e in history for key in e if key.startswith("eval_exact_match/")}
    assert skills == {"eval_exact_match/reverse", "eval_exact_match/upper", "eval_exact_match/sort",
                      "eval_exact_match/count"}  # fmt: skip
    model, tokenizer = load_for_eval(sft_model)
    assert (
        points[-1][1] == exact_match(model, tokenizer, read_jsonl(tiny_data / "data/tiny/eval.jsonl"))["all"]
    )
    assert sum("loss" in e and e["step"] == 50 for e in history) == 1  # its regular log line is kept


def test_shards_cover_every_row_once_with_equal_lengths():
    for n, world in [(5, 2), (40, 2), (7, 3), (1, 2), (8, 8)]:
        shards = [_shard(n, rank, world) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1  # as many generate calls on every rank (ZeRO-3 syncs them)
        assert sorted(set().union(*shards)) == list(range(n))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--eval_generation_steps", "0", "--eval_generation_prompts", "p.jsonl"],
         "`eval_generation_steps` is 0; it must be at least 1"),
        (["--eval_generation_max_rows", "0"], "`eval_generation_max_rows` is 0; it must be at least 1"),
    ],
)  # fmt: skip
def test_settings_are_refused_in_one_line_when_parsed(away_from_the_checkout, overrides, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe("sft", [str(TINY_SFT), *overrides])


def test_steps_without_prompts_are_refused(away_from_the_checkout):
    with pytest.raises(
        RecipeError, match="`eval_generation_steps` is set but `eval_generation_prompts` is not"
    ):
        parse_recipe("dpo", [str(TINY_DPO), "--eval_generation_steps", "10"])


def test_a_reward_model_is_refused_generation_eval(away_from_the_checkout):
    with pytest.raises(RecipeError, match="`eval_generation_prompts`: a reward model generates nothing"):
        parse_recipe("rm", [str(TINY_RM), "--eval_generation_prompts", "p.jsonl"])


def test_prompts_without_answers_are_refused_before_the_model_loads(away_from_the_checkout: Path):
    rows = [{"prompt": [{"role": "user", "content": "Reverse: abc"}], "answer": "cba"},
            {"prompt": [{"role": "user", "content": "Upper: abc"}]}]  # fmt: skip
    (away_from_the_checkout / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = parse_recipe("sft", [str(TINY_SFT), "--eval_generation_prompts", "p.jsonl"])
    with pytest.raises(RecipeError, match=r"`eval_generation_prompts` p.jsonl: row 1 has no `answer`"):
        generation_eval_callback(recipe, tokenizer=None)  # refused before the tokenizer is even used


def test_the_generation_prompts_are_an_eval_set_training_rows_are_decontaminated_against(
    tmp_path, monkeypatch
):
    """Named once as `eval_generation_prompts`, the file joins `decontaminate` (with a note); named in both,
    it is not read twice."""
    from .test_recipe import write

    monkeypatch.chdir(tmp_path)
    Path("prompts.jsonl").write_text(json.dumps({"prompt": "reverse abc", "answer": "cba"}) + "\n")
    recipe = parse_recipe(
        "sft", [write(tmp_path, eval_generation_prompts="prompts.jsonl", eval_strategy="no")]
    )
    assert recipe.mixture.decontaminate == ["prompts.jsonl"]
    assert any("checked against `eval_generation_prompts` (prompts.jsonl)" in note for note in recipe.notes)
    both = {"datasets": [{"id": "data/tiny/sft"}], "decontaminate": ["./prompts.jsonl"]}
    recipe = parse_recipe("sft", [write(tmp_path, eval_generation_prompts="prompts.jsonl", dataset_name=None,
                                        dataset_mixture=both, eval_strategy="no")])  # fmt: skip
    assert recipe.mixture.decontaminate == ["./prompts.jsonl"]
