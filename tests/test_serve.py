"""``dlm-decode serve``: the OpenAI client's calls, continuous batching that gives every request the tokens of its
solo ``Decoder.generate`` (rows joining and leaving a running batch, and batches that cannot take newcomers),
streams that never take text back (WINO), bad input and faults (docs/serve.md)."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from dlm_decode.api import Decision, StrategyError, hookimpl, select_top  # noqa: E402
from dlm_decode.config import load_config  # noqa: E402
from dlm_decode.decoder import Decoder  # noqa: E402
from dlm_decode.eval.tasks import load_examples  # noqa: E402
from dlm_decode.serve.app import Server, create_app  # noqa: E402
from dlm_decode.testing.registry import registry_with  # noqa: E402

from helpers import NoParams  # noqa: E402

MODEL = "embedded:dllm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(server: Server):
    """``server`` on a free loopback port (uvicorn in a thread), yielding its base URL; stopped after."""
    port = free_port()
    runner = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not runner.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(30)


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@dataclass
class Call:
    prompt: str
    max_tokens: int
    seed: int
    delay: float


def mixed_calls(count: int, seed: int = 0) -> list[Call]:
    """``count`` prompts of the embedded suite (lengths 7 to ~40 characters), ``max_tokens`` 8 to 40 and arrival
    delays up to 0.5 s."""
    rng = random.Random(seed)
    prompts = [example.prompt for example in load_examples(None, "test", 6, seed=seed)]
    rng.shuffle(prompts)
    return [Call(prompts[i], rng.choice([8, 16, 24, 40]), 1000 + i, rng.random() * 0.5) for i in range(count)]


def concurrently(calls: list[Call], send) -> list:
    """``send(call)`` for every call at once (each after its delay), answers in order."""

    def delayed(call: Call):
        time.sleep(call.delay)
        return send(call)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(delayed, calls))


def solo(decoder: Decoder, calls: list[Call]):
    """Each call alone through ``Decoder.generate``: (text, token ids)."""
    outputs = [decoder.generate([c.prompt], max_new_tokens=c.max_tokens, seeds=[c.seed]) for c in calls]
    return [(out.texts[0], out.token_ids[0]) for out in outputs]


def health(url: str) -> dict:
    return httpx.get(f"{url}/health").json()


# --- the OpenAI client's calls ----------------------------------------------------------------------------------


def test_the_openai_client_completes_and_chats_streaming_and_not():
    server = Server.from_config("configs/decoders/llada.yaml")
    prompt = "sort 4 1 7 9 3"
    expected = server.decoder.generate([prompt]).texts[0]  # the chat template wraps it, as a one-turn chat does
    assert expected
    with serving(server) as url:
        api = client(url)
        done = api.completions.create(model=MODEL, prompt=prompt)
        assert done.choices[0].text == expected and done.choices[0].finish_reason == "stop"
        assert done.usage.prompt_tokens == len(server.decoder.dllm.encode([prompt])[0])
        pieces = [c.choices[0].text for c in api.completions.create(model=MODEL, prompt=prompt, stream=True)]
        assert "".join(pieces) == expected and len([p for p in pieces if p]) > 1  # one token per step: pieces
        messages = [{"role": "user", "content": prompt}]
        chat = api.chat.completions.create(model=MODEL, messages=messages)
        assert chat.choices[0].message.content == expected and chat.choices[0].message.role == "assistant"
        chunks = list(api.chat.completions.create(model=MODEL, messages=messages, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert [m.id for m in api.models.list().data] == [MODEL]
        assert health(url)["status"] == "ok"


# --- continuous batching: every request gets its solo tokens ----------------------------------------------------


@pytest.mark.parametrize("name", ["llada", "fast-dllm", "apd"])
def test_32_concurrent_requests_get_the_tokens_of_their_solo_generate(name):
    """32 requests at temperature 0 with mixed prompt lengths, ``max_tokens`` and arrival times: rows join the
    running batch (re-padded on both sides) and leave it as they finish, and each answer is its solo
    ``Decoder.generate`` (the text, its token count and finish reason; the embedded tokenizer has one token per
    character). For APD, temperature 0 is the greedy draft: the server's variant of the config."""
    server = Server.from_config(f"configs/decoders/{name}.yaml", max_batch=32)
    calls = mixed_calls(32)
    expected = solo(server.variant(0.0, None), calls)
    with serving(server) as url:
        api = client(url)
        answers = concurrently(
            calls,
            lambda c: api.completions.create(
                model=MODEL, prompt=c.prompt, max_tokens=c.max_tokens, seed=c.seed, temperature=0
            ),
        )
        status = health(url)
    eos = server.decoder.dllm.eos_token_ids
    for answer, (text, ids) in zip(answers, expected):
        assert answer.choices[0].text == text
        assert answer.usage.completion_tokens == len(ids)
        assert answer.choices[0].finish_reason == ("stop" if ids and ids[-1] in eos else "length")
    assert status["joined"] > 0, "no request joined a running batch: the regroup path went untested"
    assert (status["failed"], status["running"]) == (0, 0)


