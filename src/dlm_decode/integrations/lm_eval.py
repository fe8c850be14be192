"""The ``dlm_decode`` model for lm-evaluation-harness (``pip install "dlm-decode[lm-eval]"``).

Any decoder config runs on lm-eval's generation tasks (GSM8K and friends)::

    python -m dlm_decode.integrations.lm_eval --model dlm_decode \\
        --model_args config=configs/decoders/llada.yaml,model.dllm.path=embedded:dllm,generation.max_new_tokens=32 \\
        --tasks gsm8k --batch_size 16

lm-eval (0.4.x) discovers models only through its own registry, filled on import, and has no plugin entry point:
``python -m dlm_decode.integrations.lm_eval`` imports this module (registering ``dlm_decode``) and then runs
lm-eval's own command line with the same arguments (``lm_eval run ...``, ``ls``, ``validate``). From Python,
``import dlm_decode.integrations.lm_eval`` before ``lm_eval.simple_evaluate(model="dlm_decode", ...)``.

``--model_args``: ``config=A.yaml`` (several: ``config=A.yaml+B.yaml``, composed left to right) and any dotted
config override (``model.dllm.path=...``, ``decoder.window.size=8``). ``--batch_size N`` with ``N > 1`` sets
``generation.batch_size`` (1, lm-eval's default, and ``auto`` keep the config's). lm-eval's ``--device`` is
ignored (it defaults to ``cuda:0`` whether given or not): set ``model.dllm.device`` / ``model.ar.device``
(``auto`` picks CUDA when available, ``cuda:LOCAL_RANK`` under a launcher) or ``device_map``.

**Requests.** Only ``generate_until`` is implemented, through :meth:`~dlm_decode.decoder.Decoder.generate`: each
context is decoded with ``max_gen_toks`` new tokens (default ``generation.max_new_tokens``) and the seed
``generation.seed + doc_id`` (so results do not depend on batching or on the number of processes), then cut at the
first ``until`` string. A task's ``repeats: k`` (k samples per document, e.g. self-consistency voting) decodes
repeat ``r`` of a document with ``generation.seed + doc_id + r * 0x9E3779B9`` (:func:`request_seeds`), so a
sampling decoder gives k samples, not one sample k times. The decoder config decides how tokens are sampled;
lm-eval's ``temperature``/``do_sample`` are ignored. Log-likelihood requests (multiple-choice tasks such as MMLU
or HellaSwag) raise :class:`NotImplementedError`: a masked diffusion LM has no left-to-right likelihood, only a
bound (ELBO), which this integration does not compute.

**Prompts.** By default the decoder wraps each context as one user turn of the model's chat template
(``model.dllm.chat_template``; set it to false for base models). With lm-eval's ``--apply_chat_template`` lm-eval
renders the template (multi-turn few-shot) and the decoder's own wrapping is switched off.

**Several processes.** ``accelerate launch --num_processes N -m dlm_decode.integrations.lm_eval ...`` or
``torchrun --nproc_per_node N -m dlm_decode.integrations.lm_eval ...``: the model joins the launcher's process group
(``gloo``, see :mod:`dlm_decode.distributed`) and reports its rank and world size, so lm-eval's evaluator splits
the requests by rank and gathers the metrics on rank 0; each process takes ``cuda:LOCAL_RANK`` when its device is
``auto`` or ``cuda``.

**Offline tasks.** :func:`write_task_suite` writes local lm-eval tasks, one per task of the embedded suite of
:mod:`dlm_decode.eval.tasks` (scored by its own checkers, with the examples and seeds of ``dlm-decode eval``), for
``--tasks DIR``, and their group ``dlm_suite`` (their mean accuracy) for ``--include_path DIR --tasks dlm_suite``;
``python -m dlm_decode.integrations.lm_eval write-tasks DIR`` does the same from the shell.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from dlm_decode.errors import ConfigError, InputError, with_fix

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        with_fix(
            "dlm_decode.integrations.lm_eval needs lm-evaluation-harness",
            "pip install 'dlm-decode[lm-eval]' (or pip install 'lm-eval>=0.4.5')",
        )
    ) from exc

from dlm_decode.decoder import check_seed
from dlm_decode.distributed import join_process_group

MODEL_NAME = "dlm_decode"

_LOGLIKELIHOOD = with_fix(
    "dlm_decode evaluates generation tasks only (output_type: generate_until, e.g. gsm8k, minerva_math, "
    "humaneval): {kind} requests need a left-to-right likelihood, which a masked diffusion LM does not have (only "
    "an ELBO, not computed here)",
    "choose a generate_until task (or the `_cot`/generative variant of the task)",
)


def _override_value(value: Any) -> str:
    """lm-eval parses ``--model_args`` values into Python types; turn them back into override text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


