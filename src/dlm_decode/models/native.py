"""LLaDA, Dream, SDAR and Fast-dLLM v2 checkpoints on transformers' own classes: none of the checkpoint's code runs.

The modeling files published with LLaDA and Dream were written for transformers 4.4x and do not load on the
transformers this project needs (LLaDA's never calls ``post_init``, Dream's asks for a RoPE type transformers 5
no longer has), and neither takes position ids together with a key/value cache, which caches, WINO and batches of
prompts of different lengths need. Their weights are those of a Llama and a Qwen2 decoder, so a checkpoint is
read from its ``config.json`` and safetensors and mapped onto ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` with
bidirectional attention (``config.is_causal = False``; every forward also gets the project's 4-D mask):

=============  =============================================  =======================  ===============================
``model_type`` ``config.json``                                class                    weights
=============  =============================================  =======================  ===============================
``llada``      LLaDA's own fields (``d_model``, ``n_heads``,   ``LlamaForCausalLM``     ``model.transformer.*`` renamed
               ``mlp_hidden_size``, ``block_type: llama``...)                           (:data:`LLADA_KEYS`)
``dream``      Qwen2's fields under another ``model_type``    ``Qwen2ForCausalLM``     Qwen2's own names
``sdar``       Qwen3's fields and ``block_size``              ``Qwen3ForCausalLM``     Qwen3's own names
``sdar_moe``   Qwen3-MoE's fields and ``block_size``          ``Qwen3MoeForCausalLM``  Qwen3-MoE's own names
``fast_dllm_   Qwen2's fields and ``bd_size``                 ``Qwen2ForCausalLM``     Qwen2's own names
qwen``
``llada`` +    LLaDA-MoE's fields (``moe_layer_freq``...)    ``Qwen3MoeForCausalLM``  Qwen3-MoE's own names
experts
=============  =============================================  =======================  ===============================

SDAR (Cheng et al. 2025, arXiv 2510.06303) is a block-diffusion model converted from Qwen3: its attention is
block-causal (:class:`~dlm_decode.masks.AttentionPattern`, blocks of ``block_size`` from position 0, the
``sdar`` family of :mod:`~dlm_decode.models.families`), which the project's masks give the same class; its code
imports flash-attention's Triton RMSNorm at module level, so it does not even import without a GPU stack.
SDAR's mixture of experts (SDAR-30B-A3B, ``model_type: sdar_moe``) is the same
conversion of Qwen3-30B-A3B: its ``modeling_sdar_moe.py`` is transformers 4.52's Qwen3-MoE file with SDAR's attention,
and its sparse block is Qwen3-MoE's operation for operation (router ``mlp.gate``: a bias-free linear, a float32 softmax
over all experts, top-``num_experts_per_tok``, renormalised when ``norm_topk_prob``, cast back; experts: SiLU-gated
MLPs of ``moe_intermediate_size`` weighted and summed; no shared expert; a dense MLP of ``intermediate_size`` in the
layers of ``mlp_only_layers`` and off the ``decoder_sparse_step`` grid), so it loads onto ``Qwen3MoeForCausalLM``,
whose loader stacks the per-expert tensors ``mlp.experts.{e}.{gate,up,down}_proj`` into its fused expert weights.
LLaDA-MoE (Zhu et al. 2025, arXiv 2509.24389), published as ``model_type: llada`` with expert fields, is bidirectional
like LLaDA, and its ``modeling_lladamoe.py`` (adapted from OLMoE's) is Qwen3-MoE's block operation for operation, not
OLMoE's: per-head query/key RMSNorm (OLMoE normalises the whole projection), full rotary embeddings, a float32 softmax
router whose top-k weights are never renormalised (the official block fixes ``norm_topk_prob = False``), SiLU-gated
experts, dense layers where ``moe_layer_freq`` is 0, no shared expert; what Qwen3-MoE cannot do (a router expert bias,
a shared expert, clipped or absent query/key norms, partial or scaled rotary embeddings) is refused by field
(:data:`LLADAMOE_REQUIRED`).
Fast-dLLM v2 (Wu et al. 2025, arXiv 2509.26328, Qwen2.5 adapted to blocks) loads the same way onto
``Qwen2ForCausalLM``; its logits are shifted like Dream's, which the adapter realigns under the block-causal
pattern, and each block's first column is decided first (``head_first``, :class:`~dlm_decode.masks.AttentionPattern`).

LLaDA's block is a Llama block under other names: RMSNorm, rotary embeddings on the head dimension's two halves,
bias-free projections, a SiLU-gated MLP (``ff_proj`` gated by ``up_proj``), no logit scaling. A LLaDA
``config.json`` asking for anything else (ALiBi, biases, a sequential block, layer-normed queries and keys...) is
refused with the field, its value and why, instead of loading a different network. Loading goes through
``from_pretrained`` with a key mapping, so sharded checkpoints, ``dtype`` and ``device_map`` work as for any
transformers model; a checkpoint whose tensors do not have the expected names or shapes is refused listing them.

Tokenizers load natively too: LLaDA's is a plain ``PreTrainedTokenizerFast`` (``tokenizer.json``), Dream's ships a
``tokenization_dream.py`` over Qwen2's byte-level BPE files, read here by transformers' ``Qwen2Tokenizer`` (the
same ids for the same text; ``skip_special_tokens`` also drops Qwen's chat markers, which Dream's class keeps).

Verified against the official code (logits and decoders) on the tiny checkpoints of ``tests/reference``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dlm_decode.errors import ModelError

#: LLaDA's weight names -> Llama's (regular expressions, one capture group at most per pattern).
_BLOCK = r"^model\.transformer\.blocks\.(\d+)\."
LLADA_KEYS = {
    r"^model\.transformer\.wte\.": "model.embed_tokens.",
    r"^model\.transformer\.ln_f\.": "model.norm.",
    r"^model\.transformer\.ff_out\.": "lm_head.",
    _BLOCK + r"attn_norm\.": r"model.layers.\1.input_layernorm.",
    _BLOCK + r"q_proj\.": r"model.layers.\1.self_attn.q_proj.",
    _BLOCK + r"k_proj\.": r"model.layers.\1.self_attn.k_proj.",
    _BLOCK + r"v_proj\.": r"model.layers.\1.self_attn.v_proj.",
    _BLOCK + r"attn_out\.": r"model.layers.\1.self_attn.o_proj.",
    _BLOCK + r"ff_norm\.": r"model.layers.\1.post_attention_layernorm.",
    _BLOCK + r"ff_proj\.": r"model.layers.\1.mlp.gate_proj.",
    _BLOCK + r"up_proj\.": r"model.layers.\1.mlp.up_proj.",
    _BLOCK + r"ff_out\.": r"model.layers.\1.mlp.down_proj.",
}

#: LLaDA ``config.json`` fields the mapping depends on: ``field: (default in LLaDA's code, values that map)``.
LLADA_REQUIRED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "block_type": ("sequential", ("llama",)),
    "layer_norm_type": ("default", ("rms",)),
    "activation_type": ("swiglu", ("silu",)),
    "rope": (False, (True,)),
    "alibi": (False, (False,)),
    "attention_layer_norm": (False, (False,)),
    "include_bias": (False, (False,)),
    "include_qkv_bias": (False, (False, None)),
    "bias_for_layer_norm": (None, (False, None)),
    "layer_norm_with_affine": (True, (True,)),
    "input_emb_norm": (False, (False,)),
    "scale_logits": (False, (False,)),
    "block_group_size": (1, (1,)),
    "clip_qkv": (None, (None,)),
}

#: Dream ``config.json`` fields Qwen2's class would read differently: ``field: (default, values that map)``.
DREAM_REQUIRED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "use_sliding_window": (False, (False,)),
    "use_mrope": (False, (False,)),
    "rope_scaling": (None, (None,)),
}


#: ``config.json`` keys of mixture-of-experts checkpoints (LLaDA-MoE is published with ``model_type: llada``).
MOE_KEYS = (
    "num_experts",
    "n_routed_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "expert_intermediate_size",
)


def _unsupported(config: Mapping[str, Any], required: Mapping[str, tuple[Any, tuple[Any, ...]]]) -> list[str]:
    return [
        f"{name}={config.get(name, default)!r} (maps only {' or '.join(repr(v) for v in accepted)})"
        for name, (default, accepted) in required.items()
        if config.get(name, default) not in accepted
    ]


def transformers_class(name: str) -> Any:
    """A class of transformers by name (imported on first use: transformers is slow to import)."""
    import transformers

    return getattr(transformers, name)


def _llada_config(config: Mapping[str, Any]):
    heads = config.get("n_heads", 12)
    kv_heads = 1 if config.get("multi_query_attention") else (config.get("n_kv_heads") or heads)
    width = config.get("embedding_size") or config.get("vocab_size", 50257)
    d_model = config.get("d_model", 768)
    return transformers_class("LlamaConfig")(
        vocab_size=width,
        hidden_size=d_model,
        num_hidden_layers=config.get("n_layers", 12),
        intermediate_size=config.get("mlp_hidden_size") or config.get("mlp_ratio", 4) * d_model,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act="silu",
        max_position_embeddings=config.get("max_sequence_length", 1024),
        rms_norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=bool(config.get("weight_tying", True)),
        bos_token_id=None,
        eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"),
    )


#: Qwen2 fields read from a Dream ``config.json`` as they are.
_QWEN2_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def _fields_as_they_are(class_name: str, fields: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """An :attr:`Architecture.hf_config`: the transformers config ``class_name`` with the ``fields`` a
    ``config.json`` has, as they are (the others at the class's defaults), and no sliding window."""

    def hf_config(config: Mapping[str, Any]):
        values = {name: config[name] for name in fields if name in config}
        return transformers_class(class_name)(**values, use_sliding_window=False, sliding_window=None)

    return hf_config


_dream_config = _fields_as_they_are("Qwen2Config", _QWEN2_FIELDS)


#: SDAR ``config.json`` fields Qwen3's class would read differently: ``field: (default, values that map)``.
SDAR_REQUIRED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "use_sliding_window": (False, (False,)),
    "rope_scaling": (None, (None,)),
}


