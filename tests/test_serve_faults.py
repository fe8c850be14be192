"""``dlm-decode serve`` under bad input and faults: 4xx answers with OpenAI's error body while the server keeps
serving, a strategy error that fails its request alone, disconnected clients whose rows are freed, and SIGTERM,
which drains the running requests before the process exits (docs/serve.md)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from dlm_decode.api import Decision, StrategyError, hookimpl, select_top  # noqa: E402
from dlm_decode.config import load_config  # noqa: E402
from dlm_decode.decoder import Decoder  # noqa: E402
from dlm_decode.serve.app import Server, wait_until_healthy  # noqa: E402
from dlm_decode.testing.registry import registry_with  # noqa: E402

from helpers import (  # noqa: E402
    SERVED_MODEL,
    Call,
    NoParams,
    concurrently,
    free_port,
    mixed_calls,
    openai_client,
    server_health,
    serving,
    solo_answers,
)

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
    assert openai_client(url).completions.create(model=SERVED_MODEL, prompt="ab", max_tokens=4).choices[0].finish_reason


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
    expected = solo_answers(reference, calls)

    def send(call: Call):
        body = {"model": SERVED_MODEL, "prompt": call.prompt, "max_tokens": call.max_tokens, "seed": call.seed}
        return httpx.post(f"{url}/v1/completions", json=body, timeout=60)

    responses = concurrently(calls, send)
    for index, (response, (text, _)) in enumerate(zip(responses, expected)):
        if index == 2:
            assert response.status_code == 500
            message = response.json()["error"]["message"]
            assert "explode" in message and "a prompt holds '!'" in message and "leave '!' out" in message
        else:
            assert response.status_code == 200 and response.json()["choices"][0]["text"] == text
    assert server_health(url)["running"] == 0


def test_a_disconnected_client_frees_its_row(faulty):
    """A stream closed after its first chunk, and a request whose client gives up: both rows leave the batch at
    the next step, long before their 64 steps would end."""
    server, url, slow = faulty
    slow.seconds = 0.05
    try:
        before = server_health(url)["cancelled"]
        started = time.perf_counter()
        body = {"model": SERVED_MODEL, "prompt": "sort 4 1", "max_tokens": 64, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body) as response:
            next(response.iter_lines())
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=0.5)
        while server_health(url)["running"] and time.perf_counter() - started < 3:
            time.sleep(0.02)
        assert server_health(url)["running"] == 0 and time.perf_counter() - started < 3  # 64 steps would take 3.2 s
        assert server_health(url)["cancelled"] == before + 2
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
        wait_until_healthy(url, process, 120)
        body = {"model": SERVED_MODEL, "prompt": "sort 4 1 7", "max_tokens": 40}
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(lambda: httpx.post(f"{url}/v1/completions", json=body, timeout=60))
            while server_health(url)["running"] == 0:
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
