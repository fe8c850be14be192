"""Prompt ids (models/prompts.py): the chat template's affixes shortcut equals rendering the template per prompt."""

from __future__ import annotations

import pytest

from dlm_decode.models.adapter import DiffusionLM

PROMPTS_FOR_TEMPLATES = ["sort 4 1 7", " padded  ", "two\nlines", "{{ not jinja }}", "x" * 40]


def rendered_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """The reference: each prompt rendered as one user turn of the tokenizer's chat template (with the generation
    prompt), then the text tokenized without added special tokens."""
    turns = [[{"role": "user", "content": p}] for p in prompts]
    texts = [tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True) for turn in turns]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


@pytest.mark.parametrize(
    "template, wraps",
    [
        ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}{{ '\n' }}", True),
        ("{{ bos_token }}{% for m in messages %}{{ m['content'] | trim }}{% endfor %}{{ '\n' }}", False),
        ("{% for m in messages %}{% if m['content'] %}<u>{{ m['content'] }}</u>{% endif %}{% endfor %}", False),
        ("{% for m in messages %}{% set c = m.content %}<u>{{ c }}</u>{% endfor %}", False),
        ("{{ strftime_now('%d %b %Y') }}{% for m in messages %}{{ m['content'] }}{% endfor %}", False),
        ("{% for m in messages %}{{ m['content'].replace('a', 'b') }}{% endfor %}", False),
    ],
)
def test_prompt_encoding_with_or_without_template_affixes_equals_the_template(template, wraps):
    """The affix shortcut is taken only for templates that wrap the content verbatim, and the ids always equal
    rendering the template per prompt."""
    from transformers import AutoTokenizer

    from dlm_decode.models.embedded import embedded_model_dir
    from dlm_decode.models.prompts import encode_prompts, template_affixes

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir("dllm"))
    tokenizer.chat_template = template
    affixes = template_affixes(tokenizer)
    assert (affixes is not None) is wraps
    expected = rendered_ids(tokenizer, PROMPTS_FOR_TEMPLATES)
    assert encode_prompts(tokenizer, PROMPTS_FOR_TEMPLATES, True, affixes) == expected


def test_prompt_encoding_follows_a_replaced_template_and_ignores_leftover_truncation():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dlm_decode.models.embedded import embedded_model_dir

    directory = embedded_model_dir("dllm")
    dllm = DiffusionLM(AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory))
    tokenizer = dllm.tokenizer
    prompts = ["sort 4 1 7", "reverse abcdefghijklmnop"]

    assert dllm.chat_affixes is not None and dllm.encode(prompts) == rendered_ids(tokenizer, prompts)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    assert dllm.chat_affixes == ("[", "]") and dllm.encode(prompts) == rendered_ids(tokenizer, prompts)
    expected = rendered_ids(tokenizer, prompts)
    tokenizer("a long text that an earlier call truncated", truncation=True, max_length=4)
    assert dllm.encode(prompts) == expected, "a truncation left set on the backend must not cut prompts"
