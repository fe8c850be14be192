"""The character-level tokenizer shared by the embedded dLLM and AR models.

One token per character of printable ASCII plus newline, and four special tokens. Both embedded models use it,
which is what APD requires (acceptance compares token ids, mixtures add logits per id).
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, MASK = "<pad>", "<bos>", "<eos>", "<mask>"
SPECIAL_TOKENS = (PAD, BOS, EOS, MASK)
CHARACTERS = tuple(sorted(set(string.printable) - set("\t\r\x0b\x0c")))

#: The prompt format of the embedded models: a single user turn, answered after ``"\n"``.
CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}{{ '\\n' }}"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character tokenizer (vocabulary: 4 specials + 96 characters = 100 ids).

    Ids: ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<mask>``=3, then the characters in sorted order.
    ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip it exactly.
    """
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        mask_token=MASK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
