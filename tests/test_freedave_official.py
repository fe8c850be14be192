"""The ``freedave`` verification against the official FreeDave code, through ``reference/official_freedave.json``.

``tests/reference/record_freedave.py`` ran, in an environment of its own (transformers 4.49), the official
``block_decode_with_full_attention_FreeDave`` of cychomatica/FreeDave (``draft_steps`` 1, 4 and 8), its
one-token-per-step baseline ``block_decode_with_full_attention`` and LLaDA's own ``generate`` (one token per
step) on the tiny LLaDA checkpoint (loaded with FreeDave's LLaDA modeling files), for the 5 prompts of
``record.py``, blocks of 8 and 32 over 32 new tokens, temperature 0, the whole canvas decoded; it recorded the
tokens and the number of model forwards of each case.

Why the project's ``freedave`` is not compared token for token with the official FreeDave cases: the official
code has no cache-free path. Each block starts with a full forward whose keys and values of the prefix (prompt
and earlier blocks) are kept and read by every later forward of the block (its LLaDA modeling file fills the
cache whatever ``use_cache`` says: the recorder checked that ``use_cache=True`` and ``False`` give the same
tokens). On a bidirectional model that prefix cache is an approximation, and on the tiny model it changes the
tokens (the recorder's ``checks``: the cached baseline differs from LLaDA's ``generate``); the project's
``freedave`` decodes with no cache (its drafted canvases are extra batch rows). So the chain checked here is:

* the official FreeDave gives exactly its own one-token-per-step tokens on every case (the paper's lossless
  claim, on the fixture alone), and the project's one-token-per-step decoder with the prefix cache gives those
  same official cached tokens (so the recorded official cases are the project's rule under the official cache);
* the project's ``freedave`` (no cache, every ``draft_steps``, one left-padded batch of the 5 prompts) gives
  exactly the tokens of the project's ``topk`` with one token per step and of LLaDA's ``generate``, the exact
  official one-token-per-step decoder;
* it never makes more forwards per row than one token per step, exactly as many at ``draft_steps: 1``, and fewer
  in all once it drafts. Its counts are compared with the official ones as information only (printed with
  ``-s``): the official counts are those of the cached trajectory (other tokens, so other acceptances), and the
  official code spends a forward on every block start where the project drafts a block's first step from the
  forward before.
"""

from __future__ import annotations

import json
from functools import cache

import pytest

from dlm_decode.decoder import Decoder

from helpers import REFERENCE, FinalCanvas

FIXTURE = json.loads((REFERENCE / "official_freedave.json").read_text(encoding="utf-8"))
PROMPTS = FIXTURE["prompts"]
BLOCKS = (8, 32)
DRAFT_STEPS = (1, 4, 8)
FREEDAVE = "freedave.block_decode_with_full_attention_FreeDave"
CACHED_BASELINE = "freedave.block_decode_with_full_attention"  # one token per step, the official prefix cache
EXACT_BASELINE = "llada.generate"  # one token per step, no cache
GEN_LENGTH = 32


def official(decoder: str, block: int, draft_steps: int | None = None) -> list[dict]:
    """The recorded cases of ``decoder`` for one block length (and draft steps), in prompt order."""
    cases = [
        c
        for c in FIXTURE["cases"]
        if c["decoder"] == decoder
        and c["arguments"]["block_length"] == block
        and c["arguments"].get("draft_steps") == draft_steps
    ]
    assert [c["prompt"] for c in cases] == list(range(len(PROMPTS)))
    return cases


@cache
def decode(block: int, cache_kind: str, *verification: str) -> tuple[list[list[int]], list[int]]:
    """The 5 prompts in one left-padded batch: each row's final canvas and its number of forwards."""
    canvas = FinalCanvas()
    decoder = Decoder.from_config(
        {},
        [
            f"model.dllm.path={REFERENCE / 'llada-tiny'}",
            f"generation.max_new_tokens={GEN_LENGTH}",
            "decoder.window=blocks",
            f"decoder.window.size={block}",
            f"decoder.cache={cache_kind}",
            "decoder.proposal=greedy",
            *verification,
            "generation.stop_at_eos=false",
            "generation.batch_size=16",
        ],
        observers=[canvas],
    )
    out = decoder.generate(PROMPTS)
    return canvas.rows, [stats.nfe for stats in out.stats]


ONE_PER_STEP = ("decoder.verification=topk", "decoder.verification.tokens_per_step=1")


