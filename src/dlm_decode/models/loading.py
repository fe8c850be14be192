"""Building a model and its tokenizer from ``model.<role>`` (offline unless the user allows downloads).

``implementation: native`` (the default) builds LLaDA and Dream checkpoints with transformers' own Llama and Qwen2
classes (:mod:`dlm_decode.models.native`), so positions, 4-D masks and every cache work and none of the
checkpoint's code runs; other checkpoints load with transformers' class for their ``model_type``.
``implementation: remote`` runs the checkpoint's own modeling code instead, for derivatives with no native
mapping (the adapter's handling of such code: :mod:`dlm_decode.models.adapter`).

Where the checkpoint is, and whether its config, weight and tokenizer files are there, is
:mod:`dlm_decode.models.checkpoint`'s: :func:`load_hf` runs its checks first, as the dry run does.
"""

from __future__ import annotations

import os

import torch

from dlm_decode.config.schema import ModelSpec
from dlm_decode.errors import ModelError
from dlm_decode.models.checkpoint import (
    check_tokenizer_files,
    check_weight_files,
    local_files,
    read_config_json,
    resolve_path,
)
from dlm_decode.models.native import ARCHITECTURES, Architecture, architecture_for, load_native

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str, key: str = "device") -> torch.device:
    """``auto``: CUDA when available. Under a launcher (``LOCAL_RANK`` set, ``WORLD_SIZE`` > 1), ``auto`` and
    ``cuda`` mean ``cuda:LOCAL_RANK``, one GPU per process.

    :param key: the dotted key of ``device`` (e.g. ``model.dllm.device``), named in errors.
    :raises ModelError: for CUDA or MPS when this machine or torch build lacks it, or a string torch rejects.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ
    if device in ("auto", "cuda") and launched and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for kind, available in (("cuda", torch.cuda.is_available), ("mps", torch.backends.mps.is_available)):
        if device.split(":")[0] == kind and not available():
            raise ModelError(
                f"`{key}` is {device!r} but {kind.upper()} is not available with this torch build on this machine",
                fix=f"set {key}=cpu (or auto)",
            )
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ModelError(
            f"`{key}` is {device!r}, which torch rejects ({exc})", fix=f"set {key} to cpu, cuda, cuda:N, mps or auto"
        ) from exc


def check_implementation(config: dict, spec: ModelSpec, key: str) -> Architecture | None:
    """How ``spec.implementation`` builds this checkpoint: its native :class:`Architecture` (LLaDA, Dream), or None
    for transformers' own class of its ``model_type`` (native) or for the checkpoint's own code (remote).

    :raises ModelError: remote code without ``trust_remote_code``; no native implementation for the
        ``model_type``; a ``config.json`` the native mapping cannot reproduce.
    """
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    architecture = architecture_for(config)
    if spec.implementation == "remote":
        if not spec.trust_remote_code:
            native = (
                (
                    f", or leave {key}.implementation=native: {architecture.original} maps onto transformers' own "
                    "classes and needs no remote code"
                )
                if architecture
                else ""
            )
            raise ModelError(
                f"`{key}.implementation` is remote, which runs the checkpoint's own modeling code "
                f"({_code_files(config)}), but {key}.trust_remote_code is false",
                fix=f"set {key}.trust_remote_code=true after reading that code{native}",
            )
        return None
    if architecture is not None:
        architecture.convert(config, key)
        return architecture
    if model_type not in CONFIG_MAPPING:
        raise ModelError(
            f"`{key}.path` = {spec.path!r} has model_type {model_type!r}, which has no native "
            f"implementation here (transformers {_transformers_version()} does not know it, and it is "
            f"not one of {', '.join(a.original for a in ARCHITECTURES.values())}): only the checkpoint's "
            "own modeling code "
            f"({_code_files(config)}) can build it",
            fix=f"set {key}.implementation=remote and {key}.trust_remote_code=true after reading that code",
        )
    return None


def _code_files(config: dict) -> str:
    files = sorted(
        {str(v).split(".")[0] + ".py" for v in (config.get("auto_map") or {}).values() if isinstance(v, str)}
    )
    return ", ".join(files) or "no auto_map in config.json"


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def load_tokenizer(spec: ModelSpec, key: str, config: dict):
    """The checkpoint's tokenizer, built as ``spec.implementation`` builds the model (native: transformers' own
    class, never the checkpoint's ``tokenization_*.py``)."""
    from transformers import AutoTokenizer

    path = resolve_path(spec.path, key)
    local = not spec.allow_download
    if spec.implementation == "remote":
        return AutoTokenizer.from_pretrained(path, trust_remote_code=True, local_files_only=local)
    architecture = architecture_for(config)
    if architecture is not None:
        return architecture.tokenizer_class.from_pretrained(path, local_files_only=local)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=local)


#: ``model_type`` -> the transformers class of a dLLM that no causal-LM auto class builds.
OWN_CLASSES = {"diffusion_gemma": "DiffusionGemmaForBlockDiffusion"}


def _auto_class(config):
    """``AutoModelForCausalLM``, or ``AutoModel`` for remote code that maps only that (Dream's ``DreamModel``), or
    the class of :data:`OWN_CLASSES` (DiffusionGemma)."""
    from transformers import AutoModel, AutoModelForCausalLM

    own = OWN_CLASSES.get(str(getattr(config, "model_type", "")))
    if own is not None:
        import transformers

        return getattr(transformers, own)
    auto_map = getattr(config, "auto_map", None) or {}
    if auto_map and "AutoModelForCausalLM" not in auto_map and "AutoModel" in auto_map:
        return AutoModel
    return AutoModelForCausalLM


