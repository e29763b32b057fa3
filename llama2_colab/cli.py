"""The command line: `python -m llama2_colab {doctor,demo,tiny,...}`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .errors import UserFacingError

__all__ = ["main", "build_parser"]

DEMO_PROMPT = "I have tomatoes, basil and cheese at home. What can I cook for dinner?"
DEMO_SYSTEM = "You are a helpful, concise cooking assistant."


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .runtime import detect_runtime, format_report, recommend_settings, runtime_report_dict

    facts = detect_runtime()
    settings = recommend_settings(facts)
    if args.json:
        print(json.dumps(runtime_report_dict(facts, settings), indent=2))
    else:
        print(format_report(facts, settings))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .auth import find_token
    from .chat import ChatSession, read_context_limit
    from .models import choose_model, cpu_threads_for, load_with_plan, oom_as_advice
    from .plan import make_plan
    from .runtime import detect_runtime, format_report, recommend_settings

    facts = detect_runtime()
    print(format_report(facts, recommend_settings(facts)))
    token = find_token()
    choice = choose_model(facts, requested=args.model, has_token=bool(token))
    print(f"Model   : {choice.name} ({choice.reason})")
    # Decide, then act: the plan picks fp16/bf16 or 4-bit and refuses what cannot fit.
    plan = make_plan(choice.name, facts)
    print(
        f"Plan    : {plan.quantization or plan.dtype}, room for {plan.max_context_tokens:,} tokens"
    )
    threads = cpu_threads_for(choice, plan.device)
    if threads is not None:  # this process is ours: no need to restore the setting
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    model, tokenizer = load_with_plan(plan, token=token)
    print(f"Loaded in {time.perf_counter() - start:.1f} s\n")
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    # The one chat path: Meta's reference format, token for token (see llama2_colab.chat),
    # within the context the model has and the GPU memory leaves.
    session = ChatSession(
        model,
        tokenizer,
        system_prompt=DEMO_SYSTEM,
        max_new_tokens=args.max_new_tokens,
        context_limit=min(read_context_limit(model), plan.max_context_tokens),
    )
    try:
        session.plan_prompt(args.prompt)  # refuses forged turns, checks the budget
    except ValueError as err:
        raise UserFacingError(str(err), "Reword the prompt and run the demo again.") from None
    print(f"You: {args.prompt}\nLlama 2: ", end="", flush=True)
    with oom_as_advice(plan):
        session.send(args.prompt, on_text=lambda text: print(text, end="", flush=True))
    stats = session.last_stats
    print(
        f"\n\n-- {stats.new_tokens} new tokens; first token after {stats.ttft_s:.2f} s; "
        f"{stats.tokens_per_s:.1f} tokens/s"
    )
    return 0


def _cmd_tiny(args: argparse.Namespace) -> int:
    from .tiny import build_tiny_llama

    out = build_tiny_llama(args.dir)
    print(f"Wrote the offline tiny Llama 2 to {out}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_meta_checkpoint

    out = convert_meta_checkpoint(
        args.meta_dir, args.out_dir, dtype=args.dtype, log=lambda msg: print(msg, flush=True)
    )
    print(f"Load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .plan import format_plan, make_plan
    from .runtime import detect_runtime, preset_runtime

    if args.list:
        from .catalog import load_catalog

        for entry in load_catalog():
            print(f"{entry.id:40} {entry.family} {entry.size} {entry.variant}")
        return 0
    if not args.model:
        raise UserFacingError(
            "Which model? Give a name.", "e.g. `plan meta-llama/Llama-2-7b-chat-hf`"
        )
    try:
        facts = preset_runtime(args.gpu) if args.gpu else detect_runtime()
    except ValueError as err:
        raise UserFacingError(
            str(err), "Pass --gpu with one of those names, or leave it out."
        ) from None
    plan = make_plan(args.model, facts, quantization=args.quantization)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0 if plan.fits else 2


def _cmd_access(args: argparse.Namespace) -> int:
    from .auth import check_access, format_access

    result = check_access(args.model)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_access(result))
    return result.exit_code


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import FAST_PATHS, bench_model, format_bench

    fast: list[str] = []
    for item in args.fast or []:
        for name in item.split(","):
            name = name.strip()
            if name == "all":
                fast.extend(FAST_PATHS)
            elif name and name not in fast:
                fast.append(name)
    result = bench_model(
        model_name=args.model,
        random_weights=args.random_weights,
        dtype=args.dtype,
        quantization=args.quantization,
        fast=tuple(dict.fromkeys(fast)),
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        measure_bandwidth=not args.no_bandwidth,
        threads=args.threads,
        log=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True),
    )
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m llama2_colab",
        description="Run Llama 2 on a free Colab T4: runtime checks, demo, offline tiny model.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="report the runtime and the recommended loading settings")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("demo", help="load the default model and stream one chat reply")
    p.add_argument("prompt", nargs="?", default=DEMO_PROMPT, help="what to ask")
    p.add_argument("--model", default=None, help="'tiny', a Hub id or a local directory")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=None, help="make the sampled reply reproducible")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "bench", help="measure tokens/s, first-token time and memory against plain transformers"
    )
    p.add_argument("--model", default=None, help="'tiny', a catalog name, a Hub id or a directory")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="build the catalog model's architecture with random weights (no download, no token)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None)
    p.add_argument("--quantization", choices=["none", "nf4"], default=None)
    p.add_argument(
        "--fast",
        action="append",
        metavar="PATH",
        help="also measure a fast path: static, lookup, eager or all (comma-separated, repeatable)",
    )
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=None, help="default: 128 on a GPU, 64 on CPU")
    p.add_argument("--repeats", type=int, default=None, help="default: 5 on a GPU, 15 on CPU")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed calls per path after its first (default 1)"
    )
    p.add_argument("--no-bandwidth", action="store_true", help="skip the copy-bandwidth test")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; tiny: 1)"
    )
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("tiny", help="write the offline tiny Llama 2 (model + tokenizer) to DIR")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_tiny)

    p = sub.add_parser(
        "convert", help="turn Meta's download (consolidated.*.pth) into a Hugging Face folder"
    )
    p.add_argument("meta_dir", help="the folder download.sh made, e.g. llama-2-7b-chat")
    p.add_argument("out_dir", help="a new or empty folder for the Hugging Face files")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("plan", help="will MODEL fit this GPU: format, memory, context (exit 2: no)")
    p.add_argument("model", nargs="?", help="'tiny', a catalog name, or a local model directory")
    p.add_argument("--gpu", default=None, help="T4, V100, L4, A100-40GB, A100-80GB, H100 or cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--quantization",
        default="auto",
        choices=["auto", "none", "int8", "nf4"],
        help="auto (default): 16-bit if it fits, else 4-bit NF4",
    )
    p.add_argument("--list", action="store_true", help="list the catalog's models")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("access", help="may your token download MODEL? (exit 0 only if yes)")
    p.add_argument("model", help="a Hub id, e.g. meta-llama/Llama-2-7b-chat-hf")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_access)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status. Known problems print a message, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserFacingError as err:
        print(f"\nError: {err.what}", file=sys.stderr)
        if err.todo:
            print(f"What to do: {err.todo}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("\nStopped.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `... | head` closed the pipe: not an error. Point stdout at devnull so the
        # interpreter's final flush does not print a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
