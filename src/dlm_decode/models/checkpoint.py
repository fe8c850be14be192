"""Where a checkpoint is and which of its files are there, before anything is built from it.

``model.<role>.path`` is ``embedded:<name>`` (a checkpoint shipped with the package), a local directory, or a hub id
(``namespace/name``, read from the local Hugging Face cache unless ``allow_download``). This module tells them apart
and refuses, with the key, the path and the fix, what loading would otherwise trip on later with a message about
something else:

* a local-looking path that does not exist (``./checkpoints/llada``, ``~/llada``, ``/data/llada``, or anything
  with a separator that is no hub id): "no such directory", with the absolute path it looked at;
* a file where a directory is expected, or a directory without ``config.json`` (an empty folder, the parent folder
  of checkpoints: the subdirectories holding one are listed as candidates);
* a hub id that is not in the local cache while downloading is off; with downloading on and no network, one
  request to the hub (at most ``HF_HUB_ETAG_TIMEOUT`` seconds) instead of huggingface_hub's five retries (~23 s);
* a checkpoint without weight files, or without tokenizer files (which ones it would need).

None of it imports torch or builds a model: the dry run (:mod:`dlm_decode.models.dry_run`) and loading
(:mod:`dlm_decode.models.loading`) run the same checks, so the dry run fails where the real run would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import cast

from dlm_decode.config.schema import ModelSpec
from dlm_decode.errors import ModelError

#: The weight files ``from_pretrained`` reads (one of them; an index names its shards).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Vocabulary files a tokenizer is built from: ``tokenizer.json`` alone, or one of the others (``vocab.json``
#: needs ``merges.txt``).
VOCABULARY_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "vocab.json + merges.txt",
)
#: How deep :func:`config_candidates` looks below a directory without ``config.json``.
CANDIDATE_DEPTH = 2
_SHOWN = 5


def is_hub_id(path: str) -> bool:
    """``path`` has the form of a hub id (``namespace/name``, as huggingface_hub validates them)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return "/" in path


def _looks_local(path: str) -> bool:
    """A path no one would mean as a hub id: relative to ``.``/``~``, absolute, or with separators no hub id has."""
    separators = tuple(s for s in (os.sep, os.altsep) if s)
    return path.startswith((".", "~", *separators)) or Path(path).is_absolute() or not is_hub_id(path)


def resolve_path(path: str, key: str) -> str:
    """Where ``model.<role>.path`` points: the directory of ``embedded:<name>``, a local directory (``~``
    expanded), or a hub id (returned as it is).

    :param key: the model's key (``model.dllm``), named in errors.
    :raises ModelError: for a file, or a local-looking path that is no directory (with the absolute path looked at).
    """
    if path.startswith("embedded:"):
        from dlm_decode.models.embedded import embedded_model_dir

        return str(embedded_model_dir(path.split(":", 1)[1]))
    local = Path(path).expanduser()
    if local.is_dir():
        return str(local)
    if local.exists():
        raise ModelError(
            f"`{key}.path` = {path!r} is a file ({local.resolve()}), not a checkpoint directory",
            fix=f"set {key}.path to the directory holding config.json, the weights and the tokenizer "
            f"files (perhaps {local.resolve().parent})",
        )
    if _looks_local(path):
        hub = "" if "/" in path else ", nor a hub id (those have the form namespace/name)"
        raise ModelError(
            f"`{key}.path` = {path!r}: no such directory ({local.resolve()}){hub}",
            fix="check the "
            f"path (a relative one is read from the working directory, {Path.cwd()}), or give "
            "`embedded:<name>` (see `dlm-decode models`) or a hub id such as GSAI-ML/LLaDA-8B-Instruct",
        )
    return path


def config_candidates(directory: Path, depth: int = CANDIDATE_DEPTH) -> list[Path]:
    """Subdirectories of ``directory``, up to ``depth`` levels down, that hold a ``config.json`` (sorted)."""
    found, level = [], [directory]
    for _ in range(depth):
        level = sorted(
            child for parent in level for child in parent.iterdir() if child.is_dir() and not child.name.startswith(".")
        )
        found += [child for child in level if (child / "config.json").is_file()]
    return sorted(found)


def _no_config(path: str, directory: Path, key: str) -> ModelError:
    candidates = config_candidates(directory)
    absolute = "" if str(directory.resolve()) == path else f" ({directory.resolve()})"
    where = f"`{key}.path` = {path!r}{absolute} has no config.json"
    if candidates:
        shown = ", ".join(str(c) for c in candidates[:_SHOWN]) + (
            f" and {len(candidates) - _SHOWN} more" if len(candidates) > _SHOWN else ""
        )
        return ModelError(
            f"{where}; these directories below it have one: {shown}",
            fix=f"set {key}.path to one of them (the checkpoint directory itself)",
        )
    content = "it is empty" if not any(directory.iterdir()) else "nor do its subdirectories"
    return ModelError(
        f"{where} ({content}): it is not a checkpoint directory",
        fix=f"set {key}.path to the "
        "directory holding the checkpoint's config.json, weights and tokenizer files (as "
        "save_pretrained writes them), `embedded:<name>`, or a hub id",
    )


def _not_cached(path: str, key: str) -> ModelError:
    from huggingface_hub import constants

    local = Path(path).resolve()
    return ModelError(
        f"`{key}.path` = {path!r} is neither a local directory ({local} does not exist) nor a hub id "
        f"in the local Hugging Face cache ({constants.HF_HUB_CACHE}), and downloading is off",
        fix=f"set {key}.allow_download=true to fetch it from the hub, or give the local directory of the checkpoint",
    )