_sdar_config = _fields_as_they_are("Qwen3Config", (*_QWEN2_FIELDS, "head_dim", "attention_bias"))


#: Qwen3-MoE fields read from an SDAR mixture-of-experts ``config.json`` as they are (absent ones take the same
#: defaults in SDAR's ``SDARMoeConfig`` and transformers' ``Qwen3MoeConfig``).
_SDAR_MOE_FIELDS = (
    *_QWEN2_FIELDS,
    "head_dim",
    "attention_bias",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
)


_sdar_moe_config = _fields_as_they_are("Qwen3MoeConfig", _SDAR_MOE_FIELDS)


#: LLaDA 2.x ``config.json`` fields Glm4-MoE's class would read differently: ``field: (default in LLaDA 2.x's
#: ``configuration_llada2_moe.py``, values that map)``. ``use_bias`` is the bias of the attention output projection
#: (``attention.dense``), which ``Glm4MoeAttention.o_proj`` does not have.
LLADA2_REQUIRED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "use_bias": (True, (False,)),
    "rope_scaling": (None, (None,)),
    "use_sliding_window": (False, (False,)),
}


def _llada2_config(config: Mapping[str, Any]):
    """LLaDA 2.x's fields, with the defaults of its own configuration class, as transformers' ``SarvamMoEConfig``
    (the BailingMoE layout transformers maps onto ``Glm4MoeForCausalLM``, its loader splitting the fused
    ``query_key_value`` and stacking the experts). LLaDA 2.x's router renormalises the top-k weights whenever more
    than one expert is chosen, whatever ``norm_topk_prob`` says, hence ``norm_topk_prob = top_k > 1``."""
    hidden, heads = config.get("hidden_size", 1024), config.get("num_attention_heads", 16)
    top_k = config.get("num_experts_per_tok", 2)
    rope = {
        "rope_type": "default",
        "rope_theta": float(config.get("rope_theta", 10000.0)),
        "partial_rotary_factor": float(config.get("partial_rotary_factor", 0.5)),
    }
    return transformers_class("SarvamMoEConfig")(
        vocab_size=config.get("vocab_size", 30592),
        hidden_size=hidden,
        intermediate_size=config.get("intermediate_size"),
        num_hidden_layers=config.get("num_hidden_layers", 24),
        num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=config.get("max_position_embeddings", 16384),
        rms_norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_parameters=rope,
        attention_bias=bool(config.get("use_qkv_bias", False)),
        use_qk_norm=bool(config["use_qk_norm"]),
        moe_intermediate_size=config["moe_intermediate_size"],
        n_routed_experts=config["num_experts"],
        n_shared_experts=config.get("num_shared_experts", 0),
        num_experts_per_tok=top_k,
        n_group=config.get("n_group", 8),
        topk_group=config.get("topk_group", 4),
        routed_scaling_factor=config.get("routed_scaling_factor", 2.5),
        first_k_dense_replace=config.get("first_k_dense_replace", 0),
        norm_topk_prob=top_k > 1,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"),
    )


