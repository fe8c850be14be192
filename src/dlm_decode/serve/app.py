"""The OpenAI-compatible HTTP layer (FastAPI) over the continuous-batching
:class:`~dlm_decode.serve.scheduler.Scheduler`.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``. Request
bodies are checked field by field: an unknown field, a known OpenAI field this server does not implement (given
with a value other than its neutral default), a wrong type, a bad value or a prompt that does not fit the model's
context is answered with a 4xx and OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``, whose
message names the field and the fix; the server keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from dlm_decode.config import load_config
from dlm_decode.decoder import Decoder
from dlm_decode.errors import DlmDecodeError
from dlm_decode.serve.scheduler import Done, Event, Failed, Job, Piece, Scheduler, now

#: OpenAI request fields this server does not implement, with the value that means "not used" (accepted).
UNSUPPORTED = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "parallel_tool_calls": (None,),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
}
#: Fields both endpoints take (``user``, ``metadata``, ``store`` and ``service_tier`` are accepted and ignored).
COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "user", "metadata", "store"}
COMMON |= {"service_tier", "stream_options"}
FIELDS = {"completions": COMMON | {"prompt"}, "chat": COMMON | {"messages", "max_completion_tokens"}}
#: Most stop strings and choices per request (as OpenAI: 4 stop strings).
MAX_STOP, MAX_N = 4, 16


class APIError(Exception):
    """An OpenAI-shaped error answer: HTTP ``status`` and ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def error_body(exc: Exception) -> dict[str, Any]:
    """The error body of a failed request (a decoder error names the strategy and the fix)."""
    if isinstance(exc, APIError):
        return exc.body()
    return APIError(500, str(exc), code=type(exc).__name__).body()


@dataclass
class Checked:
    """A checked request: the prompts' token ids and the decoding settings."""

    prompts: list[list[int]]
    max_tokens: int
    seed: int
    n: int
    stop: tuple[str, ...]
    stream: bool
    variant: Decoder
    chat: bool
    include_usage: bool = False