def test_sampled_requests_at_the_configs_temperature_get_their_solo_tokens_too():
    """APD's own setting (a Gumbel sample at temperature 0.2): per-row generators follow their rows."""
    server = Server.from_config("configs/decoders/apd.yaml", max_batch=12)
    calls = mixed_calls(12, seed=1)
    expected = solo(server.decoder, calls)
    with serving(server) as url:
        api = client(url)
        answers = concurrently(
            calls, lambda c: api.completions.create(model=MODEL, prompt=c.prompt, max_tokens=c.max_tokens, seed=c.seed)
        )
    assert [a.choices[0].text for a in answers] == [text for text, _ in expected]


@pytest.mark.parametrize(
    ("config", "overrides", "batching"),
    [("klass", [], "continuous"), ("llada", [], "fixed")],
    ids=["memory-without-relayout", "fixed-batches"],
)
def test_batches_that_cannot_take_newcomers_queue_them(config, overrides, batching):
    """KLASS's memory is no RowMemory, so its running batch takes no newcomer: requests wait until it drains
    and start together; ``--batching fixed`` does that for every batch. Each still gets its solo tokens."""
    decoder = Decoder.from_config(f"configs/decoders/{config}.yaml", overrides)
    server = Server(decoder, max_batch=16, join=batching == "continuous")
    calls = mixed_calls(10, seed=2)
    expected = solo(decoder, calls)
    with serving(server) as url:
        api = client(url)
        answers = concurrently(
            calls, lambda c: api.completions.create(model=MODEL, prompt=c.prompt, max_tokens=c.max_tokens, seed=c.seed)
        )
        status = health(url)
    assert [a.choices[0].text for a in answers] == [text for text, _ in expected]
    assert status["joined"] == 0


# --- streaming never takes text back ------------------------------------------------------------------------------


#: WINO settings under which the embedded dLLM revokes (the preset's seldom does: 0.02 revocations per example).
REVOKING = ["decoder.verification.draft_threshold=0.1", "decoder.verification.verify_threshold=0.9999"]


@pytest.mark.parametrize("overrides", [[], REVOKING], ids=["preset", "revoking"])
def test_streamed_chunks_concatenate_to_the_final_text_with_wino(overrides):
    """WINO revokes committed tokens of the current block: the server streams only what lies before it, so the
    chunks of every stream are its final text (and its solo text), revocations or not."""
    server = Server.from_config("configs/decoders/wino.yaml", overrides, max_batch=16)
    calls = mixed_calls(16, seed=3)
    outputs = [server.decoder.generate([c.prompt], max_new_tokens=c.max_tokens, seeds=[c.seed]) for c in calls]
    revocations = sum(out.stats[0].extra["wino.revocations"] for out in outputs)
    assert revocations > 0 if overrides else True, "no revocation: the revoking case went untested"
    with serving(server) as url:
        api = client(url)

        def streamed(call: Call) -> str:
            chunks = api.completions.create(
                model=MODEL, prompt=call.prompt, max_tokens=call.max_tokens, seed=call.seed, stream=True
            )
            return "".join(chunk.choices[0].text for chunk in chunks)

        texts = concurrently(calls, streamed)
    assert texts == [out.texts[0] for out in outputs]


