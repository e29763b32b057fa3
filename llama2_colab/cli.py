"""The command line: `python -m llama2_colab {doctor,demo,tiny,...}`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable

from .checks import MAX_REPEATS, MAX_WARMUP, MIN_NEW_TOKENS, MIN_PROMPT_TOKENS
from .errors import StreamRedactor, UserFacingError, redact_log_records, redact_secrets
from .faults import check_hub_endpoint, check_working_folder, describe_fault, undecodable_text

__all__ = ["main", "build_parser"]

DEMO_PROMPT = "I have tomatoes, basil and cheese at home. What can I cook for dinner?"
DEMO_SYSTEM = "You are a helpful, concise cooking assistant."
LLAMA2_CONTEXT = 4096  # positions of every Llama 2 model, and of the tiny one
MAX_SEED = 2**32 - 1  # numpy's limit; transformers.set_seed seeds numpy too
MAX_GPUS = 1024  # a tensor-parallel plan's N: far past any machine, a typo's guard
# Exit status of a command whose output pipe was closed before it finished (128 + SIGPIPE).
EXIT_PIPE_CLOSED = 141
GPU_NAMES = "T4, V100, L4, A100-40GB, A100-80GB, H100 or cpu"


def _emit(text: str, end: str = "\n", result: bool = False) -> None:
    """Print on stdout, tokens masked: the one way the CLI prints anything but its errors.

    Whatever is printed can quote what the user typed (`access hf_...` names the "model" it was
    given, `demo` echoes the prompt, `convert` names folders), so it all passes through
    `redact_secrets`. A reader that went away (`| head`) ends a command that has more to say
    (BrokenPipeError: exit 141), but not one printing its whole `result` at once; a stdout
    that cannot be written (`> /dev/full`) or is closed (`>&-`) is a UserFacingError.
    """
    _check_stdout()
    try:
        sys.stdout.write(redact_secrets(text) + end)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        if not result:
            raise
    except OSError as err:
        _silence_stdout()
        fault = describe_fault(err, "Cannot write the output to stdout")
        raise (fault or UserFacingError(f"Cannot write the output to stdout: {err}.")) from None


def _check_stdout() -> None:
    """Raise UserFacingError if there is no stdout: Python starts so when `>&-` closed it."""
    if sys.stdout is None:
        raise UserFacingError(
            "Cannot write the output: stdout is closed (as `>&-` closes it).",
            "Send the output somewhere: a terminal, a file (`> out.txt`) or /dev/null.",
        )


def _stream_printer() -> tuple[Callable[[str], None], Callable[[], None]]:
    """Return (print a piece, finish) for streamed text: a token split across pieces is masked."""
    redactor = StreamRedactor()
    return (
        lambda piece: _emit(redactor.feed(piece), end=""),
        lambda: _emit(redactor.flush(), end=""),
    )


def _silence_stdout() -> None:
    # Point stdout at devnull so the interpreter's final flush does not print a traceback.
    if sys.stdout is not None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _hold_closed_descriptors() -> None:
    """Open /dev/null on a closed stdin, stdout or stderr (`>&-`), so no file takes its number.

    Otherwise the first file a command opens gets descriptor 1, and whatever a library writes
    to "stdout" lands in it: in a model's weights, say.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _bounded_int(low: int, high: int | None = None, why: str = "") -> Callable[[str], int]:
    """Return an argparse type: a whole number from low to high (None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
            raise argparse.ArgumentTypeError(
                f"{value:,} is out of range: give a number {span}{why}"
            )
        return value

    parse.__name__ = "number"
    return parse


def _gpu_name(text: str) -> str:
    """argparse type of --gpu: a name, never empty (an empty one would plan for this machine)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"is empty: give {GPU_NAMES}, or leave --gpu out")
    return text