class Server:
    """What the app serves: a decoder (and its sampling variants), the scheduler and the model's name.

    :param decoder: the deployment's decoder (``dlm-decode serve -c ...``).
    :param max_batch: rows decoded at once (default: ``generation.batch_size``).
    :param join: continuous batching (false: fixed batches, for comparison).
    :param model_name: the id ``/v1/models`` lists and requests name (default: ``model.dllm.path``).
    :param drain_timeout: seconds a shutdown waits for running requests.
    """

    MAX_VARIANTS = 8

    def __init__(
        self,
        decoder: Decoder,
        max_batch: int | None = None,
        join: bool = True,
        model_name: str | None = None,
        drain_timeout: float = 30.0,
    ):
        self.decoder = decoder
        self.model_name = model_name or decoder.config.config.model.dllm.path
        self.scheduler = Scheduler(max_batch or decoder.generation.batch_size, join)
        self.drain_timeout = drain_timeout
        name, params = decoder.config.strategies["proposal"]
        self.proposal = name
        #: the deployment's (temperature, top_p); None for a proposal without them
        self.sampling: tuple[float, float | None] | None = {
            "greedy": (0.0, None),
            "sample": (float(getattr(params, "temperature", 0.0)), getattr(params, "top_p", None)),
        }.get(name)
        self.variants: dict[tuple[float, float | None], Decoder] = {}

    @classmethod
    def from_config(cls, sources: Any, overrides: list[str] | tuple[str, ...] = (), **kwargs: Any) -> Server:
        return cls(Decoder.from_config(sources, list(overrides)), **kwargs)

    def variant(self, temperature: float | None, top_p: float | None) -> Decoder:
        """The decoder for a request's ``temperature`` and ``top_p`` (the deployment's own when they are its
        settings or absent): the proposal becomes ``sample`` (or ``greedy`` at temperature 0) over the same loaded
        dLLM; rows of different variants never share a batch."""
        if temperature is None and top_p is None:
            return self.decoder
        if self.sampling is None:
            raise APIError(
                400,
                f"the deployment's proposal strategy {self.proposal!r} has no temperature or top_p; leave them out",
                "temperature" if temperature is not None else "top_p",
                "unsupported_parameter",
            )
        default_t, default_p = self.sampling
        t = default_t if temperature is None else temperature
        p = default_p if top_p is None else (None if top_p == 1 else top_p)
        key = (t, None if t == 0 else p)
        if key == self.sampling:
            return self.decoder
        if key not in self.variants:
            if len(self.variants) >= self.MAX_VARIANTS:
                raise APIError(
                    400,
                    f"this server already decodes with {len(self.variants)} temperature/top_p settings, its limit",
                    "temperature",
                    "too_many_variants",
                )
            proposal = (
                "greedy" if key[0] == 0 else f"{{name: sample, temperature: {key[0]}, top_p: {key[1] or 'null'}}}"
            )
            config = load_config(yaml.safe_load(self.decoder.config.yaml), [f"decoder.proposal={proposal}"])
            self.variants[key] = Decoder(config, dllm=self.decoder.dllm, registry=self.decoder.registry)
        return self.variants[key]

    # --- checking a request --------------------------------------------------------------------------------------

    def check(self, body: Any, kind: str) -> Checked:
        """The checked request of ``body`` (parsed JSON) for endpoint ``kind`` (``completions`` or ``chat``)."""
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", None, "invalid_request")
        for name in body:
            if name in UNSUPPORTED:
                if body[name] not in UNSUPPORTED[name]:
                    raise APIError(
                        400,
                        f"{name} is not supported by this server (dlm-decode decodes a diffusion LM: no "
                        f"{name}); leave it out",
                        name,
                        "unsupported_parameter",
                    )
            elif name not in FIELDS[kind]:
                raise APIError(
                    400,
                    f"unknown field {name!r}; the fields this endpoint takes are {', '.join(sorted(FIELDS[kind]))}",
                    name,
                    "unknown_parameter",
                )
        model = typed(body, "model", str, "a string")
        if model is not None and model != self.model_name:
            raise APIError(
                404, f"the model {model!r} does not exist here; this server serves {self.model_name!r}", "model",
                "model_not_found",
            )  # fmt: skip
        max_tokens = typed(body, "max_tokens", int, "an integer")
        if kind == "chat" and body.get("max_completion_tokens") is not None:
            max_tokens = typed(body, "max_completion_tokens", int, "an integer")
        name = "max_completion_tokens" if kind == "chat" and "max_completion_tokens" in body else "max_tokens"
        if max_tokens is not None and max_tokens < 1:
            raise APIError(400, f"{name} must be at least 1, got {max_tokens}", name, "invalid_value")
        max_tokens = max_tokens or self.decoder.generation.max_new_tokens
        temperature = typed(body, "temperature", float, "a number")
        if temperature is not None and not 0 <= temperature <= 2:
            raise APIError(400, f"temperature must be in [0, 2], got {temperature}", "temperature", "invalid_value")
        top_p = typed(body, "top_p", float, "a number")
        if top_p is not None and not 0 < top_p <= 1:
            raise APIError(400, f"top_p must be in (0, 1], got {top_p}", "top_p", "invalid_value")
        seed = typed(body, "seed", int, "an integer")
        if seed is not None and not -(2**63) <= seed < 2**64:
            raise APIError(400, f"seed {seed} is outside [-2**63, 2**64 - 1]", "seed", "invalid_value")
        n = typed(body, "n", int, "an integer")
        if n is not None and not 1 <= n <= MAX_N:
            raise APIError(400, f"n must be in [1, {MAX_N}], got {n}", "n", "invalid_value")
        stream = typed(body, "stream", bool, "true or false")
        options = body.get("stream_options")
        if options is not None and (
            not stream
            or not isinstance(options, dict)
            or set(options) - {"include_usage"}
            or not isinstance(options.get("include_usage", False), bool)
        ):
            raise APIError(
                400, 'stream_options takes only {"include_usage": true|false}, and only with "stream": true',
                "stream_options", "invalid_value",
            )  # fmt: skip
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and (
            not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP
        ):
            raise APIError(
                400, f"stop must be a non-empty string or a list of at most {MAX_STOP} of them, got {stop!r}", "stop",
                "invalid_type",
            )  # fmt: skip
        variant = self.variant(temperature, top_p)
        prompts = self.chat_prompts(body) if kind == "chat" else self.completion_prompts(body)
        for index, ids in enumerate(prompts):
            if len(ids) + max_tokens > self.decoder.dllm.max_context:
                what = "messages" if kind == "chat" else ("prompt" if len(prompts) == 1 else f"prompt[{index}]")
                raise APIError(
                    400,
                    f"the {what} has {len(ids)} tokens; with {name}={max_tokens} the canvas needs "
                    f"{len(ids) + max_tokens} > the model's context of {self.decoder.dllm.max_context}; shorten "
                    f"the {what} or lower {name}",
                    what,
                    "context_length_exceeded",
                )
        return Checked(
            prompts=prompts,
            max_tokens=max_tokens,
            seed=self.decoder.generation.seed if seed is None else seed,
            n=n or 1,
            stop=tuple(stops or ()),
            stream=bool(stream),
            include_usage=bool((options or {}).get("include_usage")),
            variant=variant,
            chat=kind == "chat",
        )

    def completion_prompts(self, body: dict[str, Any]) -> list[list[int]]:
        """``prompt`` (a string or a list of strings) encoded as ``Decoder.generate`` encodes prompts."""
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise APIError(
                400, f"prompt must be a string or a non-empty list of strings, got {prompt!r}", "prompt",
                "invalid_type",
            )  # fmt: skip
        if not all(p.strip() for p in prompts):
            raise APIError(400, "prompt is empty; give it some text", "prompt", "invalid_value")
        return self.encode(prompts, "prompt", self.decoder.dllm.encode)

    def chat_prompts(self, body: dict[str, Any]) -> list[list[int]]:
        """``messages`` rendered with the tokenizer's chat template (with the generation prompt), or the plain
        template ``"<role>: <content>\\n"`` per message then ``"assistant:"`` when the tokenizer has none."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, f"messages must be a non-empty list, got {messages!r}", "messages", "invalid_type")
        for index, message in enumerate(messages):
            ok = isinstance(message, dict) and set(message) <= {"role", "content", "name"}
            if not ok or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise APIError(
                    400,
                    f"messages[{index}] must be an object with a string role and a string content (text only), "
                    f"got {message!r}",
                    f"messages[{index}]",
                    "invalid_type",
                )
        tokenizer = self.decoder.dllm.tokenizer
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        if getattr(tokenizer, "chat_template", None) is not None:
            text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
        else:
            text = plain_chat_template(plain)
        return self.encode([text], "messages", lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"])

    def encode(self, texts: list[str], param: str, encode: Callable[[list[str]], list[list[int]]]) -> list[list[int]]:
        try:
            return [list(ids) for ids in encode(texts)]
        except Exception as exc:  # noqa: BLE001 - a text the tokenizer cannot encode
            error = self.decoder._untokenizable(texts, 0, exc)
            raise APIError(400, f"{param}: {error.message}; {error.fix}", param, "invalid_value") from exc


def plain_chat_template(messages: list[dict[str, str]]) -> str:
    """The chat template of a tokenizer without one: ``"<role>: <content>\\n"`` per message, then
    ``"assistant:"``."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def typed(body: dict[str, Any], name: str, kind: type, described: str) -> Any:
    """``body[name]`` (None when absent or null) checked to be of ``kind`` (an int is a number; a bool is no
    number), or a 400 naming the field."""
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if kind is float and ok and not math.isfinite(value):
        ok = False
    if not ok:
        raise APIError(
            400, f"{name} must be {described}, got {json.dumps(value)} ({type(value).__name__})", name, "invalid_type"
        )
    return value


