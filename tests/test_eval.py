"""`alignment eval`: each metric against a hand computation, the files it writes, and its refusals.

The hand computations use a model whose next-token distribution is uniform (its output layer zeroed):
every token then costs exactly ln V, so the loss is ln V and the perplexity V on any text, and a
completion's log-probability is -(its tokens) x ln V, so the shorter answer of a pair always wins.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.errors import RecipeError
from alignment.eval_command import EvalRequest, check_request, run_eval
from alignment.eval_report import CARD_BEGIN
from alignment.evaluation import exact_match, load_for_eval, read_jsonl


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def uniform_model(tiny_data: Path, tmp_path_factory) -> Path:
    """The tiny model with its output layer zeroed (logits all 0: a uniform next token), and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_data / "data" / "tiny" / "model"
    model = AutoModelForCausalLM.from_pretrained(source)
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    torch.nn.init.zeros_(model.lm_head.weight)
    out = tmp_path_factory.mktemp("uniform")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def vocab_size(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_loss_and_perplexity_of_a_uniform_model_are_ln_v_and_v(uniform_model, tmp_path):
    texts = ["reverse abc = cba.", "sort dcba = abcd. count xy = 2."]
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts])
    results = run_eval(EvalRequest(str(uniform_model), dataset=str(data)))
    loss = results["tasks"]["loss"]
    v = vocab_size(uniform_model)
    assert loss["loss"] == pytest.approx(math.log(v), abs=1e-5)
    assert loss["perplexity"] == pytest.approx(v, rel=1e-4)
    _, tokenizer = load_for_eval(uniform_model)
    # every token but the first of each text, plus the EOS TRL appends to plain text
    assert loss["tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert (loss["rows"], loss["scored"]) == (2, "every token of the text")


def test_conversation_loss_scores_only_the_assistant_turns(uniform_model, tmp_path):
    conversations = [
        {"messages": user("upper ab") + assistant("AB")},
        {"messages": user("count abc") + assistant("3") + user("count ab") + assistant("2")},
    ]
    data = write_jsonl(tmp_path / "chats.jsonl", conversations)
    loss = run_eval(EvalRequest(str(uniform_model), dataset=str(data)))["tasks"]["loss"]
    assert loss["loss"] == pytest.approx(math.log(vocab_size(uniform_model)), abs=1e-5)
    # each answer's characters (one token each) and the template's end of turn and newline after it
    assert loss["tokens"] == (2 + 2) + (1 + 2) + (1 + 2)
    assert loss["scored"] == "the assistant turns"


def test_preference_accuracy_counts_pairs_built_right_and_wrong(uniform_model, tmp_path):
    """Under a uniform model the shorter answer wins: 3 pairs whose chosen answer is shorter are ranked right,
    2 with a longer chosen answer wrong, and a tie is wrong. Against itself as the reference every margin is
    0: DPO's implicit reward ranks nothing right."""
    pairs = [
        {"prompt": user(f"count {w}"), "chosen": assistant(c), "rejected": assistant(r)}
        for w, c, r in [("ab", "2", "12"), ("abc", "3", "333"), ("x", "1", "11"), ("xy", "22", "2"),
                        ("xyz", "333", "3"), ("q", "1", "2")]
    ]  # fmt: skip
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    by_logp = run_eval(EvalRequest(str(uniform_model), pairs=str(data)))["tasks"]["preference"]
    assert (by_logp["all"], by_logp["count"], by_logp["rows"]) == (0.5, 0.5, 6)
    against_itself = run_eval(EvalRequest(str(uniform_model), pairs=str(data), reference=str(uniform_model)))
    assert against_itself["tasks"]["preference"]["all"] == 0.0


def test_an_adapter_folder_is_merged_into_its_base(uniform_model, tmp_path):
    """A fresh LoRA adapter (B = 0) changes nothing: evaluated through its base, the loss is still ln V."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(uniform_model)
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(uniform_model).save_pretrained(adapter)
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": "upper abc = ABC."}])
    loss = run_eval(EvalRequest(str(adapter), dataset=str(data)))["tasks"]["loss"]
    assert loss["loss"] == pytest.approx(math.log(vocab_size(uniform_model)), abs=1e-5)


@pytest.mark.slow
def test_eval_command_writes_results_table_and_card_section(tiny_data, sft_model, tmp_path):
    """`alignment eval` on a trained stage: the same exact match as the library's, results.json, results.md,
    and one evaluation section in the card, replaced (not stacked) by a second evaluation."""
    import shutil

    model_dir = tmp_path / "sft"
    shutil.copytree(sft_model, model_dir)
    card_before = (model_dir / "README.md").read_text()
    prompts = tiny_data / "data" / "tiny" / "eval.jsonl"
    command = [sys.executable, "-m", "alignment.cli", "eval", str(model_dir), "--prompts", str(prompts),
               "--pairs", str(tiny_data / "data" / "tiny" / "dpo")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((model_dir / "eval" / "results.json").read_text())
    model, tokenizer = load_for_eval(sft_model)
    assert results["tasks"]["exact_match"]["all"] == exact_match(model, tokenizer, read_jsonl(prompts))["all"]
    assert results["tasks"]["preference"]["rows"] == 200  # the DPO test split of the session's task
    table = (model_dir / "eval" / "results.md").read_text()
    assert "| exact_match | all |" in table and "| preference | count |" in table
    assert "| exact_match | all |" in done.stdout
    run_eval(EvalRequest(str(model_dir), prompts=str(prompts)))  # a second evaluation, in this process
    card = (model_dir / "README.md").read_text()
    assert (model_dir / "eval" / "training.png").is_file() and "![Training curves](eval/training.png)" in card
    assert card.startswith(card_before.rstrip("\n"))  # the training run's card is kept as it was
    assert card.count(CARD_BEGIN) == 1 and "| preference |" not in card  # the second evaluation replaced it


def test_inputs_are_refused_in_one_line_before_any_model_loads(uniform_model, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    questions = write_jsonl(tmp_path / "questions.jsonl", [{"prompt": "count abc"}])
    cases = [
        (EvalRequest(str(tmp_path / "nowhere")), "model folder .*nowhere not found"),
        (EvalRequest(str(tmp_path)), "holds no model"),
        (EvalRequest(str(uniform_model)), "nothing to evaluate: give --dataset"),
        (EvalRequest(str(uniform_model), tasks=["loss"], pairs=str(pairs)), "task loss needs --dataset"),
        (EvalRequest(str(uniform_model), tasks=["bleu"]), "--tasks: unknown task 'bleu'"),
        (EvalRequest(str(uniform_model), dataset=str(pairs), reference=str(uniform_model)),
         "--reference is for the preference task"),
        (EvalRequest(str(uniform_model), dataset=str(tmp_path / "missing.jsonl")), "missing.jsonl"),
        (EvalRequest(str(uniform_model), prompts=str(questions)), "questions.jsonl: row 0 has no `answer`"),
    ]  # fmt: skip
    for request, message in cases:
        with pytest.raises(RecipeError, match=message):
            check_request(request)


def test_a_reward_model_only_ranks_pairs(tmp_path):
    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(RecipeError, match="is a reward model: it scores --pairs"):
        check_request(EvalRequest(str(folder), prompts="eval.jsonl"))


def test_cli_refuses_an_unknown_flag_in_one_line(uniform_model):
    done = subprocess.run([sys.executable, "-m", "alignment.cli", "eval", str(uniform_model), "--datset", "x"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error:") and "--datset" in done.stderr


def test_training_plots_show_what_the_run_logged(tmp_path):
    """A loss panel always; reward margins and accuracies only for a run that logged them (preference)."""
    from alignment.eval_plots import plot_stages, plot_training, series, training_panels

    sft = [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5}, {"step": 20, "eval_loss": 1.6}]
    dpo = [{"step": 5, "loss": 0.69, "rewards/margins": 0.1, "rewards/accuracies": 0.5},
           {"step": 10, "loss": 0.4, "rewards/margins": 1.2, "rewards/accuracies": 0.9}]  # fmt: skip
    assert [title for title, _ in training_panels(sft)] == ["loss"]
    assert [title for title, _ in training_panels(dpo)] == [
        "loss", "reward margin (chosen - rejected)", "preference accuracy"
    ]  # fmt: skip
    assert series(sft, "eval_loss") == ([20], [1.6])
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": dpo}))
    png = plot_training(tmp_path, tmp_path / "training.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training(tmp_path / "nowhere", tmp_path / "x.png") is None
    chart = plot_stages({"sft": {"exact_match/all": 0.7}, "rm": {"rm_accuracy/all": 0.8}, "total": {"wall_s": 3}},
                        tmp_path / "stages.png", ["exact_match/all", "rm_accuracy/all"])  # fmt: skip
    assert chart.read_bytes()[:4] == b"\x89PNG"


def test_judge_tasks_grade_the_models_answers_and_count_unreadable_replies(uniform_model, tmp_path):
    """`--questions` with a judge endpoint: graded 1-10 and against a baseline in both orders, each number in
    results.json and the table, each judge reply in eval/<task>_records.jsonl."""
    import shutil

    from .test_judge import scripted_judge

    def judge(prompt: str) -> str:  # position-biased in pairs; no grade for the question saying `skip`
        if "[Answer A]" in prompt:
            return "The first. [[A]]"
        return "I cannot grade this." if "skip" in prompt else "Fine. Rating: [[7]]"

    model_dir = tmp_path / "model"
    shutil.copytree(uniform_model, model_dir)
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "reverse abc"}, {"question": "skip me"},
                                                  {"prompt": user("upper xy")}])  # fmt: skip
    baseline = write_jsonl(tmp_path / "base.jsonl", [{"answer": "cba"}, {"answer": "-"}, {"answer": "XY"}])
    with scripted_judge(judge) as endpoint:
        results = run_eval(EvalRequest(str(model_dir), questions=str(questions), judge_url=endpoint["url"],
                                       judge_model="scripted", baseline=str(baseline), max_new_tokens=4))  # fmt: skip
    assert len(endpoint["requests"]) == 3 + 2 * 3  # one grade per question, each pair in both orders
    graded, pairs = results["tasks"]["judge"], results["tasks"]["judge_pairwise"]
    assert (graded["mean_rating"], graded["rated"], graded["unparseable"], graded["rows"]) == (7.0, 2, 1, 3)
    assert (pairs["win_rate"], pairs["inconsistent"], pairs["judged"]) == (0.5, 3, 3)
    records = (model_dir / "eval" / "judge_records.jsonl").read_text().splitlines()
    assert [json.loads(line)["rating"] for line in records] == [7, None, 7]
    table = (model_dir / "eval" / "results.md").read_text()
    for line in (
        "| judge | mean_rating | 7 |",
        "| judge | unparseable | 1 |",
        "| judge_pairwise | win_rate | 50.0% |",
    ):
        assert line in table


def test_judge_options_are_refused_in_one_line(uniform_model, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "reverse abc"}])
    url = "http://127.0.0.1:9/v1"
    cases = [
        (EvalRequest(str(uniform_model), questions=str(questions), baseline=str(questions)),
         "--baseline is for the judge_pairwise task"),
        (EvalRequest(str(uniform_model), questions=str(questions), judge_url=url), "--judge_model is required"),
        (EvalRequest(str(uniform_model), questions=str(questions), judge_url="localhost:8000", judge_model="j"),
         "must look like http"),
        (EvalRequest(str(uniform_model), tasks=["judge"], judge_url=url, judge_model="j"),
         "task judge needs --questions and --judge_url"),
        (EvalRequest(str(uniform_model), questions=str(tmp_path / "none.jsonl"), judge_url=url, judge_model="j"),
         "none.jsonl"),
        (EvalRequest(str(uniform_model), questions=str(questions), judge_url=url, judge_model="j", judge_max_tokens=0),
         "--judge_max_tokens is 0; it must be at least 1"),
    ]  # fmt: skip
    for request, message in cases:
        with pytest.raises(RecipeError, match=message):
            check_request(request)


@pytest.mark.slow
def test_harness_task_scores_as_exact_match_does(tiny_data, sft_model, tmp_path, monkeypatch):
    """`--harness tiny_exact_match` (lm-eval, the shipped task on data/tiny/eval.jsonl) next to `--prompts` on
    the same rows: the same share; each row's reply under eval/lm_eval/."""
    import shutil

    model_dir = tmp_path / "sft"
    shutil.copytree(sft_model, model_dir)
    monkeypatch.chdir(tiny_data)  # the shipped task reads data/tiny/eval.jsonl from here
    results = run_eval(EvalRequest(str(model_dir), harness="tiny_exact_match", prompts="data/tiny/eval.jsonl",
                                   max_rows=20, card=False))  # fmt: skip
    ours, harness = results["tasks"]["exact_match"], results["tasks"]["lm_eval/tiny_exact_match"]
    assert harness["rows"] == ours["rows"] == 20
    assert harness["exact_match"] == ours["all"] and harness["exact_match_count"] == ours["count"]
    assert harness["source"] == "data/tiny/eval.jsonl"
    assert len((model_dir / "eval" / "lm_eval" / "tiny_exact_match.jsonl").read_text().splitlines()) == 20
    assert "| lm_eval/tiny_exact_match | exact_match |" in (model_dir / "eval" / "results.md").read_text()


def test_harness_options_are_refused_in_one_line(uniform_model, away_from_the_checkout):
    cases = [
        (EvalRequest(str(uniform_model), harness="tiny_exact_match"), "--harness: task `tiny_exact_match`: its data file data/tiny/eval.jsonl does not exist"),
        (EvalRequest(str(uniform_model), harness="gsm8k_local", task_data=["gsm8k_local"]), "--task_data 'gsm8k_local': give NAME=PATH"),
        (EvalRequest(str(uniform_model), harness="gsm8k_local", task_data=["gsm8k_lokal=x.jsonl"]), "did you mean `gsm8k_local`"),
        (EvalRequest(str(uniform_model), prompts="p.jsonl", task_data=["gsm8k_local=x.jsonl"]), "--task_data is for --harness tasks"),
        (EvalRequest(str(uniform_model), harness="gsm8k_local", num_fewshot=-1), "--num_fewshot is -1"),
    ]  # fmt: skip
    for request, message in cases:
        with pytest.raises(RecipeError, match=message):
            check_request(request)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("judge_model", "gpt", "--judge_model is for the judge task"), ("num_fewshot", 5, "--num_fewshot is for the harness task"),
     ("pairs_split", "test", "--pairs_split is for the preference task"),
     ("judge_max_tokens", 64, "--judge_max_tokens is for the judge task")],
)  # fmt: skip
def test_an_option_whose_task_does_not_run_is_refused_not_ignored(
    uniform_model, tmp_path, option, value, message
):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": user("upper ab"), "answer": "AB"}])
    request = EvalRequest(str(uniform_model), prompts=str(prompts), **{option: value})
    with pytest.raises(RecipeError, match=message):
        check_request(request)