#: LLaDA-MoE ``config.json`` fields the mapping depends on: ``field: (default in configuration_lladamoe.py, values
#: that map)``. Query/key norms must be there (Qwen3-MoE always has them); no query/key clipping, no router expert
#: bias (the official block adds it to the softmax weights before top-k), no shared expert, full unscaled rotary.
LLADAMOE_REQUIRED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "qk_layernorm": (None, (True,)),
    "clip_qkv": (None, (None,)),
    "moe_router_enable_expert_bias": (None, (None, False)),
    "shared_expert_intermediate_size": (-1, (None,)),
    "rope_scaling": (None, (None,)),
    "partial_rotary_factor": (-1, (1, 1.0)),
}


def _lladamoe_config(config: Mapping[str, Any]):
    """LLaDA-MoE's ``config.json`` as a ``Qwen3MoeConfig``: ``moe_layer_freq`` 0 marks a dense layer of
    ``dense_intermediate_size`` (``mlp_only_layers``), experts are ``expert_intermediate_size`` wide, the head width is
    ``hidden_size / num_attention_heads`` (as the official attention computes it) and the top-k weights are never
    renormalised (the official block fixes ``norm_topk_prob = False`` whatever ``config.json`` says)."""
    fields = {name: config[name] for name in (*_QWEN2_FIELDS, "attention_bias", "num_experts") if name in config}
    return transformers_class("Qwen3MoeConfig")(
        **fields,
        head_dim=config["hidden_size"] // config["num_attention_heads"],
        intermediate_size=config["dense_intermediate_size"],
        moe_intermediate_size=config["expert_intermediate_size"],
        num_experts_per_tok=config["num_experts_per_tok"],
        norm_topk_prob=False,
        decoder_sparse_step=1,
        mlp_only_layers=[i for i, frequency in enumerate(config["moe_layer_freq"]) if frequency == 0],
        use_sliding_window=False,
        sliding_window=None,
    )


