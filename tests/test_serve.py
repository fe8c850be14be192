"""``dlm-decode serve``: the OpenAI client's calls, continuous batching that gives every request the tokens of its
solo ``Decoder.generate`` (rows joining and leaving a running batch, and batches that cannot take newcomers), and
streams that never take text back (WINO). Bad input and faults: tests/test_serve_faults.py (docs/serve.md)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from dlm_decode.decoder import Decoder  # noqa: E402
from dlm_decode.serve.app import Server  # noqa: E402

from helpers import SERVED_MODEL, Call, concurrently, mixed_calls, openai_client, server_health, serving, solo_answers  # noqa: E402

# --- the OpenAI client's calls ----------------------------------------------------------------------------------


def test_the_openai_client_completes_and_chats_streaming_and_not():
    server = Server.from_config("configs/decoders/llada.yaml")
    prompt = "sort 4 1 7 9 3"
    expected = server.decoder.generate([prompt]).texts[0]  # the chat template wraps it, as a one-turn chat does
    assert expected
    with serving(server) as url:
        api = openai_client(url)
        done = api.completions.create(model=SERVED_MODEL, prompt=prompt)
        assert done.choices[0].text == expected and done.choices[0].finish_reason == "stop"
        assert done.usage.prompt_tokens == len(server.decoder.dllm.encode([prompt])[0])
        chunks = list(
            api.completions.create(
                model=SERVED_MODEL, prompt=prompt, stream=True, stream_options={"include_usage": True}
            )
        )
        pieces = [chunk.choices[0].text for chunk in chunks if chunk.choices]
        assert "".join(pieces) == expected and len([p for p in pieces if p]) > 1  # one token per step: pieces
        assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens and not chunks[-1].choices
        messages = [{"role": "user", "content": prompt}]
        chat = api.chat.completions.create(model=SERVED_MODEL, messages=messages)
        assert chat.choices[0].message.content == expected and chat.choices[0].message.role == "assistant"
        chunks = list(api.chat.completions.create(model=SERVED_MODEL, messages=messages, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert [m.id for m in api.models.list().data] == [SERVED_MODEL]
        assert server_health(url)["status"] == "ok"


# --- continuous batching: every request gets its solo tokens ----------------------------------------------------


@pytest.mark.parametrize("name", ["llada", "fast-dllm", "apd"])
def test_32_concurrent_requests_get_the_tokens_of_their_solo_generate(name):
    """32 requests at temperature 0 with mixed prompt lengths, ``max_tokens`` and arrival times: rows join the
    running batch (re-padded on both sides) and leave it as they finish, and each answer is its solo
    ``Decoder.generate`` (the text, its token count and finish reason; the embedded tokenizer has one token per
    character). For APD, temperature 0 is the greedy draft: the server's variant of the config."""
    server = Server.from_config(f"configs/decoders/{name}.yaml", max_batch=32)
    calls = mixed_calls(32)
    expected = solo_answers(server.variant(0.0, None), calls)
    with serving(server) as url:
        api = openai_client(url)
        answers = concurrently(
            calls,
            lambda c: api.completions.create(
                model=SERVED_MODEL, prompt=c.prompt, max_tokens=c.max_tokens, seed=c.seed, temperature=0
            ),
        )
        status = server_health(url)
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
    expected = solo_answers(server.decoder, calls)
    with serving(server) as url:
        api = openai_client(url)
        answers = concurrently(
            calls,
            lambda c: api.completions.create(model=SERVED_MODEL, prompt=c.prompt, max_tokens=c.max_tokens, seed=c.seed),
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
    expected = solo_answers(decoder, calls)
    with serving(server) as url:
        api = openai_client(url)
        answers = concurrently(
            calls,
            lambda c: api.completions.create(model=SERVED_MODEL, prompt=c.prompt, max_tokens=c.max_tokens, seed=c.seed),
        )
        status = server_health(url)
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
        api = openai_client(url)

        def streamed(call: Call) -> str:
            chunks = api.completions.create(
                model=SERVED_MODEL, prompt=call.prompt, max_tokens=call.max_tokens, seed=call.seed, stream=True
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
        api = openai_client(url)
        done = api.completions.create(model=SERVED_MODEL, prompt="sort 4 1 7 9 3", stop=[stop])
        pieces = [
            c.choices[0].text
            for c in api.completions.create(model=SERVED_MODEL, prompt="sort 4 1 7 9 3", stop=stop, stream=True)
        ]
    assert done.choices[0].text == full[: full.index(stop)] == "".join(pieces)
    assert done.choices[0].finish_reason == "stop"
