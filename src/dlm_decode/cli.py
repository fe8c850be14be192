"""The ``dlm-decode`` command line.

::

    dlm-decode generate -c CFG [-c CFG2 ...] [key=value ...] (--prompt TEXT ... | --prompts-file F) [--json]
    dlm-decode generate -c CFG [key=value ...] --dry-run [--prompt TEXT ... | --prompts-file F] [--prompt-budget N]
    dlm-decode plugins [--json]
    dlm-decode config show|validate -c CFG [key=value ...]
    dlm-decode models
    dlm-decode eval -c CFG [key=value ...] [--tasks arith,sort,...] [--limit N] [--split S] --out DIR
    dlm-decode eval -c CFG [key=value ...] [--tasks ...] [--limit N] [--split S] --dry-run
    dlm-decode ablate -c CFG [key=value ...] --vary key=v1,v2 [--vary ...] [--tasks ...] [--limit N] --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from dlm_decode.errors import DlmDecodeError
from dlm_decode.eval.tasks import SPLITS


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], metavar="CFG",
                        help="YAML config file; repeat to compose several, later files win")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides applied after the files, e.g. decoder.verification=left_to_right")


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; fix: pass a whole number such as 512") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}; fix: pass 1 or more")
    return value


def _parse_tasks(value: str | None) -> list[str] | None:
    """The ``--tasks`` names, or None (every task) when the option is absent; an empty list is refused later."""
    return None if value is None else [name.strip() for name in value.split(",") if name.strip()]


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as handle:
                prompts += [line.rstrip("\n") for line in handle if line.strip()]
        except OSError as exc:
            raise DlmDecodeError(f"--prompts-file {args.prompts_file}: cannot read it ({exc.strerror}); "
                                 "fix: pass a readable text file with one prompt per line") from None
        except UnicodeDecodeError:
            raise DlmDecodeError(f"--prompts-file {args.prompts_file} is not UTF-8 text; "
                                 "fix: pass a UTF-8 text file with one prompt per line") from None
    if not prompts:
        raise DlmDecodeError("no prompt given; fix: pass --prompt TEXT or --prompts-file FILE")
    return prompts


def _report_dry_run(args: argparse.Namespace, prompts: list[str] | None) -> int:
    """Print the dry run's findings; exit status 0 when no incompatibility was found, else 2."""
    from dlm_decode.models.dry_run import dry_run

    report = dry_run(args.config, args.overrides, prompts=prompts or None, prompt_budget=args.prompt_budget)
    print(report.format())
    return 0 if report.ok else 2


def _check_dry_run_arguments(args: argparse.Namespace) -> None:
    """``--prompt-budget`` means something only for a dry run: refuse it otherwise rather than ignore it."""
    if args.prompt_budget is not None and not args.dry_run:
        raise DlmDecodeError("--prompt-budget applies only with --dry-run; fix: add --dry-run, or drop "
                             "--prompt-budget")


def _add_dry_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config and the model pair (tokenizers, vocab sizes, special ids, context) "
                             "from config.json and tokenizer files alone, without loading weights; exit 2 on errors")
    parser.add_argument("--prompt-budget", type=_positive_int, default=None, metavar="N",
                        help="with --dry-run and no prompts: prompt tokens to budget for (at least 1, default 512)")


