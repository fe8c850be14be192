"""Record SDAR's evaluation decoder on prompts whose tail fills part of the first generated block.

The companion of ``record_block.py`` for one question: how many tokens SDAR's evaluation decoder
(``evaluation/opencompass/opencompass/models/huggingface_bd3.py``'s ``block_diffusion_generate``, behind the paper's
numbers) commits per step when the first block it decodes holds fewer masks than ``block_length``. Its blocks start
at position 0, so a prompt of ``L`` tokens leaves ``block_length - L % block_length`` masks in that block; the decoder
still commits ``block_length / denoising_steps`` tokens per step (at threshold 1.0: a ``torch.topk`` over the block
with the committed positions at ``-inf``, so a last step takes what is left). It runs on the committed
``sdar-tiny`` checkpoint (not rebuilt), in the environment ``record_block.py`` describes::

    TORCHDYNAMO_DISABLE=1 /work/ref/venv-sdar/bin/python tests/reference/record_sdar_partial.py --sdar SDAR

``--sdar`` is a checkout of ``JetAstra/SDAR`` (the committed fixture: c2041a8). The official decoder returns the
tokens only; the model it is given is wrapped in :class:`CountingMasks`, which records the number of masks in the
ids of every forward the decoder makes (its prefill and its cache-storing forwards show 0), and nothing else.

What it writes: ``official_sdar_partial.json`` with the prompts (chat-templated ids of 17 to 28 tokens, every length
off the block grid of 8), and per case the decoder's arguments (blocks of 8; ``denoising_steps`` 2 and 1, i.e. 4 and 8
tokens per step, at threshold 1.0; 2 at threshold 0.9), the generated tokens and ``masks_per_forward``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_block import _SHIMS  # noqa: E402

from record import GEN_LENGTH, OfficialFiles, _chat_ids, recorder_parser, run_recorder  # noqa: E402

#: Chat-templated lengths 26, 27, 25, 17 and 28 on ``sdar-tiny``: 6, 5, 7, 7 and 4 masks in the first block of 8.
PROMPTS = ["add 2 and 3", "name a prime", "one word: sea", "a", "what is 6 x 7?"]
#: ``(block_length, denoising_steps, threshold)``: 4 and 8 tokens per step at threshold 1.0, 4 at 0.9.
SETTINGS = ((8, 2, 1.0), (8, 1, 1.0), (8, 2, 0.9))
DECODER = "sdar.huggingface_bd3.block_diffusion_generate"


class CountingMasks(torch.nn.Module):
    """The official SDAR model as its decoder calls it, recording the masks in the ids of every forward."""

    def __init__(self, model: torch.nn.Module, mask_id: int):
        super().__init__()
        self.model, self.mask_id = model, mask_id
        self.config = model.config
        self.masks: list[int] = []

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, input_ids: torch.Tensor, **kwargs):
        self.masks.append(int((input_ids == self.mask_id).sum()))
        return self.model(input_ids=input_ids, **kwargs)


def official_modules(sdar: Path, scratch: Path) -> tuple[OfficialFiles, object, object]:
    """``(files, modeling_sdar, huggingface_bd3)`` imported from the checkout, behind ``record_block.py``'s
    stand-ins."""
    files = OfficialFiles({"sdar": sdar})
    for name, text in _SHIMS.items():
        (scratch / "shims" / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / "shims" / name).write_text(text, encoding="utf-8")
    sys.path.insert(0, str(scratch / "shims"))
    hub = ("configuration_sdar.py", "fused_linear_diffusion_cross_entropy.py", "modeling_sdar.py")
    modeling = files.package(scratch, "sdar_hub", sdar / "training/model/SDAR-4B-Chat", hub)["modeling_sdar"]
    bd3 = files.load("sdar_bd3", sdar / "evaluation/opencompass/opencompass/models/huggingface_bd3.py")
    return files, modeling, bd3


def evaluation_runs(bd3, model, prompts: list[list[int]], settings, mask_id: int, stops: list[int]):
    """SDAR's evaluation decoder (``huggingface_bd3.block_diffusion_generate``), greedy (temperature 1.0 with
    ``top_k=1``: it asserts temperature > 0), on each prompt alone, the torch seed set to 0 before each call, for
    every ``(block_length, denoising_steps, threshold)`` of ``settings``: yields ``(arguments, prompt index,
    generated ids)``."""
    common = {
        "mask_id": mask_id,
        "gen_length": GEN_LENGTH,
        "temperature": 1.0,
        "top_k": 1,
        "top_p": 1.0,
        "remasking": "low_confidence",
        "stopping_criteria_idx": stops,
    }
    for block, steps, threshold in settings:
        arguments = {**common, "block_length": block, "denoising_steps": steps, "threshold": threshold}
        for index, prompt in enumerate(prompts):
            torch.manual_seed(0)
            p = torch.tensor([prompt])
            with torch.no_grad():
                tokens = bd3.block_diffusion_generate(
                    model, None, {"input_ids": p, "attention_mask": torch.ones_like(p)}, **arguments
                )
            assert tokens[0, : len(prompt)].tolist() == prompt
            yield arguments, index, tokens[0, len(prompt) :].tolist()


def record(args: argparse.Namespace) -> None:
    import transformers

    checkpoint = args.out / "sdar-tiny"
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    added = json.loads((checkpoint / "added_tokens.json").read_text(encoding="utf-8"))
    mask_id, stops = added["<|MASK|>"], [added["<|im_end|>"], added["<|endoftext|>"]]
    with tempfile.TemporaryDirectory() as scratch:
        files, modeling, bd3 = official_modules(args.sdar, Path(scratch))
        tokenizer = transformers.Qwen2Tokenizer.from_pretrained(str(checkpoint))
        inner = modeling.SDARForCausalLM.from_pretrained(str(checkpoint), torch_dtype=torch.float32).eval()
        model = CountingMasks(inner, mask_id)
        prompts = [_chat_ids(tokenizer, p) for p in PROMPTS]
        assert all(len(p) % 8 for p in prompts), "every prompt must leave a partial first block"
        cases = []
        for arguments, index, generated in evaluation_runs(bd3, model, prompts, SETTINGS, mask_id, stops):
            case = {"decoder": DECODER, "arguments": arguments, "prompt": index, "generated": generated}
            cases.append({**case, "masks_per_forward": model.masks})
            model.masks = []  # the next call's forwards
    result = {
        "repository": "JetAstra/SDAR",
        "commit": args.commit,
        **files.provenance(),
        "prompts": PROMPTS,
        "python": sys.version.split()[0],
        "stand_ins": sorted(_SHIMS),
        "checkpoint": "sdar-tiny",
        "checkpoint_block_size": config["block_size"],
        "gen_length": GEN_LENGTH,
        "prompt_ids": prompts,
        "cases": cases,
    }
    (args.out / "official_sdar_partial.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = recorder_parser(__doc__, "sdar")
    parser.add_argument("--commit", default="c2041a8", help="the checkout's commit, recorded in the fixture")
    run_recorder(parser, record, "SDAR's modeling code compiles its training attention")


if __name__ == "__main__":
    main()