class DlmDecodeLM(LM):
    """A :class:`~dlm_decode.decoder.Decoder` behind lm-eval's ``LM`` interface.

    :param config: config file(s) joined by ``+``.
    :param overrides: dotted config keys and their values (the other ``--model_args``).
    """

    def __init__(
        self,
        config: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        device: str | None = None,
        decoder=None,
        **overrides: Any,
    ):
        super().__init__()
        from dlm_decode.decoder import Decoder

        bad = sorted(key for key in overrides if "." not in key)
        if bad:
            raise ConfigError(
                f"--model_args {bad[0]}",
                "is not a dlm_decode model argument",
                "pass config=FILE.yaml[+FILE2.yaml] and dotted config overrides, e.g. "
                "model.dllm.path=GSAI-ML/LLaDA-8B-Instruct,generation.max_new_tokens=256",
            )
        items = [f"{key}={_override_value(value)}" for key, value in overrides.items()]
        if batch_size is not None and str(batch_size).isdigit() and int(batch_size) > 1:
            items.append(f"generation.batch_size={int(batch_size)}")
        del device, max_batch_size  # lm-eval passes --device (default cuda:0) always: the config decides instead
        ranks, self._created_group = join_process_group()
        self._rank, self._world_size = ranks.rank, ranks.world_size
        if decoder is None:
            sources = [part for part in str(config).split("+") if part] if config else []
            decoder = Decoder.from_config(sources, items)
        self.decoder = decoder
        self._chat_applied = False

    # -- lm-eval's interface ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.decoder.dllm.device

    @property
    def tokenizer(self):
        return self.decoder.dllm.tokenizer

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", MODEL_NAME)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render lm-eval's (few-shot) chat with the dLLM's template; the decoder then stops wrapping prompts."""
        self._chat_applied = True
        self.decoder.dllm.chat_template = False
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(_LOGLIKELIHOOD.format(kind="loglikelihood"))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(_LOGLIKELIHOOD.format(kind="loglikelihood_rolling"))

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode every request's context; ``[len(requests)]`` completions cut at their ``until`` strings."""
        from tqdm.auto import tqdm

        generation = self.decoder.generation
        seeds = request_seeds(requests, generation.seed)
        groups: dict[int, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            kwargs = request.args[1] if len(request.args) > 1 and request.args[1] else {}
            groups[int(kwargs.get("max_gen_toks") or generation.max_new_tokens)].append(index)
        texts: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="dlm_decode", disable=disable_tqdm or self.rank != 0)
        for max_new_tokens, indices in groups.items():
            indices.sort(key=lambda i: -len(requests[i].args[0]))  # similar lengths share a batch: less padding
            for first in range(0, len(indices), generation.batch_size):
                chunk = indices[first : first + generation.batch_size]
                output = self.decoder.generate(
                    [requests[i].args[0] for i in chunk], max_new_tokens=max_new_tokens, seeds=[seeds[i] for i in chunk]
                )
                for i, text in zip(chunk, output.texts):
                    kwargs = requests[i].args[1] if len(requests[i].args) > 1 and requests[i].args[1] else {}
                    texts[i] = cut_at(text, kwargs.get("until"))
                    self.cache_hook.add_partial("generate_until", requests[i].args, texts[i])
                bar.update(len(chunk))
        bar.close()
        return cast(list[str], texts)  # every request belongs to one group: none is left None

    # -- collectives lm-eval's evaluator calls when world_size > 1 ---------------------------------------------

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        local = tensor.detach().cpu().reshape(-1)
        parts = [torch.zeros_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts)

    def gather_object(self, obj, dst: int = 0):
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


#: Repeat ``r`` of a document is decoded with the seed of repeat 0 plus ``r * REPEAT_STRIDE``. A CPU
#: ``torch.Generator`` reads only the low 32 bits of its seed (``manual_seed(1)`` and ``manual_seed(1 + 2**32)`` draw
#: the same numbers), so the stride must change them: it is odd (the repeats of a document never share their low 32
#: bits) and about 2**32 / golden ratio, so that its multiples spread over the 32-bit range: with up to 100 repeats
#: and fewer than 20 million documents, no two requests of a task share their low 32 bits.
REPEAT_STRIDE = 0x9E3779B9


