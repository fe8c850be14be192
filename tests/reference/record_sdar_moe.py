"""Record what SDAR's mixture-of-experts modeling code (SDAR-30B-A3B) does on a tiny random-weight checkpoint.

The companion of ``record_block.py`` for SDAR's MoE checkpoints (``model_type: sdar_moe``), which the project loads
on transformers' own ``Qwen3MoeForCausalLM``. Run it once, in a separate environment, with the official files
passed in as paths (nothing of them is copied into the repository)::

    python -m venv /work/ref/venv-sdar
    /work/ref/venv-sdar/bin/pip install torch==2.13.0 transformers==4.53.1 accelerate
    TORCHDYNAMO_DISABLE=1 /work/ref/venv-sdar/bin/python tests/reference/record_sdar_moe.py \
        --sdar SDAR --sdar-moe-hub TEAM-MoE-dLLM --out tests/reference

``--sdar`` is a checkout of ``JetAstra/SDAR`` (its evaluation decoder,
``evaluation/opencompass/opencompass/models/huggingface_bd3.py``). ``--sdar-moe-hub`` is a directory holding the
``modeling_sdar_moe.py`` published with the MoE checkpoints (``JetLM/SDAR-30B-A3B-Chat``; the SDAR repository
holds the dense models' code only). No copy of the hub's own file is reachable here: the committed fixtures come
from the copy vendored in PKU-SEC-Lab/TEAM-MoE-dLLM e9c502e (2026-02-09, from ``JetLM/SDAR-30B-A3B-Chat-b32``),
which adds TEAM's expert-skipping inputs (``stored_hidden_states``, ``decoded_index``, ``expert_limit_index``,
``choice_id``) and returns ``(output, per-layer MLP outputs)``. With those inputs left at ``None`` its sparse block
runs the hub's block, which the file keeps verbatim (commented out above TEAM's branch): ``softmax`` in float32 ->
``topk`` -> renormalise if ``norm_topk_prob`` -> cast -> a loop over the experts with ``index_add_``. This script
calls the model through :class:`FirstOutput`, which hands the decoder the output alone. Transformers 4.53.1
(SDAR asks for >= 4.52.4) on Python 3.11.

Stand-ins written here, never taken from the packages they replace: ``record_block.py``'s ``flash_attn``,
``mmengine`` and ``opencompass`` (see there), and ``configuration_sdar_moe.py``, which the hub ships beside the
modeling file and no copy of which is reachable: transformers' ``Qwen3MoeConfig`` under ``model_type: sdar_moe``,
as the dense ``configuration_sdar.py`` is ``Qwen3Config`` under ``model_type: sdar``.

What it writes into ``--out`` (well under a megabyte):

* ``sdar-moe-tiny/``: SDAR's tokenizer layout (``record_block.build_sdar``'s), its ``config.json`` with the
  Qwen3-MoE keys (``num_experts``, ``num_experts_per_tok``, ``moe_intermediate_size``, ``norm_topk_prob``,
  ``decoder_sparse_step``, ``mlp_only_layers``, ...), ``model_type: sdar_moe``, ``block_size``, and per-expert weights
  under the hub's names (``mlp.gate.weight``, ``mlp.experts.{e}.{gate,up,down}_proj.weight``); one dense layer
  (``mlp_only_layers``) so that the dense/sparse choice is exercised; random norms and router weights, stored in
  bfloat16 (a third of a megabyte) and read in float32 by both sides.
* ``logits_sdar_moe.safetensors``: logits of full forwards (one prompt; a left-padded batch), with their inputs.
* ``official_sdar_moe.json``: prompt ids, the experts each routed token chose in the first sparse layer (to show
  the routing is not trivial), and the tokens SDAR's evaluation decoder returned, with all its arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_block import _SHIMS, EOS_BOOST, HEAD, _qwen_tensors, block_causal, build_sdar  # noqa: E402
from record_sdar_partial import DECODER, evaluation_runs  # noqa: E402

from record import (
    GEN_LENGTH,
    PADDED_PROMPTS,
    PROMPTS,
    OfficialFiles,
    _chat_ids,
    _normal,
    _save_shards,
    _silence_rows,
    recorder_parser,
    run_recorder,
)  # noqa: E402

EXPERTS, TOP_K, EXPERT_HIDDEN = 8, 2, 16
LAYERS, DENSE_LAYERS = 3, [1]
ROUTER_STD = 0.4  # router logits of a few units: tokens pick different experts

#: What the hub's ``configuration_sdar_moe.py`` provides (see the module docstring).
CONFIG_SHIM = """\
from transformers import Qwen3MoeConfig


class SDARMoeConfig(Qwen3MoeConfig):
    model_type = "sdar_moe"
