"""The families of diffusion LMs, as data: what differs between them for the adapter (the functions that read a
model with them are :mod:`dlm_decode.models.families`). It sits in the config layer so that the schema checks
``model.dllm.family`` against :data:`FAMILIES` itself (:data:`dlm_decode.config.schema.FAMILY_NAMES`).

=============  =================================  =============================================================
family         detected from ``config.json``      differences
=============  =================================  =============================================================
bidirectional  any other ``model_type``           HF Llama/Qwen2 with ``is_causal: false``; special ids from the
                                                  tokenizer
llada          ``model_type: llada``              mask ``<|mdm_mask|>`` (126336), EOS ``<|endoftext|>`` (126081,
                                                  also the pad, as in LLaDA's SFT data) and EoT ``<|eot_id|>``
                                                  (126348); context 4096
dream          ``model_type: Dream``              logits shifted by one (raw logit ``i`` predicts token ``i + 1``;
                                                  the adapter re-aligns them); mask ``<|mask|>`` (151666), pad/EOS
                                                  ``<|endoftext|>`` (151643), end of turn ``<|im_end|>`` (151645);
                                                  context 2048
sdar           ``model_type: sdar`` or            block-causal (``block_size``, blocks from position 0); mask
               ``sdar_moe``                       ``<|MASK|>`` (151669), EOS ``<|endoftext|>`` (151643) and
                                                  ``<|im_end|>`` (151645)
fast_dllm_v2   ``model_type: Fast_dLLM_Qwen``     block-causal (``bd_size``, from position 0) with shifted logits,
                                                  block heads first; mask ``|<MASK>|`` (151665), EOS
                                                  ``<|im_end|>`` (151645) and ``<|endoftext|>`` (151643)
llada2         ``model_type: llada2_moe``         block-causal, blocks of 32 from position 0 (``config.json`` has
                                                  no block size: LLaDA 2.x's ``generate`` default); mask
                                                  ``<|mask|>`` (156895), EOS/pad ``<|endoftext|>`` (156892)
llada_moe      ``architectures: LLaDAMoEModelLM`` bidirectional like LLaDA; mask ``<|mask|>`` (156895), EOS and pad
               (``model_type: llada``)            ``<|endoftext|>`` (156892): the ids of dInfer and the model card
diffusion_     ``model_type: diffusion_gemma``    uniform noise (a noise canvas, no mask token: ``<mask>`` (4)
gemma                                             only holds the blocks not entered yet), block-causal
                                                  (``canvas_length``, from the first generated column), its own
                                                  adapter (:mod:`dlm_decode.models.diffusion_gemma`); EOS ``<eos>``
                                                  (1) and ``<end_of_turn>`` (106), pad ``<pad>`` (0)
=============  =================================  =============================================================

"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """What one family of diffusion LMs needs from the adapter.

    :ivar name: the ``model.dllm.family`` value.
    :ivar model_types: ``config.json`` ``model_type`` values (lower case) that select this family.
    :ivar shifted_logits: raw logit ``i`` predicts input column ``i + 1`` (Dream, initialised from an AR model).
    :ivar mask: ``(token string, documented id)`` of the mask token, or None (read the tokenizer's).
    :ivar eos: ``(token string, documented id)`` pairs that end a generation, the first one also fills the tail.
    :ivar pad: ``(token string, documented id)`` of the padding token, or None (tokenizer's, else the first EOS).
    :ivar context: the context the model was trained with (None: trust ``config.json``).
    :ivar block_size_key: the ``config.json`` key of a block-diffusion family's block size (None: the family is
        bidirectional unless the config declares ``attention_pattern: block_causal``, see
        :func:`~dlm_decode.models.families.attention_pattern`).
    :ivar block_anchor: where the family's blocks start (:class:`~dlm_decode.masks.AttentionPattern` ``anchor``).
    :ivar noise: a uniform-noise family: its undecided positions hold noise tokens (a noise canvas,
        :attr:`dlm_decode.state.DecodeState.noise_vocab`), read by its own adapter.
    :ivar default_block_size: the block size of a block-diffusion family whose ``config.json`` declares none (LLaDA
        2.x: trained and decoded by its own ``generate`` in blocks of 32); ``model.dllm.block_size`` overrides it.
    :ivar architectures: ``config.json`` ``architectures`` class names (lower case) that select this family before
        any ``model_type`` does (LLaDA-MoE is published with LLaDA's ``model_type``).
    """

    name: str
    model_types: tuple[str, ...] = ()
    shifted_logits: bool = False
    mask: tuple[str, int] | None = None
    eos: tuple[tuple[str, int], ...] = ()
    pad: tuple[str, int] | None = None
    context: int | None = None
    block_size_key: str | None = None
    block_anchor: str = "generation"
    noise: bool = False
    default_block_size: int | None = None
    architectures: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    "bidirectional": Family("bidirectional"),
    "llada": Family(
        "llada",
        model_types=("llada",),
        mask=("<|mdm_mask|>", 126336),
        eos=(("<|endoftext|>", 126081), ("<|eot_id|>", 126348)),
        pad=("<|endoftext|>", 126081),
        context=4096,
    ),
    "dream": Family(
        "dream",
        model_types=("dream",),
        shifted_logits=True,
        mask=("<|mask|>", 151666),
        eos=(("<|endoftext|>", 151643), ("<|im_end|>", 151645)),
        pad=("<|endoftext|>", 151643),
        context=2048,
    ),
    "sdar": Family(
        "sdar",
        model_types=("sdar", "sdar_moe"),
        mask=("<|MASK|>", 151669),
        eos=(("<|endoftext|>", 151643), ("<|im_end|>", 151645)),
        pad=("<|endoftext|>", 151643),
        block_size_key="block_size",
        block_anchor="position",
    ),
    "fast_dllm_v2": Family(
        "fast_dllm_v2",
        model_types=("fast_dllm_qwen",),
        shifted_logits=True,
        mask=("|<MASK>|", 151665),
        eos=(("<|im_end|>", 151645), ("<|endoftext|>", 151643)),
        pad=("<|endoftext|>", 151643),
        block_size_key="bd_size",
        block_anchor="position",
    ),
    "llada2": Family(
        "llada2",
        model_types=("llada2_moe", "llada2moe"),
        mask=("<|mask|>", 156895),
        eos=(("<|endoftext|>", 156892),),
        pad=("<|endoftext|>", 156892),
        block_anchor="position",
        default_block_size=32,
    ),
    "llada_moe": Family(
        "llada_moe",
        mask=("<|mask|>", 156895),
        eos=(("<|endoftext|>", 156892),),
        pad=("<|endoftext|>", 156892),
        architectures=("lladamoemodellm",),
    ),
    "diffusion_gemma": Family(
        "diffusion_gemma",
        model_types=("diffusion_gemma",),
        mask=("<mask>", 4),
        eos=(("<eos>", 1), ("<end_of_turn>", 106)),
        pad=("<pad>", 0),
        block_size_key="canvas_length",
        noise=True,
    ),
}