def test_decoder_stream_pieces_concatenate_to_the_final_text_with_wino():
    decoder = Decoder.from_config("configs/decoders/wino.yaml", REVOKING)
    calls = mixed_calls(16, seed=3)
    revoked = 0
    for call in calls:
        output = decoder.generate([call.prompt], max_new_tokens=call.max_tokens, seeds=[call.seed])
        revoked += output.stats[0].extra["wino.revocations"]
        assert "".join(decoder.stream(call.prompt, max_new_tokens=call.max_tokens, seed=call.seed)) == output.texts[0]
    assert revoked > 0


def test_stop_strings_cut_the_text_streamed_or_not():
    server = Server.from_config("configs/decoders/llada.yaml")
    full = server.decoder.generate(["sort 4 1 7 9 3"]).texts[0]
    stop = full[3:5]
    with serving(server) as url:
        api = client(url)
        done = api.completions.create(model=MODEL, prompt="sort 4 1 7 9 3", stop=[stop])
        pieces = [
            c.choices[0].text
            for c in api.completions.create(model=MODEL, prompt="sort 4 1 7 9 3", stop=stop, stream=True)
        ]
    assert done.choices[0].text == full[: full.index(stop)] == "".join(pieces)
    assert done.choices[0].finish_reason == "stop"


# --- bad input and faults ---------------------------------------------------------------------------------------


class ExplodesOnBang:
    """Commits each row's most confident eligible position (LLaDA's one token per step), but fails a batch in
    which some prompt holds ``!``."""

    def __init__(self, bang: int):
        self.bang = bang

    @hookimpl
    def dlm_verify(self, state, proposal, window):
        if bool((state.canvas[:, : state.gen_start] == self.bang).any()):
            raise StrategyError("a prompt holds '!'", "leave '!' out of prompts")
        return Decision(commit=select_top(proposal.confidence, window.eligible, None), tokens=proposal.tokens)


class Slow:
    """An observer that makes every step last ``seconds`` (0: no delay)."""

    seconds = 0.0

    @hookimpl
    def dlm_step_end(self):
        time.sleep(self.seconds)


@pytest.fixture(scope="module")
def faulty():
    """A server whose verification fails on prompts with ``!`` and whose steps a test can slow down."""
    registry = registry_with(
        (
            "verification",
            "explode",
            NoParams,
            lambda config, context: ExplodesOnBang(context.dllm.tokenizer.convert_tokens_to_ids("!")),
        )
    )
    config = load_config("configs/decoders/llada.yaml", ["decoder.verification=explode"], registry=registry)
    slow = Slow()
    server = Server(Decoder(config, registry=registry, observers=[slow]), max_batch=16)
    with serving(server) as url:
        yield server, url, slow


@pytest.mark.parametrize(
    ("body", "status", "param", "needle"),
    [
        (b'{"prompt": "ab", ', 400, None, "not valid JSON"),
        ({"prompt": "ab", "max_tokens": -3}, 400, "max_tokens", "at least 1"),
        ({"prompt": "ab", "max_tokens": "8"}, 400, "max_tokens", "must be an integer"),
        ({"prompt": "ab", "temperature": "hot"}, 400, "temperature", "must be a number"),
        ({"prompt": 7}, 400, "prompt", "string"),
        ({"prompt": "ab", "stream": "yes"}, 400, "stream", "true or false"),
        ({"prompt": "x" * 120, "max_tokens": 32}, 400, "prompt", "context of 128"),
        ({"prompt": "ab", "frobnicate": 1}, 400, "frobnicate", "unknown field"),
        ({"prompt": "ab", "logprobs": 3}, 400, "logprobs", "not supported"),
        ({"prompt": "ab", "model": "gpt-9"}, 404, "model", "serves 'embedded:dllm'"),
        ({"prompt": "ab", "n": 0}, 400, "n", "n must be in"),
        ({"prompt": "ab", "stop": [1]}, 400, "stop", "stop must be"),
        ([1, 2], 400, None, "JSON object"),
    ],
)
def test_bad_input_gets_a_4xx_with_the_error_body_and_the_server_keeps_serving(faulty, body, status, param, needle):
    _, url, _ = faulty
    sent = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(f"{url}/v1/completions", **sent)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and needle in error["message"]
    assert client(url).completions.create(model=MODEL, prompt="ab", max_tokens=4).choices[0].finish_reason