def _cpu_cap() -> int:
    return max(1, os.cpu_count() or 1)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .runtime import detect_runtime, format_report, recommend_settings, runtime_report_dict

    facts = detect_runtime()
    settings = recommend_settings(facts)
    if args.json:
        _emit(json.dumps(runtime_report_dict(facts, settings), indent=2), result=True)
    else:
        _emit(format_report(facts, settings), result=True)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .auth import find_token
    from .catalog import speaker_name
    from .chat import ChatSession, check_message, read_context_window
    from .models import choose_model, oom_as_advice
    from .runtime import detect_runtime, format_report, recommend_settings
    from .tensor_parallel import distributed_env, finish_tensor_parallel

    locale_fault = undecodable_text(args.prompt, "prompt")  # LANG=C: the locale, not the text
    if locale_fault is not None:
        raise locale_fault
    try:
        check_message(args.prompt)  # before anything loads
    except ValueError as err:
        raise UserFacingError(str(err), "Reword the prompt and run the demo again.") from None
    world = distributed_env()
    if not world.is_main:  # under torchrun, rank 0 alone prints
        _quiet_this_rank()
    facts = detect_runtime()
    _emit(format_report(facts, recommend_settings(facts)))
    token = find_token()
    choice = choose_model(facts, requested=args.model, has_token=bool(token))
    _emit(f"Model   : {choice.name} ({choice.reason})")
    _check_local_model(choice.name)
    plan, model, tokenizer = _demo_load(choice, facts, token, world.world_size)
    seed = args.seed
    if world.world_size > 1 and not args.greedy:
        from .tensor_parallel import shared_seed

        seed = shared_seed(seed)  # every rank must sample the same token
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    # The one chat path: Meta's reference format, token for token (see llama2_colab.chat),
    # within the context the model has and the GPU memory leaves.
    session = ChatSession(
        model,
        tokenizer,
        system_prompt=DEMO_SYSTEM,
        max_new_tokens=args.max_new_tokens,
        context_window=min(read_context_window(model), plan.context_window),
        do_sample=not args.greedy,
    )
    try:
        session.plan_prompt(args.prompt)  # refuses forged turns, checks the budget
    except (ValueError, TypeError) as err:
        raise UserFacingError(str(err), "Reword the prompt and run the demo again.") from None
    _emit(f"You: {args.prompt}\n{speaker_name(choice.name)}: ", end="")
    show, finish = _stream_printer()
    with oom_as_advice(plan):
        session.send(args.prompt, on_text=show)
    finish()
    finish_tensor_parallel()
    _print_demo_stats(session.last_stats)
    return 0


def _quiet_this_rank() -> None:
    """Send a non-zero rank's output nowhere (its errors still reach stderr)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    _silence_stdout()


def _demo_load(choice, facts, token, world_size: int):
    """Plan and load the demo's model: whole (one process) or split (torchrun); return both."""
    from .models import cpu_threads_for, load_with_plan
    from .plan import make_plan, make_tp_plan
    from .tensor_parallel import load_tensor_parallel, local_parameter_count

    if world_size > 1:
        plan = make_tp_plan(choice.name, facts, world_size)
        where = f"split over {world_size} processes (tensor parallelism)"
    else:
        plan = make_plan(choice.name, facts)  # decide, then act: fp16/bf16 or 4-bit, or refuse
        where = "one process"
    _emit(f"Plan    : {plan.format_label}, {where}, room for {plan.context_window:,} tokens")
    threads = cpu_threads_for(choice, plan.device)
    if threads is not None:  # this process is ours: no need to restore the setting
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    if world_size > 1:
        model, tokenizer = load_tensor_parallel(plan, token=token)
        held = local_parameter_count(model)
        _emit(f"Split   : each process holds {held:,} of the {plan.params:,} parameters")
    else:
        model, tokenizer = load_with_plan(plan, token=token)
    _emit(f"Loaded in {time.perf_counter() - start:.1f} s\n")
    return plan, model, tokenizer