@dataclass(frozen=True)
class Architecture:
    """How checkpoints of one ``model_type`` map onto a transformers class.

    :ivar name: the architecture (and family) name. :ivar original: what the checkpoint is, for messages.
    :ivar layout: ``config.json`` fields every checkpoint of this layout has (the dimensions).
    :ivar required: ``config.json`` fields the mapping depends on (see :data:`LLADA_REQUIRED`).
    :ivar hf_config: ``config.json`` -> the transformers config (before ``is_causal`` is set).
    :ivar model_class_name: the transformers model class. :ivar tokenizer_class_name: its tokenizer class.
    :ivar key_mapping: checkpoint weight names -> the class's (None: the same names).
    :ivar carried: ``config.json`` fields copied onto the transformers config as they are, for the adapter (SDAR's
        ``block_size``, from which its attention pattern is read).
    :ivar experts: the architecture is a mixture of experts (its expert fields are read, not refused).
    :ivar experts_model_type: for a dense architecture, the ``model_type`` under which the same family's
        mixture-of-experts checkpoints load natively (named by the refusal of a checkpoint that has expert fields).
    """

    name: str
    original: str
    layout: tuple[str, ...]
    required: Mapping[str, tuple[Any, tuple[Any, ...]]]
    hf_config: Callable[[Mapping[str, Any]], Any]
    model_class_name: str
    tokenizer_class_name: str
    key_mapping: Mapping[str, str] | None = None
    carried: tuple[str, ...] = ()
    experts: bool = False
    experts_model_type: str | None = None

    @property
    def model_class(self) -> Any:  # a transformers model class; its from_pretrained returns (model, info) here
        return transformers_class(self.model_class_name)

    @property
    def tokenizer_class(self) -> Any:  # a transformers tokenizer class
        return transformers_class(self.tokenizer_class_name)

    def convert(self, config: Mapping[str, Any], key: str):
        """The transformers config of a non-causal model for ``config`` (a ``config.json`` mapping).

        :raises ModelError: for a mixture-of-experts checkpoint, one without the layout's dimension fields, or
            naming every field the mapping cannot reproduce.
        """
        remote = (
            f"if it is a derivative with its own modeling code, set {key}.implementation=remote and "
            f"{key}.trust_remote_code=true after reading that code"
        )
        experts = [f"{name}={config[name]!r}" for name in MOE_KEYS if name in config]
        if experts and not self.experts:
            moe = self.experts_model_type
            raise ModelError(
                f"`{key}.path`: this checkpoint is a mixture of experts (config.json has "
                f"{', '.join(experts)}); the native {self.name} mapping reproduces the dense "
                f"{self.original} architecture only",
                fix=remote
                if moe is None
                else f"{self.original}'s mixture of experts loads natively as `model_type: {moe}` (on "
                f"{ARCHITECTURES[moe].model_class_name}): set model_type to {moe!r} in config.json, as the "
                "published mixture-of-experts checkpoints do",
            )
        missing = [name for name in self.layout if name not in config]
        if missing:
            raise ModelError(
                f"`{key}.path`: config.json (model_type {config.get('model_type')!r}) has no "
                f"{', '.join(missing)}, which every {self.original} checkpoint's config.json has: this is "
                f"not the {self.original} layout the native {self.name} mapping reads",
                fix=remote,
            )
        problems = _unsupported(config, self.required)
        if problems:
            raise ModelError(
                f"`{key}.path`: this {self.original} checkpoint's config.json asks for what the native "
                f"{self.name} mapping does not reproduce: {'; '.join(problems)}",
                fix=remote,
            )
        hf_config = self.hf_config(config)
        hf_config.is_causal = False
        hf_config.architectures = config.get("architectures")  # ``LLaDAModelLM``, ``DreamModel``: names the family
        for name in self.carried:
            setattr(hf_config, name, config[name])
        return hf_config


