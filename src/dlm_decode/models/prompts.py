"""Prompt token ids: one user turn of the tokenizer's chat template, or the bare text.

Rendering a chat template (Jinja) for every prompt is a visible share of a small model's decoding.
When a template only prints the turn's content between fixed text, :func:`template_affixes` renders it once and
keeps that text; :func:`encode_prompts` then tokenizes ``prefix + prompt + suffix`` directly. The shortcut is
taken only when it is safe: the template's syntax tree prints the content unchanged and uses it nowhere else
(no filter, test, comparison or assignment of it) and reads no clock, and probe contents with whitespace, braces,
markup and an empty string render and tokenize exactly as the template does. Otherwise every prompt is rendered.
"""

from __future__ import annotations

from typing import Any

#: Contents a template must wrap verbatim (whitespace it could trim, braces and markup it could escape, an empty
#: turn it could drop).
PROBES = (" two  spaces and a newline \n", "{{ braces }} <b>markup</b> & 'quotes'", "")


def render_user_turn(tokenizer, content: str) -> str:
    """The chat template's text for one user turn ``content`` followed by the generation prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def prints_content_verbatim(template: str) -> bool:
    """Whether every use of a message's ``content`` in ``template`` prints it unchanged, and no clock is read.

    Conservative: a template Jinja cannot parse with its default environment, or one that filters, tests,
    compares or assigns the content (``| trim``, ``if content``, ``set c = ...``), is not trusted.
    """
    from jinja2 import Environment, nodes

    try:
        tree = Environment().parse(template)
    except Exception:  # noqa: BLE001 - custom tags or syntax: render every prompt instead
        return False

    def is_content(node: Any) -> bool:
        return (
            isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and node.arg.value == "content"
        ) or (isinstance(node, nodes.Getattr) and node.attr == "content")

    uses = sum(is_content(node) for node in tree.find_all((nodes.Getitem, nodes.Getattr)))
    printed = sum(is_content(child) for output in tree.find_all(nodes.Output) for child in output.nodes)
    clock = any(node.name == "strftime_now" for node in tree.find_all(nodes.Name))
    return uses == printed and not clock


def template_affixes(tokenizer) -> tuple[str, str] | None:
    """``(prefix, suffix)`` such that the chat template renders one user turn ``c`` as ``prefix + c + suffix``
    (see the module docstring for the checks), or None."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not prints_content_verbatim(template):
        return None
    marker = "\x1fdlm-decode-probe\x1f"
    try:
        rendered = render_user_turn(tokenizer, marker)
        if rendered.count(marker) != 1:
            return None
        prefix, suffix = rendered.split(marker)
        for probe in PROBES:
            if render_user_turn(tokenizer, probe) != prefix + probe + suffix:
                return None
            if encode_prompts(tokenizer, [probe], True, (prefix, suffix)) != encode_prompts(tokenizer, [probe], True):
                return None
    except Exception:  # noqa: BLE001 - a template that fails on a probe: render every prompt instead
        return None
    return prefix, suffix


def _plain_backend(tokenizer):
    """A fast tokenizer's Rust core when it is in its plain state (no truncation or padding left set by an
    earlier call, special tokens handled as the HF wrapper does), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    if getattr(backend, "encode_special_tokens", False) != getattr(tokenizer, "split_special_tokens", False):
        return None
    return backend


def encode_prompts(
    tokenizer, prompts: list[str], chat_template: bool, affixes: tuple[str, str] | None = None
) -> list[list[int]]:
    """Token ids of each prompt: one user turn of the tokenizer's chat template when ``chat_template`` (and the
    tokenizer has one), else the bare text. ``affixes`` (from :func:`template_affixes`) replace rendering the
    template per prompt by tokenizing ``prefix + prompt + suffix``."""
    if chat_template and affixes is not None:
        prefix, suffix = affixes
        texts = [prefix + p + suffix for p in prompts]
        backend = _plain_backend(tokenizer)  # without the HF wrapper's per-call overhead; one text at a time:
        if backend is not None:  # no thread pool, so safe in processes that fork later
            return [backend.encode(text, add_special_tokens=False).ids for text in texts]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    if chat_template and getattr(tokenizer, "chat_template", None) is not None:
        return [
            list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True, return_dict=True
                )["input_ids"]
            )
            for p in prompts
        ]
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]
