"""lm-evaluation-harness runs: the shipped tiny task scores as `alignment.evaluation.exact_match` does, the
local GSM8K and MMLU variants run offline on files written here, and bad names and files are refused
before any model loads. Real lm-eval runs throughout (hf backend, CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from alignment.errors import RecipeError
from alignment.evaluation import exact_match, generate_answers, load_for_eval, read_jsonl
from alignment.harness import (
    check_harness,
    data_overrides,
    model_args,
    pick_backend,
    read_task,
    run_harness,
    shipped_tasks,
)

GSM8K_ROWS = [
    {
        "question": "Tom has 3 apples and buys 4 more. How many apples?",
        "answer": "3 + 4 = <<3+4=7>>7\n#### 7",
    },
    {"question": "A box holds 6 pens. How many pens in 2 boxes?", "answer": "2 * 6 = <<2*6=12>>12\n#### 12"},
    {
        "question": "Sara had 10 dollars and spent 3. How much is left?",
        "answer": "10 - 3 = <<10-3=7>>7\n#### 7",
    },
    {
        "question": "There are 5 birds and 2 fly away. How many remain?",
        "answer": "5 - 2 = <<5-2=3>>3\n#### 3",
    },
    {"question": "Ann reads 2 pages a day. How many in 4 days?", "answer": "2 * 4 = <<2*4=8>>8\n#### 8"},
]
MMLU_ROWS = [
    {"question": "2 + 2 =", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "Which is prime?", "subject": "elementary_mathematics", "choices": ["4", "6", "7", "9"], "answer": 2},
    {"question": "Water boils at (C)", "subject": "high_school_physics", "choices": ["100", "50", "0", "9"], "answer": 0},
]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def samples(path: Path) -> list[dict]:
    return sorted(read_jsonl(path), key=lambda s: (s["filter"], s["doc_id"]))


def test_each_shipped_task_is_named_as_its_file():
    """The harness knows shipped names from file names (no 14 s index of lm-eval's registry): hold them to it."""
    assert {"tiny_exact_match", "gsm8k_local", "mmlu_local"} <= set(shipped_tasks())
    for name in shipped_tasks():
        assert read_task(name)["task"] == name


@pytest.mark.slow
def test_tiny_task_scores_as_the_librarys_exact_match(sft_model, tiny_data, tmp_path, monkeypatch):
    """Same prompts (the chat template with a generation prompt), same greedy replies, row by row, so the same
    exact match overall and per skill; the task's default file is data/tiny/eval.jsonl under the cwd."""
    monkeypatch.chdir(tiny_data)
    rows = read_jsonl(tiny_data / "data" / "tiny" / "eval.jsonl")[:40]
    scores = run_harness(str(sft_model), ["tiny_exact_match"], limit=40, samples_dir=str(tmp_path))
    score = scores["tiny_exact_match"]

    model, tokenizer = load_for_eval(sft_model)
    ours = exact_match(model, tokenizer, rows)
    assert score["rows"] == 40
    assert score["exact_match"] == ours["all"]
    assert 0 < ours["all"] < 1  # a partly trained model: rows of both kinds are compared
    for skill in ("reverse", "upper", "sort", "count"):
        assert score[f"exact_match_{skill}"] == ours[skill]
    logged = samples(tmp_path / "tiny_exact_match.jsonl")
    replies = generate_answers(model, tokenizer, [r["prompt"] for r in rows])
    assert [s["filtered_resps"][0].strip() for s in logged] == replies
    assert logged[0]["arguments"][0][0] == tokenizer.apply_chat_template(
        rows[0]["prompt"], tokenize=False, add_generation_prompt=True
    )


@pytest.mark.slow
def test_an_adapter_runs_on_its_base(sft_model, tiny_data, tmp_path, monkeypatch):
    """A fresh LoRA adapter (B = 0) goes to lm-eval as `peft=` on the base its config names: same score."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tiny_data)
    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(sft_model)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(sft_model).save_pretrained(adapter)
    args = model_args(str(adapter), "hf")
    assert args["peft"] == str(adapter) and args["pretrained"] == str(sft_model)
    scores = run_harness(str(adapter), ["tiny_exact_match"], limit=20)
    model, tokenizer = load_for_eval(sft_model)
    rows = read_jsonl(tiny_data / "data" / "tiny" / "eval.jsonl")[:20]
    assert scores["tiny_exact_match"]["exact_match"] == exact_match(model, tokenizer, rows)["all"]


@pytest.mark.slow
def test_local_gsm8k_and_mmlu_run_offline(sft_model, tmp_path):
    """lm-eval's GSM8K and MMLU prompts and metrics on local files (no Hub): the tiny model never writes
    `#### N`, so strict-match is 0 on every row; MMLU's accuracy is the share of rows whose right letter
    has the highest log-likelihood."""
    gsm8k = write_jsonl(tmp_path / "gsm8k_test.jsonl", GSM8K_ROWS)
    mmlu = write_jsonl(tmp_path / "mmlu_test.jsonl", MMLU_ROWS)
    out = tmp_path / "samples"
    scores = run_harness(
        str(sft_model), ["gsm8k_local", "mmlu_local"], limit=4, num_fewshot=0, max_gen_toks=16,
        task_data={"gsm8k_local": str(gsm8k), "mmlu_local": str(mmlu)}, samples_dir=str(out),
    )  # fmt: skip
    assert scores["gsm8k_local"]["rows"] == 4 and scores["mmlu_local"]["rows"] == 3
    assert scores["gsm8k_local"]["exact_match/strict-match"] == 0.0
    assert 0.0 <= scores["gsm8k_local"]["exact_match/flexible-extract"] <= 1.0
    strict = [s for s in samples(out / "gsm8k_local.jsonl") if s["filter"] == "strict-match"]
    assert [s["doc"]["question"] for s in strict] == [r["question"] for r in GSM8K_ROWS[:4]]
    assert all(s["filtered_resps"] == ["[invalid]"] for s in strict)  # no `#### N` in any reply
    logged = samples(out / "mmlu_local.jsonl")
    best = [max(range(4), key=lambda i, s=s: s["resps"][i][0][0]) for s in logged]
    right = [b == row["answer"] for b, row in zip(best, MMLU_ROWS, strict=True)]
    assert scores["mmlu_local"]["acc"] == pytest.approx(sum(right) / 3)
    # lm-eval 0.4.13 puts the task's description in a system turn under a chat template
    assert logged[0]["arguments"][0][0].startswith(
        "<|im_start|>system\nThe following are multiple choice questions (with answers) about "
        "elementary mathematics."
    )


def test_missing_data_files_are_refused_by_name(away_from_the_checkout, tmp_path):
    with pytest.raises(RecipeError, match=r"tiny_exact_match.*data/tiny/eval\.jsonl does not exist"):
        check_harness(["tiny_exact_match"])  # its default file, relative to the cwd
    with pytest.raises(RecipeError, match=r"gsm8k_local.*nowhere\.jsonl does not exist"):
        check_harness(["gsm8k_local"], {"gsm8k_local": str(tmp_path / "nowhere.jsonl")})
    with pytest.raises(RecipeError, match=r"task `gsm8k_local` reads a local file: give it as task_data"):
        check_harness(["gsm8k_local"])
    with pytest.raises(RecipeError, match=r"task_data names `gsm8k`.*did you mean `gsm8k_local`"):
        check_harness(["gsm8k_local"], {"gsm8k": "test.jsonl"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match=r"no `test\*` file .* in .*empty"):
        check_harness(["gsm8k_local"], {"gsm8k_local": str(tmp_path / "empty")})


def test_a_folder_gives_each_split_its_file(tmp_path):
    """A folder like the Hub's `openai/gsm8k` `main/`: test and train files, shots from train; a lone test
    file draws the shots from the test split."""
    for name in ("test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "README.md"):
        (tmp_path / name).write_text("")
    found = data_overrides("gsm8k_local", str(tmp_path))
    assert found["dataset_path"] == "parquet" and "fewshot_split" not in found
    assert found["dataset_kwargs"]["data_files"] == {
        "test": str(tmp_path / "test-00000-of-00001.parquet"),
        "train": str(tmp_path / "train-00000-of-00001.parquet"),
    }
    single = data_overrides("gsm8k_local", str(write_jsonl(tmp_path / "rows.jsonl", GSM8K_ROWS)))
    assert single["dataset_path"] == "json" and single["fewshot_split"] == "test"


def test_missing_lm_eval_or_vllm_is_refused_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what find_spec reports for a module not installed
    with pytest.raises(RecipeError, match=r'pip install -e "\.\[eval\]"'):
        check_harness(["tiny_exact_match"])
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(RecipeError, match=r"backend vllm: vLLM is not installed"):
        pick_backend("vllm")
    assert pick_backend("auto") == "hf"  # no vLLM (and here no GPU)


@pytest.mark.slow
def test_unknown_task_is_refused_by_name_and_registry_names_pass(tiny_data, monkeypatch):
    """A name that is neither shipped nor lm-eval's (its registry indexed once, ~14 s here) is refused;
    lm-eval's own names (read from the Hub at run time) pass."""
    monkeypatch.chdir(tiny_data)
    check_harness(["gsm8k", "mmlu", "ifeval", "tiny_exact_match"])
    with pytest.raises(
        RecipeError, match=r"unknown lm-eval task `tiny_exact_macth`.*did you mean `tiny_exact_match`"
    ):
        check_harness(["gsm8k", "tiny_exact_macth"])