"""


def sparse_experts(
    tensors: dict[str, torch.Tensor], g: torch.Generator, layers: list[int], experts: int, hidden: int
) -> None:
    """Replace the dense MLP of each of ``layers`` in ``tensors`` (``model.layers.{i}.mlp.*``) by a router
    ``mlp.gate`` (std ``ROUTER_STD``) and ``experts`` SiLU-gated experts ``mlp.experts.{e}.{gate,up,down}_proj`` of
    ``hidden`` units, drawn from ``g`` in that order (Qwen3-MoE's and LLaDA-MoE's per-expert names)."""
    d = tensors["model.norm.weight"].shape[0]
    for i in layers:
        layer = f"model.layers.{i}.mlp."
        for name in ("gate_proj", "up_proj", "down_proj"):
            del tensors[layer + name + ".weight"]
        tensors[layer + "gate.weight"] = _normal(g, experts, d, std=ROUTER_STD)
        for e in range(experts):
            expert = f"{layer}experts.{e}."
            tensors[expert + "gate_proj.weight"] = _normal(g, hidden, d, std=d**-0.5)
            tensors[expert + "up_proj.weight"] = _normal(g, hidden, d, std=d**-0.5)
            tensors[expert + "down_proj.weight"] = _normal(g, d, hidden, std=hidden**-0.5)


def build_sdar_moe(directory: Path, seed: int = 5) -> dict[str, int]:
    """An SDAR-30B-A3B-layout checkpoint at a tiny scale: SDAR's tokenizer files, its config with Qwen3-MoE's keys,
    per-expert weights. Returns the added tokens' ids."""
    ids = build_sdar(directory)  # tokenizer, generation config; its dense config and weights are replaced below
    for stale in directory.glob("model*.safetensors*"):
        stale.unlink()
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    d, heads, hidden = config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]
    config.update(
        {
            "architectures": ["SDARMoeForCausalLM"],
            "auto_map": {
                "AutoConfig": "configuration_sdar_moe.SDARMoeConfig",
                "AutoModel": "modeling_sdar_moe.SDARMoeModel",
                "AutoModelForCausalLM": "modeling_sdar_moe.SDARMoeForCausalLM",
            },
            "model_type": "sdar_moe",
            "num_hidden_layers": LAYERS,
            "max_window_layers": LAYERS,
            "decoder_sparse_step": 1,
            "mlp_only_layers": DENSE_LAYERS,
            "moe_intermediate_size": EXPERT_HIDDEN,
            "num_experts": EXPERTS,
            "num_experts_per_tok": TOP_K,
            "norm_topk_prob": True,
            "output_router_logits": False,
            "router_aux_loss_coef": 0.001,
        }
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    g = torch.Generator().manual_seed(seed)
    tensors = _qwen_tensors(g, d, heads, config["num_key_value_heads"], LAYERS, hidden, qk_norm=True)
    sparse_experts(tensors, g, [i for i in range(LAYERS) if i not in DENSE_LAYERS], EXPERTS, EXPERT_HIDDEN)
    tensors["lm_head.weight"][[ids["<|im_end|>"], ids["<|endoftext|>"]]] *= EOS_BOOST  # as build_sdar's head
    _silence_rows(tensors["lm_head.weight"], [ids["<|MASK|>"], *range(len(ids) + 272, HEAD)])
    _save_shards({name: t.to(torch.bfloat16) for name, t in tensors.items()}, directory, shards=2)  # half the bytes
    return ids


class FirstOutput(torch.nn.Module):
    """The official MoE model as its decoders call it: TEAM's copy returns ``(output, MLP outputs)``; this returns
    the output (its ``device`` and ``config`` are the model's)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)[0]


def official_modules(args: argparse.Namespace, scratch: Path) -> tuple[OfficialFiles, object, object]:
    """``(files, modeling_sdar_moe, huggingface_bd3)`` imported from the checkouts, behind the stand-ins."""
    files = OfficialFiles({"sdar": args.sdar, "sdar-moe-hub": args.sdar_moe_hub})
    for name, text in {**_SHIMS, "sdar_moe_hub/configuration_sdar_moe.py": CONFIG_SHIM}.items():
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).write_text(text, encoding="utf-8")
    (scratch / "sdar_moe_hub/__init__.py").write_text("", encoding="utf-8")
    (scratch / "sdar_moe_hub/modeling_sdar_moe.py").symlink_to((args.sdar_moe_hub / "modeling_sdar_moe.py").resolve())
    files.record(args.sdar_moe_hub / "modeling_sdar_moe.py")
    sys.path[:0] = [str(scratch)]
    modeling = importlib.import_module("sdar_moe_hub.modeling_sdar_moe")
    bd3 = files.load("sdar_bd3", args.sdar / "evaluation/opencompass/opencompass/models/huggingface_bd3.py")
    return files, modeling, bd3


def record(args: argparse.Namespace) -> None:
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(0)
    out = args.out
    ids = build_sdar_moe(out / "sdar-moe-tiny")
    mask_id, pad_id = ids["<|MASK|>"], ids["<|endoftext|>"]
    with tempfile.TemporaryDirectory() as scratch:
        files, modeling, bd3 = official_modules(args, Path(scratch))
        tokenizer = transformers.Qwen2Tokenizer.from_pretrained(str(out / "sdar-moe-tiny"))
        inner = modeling.SDARMoeForCausalLM.from_pretrained(str(out / "sdar-moe-tiny"), torch_dtype=torch.float32)
        model = FirstOutput(inner.eval())
        prompts = [_chat_ids(tokenizer, p) for p in PROMPTS]
        tensors, forwards = {}, []
        chosen = {}

        def route(module, inputs, output):  # the first sparse layer's router logits -> its top-k experts
            chosen.setdefault("experts", output.topk(TOP_K, dim=-1).indices.tolist())

        hook = inner.model.layers[0].mlp.gate.register_forward_hook(route)
        with torch.no_grad():
            row = torch.tensor([prompts[1] + [mask_id] * GEN_LENGTH])
            length = row.shape[1]
            mask = block_causal(length, 4)[None].float()  # [1, L, L] float 0/1, as SDAR's generate.py passes it
            positions = torch.arange(length)[None]
            logits = model(row, attention_mask=mask, position_ids=positions).logits
            hook.remove()
            tensors.update({"full.input_ids": row, "full.position_ids": positions, "full.mask": mask.bool()[:, None]})
            tensors["full.logits"] = logits
            forwards.append({"name": "full", "note": f"prompt {PROMPTS[1]!r} + {GEN_LENGTH} masks, blocks of 4"})
            # A left-padded batch, as record_block.py builds it: blocks and positions from each row's first real
            # token, pad keys hidden, a pad query sees itself.
            rows = [_chat_ids(tokenizer, p) + [mask_id] * 8 for p in PADDED_PROMPTS]
            width = max(len(r) for r in rows)
            batch = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
            masks, places = [], []
            for r in rows:
                pad = width - len(r)
                real = torch.arange(width) >= pad
                m = block_causal(width, 4, offset=-pad) & real[None, :] & real[:, None]
                masks.append(m | (torch.eye(width, dtype=torch.bool) & ~real[:, None]))
                places.append((torch.arange(width) - pad).clamp(min=0))
            mask, positions = torch.stack(masks)[:, None], torch.stack(places)
            logits = model(batch, attention_mask=mask, position_ids=positions).logits
            tensors.update({"padded.input_ids": batch, "padded.position_ids": positions, "padded.mask": mask})
            tensors["padded.logits"] = logits
            forwards.append({"name": "padded", "note": "left-padded batch (pad <|endoftext|>), blocks of 4"})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "logits_sdar_moe.safetensors"))

        cases = []
        stops = [ids["<|im_end|>"], ids["<|endoftext|>"]]
        settings = ((4, 4, 1.0), (4, 1, 1.0), (8, 2, 1.0), (8, 4, args.threshold))
        for arguments, index, generated in evaluation_runs(bd3, model, prompts, settings, mask_id, stops):
            cases.append({"decoder": DECODER, "arguments": arguments, "prompt": index, "generated": generated})

    result = moe_fixture(
        files,
        head={},
        stand_ins=sorted([*_SHIMS, "configuration_sdar_moe.py"]),
        ids=ids,
        prompts=prompts,
        experts=chosen["experts"],
        forwards=forwards,
        cases=cases,
    )
    (out / "official_sdar_moe.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def moe_fixture(
    files: OfficialFiles,
    *,
    head: dict,
    stand_ins: list[str] | None,
    ids: dict[str, int],
    prompts: list[list[int]],
    experts: list[list[int]],
    forwards: list[dict],
    cases: list[dict],
) -> dict:
    """The fixture of a mixture-of-experts recorder (this one, ``record_llada2.py``): ``head`` first, then the
    versions, the official files (and the ``stand_ins`` written in their place), the prompts, special ids and prompt
    ids, the experts each token chose in the first sparse layer, the recorded forwards and the decoder cases."""
    import transformers

    return {
        **head,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "official_files": files.files,
        **({"stand_ins": stand_ins} if stand_ins is not None else {}),
        "prompts": PROMPTS,
        "padded_prompts": PADDED_PROMPTS,
        "gen_length": GEN_LENGTH,
        "special_ids": ids,
        "prompt_ids": prompts,
        "first_sparse_layer_experts": experts,
        "forwards": forwards,
        "cases": cases,
    }


def main() -> None:
    parser = recorder_parser(__doc__, "sdar", "sdar-moe-hub")
    parser.add_argument("--threshold", type=float, default=0.3, help="a threshold the tiny model crosses now and then")
    run_recorder(parser, record, "SDAR's modeling code compiles its training attention")


if __name__ == "__main__":
    main()