def load_hf(spec: ModelSpec, key: str):
    """Load ``(model, tokenizer)`` for ``spec`` (offline unless the user allows downloads).

    ``implementation: native`` (the default) runs none of the checkpoint's code: LLaDA and Dream map onto
    transformers' Llama and Qwen2 (:mod:`dlm_decode.models.native`), other checkpoints load with transformers' class
    for their ``model_type``. ``implementation: remote`` runs the checkpoint's own modeling code, which needs
    ``trust_remote_code``. ``dtype`` is passed to ``from_pretrained``; ``device_map`` (e.g. ``auto``, needs
    ``accelerate``) places the weights, otherwise the model is moved to ``device`` (``auto``: CUDA when available).

    :raises ModelError: for a path, ``config.json``, weight or tokenizer files that are not there
        (:mod:`~dlm_decode.models.checkpoint`, checked before anything loads), an implementation that cannot build
        the checkpoint, a load that fails (with its exception and a fix for its cause), or a device it cannot reach.
    """
    path = resolve_path(spec.path, key)
    config = read_config_json(spec, key)
    architecture = check_implementation(config, spec, key)
    check_files(spec, key)
    device = None if spec.device_map else resolve_device(spec.device, f"{key}.device")
    placement = {"device_map": spec.device_map} if spec.device_map else {}
    dtype = _DTYPES[spec.dtype]
    try:
        if architecture is not None:
            model, tokenizer = load_native(
                architecture,
                path,
                config,
                key,
                dtype=dtype,
                placement=placement,
                local_files_only=not spec.allow_download,
            )
        else:
            model, tokenizer = _load_auto(spec, path, config, key, dtype, placement)
    except ModelError:
        raise
    except Exception as exc:
        raise _load_error(spec, key, config, exc) from exc
    if device is not None:
        try:
            model = model.to(device)
        except RuntimeError as exc:  # e.g. `cuda:N` past the GPUs, or out of device memory
            raise ModelError(
                f"`{key}.device` = {spec.device!r}: the weights could not be moved there ({type(exc).__name__}: {exc})",
                fix=f"set {key}.device to a device this machine has "
                f"(cpu, auto, or cuda:N with N < torch.cuda.device_count()), or a smaller "
                f"{key}.dtype if memory ran out",
            ) from exc
    return model.eval(), tokenizer


def _load_auto(spec: ModelSpec, path: str, config: dict, key: str, dtype, placement: dict):
    """Through transformers' auto classes: the ``model_type``'s own class, or (remote) the checkpoint's code."""
    from transformers import AutoConfig

    remote = spec.implementation == "remote"
    options = {"trust_remote_code": remote, "local_files_only": not spec.allow_download}
    tokenizer = load_tokenizer(spec, key, config)
    hf_config = AutoConfig.from_pretrained(path, **options)
    model = _auto_class(hf_config).from_pretrained(path, config=hf_config, dtype=dtype, **placement, **options)
    return model, tokenizer


def _load_error(spec: ModelSpec, key: str, config: dict, exc: Exception) -> ModelError:
    """The error for a checkpoint that failed to load: the real exception, and a fix that fits its cause."""
    failure = f"{type(exc).__name__}: {exc}"
    if spec.device_map and "accelerate" in str(exc):
        return ModelError(
            f"`{key}.device_map` = {spec.device_map!r} needs accelerate ({failure})",
            fix="`pip install accelerate`, or drop device_map",
        )
    if spec.implementation == "remote" and not resource_failure(exc):
        architecture = architecture_for(config)
        written = config.get("transformers_version")
        if architecture is not None:
            fix = (
                f"set {key}.implementation=native (the default): {architecture.original} maps onto transformers' "
                "own classes and needs no remote code"
            )
        elif written and written != _transformers_version():
            fix = (
                f"that code was written for transformers {written} and this is {_transformers_version()}: port "
                "it, or run it where its transformers version is installed"
            )
        else:
            fix = "fix the checkpoint's code, or report the failure to its authors"
        return ModelError(
            f"`{key}.path` = {spec.path!r}: the checkpoint's own modeling code ({_code_files(config)}) "
            f"failed while loading: {failure}",
            fix=fix,
        )
    return ModelError(
        f"`{key}.path` = {spec.path!r} could not be loaded: {failure}",
        fix="check that the "
        "directory holds the checkpoint's weights (*.safetensors) and tokenizer files; hub ids need "
        f"{key}.allow_download=true or a copy in the local HF cache",
    )


def check_files(spec: ModelSpec, key: str) -> None:
    """Raise unless the checkpoint's weight and tokenizer files are where loading will read them (nothing to check
    when a download may still fetch them).

    :raises ModelError: see :func:`~dlm_decode.models.checkpoint.check_weight_files` and
        :func:`~dlm_decode.models.checkpoint.check_tokenizer_files`.
    """
    directory = local_files(spec, key)
    if directory is not None:
        check_weight_files(directory, spec, key)
        check_tokenizer_files(directory, spec, key)


def resource_failure(exc: BaseException) -> bool:
    """A failure of files or memory (a missing weight file, out of memory), which is not the code's fault."""
    return isinstance(exc, (OSError, MemoryError, torch.OutOfMemoryError))