ARCHITECTURES: dict[str, Architecture] = {
    "llada": Architecture(
        "llada",
        "LLaDA",
        ("d_model", "n_heads", "n_layers"),
        LLADA_REQUIRED,
        _llada_config,
        "LlamaForCausalLM",
        "PreTrainedTokenizerFast",
        LLADA_KEYS,
    ),
    "dream": Architecture(
        "dream",
        "Dream",
        ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"),
        DREAM_REQUIRED,
        _dream_config,
        "Qwen2ForCausalLM",
        "Qwen2Tokenizer",
    ),
    "sdar": Architecture(
        "sdar",
        "SDAR",
        ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size", "block_size"),
        SDAR_REQUIRED,
        _sdar_config,
        "Qwen3ForCausalLM",
        "Qwen2Tokenizer",
        carried=("block_size",),
        experts_model_type="sdar_moe",
    ),
    "sdar_moe": Architecture(
        "sdar_moe",
        "SDAR mixture-of-experts",
        (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "vocab_size",
            "block_size",
        ),
        SDAR_REQUIRED,
        _sdar_moe_config,
        "Qwen3MoeForCausalLM",
        "Qwen2Tokenizer",
        carried=("block_size",),
        experts=True,
    ),
    "llada_moe": Architecture(
        "llada_moe",
        "LLaDA-MoE",
        (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_experts",
            "num_experts_per_tok",
            "expert_intermediate_size",
            "dense_intermediate_size",
            "moe_layer_freq",
            "vocab_size",
        ),
        LLADAMOE_REQUIRED,
        _lladamoe_config,
        "Qwen3MoeForCausalLM",
        "PreTrainedTokenizerFast",
        experts=True,
    ),
    "fast_dllm_qwen": Architecture(
        "fast_dllm_qwen",
        "Fast-dLLM v2",
        ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size", "bd_size"),
        DREAM_REQUIRED,
        _dream_config,
        "Qwen2ForCausalLM",
        "Qwen2Tokenizer",
        carried=("bd_size",),
    ),
    "llada2_moe": Architecture(
        "llada2_moe",
        "LLaDA 2.x",
        (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_experts",
            "num_experts_per_tok",
            "num_shared_experts",
            "moe_intermediate_size",
            "use_qk_norm",
            "vocab_size",
        ),
        LLADA2_REQUIRED,
        _llada2_config,
        "Glm4MoeForCausalLM",
        "PreTrainedTokenizerFast",
        experts=True,
    ),
}