def _print_demo_stats(stats) -> None:
    """The demo's last line: new tokens, time to first token, decode speed."""
    speed = (
        f"{stats.tokens_per_s:.1f} tokens/s"
        if stats.new_tokens > 1
        else "decode speed needs 2 or more new tokens"
    )
    _emit(
        f"\n\n-- {stats.new_tokens} new token{'s' if stats.new_tokens != 1 else ''}; "
        f"first token after {stats.ttft_s:.2f} s; {speed}"
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    return serve(
        model=args.model,
        host=args.host,
        port=args.port,
        engine=args.engine,
        gpus=args.gpus,
        continuous_batching=args.continuous_batching,
        say=_emit,  # the CLI's one output channel
    )


def _check_local_model(name: str, whole: bool = True) -> None:
    """Check a local model folder (config, tokenizer, weights) before anything is loaded."""
    from .checks import check_config, check_model_dir, check_model_name, looks_like_local_path

    check_model_name(name)
    if name and name.strip().lower() != "tiny" and looks_like_local_path(name):
        (check_model_dir if whole else check_config)(name.strip())


def _cmd_tiny(args: argparse.Namespace) -> int:
    from .tiny import build_tiny_llama

    out = build_tiny_llama(args.dir)
    _emit(f"Wrote the offline tiny Llama 2 to {out}", result=True)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_meta_checkpoint

    out = convert_meta_checkpoint(args.meta_dir, args.out_dir, dtype=args.dtype, log=_emit)
    _emit(f"Load it with AutoModelForCausalLM.from_pretrained({str(out)!r})", result=True)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .plan import format_plan, make_plan
    from .runtime import detect_runtime, preset_runtime

    if args.list:
        from .catalog import load_catalog

        entries = load_catalog()
        if args.json:
            fields = ("id", "family", "size", "variant", "gated")
            _emit(
                json.dumps([{k: getattr(e, k) for k in fields} for e in entries], indent=2),
                result=True,
            )
        else:
            _emit(
                "\n".join(f"{e.id:40} {e.family} {e.size} {e.variant}" for e in entries),
                result=True,
            )
        return 0
    if not (args.model or "").strip():
        raise UserFacingError(
            "Which model? Give a name.", "e.g. `plan meta-llama/Llama-2-7b-chat-hf`"
        )
    try:
        facts = preset_runtime(args.gpu) if args.gpu else detect_runtime()
    except ValueError as err:
        raise UserFacingError(
            str(err), "Pass --gpu with one of those names, or leave it out."
        ) from None
    _check_local_model(args.model, whole=False)  # planning needs the config alone
    if args.gpus is not None:
        from .plan import format_tp_plan, make_tp_plan

        tp = make_tp_plan(args.model, facts, args.gpus, args.quantization, args.dtype)
        _emit(json.dumps(tp.to_dict(), indent=2) if args.json else format_tp_plan(tp))
        return 0 if tp.fits else 2
    plan = make_plan(args.model, facts, quantization=args.quantization, dtype=args.dtype)
    _emit(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan), result=True)
    return 0 if plan.fits else 2


def _cmd_access(args: argparse.Namespace) -> int:
    from .auth import check_access, format_access

    result = check_access(args.model)
    _emit(
        json.dumps(result.to_dict(), indent=2) if args.json else format_access(result), result=True
    )
    return result.exit_code


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench_harness import FAST_PATHS, bench_model, format_bench

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
        log=lambda msg: _say(f"[bench] {msg}"),
    )
    _emit(json.dumps(result, indent=2) if args.json else format_bench(result), result=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = _Parser(
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
    p.add_argument(
        "--max-new-tokens",
        type=_bounded_int(1, LLAMA2_CONTEXT - 1, f" (Llama 2 has {LLAMA2_CONTEXT:,} positions)"),
        default=64,
    )
    p.add_argument(
        "--seed",
        type=_bounded_int(0, MAX_SEED),
        default=None,
        help="make the sampled reply reproducible",
    )
    p.add_argument(
        "--greedy",
        action="store_true",
        help="always pick the most likely token (no sampling): the same reply every run",
    )
    p.set_defaults(func=_cmd_demo)

    _add_bench(sub)
    _add_serve(sub)

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

    _add_plan_and_access(sub)
    return parser


def _add_bench(sub) -> None:
    """The `bench` command: its work, its fast paths and the bounds checked before loading."""
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
    p.add_argument("--quantization", choices=["none", "nf4", "int8"], default=None)
    p.add_argument(
        "--fast",
        action="append",
        metavar="PATH",
        help="also measure a fast path: graph, static, lookup, eager or all "
        "(comma-separated, repeatable)",
    )
    p.add_argument(
        "--prompt-tokens",
        type=_bounded_int(MIN_PROMPT_TOKENS, None),
        default=512,
        help="prompt length; with --new-tokens within the model's positions (4096 for Llama 2)",
    )
    p.add_argument(
        "--new-tokens",
        type=_bounded_int(MIN_NEW_TOKENS, None, " (decode speed needs a first token and more)"),
        default=None,
        help="default: 128 on a GPU, 64 on CPU",
    )
    p.add_argument(
        "--repeats",
        type=_bounded_int(1, MAX_REPEATS),
        default=None,
        help="default: 5 on a GPU, 15 on CPU",
    )
    p.add_argument(
        "--warmup",
        type=_bounded_int(0, MAX_WARMUP),
        default=1,
        help="untimed calls per path after its first (default 1)",
    )
    p.add_argument("--no-bandwidth", action="store_true", help="skip the copy-bandwidth test")
    p.add_argument(
        "--threads",
        type=_bounded_int(1, _cpu_cap(), f" (this machine has {_cpu_cap()} CPU core(s))"),
        default=None,
        help="torch CPU threads (default: torch's; tiny: 1)",
    )
    p.set_defaults(func=_cmd_bench)


def _add_serve(sub) -> None:
    """The `serve` command: an OpenAI-compatible server on transformers serve or vLLM."""
    p = sub.add_parser(
        "serve", help="serve the chat model over an OpenAI-compatible API until Ctrl-C"
    )
    p.add_argument("--model", default=None, help="'tiny', a Hub id or a local directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_bounded_int(1, 65535), default=8000, help="default 8000")
    p.add_argument(
        "--engine",
        choices=["auto", "transformers", "vllm"],
        default="auto",
        help="auto (default): vLLM if installed and a GPU supports it, else transformers serve",
    )
    p.add_argument(
        "--gpus",
        type=_bounded_int(1, MAX_GPUS),
        default=1,
        help="split the model over N GPUs (vLLM's tensor parallelism)",
    )
    p.add_argument(
        "--continuous-batching",
        action="store_true",
        help="transformers serve: batch concurrent requests (paged attention)",
    )
    p.set_defaults(func=_cmd_serve)


def _add_plan_and_access(sub) -> None:
    """The `plan` and `access` commands: will a model fit, and may your token download it."""
    p = sub.add_parser("plan", help="will MODEL fit this GPU: format, memory, context (exit 2: no)")
    p.add_argument("model", nargs="?", help="'tiny', a catalog name, or a local model directory")
    p.add_argument("--gpu", type=_gpu_name, default=None, help=GPU_NAMES)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--quantization",
        default="auto",
        choices=["auto", "none", "int8", "nf4"],
        help="auto (default): 16-bit if it fits, else 4-bit NF4",
    )
    p.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="plan for this dtype (default: the runtime's, float16 on a T4)",
    )
    p.add_argument(
        "--gpus",
        type=_bounded_int(1, MAX_GPUS),
        default=None,
        help="plan a split over N such GPUs with tensor parallelism (per-GPU figures)",
    )
    p.add_argument("--list", action="store_true", help="list the catalog's models")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("access", help="may your token download MODEL? (exit 0 only if yes)")
    p.add_argument("model", help="a Hub id, e.g. meta-llama/Llama-2-7b-chat-hf")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_access)


