"""`alignment serve MODEL_DIR`: a trained model folder behind an OpenAI-compatible API.

    alignment serve runs/tiny/dpo --port 8000 [--api_key K]
    python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='K'); ..."

Two engines, no HTTP server written here:
- **vLLM** (`vllm serve`) on a node with vLLM installed and a CUDA GPU: the server for real traffic.
- **transformers serve** otherwise (`transformers[serving]`: FastAPI and uvicorn). Its chat-completion
  handler does the work: the model's chat template, generation, streaming (SSE), usage counts.

transformers 5.23's `transformers serve` lacks what serving one trained folder needs, and this module
adds only that, on a FastAPI app of its own around transformers' handler:
- a name: requests and `/v1/models` use the folder's name (`--name`), not a Hub id; transformers'
  `/v1/models` lists the Hub cache instead (and fails where there is none);
- `--api_key`: every route but `/health` then needs `Authorization: Bearer KEY`;
- refusals in OpenAI's error shape that name the field (`error.param`): transformers logs and ignores
  fields it does not support (`n`, `logprobs`, `response_format`, ...), which would silently change
  what the client asked for;
- replies stop at the chat template's end-of-turn token even where the generation config names only
  the document end (`evaluation.end_of_turn_ids`);
- an adapter folder is merged into its base first (`merge.merge_lora`, into a temporary folder).
Several folders can share one server (the arena does): each is loaded once, never unloaded.
"""

import atexit
import hmac
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
# OpenAI fields whose default is harmless to receive; any other value changes the reply and is refused.
DEFAULTS = {"n": 1, "presence_penalty": 0, "parallel_tool_calls": True, "stream_options": None}


@dataclass(frozen=True)
class ServedModel:
    """A model as clients name it, and the folder its weights load from (a merged copy for an adapter)."""

    name: str
    folder: str


class BadRequest(Exception):
    """A refused request: its HTTP status, message and the field at fault (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def check_serving_installed() -> None:
    """transformers' server needs `transformers[serving]`; say so in one line before any model loads."""
    missing = [name for name in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(name) is None]
    if missing:
        raise RecipeError(f"serving needs {', '.join(missing)}: pip install -e '.[serve]'")


def check_names(names: list[str], count: int) -> None:
    """One name per model and no two alike: requests (and the arena's vote file) tell models apart by name."""
    if len(names) != count:
        raise RecipeError(f"--names gives {len(names)} names for {count} models")
    if len(set(names)) != len(names):
        raise RecipeError(f"two models share the name {next(n for n in names if names.count(n) > 1)!r}: "
                          "give each its own with --names")  # fmt: skip