def architecture_for(config: Mapping[str, Any]) -> Architecture | None:
    """The native mapping for a ``config.json`` (by ``model_type``; LLaDA-MoE is published as ``model_type: llada``
    with expert fields), or None."""
    model_type = str(config.get("model_type") or "").lower()
    if model_type == "llada" and any(name in config for name in MOE_KEYS):
        return ARCHITECTURES["llada_moe"]
    return ARCHITECTURES.get(model_type)


def loading_problems(info: Mapping[str, Any], shown: int = 5) -> list[str]:
    """What ``from_pretrained(..., output_loading_info=True)`` could not match, the first ``shown`` of each kind."""
    problems = []
    for kind, label in (
        ("missing_keys", "missing from the checkpoint"),
        ("unexpected_keys", "in the checkpoint but not in the model"),
        ("mismatched_keys", "of another shape"),
    ):
        keys = sorted(
            str(k) if not isinstance(k, tuple) else f"{k[0]} (checkpoint {tuple(k[1])}, model {tuple(k[2])})"
            for k in info.get(kind) or ()
        )
        if keys:
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            problems.append(f"{len(keys)} tensor(s) {label}: {', '.join(keys[:shown])}{more}")
    return problems


def load_native(
    architecture: Architecture,
    path: str,
    config: Mapping[str, Any],
    key: str,
    *,
    dtype,
    placement: Mapping[str, Any],
    local_files_only: bool,
):
    """``(model, tokenizer)`` of a checkpoint of ``architecture`` on transformers' own classes.

    :raises ModelError: for a ``config.json`` the mapping cannot reproduce, or tensors that do not match the
        model's names and shapes (the first few of each kind are listed).
    """
    from transformers.utils import logging as hf_logging

    hf_config = architecture.convert(config, key)
    options = {"local_files_only": local_files_only}
    tokenizer = architecture.tokenizer_class.from_pretrained(path, **options)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the mismatch report below replaces transformers' load report
    try:
        model, info = architecture.model_class.from_pretrained(
            path,
            config=hf_config,
            dtype=dtype,
            key_mapping=architecture.key_mapping,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **placement,
            **options,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = loading_problems(info)
    if problems:
        raise ModelError(
            f"`{key}.path` = {path!r}: the weights do not have the {architecture.original} layout the "
            f"native {architecture.name} mapping expects: " + "; ".join(problems),
            fix=f"check that the checkpoint is a {architecture.original} checkpoint (a "
            f"derivative with other tensors needs {key}.implementation=remote and "
            f"{key}.trust_remote_code=true)",
        )
    return model, tokenizer
