"""A minimal OpenAI-compatible HTTP server for a saved model folder (the seed of `alignment serve`).

    python -c "from alignment.serve import serve; serve('runs/tiny/sft', '127.0.0.1', 8000)"
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "reverse abc"}]}'

`POST /v1/chat/completions` (non-streaming, n=1), `GET /v1/models` and `GET /health`, on the standard
library's threading server: enough for `alignment eval`'s LLM judge and for scripted clients, with no
extra dependency (`transformers serve` needs `transformers[serving]`). Replies go through the model's
chat template; requests are answered one at a time (a lock around generation). Prompts longer than the
model's context are not refused, as transformers does not refuse them: quality degrades past it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
ROLES = ("system", "user", "assistant")
UNSUPPORTED = ("stream", "stop", "tools", "logprobs", "response_format")  # refused when set, not ignored


class BadRequest(Exception):
    """A request the server refuses: its HTTP status, message and the field at fault (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def parse_request(body: dict, served: str) -> dict[str, Any]:
    """The generation settings of a chat-completion request, checked field by field (`BadRequest`)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("model") not in (None, served):
        raise BadRequest(f"model {body['model']!r} is not served here; this server serves {served!r}",
                         "model", status=404)  # fmt: skip
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` is required: a non-empty list of {role, content}", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        if not isinstance(message.get("content"), str):
            raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}].content")
    for name in UNSUPPORTED:
        if body.get(name):
            raise BadRequest(f"`{name}` is not supported by this server", name)
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(limit)
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    temperature, top_p, seed = body.get("temperature", 1.0), body.get("top_p", 1.0), body.get("seed")
    checks = {
        limit: (_number(max_tokens, int) and max_tokens >= 1, "an integer of at least 1"),
        "temperature": (_number(temperature) and 0 <= temperature <= 2, "a number from 0 to 2"),
        "top_p": (_number(top_p) and 0 < top_p <= 1, "a number above 0, at most 1"),
        "seed": (seed is None or _number(seed, int), "an integer"),
    }
    for name, (ok, expected) in checks.items():
        if not ok:
            raise BadRequest(f"`{name}` is {body.get(name)!r}; it must be {expected}", name)
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    return {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
            "seed": seed}  # fmt: skip


def _number(value: Any, kind: type | tuple = (int, float)) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)  # JSON true is not the number 1


def generate(model: Any, tokenizer: Any, messages: list[dict], max_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One reply to a chat, greedy at temperature 0: its text, token counts and why it stopped.

    The steps of `evaluation.generate_answers` for one prompt (so greedy replies are the same), which
    returns text only: the server also needs the token counts and the stop reason, and sampling settings.
    """
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    if seed is not None:
        torch.manual_seed(seed)
    sample = temperature > 0
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_tokens, do_sample=sample,
                             temperature=temperature if sample else None, top_p=top_p if sample else None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    prompt_tokens = batch["input_ids"].shape[1]
    new = out[0, prompt_tokens:].tolist()
    eos = model.generation_config.eos_token_id
    stopped = bool(new) and new[-1] in {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(new),
        "total_tokens": prompt_tokens + len(new),
    }
    return {
        "content": tokenizer.decode(new, skip_special_tokens=True).strip(),
        "finish_reason": "stop" if stopped or len(new) < max_tokens else "length",
        "usage": usage,
    }


def make_server(model_dir: str, host: str = "127.0.0.1", port: int = 0,
                model_name: str | None = None) -> ThreadingHTTPServer:  # fmt: skip
    """Load the model (an adapter folder is merged) and bind a server to it; port 0 picks a free port
    (`server.server_address`). Call `serve_forever()` on it, in a thread or not."""
    from alignment.eval_command import model_kind
    from alignment.evaluation import load_for_eval

    if model_kind(model_dir) == "reward":  # also: a missing folder, or one with no model, in one line
        raise RecipeError(f"{model_dir} is a reward model: it scores answers and generates none")
    model, tokenizer = load_for_eval(model_dir)
    served = model_name or str(model_dir)
    lock = threading.Lock()
    created = int(time.time())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/health":
                self._reply(200, {"status": "ok"})
            elif self.path.rstrip("/") == "/v1/models":
                card = {"id": served, "object": "model", "created": created, "owned_by": "alignment"}
                self._reply(200, {"object": "list", "data": [card]})
            else:
                self._error(BadRequest(f"no route GET {self.path}", status=404))

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(BadRequest(f"no route POST {self.path}", status=404))
            try:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise BadRequest("the request body is not valid JSON") from None
                request = parse_request(body, served)
            except BadRequest as bad:
                return self._error(bad)
            try:
                with lock:
                    reply = generate(model, tokenizer, **request)
            except Exception as error:  # a failed generation still gets an answer, and the server lives on
                logger.exception("generation failed")
                return self._error(BadRequest(f"generation failed: {error}", status=500))
            message = {"role": "assistant", "content": reply["content"]}
            choice = {
                "index": 0,
                "message": message,
                "finish_reason": reply["finish_reason"],
                "logprobs": None,
            }
            self._reply(200, {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                              "created": int(time.time()), "model": served, "choices": [choice],
                              "usage": reply["usage"]})  # fmt: skip

        def _error(self, bad: BadRequest) -> None:
            kind = {400: "invalid_request_error", 404: "not_found_error"}.get(bad.status, "server_error")
            self._reply(
                bad.status, {"error": {"message": str(bad), "type": kind, "param": bad.param, "code": None}}
            )

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # through logging, not raw stderr
            logger.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `model_dir` until interrupted (Ctrl-C)."""
    server = make_server(model_dir, host, port)
    address, bound = server.server_address[:2]
    logger.info(f"serving {Path(model_dir)} at http://{address}:{bound}/v1 (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
