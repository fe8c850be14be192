"""The ``dlm-decode`` command line.

::

    dlm-decode generate -c CFG [-c CFG2 ...] [key=value ...] (--prompt TEXT ... | --prompts-file F) [--json]
                        [--threads N]
    dlm-decode generate -c CFG [key=value ...] --dry-run [--prompt TEXT ... | --prompts-file F] [--prompt-budget N]
    dlm-decode plugins [--json]
    dlm-decode config show|validate -c CFG [key=value ...]
    dlm-decode models
    dlm-decode eval -c CFG [key=value ...] [--tasks arith,sort,...] [--limit N] [--split S] --out DIR
    dlm-decode eval -c CFG [key=value ...] [--tasks ...] [--limit N] [--split S] --dry-run
    dlm-decode ablate -c CFG [key=value ...] --vary key=v1,v2 [--vary ...] [--tasks ...] [--limit N] --out DIR
    dlm-decode serve -c CFG [key=value ...] [--host H] [--port P] [--max-batch N] [--batching continuous|fixed]
                     [--drain-timeout S] [--model-name NAME] [--threads N]
    dlm-decode --version

``--debug`` (before or after the subcommand) prints the traceback of an error, with the exceptions it chains;
``--threads N`` (``generate``, ``eval``, ``ablate``) sets torch's CPU threads for the run.

The module imports only the standard library and light ``dlm_decode`` modules: each command imports what it needs
(torch, transformers) when it runs, so ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from dlm_decode import __version__
from dlm_decode.errors import DlmDecodeError, InputError, with_fix
from dlm_decode.eval.tasks import SPLITS

if TYPE_CHECKING:
    from dlm_decode.config import ResolvedConfig
    from dlm_decode.decoder import Decoder, GenerationOutput


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="CFG",
        help="YAML config file; repeat to compose several, later files win",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides applied after the files, e.g. decoder.verification=left_to_right",
    )


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            with_fix(f"{text!r} is not an integer", "pass a whole number such as 512")
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(with_fix(f"must be at least 1, got {value}", "pass 1 or more"))
    return value


def _parse_tasks(value: str | None) -> list[str] | None:
    """The ``--tasks`` names, or None (every task) when the option is absent; an empty list is refused later."""
    return None if value is None else [name.strip() for name in value.split(",") if name.strip()]


def _read_prompts(args: argparse.Namespace) -> list[str]:
    """The ``--prompt`` values, then the non-blank lines of ``--prompts-file``.

    :raises DlmDecodeError: for a blank ``--prompt``, an unreadable file, or no prompt at all.
    """
    prompts = list(args.prompt or [])
    blank = [index for index, prompt in enumerate(prompts) if not prompt.strip()]
    if blank:
        raise InputError(f"--prompt number {blank[0] + 1} is empty", fix="give every --prompt some text")
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as handle:
                prompts += [line.rstrip("\n") for line in handle if line.strip()]
        except OSError as exc:
            raise DlmDecodeError(
                f"--prompts-file {args.prompts_file}: cannot read it ({exc.strerror})",
                fix="pass a readable text file with one prompt per line",
            ) from None
        except UnicodeDecodeError:
            raise DlmDecodeError(
                f"--prompts-file {args.prompts_file} is not UTF-8 text",
                fix="pass a UTF-8 text file with one prompt per line",
            ) from None
    if not prompts:
        raise DlmDecodeError("no prompt given", fix="pass --prompt TEXT or --prompts-file FILE")
    return prompts


def _report_dry_run(args: argparse.Namespace, prompts: list[str] | None) -> int:
    """Print the dry run's findings; exit status 0 when no incompatibility was found, else 2."""
    from dlm_decode.models.dry_run import dry_run

    report = dry_run(args.config, args.overrides, prompts=prompts or None, prompt_budget=args.prompt_budget)
    print(report.format())
    return 0 if report.ok else 2


