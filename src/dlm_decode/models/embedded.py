"""The model pair that ships inside the package (trained by :mod:`dlm_decode.recipes.train_embedded`)."""

from __future__ import annotations

from pathlib import Path

from dlm_decode.errors import ModelError

EMBEDDED_ROOT = Path(__file__).parent / "embedded"

#: Embedded checkpoints by name; see ``embedded/MODEL_CARD.md`` for data, training and accuracy.
EMBEDDED_MODELS: dict[str, str] = {
    "dllm": "tiny bidirectional Llama (0.87M parameters) trained with the LLaDA masked-diffusion objective",
    "ar": "smaller causal Llama (0.44M parameters), next-token trained on the same tasks and tokenizer",
    "block": "the dllm adapted to block diffusion (block-causal attention, blocks of 8), same tasks and tokenizer",
}


def embedded_model_dir(name: str) -> Path:
    """The ``save_pretrained`` directory of the embedded model ``name`` (a key of :data:`EMBEDDED_MODELS`).

    Loadable with plain ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    if name not in EMBEDDED_MODELS:
        raise ModelError(
            f"unknown embedded model {name!r}",
            fix=f"use one of {', '.join('embedded:' + n for n in EMBEDDED_MODELS)} (see `dlm-decode models`)",
        )
    directory = EMBEDDED_ROOT / name
    if not (directory / "config.json").is_file():
        raise ModelError(
            f"the embedded model {name!r} is missing from {directory}",
            fix="reinstall dlm-decode, or "
            "train it with `python -m dlm_decode.recipes.train_embedded --out "
            "src/dlm_decode/models/embedded`",
        )
    return directory