def request_seeds(requests: Sequence[Any], seed: int) -> list[int]:
    """One decoding seed per lm-eval request: ``seed + doc_id + repeat * REPEAT_STRIDE`` (see
    :data:`REPEAT_STRIDE`).

    lm-eval's ``repeats: k`` (self-consistency: k samples per document, voted by the task's filters) sends the
    same request k times in a row. ``repeat`` counts the earlier requests of the same document (same task name,
    ``doc_id`` and request index ``idx``) in ``requests``, so the k samples differ under a sampling decoder while
    repeat 0 keeps ``seed + doc_id``, the seed ``dlm-decode eval`` gives that example, and neither batching nor
    lm-eval's split over processes (which keeps a document's repeats together) changes any seed. A request
    without a ``doc_id`` gets ``seed + its position``.

    :raises InputError: when a seed falls outside ``[-2**63, 2**64 - 1]`` (what ``torch.Generator`` accepts).
    """
    repeats: Counter = Counter()
    seeds = []
    for position, request in enumerate(requests):
        if request.doc_id is None:
            seeds.append(seed + position)
            continue
        key = (request.task_name, request.doc_id, request.idx)
        seeds.append(
            check_seed(
                seed + request.doc_id + repeats[key] * REPEAT_STRIDE,
                f"the seed of repeat {repeats[key]} of document {request.doc_id} of task {request.task_name!r} "
                f"(generation.seed + doc_id + repeat * {REPEAT_STRIDE})",
                "lower generation.seed (or the task's repeats)",
            )
        )
        repeats[key] += 1
    return seeds


def cut_at(text: str, until: str | Sequence[str] | None) -> str:
    """``text`` up to the first occurrence of any ``until`` string (all of it when none occurs)."""
    stops = [until] if isinstance(until, str) else list(until or [])
    cut = min((text.find(s) for s in stops if s and s in text), default=len(text))
    return text[:cut]


# -- local tasks over the embedded task suite -------------------------------------------------------------------

_TASK_YAML = """\
# Written by dlm_decode.integrations.lm_eval.write_task_suite: {count} examples of {task} ({split} split), document j
# being example {task}-<j> of `dlm-decode eval` (decoded with seed generation.seed + j there and here).
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
process_results: !function {utils}.process_results
generation_kwargs:
  until: []
  max_gen_toks: {max_gen_toks}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 2.0
"""

_GROUP_YAML = """\
# Written by dlm_decode.integrations.lm_eval.write_task_suite: the tasks {tasks} ({split} split) of the directory
# above, and their mean acc, as `dlm-decode eval`'s accuracy (mean over tasks). Run with --include_path on that
# directory. It sits in a subdirectory because `--tasks DIR` reads DIR/*.yaml only, and lm-eval (0.4.13) cannot build
# a group read that way (it hands the group's own keys to its tasks).
group: {name}
task:
{members}aggregate_metric_list:
  - metric: acc
    aggregation: mean
    weight_by_size: false
metadata:
  version: 2.0
"""

_UTILS = '''"""Scores a dlm_suite answer with the task's own checker (dlm_decode.eval.tasks).

Importing dlm_decode.integrations.lm_eval also registers the `dlm_decode` model with lm-eval. When this task's
directory is given as `--tasks DIR`, lm-eval loads this file before it builds the model, so the plain
`lm_eval --model dlm_decode ... --tasks DIR` command finds the model."""

from dlm_decode.integrations.lm_eval import process_suite_results as process_results  # noqa: F401
'''


