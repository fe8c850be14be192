"""A toy diffusion LM with the :class:`~dlm_decode.models.adapter.DiffusionLM` interface and no transformer.

Its logits are a fixed random function of the position and of the mean embedding of the keys each query may
attend to, so they depend on context and honour the attention mask (padding and cut windows change nothing
for other rows), while a forward costs microseconds. Prompts are strings of characters mapped to ids.
"""

from __future__ import annotations

import torch

from dlm_decode.masks import BIDIRECTIONAL, AttentionPattern
from dlm_decode.state import ModelInputs


class ToyDiffusionLM:
    """Toy dLLM over a small vocabulary: pad=0, bos=1, eos=2, mask=3, then ``vocab_size - 4`` symbols.

    :param vocab_size: logits width (at least 5).
    :param eos_bias: added to the EOS logit; ``float("-inf")`` means the model never proposes EOS.
    :param sharpness: scales the logits; larger values make the model more confident.
    :param seed: seeds the fixed random weights.
    :param context: let the logits depend on the visible tokens (False: logits are a fixed table per position,
        ``positional[position]``, which gives a dLLM with known per-position distributions).
    :param attention: its attention pattern (the masks the core builds honour it).
    """

    pad_token_id, bos_token_id, fill_token_id, mask_token_id = 0, 1, 2, 3
    eos_token_ids = [2]
    undecodable_ids: list[int] = []
    chat_template = False

    def __init__(
        self,
        vocab_size: int = 12,
        *,
        eos_bias: float = 0.0,
        sharpness: float = 3.0,
        seed: int = 0,
        max_context: int = 512,
        dim: int = 8,
        context: bool = True,
        attention: AttentionPattern = BIDIRECTIONAL,
    ):
        self.attention = attention
        generator = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.max_context = max_context
        self.embed = torch.randn(vocab_size, dim, generator=generator)
        self.out = torch.randn(dim, vocab_size, generator=generator) * sharpness
        self.positional = torch.randn(max_context, vocab_size, generator=generator) * sharpness
        self.positional[:, 2] += eos_bias
        if not context:
            self.out.zero_()
        self.device = torch.device("cpu")
        self.forwards = 0

    def encode(self, prompts: list[str]) -> list[list[int]]:
        symbols = self.vocab_size - 4
        return [[self.bos_token_id] + [4 + ord(ch) % symbols for ch in prompt] for prompt in prompts]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i - 4) for i in ids if i >= 4)

    def forward(self, inputs: ModelInputs, cache=None) -> torch.Tensor:
        """``[B, S, V]`` float32 logits for the inputs' queries (the key set is the query set; no cache)."""
        if cache is not None:
            raise NotImplementedError("the toy model keeps no keys/values; use cache `none` with it")
        self.forwards += 1
        hidden = self.embed[inputs.input_ids]  # [B, S, D]
        weights = inputs.attention_mask[:, 0].float()  # [B, S, S]
        context = weights @ hidden / weights.sum(-1, keepdim=True).clamp(min=1)
        return context @ self.out + self.positional[inputs.position_ids]


class ToyCausalLM:
    """Toy AR model: the logits predicting position ``p + 1`` are ``table[p + 1]`` whatever the context.

    With ``table`` set to a :class:`ToyDiffusionLM`'s ``positional`` (built with ``context=False``), the AR model
    and the dLLM agree exactly; any other table gives a known, fixed target. The key/value cache is ignored.

    :param table: ``[P, V_ar]`` logits by position.
    """

    def __init__(self, table: torch.Tensor):
        self.table = table
        self.vocab_size = table.shape[-1]
        self.forwards = 0

    def forward(self, input_ids, position_ids, attention_mask, cache=None) -> torch.Tensor:
        """``[B, S, V_ar]``: row ``b``, column ``i`` predicts the token after position ``position_ids[b, i]``."""
        self.forwards += 1
        return self.table[(position_ids + 1).clamp(max=self.table.shape[0] - 1)]
