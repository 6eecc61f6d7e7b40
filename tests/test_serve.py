"""`alignment serve`: the tiny model served by the real command and called as an application would, with
the official `openai` client, plain and streaming; the key, the refusals, an adapter, the end of a turn."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from alignment.errors import RecipeError
from alignment.serve import (
    BadRequest,
    ServedModel,
    backend,
    parse_request,
    prepare_models,
    rename_events,
    vllm_command,
)

KEY = "test-key-not-secret"
PROMPTS = ("reverse abcd", "upper xyz", "count ab")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(sft_model: Path) -> Iterator[str]:
    """`alignment serve SFT_MODEL --api_key KEY` in a process of its own, as a user starts it; its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "alignment.cli", "serve", str(sft_model), "--port", str(port),
               "--name", "tiny-sft", "--api_key", KEY]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"`alignment serve` did not come up:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.3)
    yield url + "/v1"
    process.terminate()
    process.wait(timeout=30)


def own_answers(model_dir: Path, prompts: list[list[dict]], max_new_tokens: int = 12) -> list[str]:
    """The model's greedy replies through `generate_answers`, in this process: what the server must send."""
    from alignment.evaluation import generate_answers, load_for_eval

    model, tokenizer = load_for_eval(model_dir)
    return generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)


def post(url: str, body: dict, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(
        url + "/chat/completions", json.dumps(body).encode(), headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_the_openai_client_gets_the_models_own_replies_plain_and_streamed(served, sft_model):
    from openai import OpenAI

    client = OpenAI(base_url=served, api_key=KEY)
    assert [m.id for m in client.models.list()] == ["tiny-sft"]
    chats = [[{"role": "user", "content": text}] for text in PROMPTS]
    # a second turn: the whole conversation goes through the chat template
    chats.append(
        [*chats[0], {"role": "assistant", "content": "dcba"}, {"role": "user", "content": "upper ab"}]
    )
    expected = own_answers(sft_model, chats)
    assert len(set(expected)) == len(expected)  # distinct replies: a swapped or cached one would show

    for chat, answer in zip(chats, expected, strict=True):
        reply = client.chat.completions.create(model="tiny-sft", messages=chat, max_tokens=12, temperature=0)
        assert (reply.model, reply.choices[0].message.content) == ("tiny-sft", answer)
        assert reply.choices[0].finish_reason == "stop"  # ended at the end-of-turn token, not the limit
        usage = reply.usage
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

        stream = client.chat.completions.create(model="tiny-sft", messages=chat, max_tokens=12, temperature=0,
                                                stream=True)  # fmt: skip
        chunks = list(stream)
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert "".join(pieces).strip() == answer
        assert len(pieces) >= min(2, len(answer))  # token by token, not one block
        assert {c.model for c in chunks} == {"tiny-sft"}
        assert chunks[-1].choices[0].finish_reason == "stop"

    # cut at the limit: exactly max_tokens new tokens, and finish_reason says so
    reply = client.chat.completions.create(model="tiny-sft", messages=[{"role": "user", "content": "upper abcdefgh"}],
                                           max_completion_tokens=2, temperature=0)  # fmt: skip
    assert (reply.choices[0].finish_reason, reply.usage.completion_tokens) == ("length", 2)


@pytest.mark.slow
def test_the_key_is_required_on_every_route_but_health(served):
    import openai

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served, api_key="wrong").models.list()
    status, reply = post(served, {"messages": [{"role": "user", "content": "reverse ab"}]}, key=None)
    assert status == 401 and "API key" in reply["error"]["message"]
    with urllib.request.urlopen(served.removesuffix("/v1") + "/health") as response:
        assert response.status == 200


@pytest.mark.slow
def test_the_server_refuses_bad_requests_naming_the_field(served):
    user = [{"role": "user", "content": "reverse ab"}]
    for body, status, param in [
        ({"model": "tiny-sft"}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": user, "temperature": 3}, 400, "temperature"),
        ({"messages": user, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": user, "n": 2}, 400, "n"),
        ({"messages": user, "logprobs": True}, 400, "logprobs"),
        ({"messages": user, "stream": "yes"}, 400, "stream"),
        ({"messages": user, "model": "gpt-4"}, 404, "model"),
    ]:
        code, reply = post(served, body)
        assert (code, reply["error"]["param"]) == (status, param), reply
        assert param.split("[")[0] in reply["error"]["message"]


@pytest.mark.slow
def test_an_adapter_is_merged_and_replies_stop_at_the_end_of_turn(sft_model, tmp_path):
    """An adapter folder is served merged into its base; a generation config that names another stop token
    (a base model's document end) still stops replies at the chat template's end of turn."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.serve import BackgroundServer, build_app

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(sft_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"))  # fmt: skip
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)  # a fresh LoRA (B = 0) leaves the replies as the SFT model's
    AutoTokenizer.from_pretrained(sft_model).save_pretrained(adapter)

    other_stop = tmp_path / "other-stop"
    shutil.copytree(sft_model, other_stop, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((other_stop / "generation_config.json").read_text())
    config["eos_token_id"] = 1  # not the end-of-turn token
    (other_stop / "generation_config.json").write_text(json.dumps(config))

    prompts = [[{"role": "user", "content": text}] for text in PROMPTS]
    expected = own_answers(sft_model, prompts)
    models = prepare_models([str(adapter), str(other_stop)], ["adapter", "other-stop"])
    assert models[0].folder != str(adapter.resolve())  # served from a merged copy
    server = BackgroundServer(build_app(models))
    try:
        for name in ("adapter", "other-stop"):
            for prompt, answer in zip(prompts, expected, strict=True):
                status, reply = post(
                    server.url, {"model": name, "messages": prompt, "max_tokens": 12}, key=None
                )
                assert status == 200, reply
                assert reply["choices"][0]["message"]["content"] == answer
                assert reply["choices"][0]["finish_reason"] == "stop"
    finally:
        server.stop()


def test_requests_are_checked_before_generation():
    models = {"a": ServedModel("a", "/m/a"), "b": ServedModel("b", "/m/b")}
    user = [{"role": "user", "content": "hi"}]
    assert parse_request({"model": "b", "messages": user, "n": 1, "stream": True}, models).name == "b"
    with pytest.raises(BadRequest, match="'c' is not served here; this server serves 'a', 'b'"):
        parse_request({"model": "c", "messages": user}, models)
    with pytest.raises(BadRequest, match="None is not served"):  # two models: the client must name one
        parse_request({"messages": user}, models)
    assert parse_request({"messages": user}, {"a": models["a"]}).name == "a"
    with pytest.raises(BadRequest, match="`top_p` is 0; it must be a number above 0"):
        parse_request({"model": "a", "messages": user, "top_p": 0}, models)
    with pytest.raises(BadRequest, match="`seed` is True; it must be an integer"):
        parse_request({"model": "a", "messages": user, "seed": True}, models)


def test_streamed_events_are_renamed_one_by_one_even_several_to_a_chunk():
    one = {"id": "1", "model": "/tmp/m", "choices": [{"delta": {"content": "a\n\nb"}}]}
    two = {"id": "1", "model": "/tmp/m", "choices": [{"delta": {"content": "c"}}]}
    chunk = f"data: {json.dumps(one)}\n\ndata: {json.dumps(two)}\n\n"
    renamed = rename_events(chunk, "tiny")
    events = [json.loads(e.removeprefix("data: ")) for e in renamed.split("\n\n") if e]
    assert events == [one | {"model": "tiny"}, two | {"model": "tiny"}] and renamed.endswith("\n\n")
    assert rename_events("data: [DONE]\n\n", "tiny") == "data: [DONE]\n\n"
    assert rename_events('data: {"error": "boom"}\n\n', "tiny") == 'data: {"error": "boom"}\n\n'


def test_folders_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(RecipeError, match="nowhere"):
        prepare_models([str(tmp_path / "nowhere")])
    with pytest.raises(RecipeError, match="two models share the name 'x'"):
        prepare_models(["a", "b"], ["x", "x"])
    with pytest.raises(RecipeError, match="--names gives 1 names for 2 models"):
        prepare_models(["a", "b"], ["x"])


def test_vllm_is_chosen_only_where_it_can_run():
    import torch

    if not torch.cuda.is_available():
        assert backend("auto") == "transformers"
        with pytest.raises(RecipeError, match="--backend vllm needs vLLM installed and a CUDA GPU"):
            backend("vllm")
    command = vllm_command(ServedModel("tiny", "/m/tiny"), "127.0.0.1", 8001)
    assert command[:3] == ["vllm", "serve", "/m/tiny"]
    assert command[command.index("--served-model-name") + 1] == "tiny" and "--api-key" not in command


def test_serve_refuses_a_missing_folder_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "alignment.cli", "serve", str(tmp_path / "nowhere")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "nowhere" in done.stderr