def probe_hub(repo_id: str, key: str) -> None:
    """One request for ``repo_id``'s ``config.json``: raise at once when the hub cannot be reached, instead of
    letting huggingface_hub retry five times (about 23 s) before it reports the same. A hub that answers (even
    "not found" or "gated") passes: loading then reports what it said.

    :raises ModelError: naming the key, the hub, the network failure and the fix.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return
    except Exception as exc:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise ModelError(
            f"`{key}.path` = {repo_id!r} is not in the local Hugging Face cache and "
            f"{key}.allow_download=true, but the hub ({constants.ENDPOINT}) cannot be reached{offline}: "
            f"{type(exc).__name__}: {exc}",
            fix="run where the hub is reachable (or set HTTPS_PROXY), "
            f"or download it elsewhere (`hf download {repo_id}`) and copy the cache or the directory "
            "here",
        ) from exc


def config_file(spec: ModelSpec, key: str) -> Path:
    """The checkpoint's ``config.json``: in its directory, or in the local HF cache for a hub id (downloaded
    first, when ``allow_download``).

    :raises ModelError: see :func:`resolve_path`; no ``config.json`` in the directory (candidates listed); a hub
        id not cached with downloading off, an unreachable hub, or a download that failed.
    """
    path = resolve_path(spec.path, key)
    directory = Path(path)
    if directory.is_dir():
        if not (directory / "config.json").is_file():
            raise _no_config(spec.path, directory, key)
        return directory / "config.json"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json")
    if isinstance(cached, str):
        return Path(cached)
    if not spec.allow_download:
        raise _not_cached(spec.path, key)
    probe_hub(path, key)
    from transformers.utils import cached_file

    try:
        # None only with _raise_exceptions_for_missing_entries=False; by default a missing file raises
        return Path(cast(str, cached_file(path, "config.json")))
    except Exception as exc:
        raise ModelError(
            f"`{key}.path` = {spec.path!r}: config.json could not be downloaded ({type(exc).__name__}: {exc})",
            fix="check the hub id (and, for a gated model, your access and `hf auth login`)",
        ) from exc


def read_config_json(spec: ModelSpec, key: str) -> dict:
    """The checkpoint's ``config.json`` as a dict, without running any of its code (see :func:`config_file`).

    :raises ModelError: see :func:`config_file`; a ``config.json`` that is not a JSON object.
    """
    file = config_file(spec, key)
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"`{key}.path` = {spec.path!r}: {file} cannot be read as JSON ({type(exc).__name__}: {exc})",
            fix="restore the checkpoint's config.json",
        ) from exc
    if not isinstance(config, dict):
        raise ModelError(
            f"`{key}.path` = {spec.path!r}: {file} holds a {type(config).__name__}, not a JSON object",
            fix="restore the checkpoint's config.json",
        )
    return config


def local_files(spec: ModelSpec, key: str) -> Path | None:
    """The directory the checkpoint's files must already be in: its own, or a hub id's cached snapshot when
    downloading is off; None when a download may still fetch what is missing."""
    path = Path(resolve_path(spec.path, key))
    if path.is_dir():
        return path
    return None if spec.allow_download else config_file(spec, key).parent


def check_weight_files(directory: Path, spec: ModelSpec, key: str) -> None:
    """Raise unless ``directory`` holds the weight files ``from_pretrained`` reads (and every shard an index
    names).

    :raises ModelError: naming the directory, the files looked for and any other weight-like files found there.
    """
    present = [name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not present:
        others = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        found = f"; it has {', '.join(others)}, which from_pretrained does not read" if others else ""
        raise ModelError(
            f"`{key}.path` = {spec.path!r} has no weights: none of {', '.join(WEIGHT_FILES)} in {directory}{found}",
            fix="copy the checkpoint's weights there (save_pretrained writes "
            "model.safetensors), or point the path at the complete checkpoint",
        )
    index = next((directory / name for name in present if name.endswith(".index.json")), None)
    if index is not None and not any(name in present for name in WEIGHT_FILES if not name.endswith(".json")):
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        missing = [shard for shard in shards if not (directory / shard).is_file()]
        if missing:
            raise ModelError(
                f"`{key}.path` = {spec.path!r}: {index.name} names {len(shards)} weight shard(s), of "
                f"which {len(missing)} are missing from {directory}: {', '.join(missing[:_SHOWN])}",
                fix="copy every shard of the checkpoint there",
            )


def _has_vocabulary(directory: Path) -> bool:
    single = [name for name in VOCABULARY_FILES if " + " not in name]
    return any((directory / name).is_file() for name in single) or all(
        (directory / name).is_file() for name in ("vocab.json", "merges.txt")
    )


def tokenizer_code(directory: Path) -> bool:
    """``tokenizer_config.json`` in ``directory`` names the checkpoint's own tokenizer code (an ``auto_map``)."""
    file = directory / "tokenizer_config.json"
    try:
        return bool(file.is_file() and json.loads(file.read_text(encoding="utf-8")).get("auto_map"))
    except (OSError, ValueError, AttributeError):
        return False


def check_tokenizer_files(directory: Path, spec: ModelSpec, key: str) -> None:
    """Raise unless ``directory`` holds the files a tokenizer is built from (:data:`VOCABULARY_FILES`); a
    tokenizer with its own code run remotely decides its own files and is not checked.

    :raises ModelError: naming the directory, the files looked for and those it has.
    """
    if _has_vocabulary(directory) or (spec.implementation == "remote" and tokenizer_code(directory)):
        return
    held = sorted(p.name for p in directory.iterdir() if p.is_file())
    raise ModelError(
        f"`{key}.path` = {spec.path!r} has no tokenizer files: none of {', '.join(VOCABULARY_FILES)} "
        f"in {directory} (it holds {', '.join(held) or 'nothing'})",
        fix="copy the checkpoint's tokenizer files there (tokenizer.save_pretrained writes them)",
    )