def test_the_fixture_holds_every_case_of_the_official_decoders():
    assert len(FIXTURE["cases"]) == len(BLOCKS) * (2 + len(DRAFT_STEPS)) * len(PROMPTS)
    for case in FIXTURE["cases"]:
        assert len(case["generated"]) == GEN_LENGTH and case["forwards"] >= 1
    # The same prompts, prompt ids and checkpoint as record.py's fixtures: its LLaDA generate (one token per step,
    # blocks of 8, recorded there through Fast-dLLM's copy of the hub modeling file) is recorded again here.
    reference = json.loads((REFERENCE / "official.json").read_text(encoding="utf-8"))
    assert PROMPTS == reference["prompts"] and FIXTURE["prompt_ids"] == reference["prompt_ids"]["llada"]
    earlier = [
        c["generated"]
        for c in reference["cases"]
        if c["decoder"] == "llada.generate"
        and c["arguments"]["steps"] == GEN_LENGTH
        and c["arguments"]["block_length"] == 8
    ]
    assert len(earlier) == len(PROMPTS) and earlier == [c["generated"] for c in official(EXACT_BASELINE, 8)]
    # The recorder's checks: use_cache and draft_mode change no token, FreeDave equals its baseline; the cached
    # baseline differs from the exact one (why the project's freedave is compared with LLaDA's generate).
    checks = FIXTURE["checks"]
    assert len(checks) == len(BLOCKS) * (2 + 3 * len(DRAFT_STEPS))
    assert {name: ok for name, ok in checks.items() if not ok} == {
        f"block {block}: prefix-cached baseline equals llada.generate (no cache)": False for block in BLOCKS
    }


@pytest.mark.parametrize("block", BLOCKS)
def test_the_official_freedave_is_lossless_and_drafts(block):
    """On the fixture alone: every ``draft_steps`` gives the official one-token-per-step tokens (same cache);
    ``draft_steps`` 1 costs its forwards, larger ones fewer (the drafts are accepted on the tiny model)."""
    baseline = official(CACHED_BASELINE, block)
    for draft_steps in DRAFT_STEPS:
        cases = official(FREEDAVE, block, draft_steps)
        assert [c["generated"] for c in cases] == [c["generated"] for c in baseline], f"draft_steps {draft_steps}"
        forwards = [c["forwards"] for c in cases]
        if draft_steps == 1:
            assert forwards == [c["forwards"] for c in baseline] == [GEN_LENGTH] * len(PROMPTS)
        else:
            assert max(forwards) < GEN_LENGTH


@pytest.mark.parametrize("block", BLOCKS)
def test_one_token_per_step_reproduces_the_official_baselines(block):
    """The project's one-token-per-step decoder gives LLaDA's ``generate`` with no cache and the official FreeDave
    baseline with the prefix cache, so the recorded cases are the rule the project's ``freedave`` reproduces."""
    rows, _ = decode(block, "none", *ONE_PER_STEP)
    assert rows == [c["generated"] for c in official(EXACT_BASELINE, block)]
    rows, _ = decode(block, "prefix", *ONE_PER_STEP)
    assert rows == [c["generated"] for c in official(CACHED_BASELINE, block)]


@pytest.mark.parametrize("draft_steps", DRAFT_STEPS)
@pytest.mark.parametrize("block", BLOCKS)
def test_freedave_gives_the_official_one_token_per_step_tokens(block, draft_steps):
    rows, forwards = decode(
        block, "none", "decoder.verification=freedave", f"decoder.verification.draft_steps={draft_steps}"
    )
    one_rows, one_forwards = decode(block, "none", *ONE_PER_STEP)
    exact = [c["generated"] for c in official(EXACT_BASELINE, block)]
    for prompt, (row, one, expected) in enumerate(zip(rows, one_rows, exact, strict=True)):
        assert row == one == expected, f"prompt {prompt}"
    assert all(f <= o for f, o in zip(forwards, one_forwards, strict=True)), (forwards, one_forwards)
    if draft_steps == 1:
        assert forwards == one_forwards
    else:
        assert sum(forwards) < sum(one_forwards)  # the drafts are accepted somewhere on the tiny model
    recorded = [c["forwards"] for c in official(FREEDAVE, block, draft_steps)]
    print(
        f"\nblock {block}, draft_steps {draft_steps}: forwards per prompt, project {forwards} "
        f"(one token per step {one_forwards}), official FreeDave {recorded} (prefix-cached trajectory)"
    )