def prepare_models(model_dirs: list[str], names: list[str] | None = None) -> list[ServedModel]:
    """Check each folder (one line naming the bad one) and merge adapters; nothing is loaded yet."""
    from alignment.eval_command import model_kind
    from alignment.model import adapter_base

    names = names or list(model_dirs)
    check_names(names, len(model_dirs))
    for model_dir in model_dirs:
        scorer = {"reward": "a reward model", "classifier": "a text classifier"}.get(model_kind(model_dir))
        if scorer:  # model_kind also refuses a missing folder or one holding no model
            raise RecipeError(f"{model_dir} is {scorer}: it scores text and generates none")
    served = []
    for model_dir, name in zip(model_dirs, names, strict=True):
        folder = model_dir
        if adapter_base(model_dir):
            from alignment.merge import merge_lora

            folder = tempfile.mkdtemp(prefix="alignment-serve-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            merge_lora(model_dir, folder)
        served.append(ServedModel(name=name, folder=str(Path(folder).resolve())))
    return served


def parse_request(body: Any, models: dict[str, ServedModel]) -> ServedModel:
    """The model a chat-completion request asks for, after checking each field (`BadRequest` names it).

    With one model served, `model` may be left out (as the judge and curl users do)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    requested = body.get("model")
    if requested is None and len(models) == 1:
        requested = next(iter(models))
    if requested not in models:
        raise BadRequest(f"model {requested!r} is not served here; this server serves "
                         f"{', '.join(map(repr, models))}", "model", status=404)  # fmt: skip
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` is required: a non-empty list of {role, content}", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        if not isinstance(message.get("content"), str):
            raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}].content")
    from transformers.cli.serving.chat_completion import UNUSED_CHAT_COMPLETION_FIELDS

    for name in sorted(UNUSED_CHAT_COMPLETION_FIELDS & body.keys()):
        if body[name] is not None and body[name] != DEFAULTS.get(name):
            raise BadRequest(f"`{name}` is not supported by this server", name)
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    checks = {
        limit: (body.get(limit), lambda v: _number(v, int) and v >= 1, "an integer of at least 1"),
        "temperature": (
            body.get("temperature"),
            lambda v: _number(v) and 0 <= v <= 2,
            "a number from 0 to 2",
        ),
        "top_p": (body.get("top_p"), lambda v: _number(v) and 0 < v <= 1, "a number above 0, at most 1"),
        "seed": (body.get("seed"), lambda v: _number(v, int), "an integer"),
        "stream": (body.get("stream"), lambda v: isinstance(v, bool), "true or false"),
    }
    for name, (value, valid, expected) in checks.items():
        if value is not None and not valid(value):
            raise BadRequest(f"`{name}` is {value!r}; it must be {expected}", name)
    return models[requested]


def _number(value: Any, kind: type | tuple = (int, float)) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)  # JSON true is not the number 1


def build_app(models: list[ServedModel], api_key: str | None = None, device: str = "auto") -> Any:
    """A FastAPI app serving `models` (loaded now) with transformers' chat-completion handler."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.utils import GenerationState

    from alignment.evaluation import end_of_turn_ids

    manager = ModelManager(device=device, model_timeout=-1)  # -1: never unloaded
    for served in models:
        # under the name the handler will look it up by (5.23: `PATH@main`; 5.24: `PATH`), so it is found
        model, tokenizer = manager.load_model_and_processor(manager.process_model_name(served.folder))
        stops, configured = end_of_turn_ids(model, tokenizer), model.generation_config.eos_token_id
        if set(stops) != set([configured] if isinstance(configured, int) else configured or []):
            logger.info(f"{served.name}: replies stop at token ids {stops} (generation config + end of turn)")
            model.generation_config.eos_token_id = stops
    handler = ChatCompletionHandler(model_manager=manager, generation_state=GenerationState())
    by_name = {m.name: m for m in models}
    created = int(time.time())
    app = FastAPI()

    def error(status: int, message: str, param: str | None = None) -> JSONResponse:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
        body = {"message": message, "type": kind.get(status, "server_error"), "param": param, "code": None}
        return JSONResponse({"error": body}, status_code=status)

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error(401, "a missing or wrong API key: send `Authorization: Bearer KEY`")
        return await call_next(request)

    @app.exception_handler(BadRequest)
    async def refused(_: Request, bad: BadRequest) -> JSONResponse:
        return error(bad.status, str(bad), bad.param)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the request body is not valid JSON") from None
        served = parse_request(body, by_name)
        body["model"] = served.folder  # transformers' handler loads (here: finds) models by folder
        response = await handler.handle_request(
            body, request.headers.get("x-request-id") or os.urandom(8).hex()
        )
        if isinstance(response, StreamingResponse):
            response.body_iterator = renamed(response.body_iterator, served)
            return response
        payload = json.loads(response.body)  # a JSON reply names the model as the client did
        if "model" in payload:
            payload["model"] = served.name
        return JSONResponse(payload, status_code=response.status_code)

    async def renamed(chunks: Any, served: ServedModel) -> Any:
        async for chunk in chunks:
            yield rename_events(chunk, served.name) if isinstance(chunk, str) else chunk

    @app.get("/v1/models")
    def list_models() -> dict:
        cards = [
            {"id": name, "object": "model", "created": created, "owned_by": "alignment"} for name in by_name
        ]
        return {"object": "list", "data": cards}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


def rename_events(chunk: str, name: str) -> str:
    """Server-sent events (`data: {json}`, blank-line separated) with each one's `model` set to `name`.

    A chunk may hold several events: transformers 5.24 joins the tokens that queued up while the client
    was slow into one write. JSON escapes newlines inside strings, so a blank line only ever ends an event.
    """
    events = []
    for event in chunk.split("\n\n"):
        if event.startswith("data: {"):
            payload = json.loads(event[len("data: ") :])
            if "model" in payload:
                payload["model"] = name
                event = f"data: {json.dumps(payload, ensure_ascii=False)}"
        events.append(event)
    return "\n\n".join(events)


class BackgroundServer:
    """uvicorn serving `app` in a daemon thread (tests, the arena, the chat): `url` ends in `/v1`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)  # no signal handlers off main
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RecipeError(f"the server did not start on {host}:{port} (is the port taken?)")
            time.sleep(0.02)
        bound = self.server.servers[0].sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def backend(choice: str = "auto") -> str:
    """`vllm` where vLLM is installed and a CUDA GPU is present, else `transformers` (`choice` forces one)."""
    import torch

    has_vllm = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if choice == "vllm" and not has_vllm:
        raise RecipeError("--backend vllm needs vLLM installed and a CUDA GPU (pip install -e '.[vllm]')")
    if choice not in ("auto", "vllm", "transformers"):
        raise RecipeError(f"--backend is {choice!r}; choose auto, vllm or transformers")
    return "vllm" if choice == "vllm" or (choice == "auto" and has_vllm) else "transformers"


def vllm_command(served: ServedModel, host: str, port: int) -> list[str]:
    """`vllm serve` for one model: the same name, address and (through VLLM_API_KEY) key."""
    return ["vllm", "serve", served.folder, "--served-model-name", served.name, "--host", host, "--port", str(port),
            "--generation-config", "auto"]  # fmt: skip


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          name: str | None = None, engine: str = "auto") -> None:  # fmt: skip
    """Serve `model_dir` until interrupted (Ctrl-C)."""
    engine = backend(engine)
    if engine == "transformers":
        check_serving_installed()
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logger.warning(f"serving on {host} with no --api_key: anyone who can reach this port can use it")
    served = prepare_models([model_dir], [name] if name else None)[0]
    if engine == "vllm":
        env = {**os.environ, **({"VLLM_API_KEY": api_key} if api_key else {})}  # not on the command line
        raise SystemExit(subprocess.call(vllm_command(served, host, port), env=env))
    import uvicorn

    app = build_app([served], api_key)
    logger.info(f"serving {model_dir} as {served.name!r} at http://{host}:{port}/v1 (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