def test_chat_messages_are_checked(faulty):
    _, url, _ = faulty
    response = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": 3}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0]"


def test_a_strategy_error_fails_that_request_alone(faulty):
    """The failing batch is rerun one request per batch: the one with ``!`` fails (500, naming the strategy and
    its fix), the others get their solo text."""
    server, url, _ = faulty
    calls = mixed_calls(6, seed=4)
    calls[2].prompt = "sort 3 ! 1"
    reference = Decoder.from_config("configs/decoders/llada.yaml")
    expected = solo(reference, calls)

    def send(call: Call):
        body = {"model": MODEL, "prompt": call.prompt, "max_tokens": call.max_tokens, "seed": call.seed}
        return httpx.post(f"{url}/v1/completions", json=body, timeout=60)

    responses = concurrently(calls, send)
    for index, (response, (text, _)) in enumerate(zip(responses, expected)):
        if index == 2:
            assert response.status_code == 500
            message = response.json()["error"]["message"]
            assert "explode" in message and "a prompt holds '!'" in message and "leave '!' out" in message
        else:
            assert response.status_code == 200 and response.json()["choices"][0]["text"] == text
    assert health(url)["running"] == 0


def test_a_disconnected_client_frees_its_row(faulty):
    """A stream closed after its first chunk, and a request whose client gives up: both rows leave the batch at
    the next step, long before their 64 steps would end."""
    server, url, slow = faulty
    slow.seconds = 0.05
    try:
        before = health(url)["cancelled"]
        started = time.perf_counter()
        body = {"model": MODEL, "prompt": "sort 4 1", "max_tokens": 64, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body) as response:
            next(response.iter_lines())
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=0.5)
        while health(url)["running"] and time.perf_counter() - started < 3:
            time.sleep(0.02)
        assert health(url)["running"] == 0 and time.perf_counter() - started < 3  # 64 steps would take 3.2 s
        assert health(url)["cancelled"] == before + 2
    finally:
        slow.seconds = 0.0


SERVER_SCRIPT = """
import sys, time
from dlm_decode.api import hookimpl
from dlm_decode.decoder import Decoder
from dlm_decode.serve.app import Server, run_server

class Slow:
    @hookimpl
    def dlm_step_end(self):
        time.sleep(0.04)

decoder = Decoder.from_config("configs/decoders/llada.yaml", observers=[Slow()])
run_server(Server(decoder, drain_timeout=20), "127.0.0.1", int(sys.argv[1]))
"""


def test_sigterm_drains_running_requests_then_exits(tmp_path: Path):
    """SIGTERM while a request decodes: the listening socket closes, the request still gets its whole answer,
    then the process exits."""
    script = tmp_path / "serve.py"
    script.write_text(textwrap.dedent(SERVER_SCRIPT))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, str(script), str(port)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.perf_counter() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            assert process.poll() is None and time.perf_counter() < deadline, process.stderr.read()
            time.sleep(0.1)
        body = {"model": MODEL, "prompt": "sort 4 1 7", "max_tokens": 40}
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(lambda: httpx.post(f"{url}/v1/completions", json=body, timeout=60))
            while health(url)["running"] == 0:
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.ConnectError):  # no new request once draining (40 steps take 1.6 s)
                httpx.get(f"{url}/health")
            response = answer.result()
        assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("stop", "length")
        # uvicorn re-raises the signal once it has drained, so the exit status is SIGTERM's
        assert process.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