def run_server(server: Server, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn's signal handling): the listening socket closes at once, running
    requests get ``server.drain_timeout`` seconds to finish, then the scheduler stops and the call returns."""
    import uvicorn

    drain = math.ceil(server.drain_timeout)
    uvicorn.run(create_app(server), host=host, port=port, timeout_graceful_shutdown=drain, log_level="warning")


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``<url>/health`` until a server started as ``process`` answers 200 (for scripts and tests that start
    ``dlm-decode serve``).

    :raises RuntimeError: the process exited first, or ``timeout`` seconds passed.
    """
    import httpx

    deadline = time.perf_counter() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health").status_code == 200:
                return
        if process.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError(f"the server at {url} did not start (exit status {process.poll()})")
        time.sleep(0.1)


def create_app(server: Server) -> FastAPI:
    """The FastAPI app of ``server``; its lifespan starts the scheduler and, at shutdown (after uvicorn has let
    the running requests finish, ``--drain-timeout``), stops it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.scheduler.start()
        yield
        await asyncio.to_thread(server.scheduler.close, server.drain_timeout)

    app = FastAPI(title="dlm-decode", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "draining" if server.scheduler.closing else "ok", **server.scheduler.status()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": server.model_name, "object": "model", "created": 0, "owned_by": "dlm-decode"}],
        }

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await answer(server, request, "completions")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await answer(server, request, "chat")

    return app


async def answer(server: Server, request: Request, kind: str) -> Any:
    """Check the request, queue one job per prompt and choice, and answer (streamed or not)."""
    try:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object", None, "invalid_json")
        checked = server.check(body, kind)
    except APIError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    def emitter(index: int) -> Callable[[Event], None]:
        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (index, event))

        return emit

    jobs = [
        Job(
            ids=ids,
            max_tokens=checked.max_tokens,
            seed=checked.seed + prompt * checked.n + choice,
            emit=emitter(prompt * checked.n + choice),
            variant=checked.variant,
            stream=checked.stream,
            stop=checked.stop,
        )
        for prompt, ids in enumerate(checked.prompts)
        for choice in range(checked.n)
    ]
    try:
        server.scheduler.submit(jobs)
    except DlmDecodeError as exc:
        return JSONResponse(APIError(503, str(exc), None, "shutting_down").body(), status_code=503)
    reply = Reply(server.model_name, checked, kind)
    if checked.stream:
        return StreamingResponse(stream(reply, jobs, events), media_type="text/event-stream")
    results: dict[int, Done] = {}
    try:
        while len(results) < len(jobs):
            try:
                index, event = await asyncio.wait_for(events.get(), 0.1)
            except asyncio.TimeoutError:
                if await request.is_disconnected():  # the client left: free its rows at the next step
                    return None
                continue
            if isinstance(event, Failed):
                return JSONResponse(error_body(event.error), status_code=500)
            if isinstance(event, Done):
                results[index] = event
    finally:
        for job in jobs:
            job.cancel()  # no-op for finished jobs; frees the rows of a failed or abandoned request
    return reply.full([results[index] for index in range(len(jobs))])


async def stream(reply: Reply, jobs: list[Job], events: asyncio.Queue[tuple[int, Event]]) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them: a chunk per piece of stable text, a last chunk per choice with its
    ``finish_reason``, then ``[DONE]``; a failure sends an error object and ends the stream. A client that
    disconnects cancels the generator, which frees its rows at the next step."""
    finished, results = 0, []
    try:
        if reply.kind == "chat":
            for index in range(len(jobs)):
                yield sse(reply.chunk(index, {"role": "assistant", "content": ""}, None))
        while finished < len(jobs):
            index, event = await events.get()
            if isinstance(event, Piece):
                yield sse(reply.chunk(index, event.text, None))
            elif isinstance(event, Done):
                finished += 1
                results.append(event)
                yield sse(reply.chunk(index, "" if reply.kind == "completions" else {}, event.finish_reason))
            else:
                yield sse(error_body(event.error))
                return
        if reply.checked.include_usage:  # OpenAI's last chunk: no choice, the request's usage
            yield sse({**reply.envelope(reply.chunk_object, []), "usage": reply.usage(results)})
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancel()


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


class Reply:
    """Builds the response objects of one request (``text_completion`` or ``chat.completion`` and their chunks)."""

    def __init__(self, model: str, checked: Checked, kind: str):
        self.model, self.checked, self.kind = model, checked, kind
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = now()

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def chunk(self, index: int, content: Any, finish_reason: str | None) -> dict[str, Any]:
        if self.kind == "completions":
            choice = {"index": index, "text": content, "logprobs": None, "finish_reason": finish_reason}
            return self.envelope(self.chunk_object, [choice])
        delta = content if isinstance(content, dict) else {"content": content}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self.envelope(self.chunk_object, [choice])

    @property
    def chunk_object(self) -> str:
        return "text_completion" if self.kind == "completions" else "chat.completion.chunk"

    def usage(self, results: list[Done]) -> dict[str, int]:
        prompt_tokens = sum(len(ids) for ids in self.checked.prompts)
        completion_tokens = sum(done.completion_tokens for done in results)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def full(self, results: list[Done]) -> dict[str, Any]:
        choices: list[dict[str, Any]] = []
        for index, done in enumerate(results):
            choice: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": done.finish_reason}
            if self.kind == "completions":
                choice["text"] = done.text
            else:
                choice["message"] = {"role": "assistant", "content": done.text}
            choices.append(choice)
        obj = "text_completion" if self.kind == "completions" else "chat.completion"
        return {**self.envelope(obj, choices), "usage": self.usage(results)}