def _check_dry_run_arguments(args: argparse.Namespace) -> None:
    """``--prompt-budget`` means something only for a dry run, ``--threads`` only for a run that decodes: refuse
    them otherwise rather than ignore them."""
    if args.prompt_budget is not None and not args.dry_run:
        raise DlmDecodeError(
            "--prompt-budget applies only with --dry-run", fix="add --dry-run, or drop --prompt-budget"
        )
    if args.threads is not None and args.dry_run:
        raise DlmDecodeError(
            "--threads applies only to a run that decodes, and --dry-run decodes nothing",
            fix="drop --threads, or --dry-run",
        )


def _add_dry_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and the model pair (tokenizers, vocab sizes, special ids, context) "
        "from config.json and tokenizer files alone, without loading weights; exit 2 on errors",
    )
    parser.add_argument(
        "--prompt-budget",
        type=_positive_int,
        default=None,
        metavar="N",
        help="with --dry-run and no prompts: prompt tokens to budget for (at least 1; default: what "
        "the model's context leaves after generation.max_new_tokens)",
    )


def _add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads torch uses within an operation (default: torch's own, one per core, or "
        "OMP_NUM_THREADS); 1 is fastest on a busy machine, see docs/cli.md",
    )


@contextlib.contextmanager
def _loading_models(args: argparse.Namespace, config: ResolvedConfig) -> Iterator[None]:
    """The scope of a command that loads the models of ``config``: torch's CPU threads set from ``--threads`` (and
    restored after), a note when a CPU run keeps torch's default threads on a busy machine
    (:func:`_busy_cpu_note`), and transformers' "Loading weights" bar hidden (its download bars stay)."""
    import torch
    from transformers.utils import logging as transformers_logging

    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif "OMP_NUM_THREADS" not in os.environ and config.config.model.dllm.device == "cpu":
        note = _busy_cpu_note(threads)
        if note:
            print(note, file=sys.stderr)
    previous = transformers_logging.set_tqdm_hook(
        lambda factory, bar_args, bar_kwargs: factory(*bar_args, **{**bar_kwargs, "disable": True})
    )
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous)
        torch.set_num_threads(threads)