def _report(err: UserFacingError) -> int:
    """Print a UserFacingError (what happened, what to do) on stderr; return its exit status."""
    _say(f"\nError: {err.what}")
    if err.todo:
        _say(f"What to do: {err.todo}")
    return err.exit_code


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose error messages pass through the token redaction too."""

    def error(self, message: str):
        """Print usage and the (redacted) message, then exit with status 2."""
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {redact_secrets(message)}\n")


def _say(text: str) -> None:
    """Print a message for the user on stderr, with any token in it masked."""
    try:
        print(redact_secrets(text), file=sys.stderr, flush=True)
    except OSError:  # stderr itself is gone or full: nowhere left to say it
        pass


def _tolerant_console() -> None:
    """Let stdout and stderr show what their encoding cannot as escapes (`\\u65e5`), not fail.

    A console set to ASCII (`PYTHONIOENCODING=ascii`, a C locale) would otherwise raise
    UnicodeEncodeError on the first Japanese prompt or reply.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a text stream we may reconfigure
            continue


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status. Known problems print a message, not a traceback.

    Every message printed here is redacted (Hugging Face tokens masked). A closed output pipe
    (`... | head`) keeps the command's own status when its result was complete, and gives 141
    (as a shell reports SIGPIPE) when it cut the output short.
    """
    _hold_closed_descriptors()
    _tolerant_console()
    redact_log_records()  # transformers' and huggingface_hub's own log lines quote paths too
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():  # a warning quotes paths too: it is said redacted
        warnings.showwarning = _show_warning
        return _run(args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Say a warning on stderr, redacted like every other line the CLI prints."""
    _say(f"{category.__name__}: {message}")


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; turn what went wrong into a message and an exit status."""
    try:
        _check_stdout()  # before the command does any work it could not report
        check_working_folder()  # before anything loads (torch's own loader aborts without one)
        if args.command != "doctor":  # every other command imports huggingface_hub
            check_hub_endpoint()
        return int(args.func(args) or 0)
    except UserFacingError as err:
        return _report(err)
    except KeyboardInterrupt:
        _say("\nStopped.")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except Exception as err:  # noqa: BLE001 - a bug still gets a traceback, but a redacted one
        fault = describe_fault(err, f"`{args.command}` could not finish")
        if fault is not None:  # the disk, a file, the network: not a bug
            return _report(fault)
        _say(traceback.format_exc().rstrip())
        _say(
            f"\nError: unexpected {type(err).__name__}; this is a bug in llama2_colab. "
            "Please report it with the text above (any token in it is masked)."
        )
        return 1