def cmd_generate(args: argparse.Namespace) -> int:
    from dlm_decode.decoder import Decoder

    _check_dry_run_arguments(args)
    if args.dry_run:
        return _report_dry_run(args, _read_prompts(args) if (args.prompt or args.prompts_file) else None)
    prompts = _read_prompts(args)
    decoder = Decoder.from_config(args.config, args.overrides)
    output = decoder.generate(prompts)
    for record in output.records():
        if args.json:
            print(json.dumps(record))
        else:
            print(record["text"])
            print(f"  [{record['generated_tokens']} tokens, {record['nfe']} forwards, "
                  f"{record['tokens_per_forward']:.2f} tokens/forward, {record['wall_s']:.3f} s]", file=sys.stderr)
    return 0


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
    from dlm_decode.decoder import Decoder
    from dlm_decode.eval.runner import check_out_dir, check_selection, evaluate, format_table

    names = check_selection(_parse_tasks(args.tasks), args.limit)  # before a model is loaded
    _check_dry_run_arguments(args)
    if args.dry_run:
        from dlm_decode.eval.tasks import load_examples

        return _report_dry_run(args, [ex.prompt for ex in load_examples(names, args.split, args.limit)])
    if not args.out:
        raise DlmDecodeError("eval needs --out DIR; fix: pass --out DIR (the directory for results.jsonl and "
                             "summary.json), or --dry-run")
    check_out_dir(args.out)  # before the weights load
    decoder = Decoder.from_config(args.config, args.overrides)
    summary = evaluate(decoder, args.out, tasks=names, limit=args.limit, split=args.split,
                       progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate, rank 0 holds the gathered results
        print(format_table(summary))
        print(f"results: {args.out}/results.jsonl  summary: {args.out}/summary.json")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from dlm_decode.eval.ablation import ablate, markdown_table, parse_vary

    rows = ablate(args.config, parse_vary(args.vary), args.out, overrides=args.overrides,
                  tasks=_parse_tasks(args.tasks), limit=args.limit, split=args.split, progress=not args.no_progress)
    print(markdown_table(rows), end="")
    print(f"table: {args.out}/ablation.md  plots: {args.out}/pareto_tpf.png, {args.out}/pareto_tps.png")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from dlm_decode.models.embedded import EMBEDDED_MODELS, embedded_model_dir

    for name, description in EMBEDDED_MODELS.items():
        print(f"embedded:{name}\t{embedded_model_dir(name)}\t{description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlm-decode", description="Decode diffusion language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="decode prompts with a composed decoder config")
    _add_config_arguments(generate)
    generate.add_argument("--prompt", action="append", help="a prompt; repeat for several")
    generate.add_argument("--prompts-file", help="a file with one prompt per line (decoded after the --prompt values)")
    generate.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    _add_dry_run_arguments(generate)
    generate.set_defaults(handler=cmd_generate)

    plugins = commands.add_parser("plugins", help="list the registered strategies by role, with their package")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(handler=cmd_plugins)

    config = commands.add_parser("config", help="show or validate a composed config")
    config.add_argument("action", choices=["show", "validate"])
    _add_config_arguments(config)
    config.set_defaults(handler=cmd_config)

    evaluation = commands.add_parser("eval", help="evaluate a decoder config on the embedded task suite")
    _add_config_arguments(evaluation)
    evaluation.add_argument("--tasks", help="comma-separated task names (default: all)")
    evaluation.add_argument("--limit", type=int, default=100, help="examples per task (default 100)")
    evaluation.add_argument("--split", choices=SPLITS, default="test",
                            help="the suite's split (default test; tune settings on train)")
    evaluation.add_argument("--out", help="directory for results.jsonl, summary.json, config.yaml (required "
                            "unless --dry-run)")
    evaluation.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_dry_run_arguments(evaluation)
    evaluation.set_defaults(handler=cmd_eval)

    ablation = commands.add_parser("ablate", help="evaluate a base config and one-factor-at-a-time variations")
    _add_config_arguments(ablation)
    ablation.add_argument("--vary", action="append", required=True, metavar="key=v1,v2",
                          help="a factor and its values; repeat for several factors (each varied alone)")
    ablation.add_argument("--tasks", help="comma-separated task names (default: all)")
    ablation.add_argument("--limit", type=int, default=50, help="examples per task and run (default 50)")
    ablation.add_argument("--split", choices=SPLITS, default="test",
                          help="the suite's split (default test; tune settings on train)")
    ablation.add_argument("--out", required=True, help="directory for the runs, table and plots")
    ablation.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    ablation.set_defaults(handler=cmd_ablate)

    models = commands.add_parser("models", help="list the embedded models and their paths")
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
    try:
        return args.handler(args)
    except DlmDecodeError as exc:
        print(f"dlm-decode: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