def _busy_cpu_note(threads: int) -> str | None:
    """What to say when torch's ``threads`` per operation meet a machine already busier than it has cores, where
    they slow CPU decoding several times over (docs/cli.md, "CPU threads"); None otherwise."""
    if threads == 1 or not hasattr(os, "getloadavg"):  # no load average on Windows
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load < cores:
        return None
    return (
        f"dlm-decode: note: the machine is busy (load average {load:.1f} on {cores} cores) and torch uses "
        f"{threads} threads per operation, which can make CPU decoding several times slower; pass --threads 1 "
        "(or set OMP_NUM_THREADS=1) if it is slow"
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from dlm_decode.config import load_config
    from dlm_decode.decoder import Decoder

    _check_dry_run_arguments(args)
    if args.dry_run:
        return _report_dry_run(args, _read_prompts(args) if (args.prompt or args.prompts_file) else None)
    prompts = _read_prompts(args)
    config = load_config(args.config, args.overrides)
    with _loading_models(args, config):
        decoder = Decoder(config)
        for first, output in _generate_by_batch(decoder, prompts):
            for index, record in enumerate(output.records(), start=first):
                if args.json:
                    print(json.dumps(record), flush=True)
                    continue
                print(PROMPT_HEADER.format(index=index, prompt=json.dumps(record["prompt"])), flush=True)
                print(record["text"], flush=True)
                print(
                    f"  [{record['generated_tokens']} tokens, {record['nfe']} forwards, "
                    f"{record['tokens_per_forward']:.2f} tokens/forward, {record['wall_s']:.3f} s]",
                    file=sys.stderr,
                    flush=True,
                )
    return 0


#: The line before each completion in ``generate``'s plain output (``prompt``: the prompt as a JSON string).
PROMPT_HEADER = "==> prompt {index}: {prompt} <=="


def _generate_by_batch(decoder: Decoder, prompts: list[str]) -> Iterator[tuple[int, GenerationOutput]]:
    """``decoder.generate(prompts)`` one batch of ``generation.batch_size`` at a time, yielding the index of each
    batch's first prompt and its :class:`~dlm_decode.decoder.GenerationOutput` as the batch finishes, with the
    seeds one call would use (prompt ``i``: ``generation.seed + i``), so the completions are the same.

    :raises InputError: as ``generate`` does; an error about a later batch says where its prompt numbers start.
    """
    generation = decoder.generation
    for first in range(0, len(prompts), generation.batch_size):
        chunk = prompts[first : first + generation.batch_size]
        try:
            yield first, decoder.generate(chunk, seeds=[generation.seed + first + i for i in range(len(chunk))])
        except InputError as exc:
            if first == 0:
                raise
            raise InputError(
                f"in the batch of prompts {first}-{first + len(chunk) - 1}, whose prompt numbers below "
                f"count from 0: {exc.message}",
                fix=exc.fix,
            ) from exc


def cmd_plugins(args: argparse.Namespace) -> int:
    from dlm_decode.plugins import get_registry

    rows = [(s.role, s.name, s.package, s.version, s.plugin) for s in get_registry()]
    if args.json:
        keys = ("role", "name", "package", "version", "plugin")
        print(json.dumps([dict(zip(keys, row)) for row in rows], indent=2))
        return 0
    header = ("role", "name", "package", "version", "plugin")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from dlm_decode.config import load_config

    config = load_config(args.config, args.overrides)
    if args.action == "show":
        print(f"# config_hash: {config.hash}")
        print(config.yaml, end="")
    else:
        print(f"ok: config is valid (config_hash {config.hash})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dlm_decode.config import load_config
    from dlm_decode.decoder import Decoder
    from dlm_decode.eval.runner import check_out_dir, check_selection, evaluate, format_table

    names = check_selection(_parse_tasks(args.tasks), args.limit)  # before a model is loaded
    _check_dry_run_arguments(args)
    if args.dry_run:
        from dlm_decode.eval.tasks import load_examples

        return _report_dry_run(args, [ex.prompt for ex in load_examples(names, args.split, args.limit)])
    if not args.out:
        raise DlmDecodeError(
            "eval needs --out DIR",
            fix="pass --out DIR (the directory for results.jsonl and summary.json), or --dry-run",
        )
    check_out_dir(args.out)  # before the weights load
    config = load_config(args.config, args.overrides)
    with _loading_models(args, config):
        decoder = Decoder(config)
        summary = evaluate(
            decoder, args.out, tasks=names, limit=args.limit, split=args.split, progress=not args.no_progress
        )
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate, rank 0 holds the gathered results
        print(format_table(summary))
        print(f"results: {args.out}/results.jsonl  summary: {args.out}/summary.json")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from dlm_decode.config import load_config
    from dlm_decode.eval.ablation import ablate, markdown_table, parse_vary

    factors = parse_vary(args.vary)
    with _loading_models(args, load_config(args.config, args.overrides)):  # the base config's device
        rows = ablate(
            args.config,
            factors,
            args.out,
            overrides=args.overrides,
            tasks=_parse_tasks(args.tasks),
            limit=args.limit,
            split=args.split,
            progress=not args.no_progress,
        )
    print(markdown_table(rows), end="")
    print(f"table: {args.out}/ablation.md  plots: {args.out}/pareto_tpf.png, {args.out}/pareto_tps.png")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from dlm_decode.models.embedded import EMBEDDED_MODELS, embedded_model_dir

    for name, description in EMBEDDED_MODELS.items():
        print(f"embedded:{name}\t{embedded_model_dir(name)}\t{description}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dlm_decode.config import load_config
    from dlm_decode.decoder import Decoder

    try:
        from dlm_decode.serve.app import Server, run_server
    except ImportError as exc:
        raise DlmDecodeError(
            f"dlm-decode serve needs FastAPI and uvicorn ({exc})", fix="pip install 'dlm-decode[serve]'"
        ) from None
    config = load_config(args.config, args.overrides)
    with _loading_models(args, config):
        server = Server(
            Decoder(config),
            max_batch=args.max_batch,
            join=args.batching == "continuous",
            model_name=args.model_name,
            drain_timeout=args.drain_timeout,
        )
        run_server(server, args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,  # keeps a --debug given before
        help="on an error, print its traceback and the exceptions it chains",
    )
    parser = argparse.ArgumentParser(
        prog="dlm-decode", description="Decode diffusion language models.", parents=[debug]
    )
    parser.add_argument("--version", action="version", version=f"dlm-decode {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=summary, parents=[debug])

    generate = command("generate", "decode prompts with a composed decoder config")
    _add_config_arguments(generate)
    generate.add_argument("--prompt", action="append", help="a prompt; repeat for several")
    generate.add_argument("--prompts-file", help="a file with one prompt per line (decoded after the --prompt values)")
    generate.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per prompt and line (JSON lines), as each batch finishes",
    )
    _add_dry_run_arguments(generate)
    _add_threads_argument(generate)
    generate.set_defaults(handler=cmd_generate)

    plugins = command("plugins", "list the registered strategies by role, with their package")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(handler=cmd_plugins)

    config = command("config", "show or validate a composed config")
    config.add_argument("action", choices=["show", "validate"])
    _add_config_arguments(config)
    config.set_defaults(handler=cmd_config)

    evaluation = command("eval", "evaluate a decoder config on the embedded task suite")
    _add_config_arguments(evaluation)
    evaluation.add_argument("--tasks", help="comma-separated task names (default: all)")
    evaluation.add_argument("--limit", type=int, default=100, help="examples per task (default 100)")
    evaluation.add_argument(
        "--split", choices=SPLITS, default="test", help="the suite's split (default test; tune settings on train)"
    )
    evaluation.add_argument(
        "--out", help="directory for results.jsonl, summary.json, config.yaml (required unless --dry-run)"
    )
    evaluation.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_dry_run_arguments(evaluation)
    _add_threads_argument(evaluation)
    evaluation.set_defaults(handler=cmd_eval)

    ablation = command("ablate", "evaluate a base config and one-factor-at-a-time variations")
    _add_config_arguments(ablation)
    ablation.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="key=v1,v2",
        help="a factor and its values, split at the commas outside braces, brackets and quotes "
        "(a strategy with parameters is one value: 'decoder.verification={name: threshold, "
        "threshold: 0.8},topk'); repeat for several factors (each varied alone)",
    )
    ablation.add_argument("--tasks", help="comma-separated task names (default: all)")
    ablation.add_argument("--limit", type=int, default=50, help="examples per task and run (default 50)")
    ablation.add_argument(
        "--split", choices=SPLITS, default="test", help="the suite's split (default test; tune settings on train)"
    )
    ablation.add_argument("--out", required=True, help="directory for the runs, table and plots")
    ablation.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _add_threads_argument(ablation)
    ablation.set_defaults(handler=cmd_ablate)

    serve = command("serve", "serve a decoder config over an OpenAI-compatible HTTP API (continuous batching)")
    _add_config_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument(
        "--max-batch", type=_positive_int, default=None, metavar="N",
        help="rows decoded at once over all requests (default: generation.batch_size)",
    )  # fmt: skip
    serve.add_argument(
        "--batching", choices=["continuous", "fixed"], default="continuous",
        help="continuous: requests join the running batch at a step boundary (default); fixed: a batch runs "
        "until all its rows finish before the next starts",
    )  # fmt: skip
    serve.add_argument(
        "--drain-timeout", type=float, default=30.0, metavar="S",
        help="on SIGTERM, seconds to let running requests finish before exiting (default 30)",
    )  # fmt: skip
    serve.add_argument("--model-name", default=None, help="the model id clients send (default: model.dllm.path)")
    _add_threads_argument(serve)
    serve.set_defaults(handler=cmd_serve)

    models = command("models", "list the embedded models and their paths")
    models.set_defaults(handler=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or "=" not in item]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    debug = getattr(args, "debug", False)
    try:
        return args.handler(args)
    except DlmDecodeError as exc:
        if debug:
            traceback.print_exc()
        print(f"dlm-decode: error: {exc}", file=sys.stderr)
        if not debug and (exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__)):
            print(
                "  (rerun with --debug for the traceback, with the file and line where it was raised)", file=sys.stderr
            )
        return 2


if __name__ == "__main__":
    sys.exit(main())