@pytest.mark.slow
def test_several_models_are_compared_each_on_what_it_can_do(uniform_model, rm_model, tiny_data, tmp_path):
    """A language model and a reward model side by side: the reward model ranks the pairs only (said so in the
    note), each model gets its own eval/ folder, and the comparison is one row per model."""
    import shutil

    from alignment.eval_compare import compare_models

    models = [
        shutil.copytree(uniform_model, tmp_path / "uniform"),
        shutil.copytree(rm_model, tmp_path / "rm"),
    ]
    data = tiny_data / "data" / "tiny"
    requests = [EvalRequest(str(m), prompts=str(data / "eval.jsonl"), pairs=str(data / "dpo"), max_rows=10)
                for m in models]  # fmt: skip
    results = compare_models(requests, str(tmp_path / "compared"), "uniform,rm")
    assert results["uniform"]["tasks"].keys() == {"preference", "exact_match"}
    assert results["rm"]["tasks"].keys() == {"preference"} and "reward model" in results["rm"]["note"]
    assert results["rm"]["tasks"]["preference"]["ranked_by"] == "reward model score"
    assert (models[1] / "eval" / "results.json").is_file()
    table = (tmp_path / "compared" / "results.md").read_text().splitlines()
    assert table[0] == "| model | preference/all | preference/reverse | preference/upper | preference/sort | " \
                       "preference/count | exact_match/all | exact_match/reverse | exact_match/upper | " \
                       "exact_match/sort | exact_match/count | note |"  # fmt: skip
    assert table[3].startswith("| rm | ") and table[3].count(" - |") == 5  # no exact match for a reward model
    assert (tmp_path / "compared" / "stages.png").is_file()

    # without pairs, nothing applies to the reward model: left out, and said so
    only_prompts = [EvalRequest(str(m), prompts=str(data / "eval.jsonl"), max_rows=10) for m in models]
    results = compare_models(only_prompts, str(tmp_path / "again"), None)
    assert results["rm"]["tasks"] == {} and "not evaluated" in results["rm"]["note"]
    with pytest.raises(RecipeError, match="--names 'a': give 2 distinct names"):
        compare_models(only_prompts, str(tmp_path / "again"), "a")