def process_suite_results(doc: dict, results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` of the ``dlm_suite`` tasks: the suite task's own checker on the decoded text."""
    from dlm_decode.eval.tasks import TASKS, Example

    example = Example(task=doc["task"], prompt=doc["prompt"], answer=doc["answer"])
    return {"acc": float(TASKS[doc["task"]].check(example, results[0]))}


def write_task_suite(
    directory: str | Path,
    tasks: Sequence[str] | None = None,
    limit: int = 20,
    split: str = "test",
    data_seed: int = 0,
    name: str = "dlm_suite",
    max_gen_toks: int = 32,
) -> Path:
    """Write lm-eval tasks over ``limit`` examples of each embedded task, and their group ``name``, into
    ``directory``.

    Each embedded task gets its own lm-eval task ``name_<task>`` (``DIR/name_<task>.yaml`` and ``.jsonl``, the
    examples in :func:`~dlm_decode.eval.tasks.load_examples` order), so its document ``j`` is example
    ``<task>-<j>`` of ``dlm-decode eval`` with the same tasks, limit, split and data seed, decoded with the same
    seed ``generation.seed + j``: both give the same answers. The group (``DIR/groups/name.yaml``, for
    ``--include_path DIR --tasks name``) runs them all and reports the unweighted mean of their ``acc``
    (``weight_by_size: false``): ``dlm-decode eval``'s accuracy. ``--tasks DIR`` runs the tasks without the group.

    :return: the group's YAML file (its stem is the group name, ``parents[1]`` the directory).
    :raises InputError: for an empty, unknown or repeated task name, a ``limit`` below 1, or when ``directory``
        holds other ``name*.yaml`` files (e.g. of other tasks, or the single task of earlier releases, whose seeds
        counted across tasks), which ``--tasks DIR`` would run too.
    """
    from dlm_decode.eval.runner import check_selection
    from dlm_decode.eval.tasks import load_examples

    names = check_selection(tasks, limit)
    if not name.isidentifier():
        raise InputError(
            f"the suite name {name!r} is not a Python identifier, and it names the scoring module "
            f"`{name}_utils.py` lm-eval imports",
            fix=f"use letters, digits and underscores (e.g. {re.sub(r'^(?=[0-9])|[^0-9A-Za-z_]', '_', name)!r})",
        )
    directory = Path(directory).resolve()
    wanted = {f"{name}_{task}.yaml" for task in names}
    stale = [path.name for path in sorted(directory.glob(f"{name}*.yaml")) if path.name not in wanted]
    if stale:
        raise InputError(
            f"{directory} already holds {', '.join(stale)}, which `--tasks {directory}` would run too",
            fix=f"delete {'them' if len(stale) > 1 else 'it'} or write to another directory",
        )
    (directory / "groups").mkdir(parents=True, exist_ok=True)
    utils = f"{name}_utils"
    (directory / f"{utils}.py").write_text(_UTILS, encoding="utf-8")
    for task in names:
        examples = load_examples([task], split, limit, data_seed)
        member = f"{name}_{task}"
        data = directory / f"{member}.jsonl"
        data.write_text(
            "".join(json.dumps({"task": ex.task, "prompt": ex.prompt, "answer": ex.answer}) + "\n" for ex in examples),
            encoding="utf-8",
        )
        (directory / f"{member}.yaml").write_text(
            _TASK_YAML.format(
                count=len(examples),
                task=task,
                split=split,
                name=member,
                data=json.dumps(str(data)),
                utils=utils,
                max_gen_toks=max_gen_toks,
            ),
            encoding="utf-8",
        )
    path = directory / "groups" / f"{name}.yaml"
    path.write_text(
        _GROUP_YAML.format(
            tasks=",".join(names), split=split, name=name, members="".join(f"  - {name}_{task}\n" for task in names)
        ),
        encoding="utf-8",
    )
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dlm_decode.integrations.lm_eval [lm_eval arguments]`` or ``... write-tasks DIR [--tasks a,b]
    [--limit N]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["write-tasks"]:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m dlm_decode.integrations.lm_eval write-tasks")
        parser.add_argument("directory")
        parser.add_argument("--tasks", help="comma-separated task names (default: all)")
        parser.add_argument("--limit", type=int, default=20, help="examples per task (default 20)")
        parser.add_argument("--max-gen-toks", type=int, default=32)
        args = parser.parse_args(argv[1:])
        tasks = [t for t in (args.tasks or "").split(",") if t] or None
        path = write_task_suite(args.directory, tasks, args.limit, max_gen_toks=args.max_gen_toks)
        print(
            f"wrote {path.parents[1]}; run lm_eval with --tasks {path.parents[1]} (one result per task), or "
            f"--include_path {path.parents[1]} --tasks {path.stem} (with their mean) under `python -m "
            "dlm_decode.integrations.lm_eval`"
        )
        return
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":  # run as `python -m`: register and run the module's own copy, not this __main__ one
    from dlm_decode.integrations.lm_eval import main as _main

    _main()
else:
    register_model(MODEL_NAME, "dlm-decode")(DlmDecodeLM)
