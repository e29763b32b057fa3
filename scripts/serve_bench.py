"""Measure a served model: cold start, prompt ids, one request vs local, 1/4/8 at once.

    python scripts/serve_bench.py                      # the tiny model on transformers serve
    python scripts/serve_bench.py --continuous-batching
    python scripts/serve_bench.py --engine vllm --random-weights \
        --model meta-llama/Llama-2-7b-chat-hf          # on a GPU with vLLM (scripts/gpu_check.sh)

It starts the server itself (`python -m llama2_colab serve` in the background; for vLLM with
random weights, `vllm serve --load-format dummy` on the catalog architecture with Llama 2's
tokenizer and the reference chat template), then:

- `cold_start_s`: from starting the command to `/v1/models` answering;
- `prompt_ids_match`: usage.prompt_tokens equals len(encode_dialog(...)) for three dialogs;
- `single`: one request's completion tokens / wall seconds over HTTP, and the same reply from
  `ChatSession` in this process (the transformers engine only: vLLM's model is not loadable
  here), both greedy with the same max tokens;
- `concurrent`: for 1, 4 and 8 requests sent at once, completion tokens of all / wall seconds.

Prints one JSON object. Timings are this machine's; run it twice and compare, a shared machine
is noisy.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llama2_colab import encode_dialog  # noqa: E402
from llama2_colab.background_server import BackgroundServer  # noqa: E402

DIALOGS = [
    [{"role": "user", "content": "What is a T4?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name three colours."},
    ],
    [
        {"role": "user", "content": "  Bonjour, ça va ?  "},
        {"role": "assistant", "content": "Oui. 🙂"},
        {"role": "user", "content": "日本語は？"},
    ],
]


def _client(base_url: str) -> openai.OpenAI:
    http = httpx.Client(trust_env=False, timeout=600)
    return openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, http_client=http)


def _ask(client, model: str, messages, max_tokens: int):
    return client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0
    )


# The article's question: the tiny model's answer (75 tokens) is longer than the default
# max_tokens, so every request does the same work.
WORK = [{"role": "user", "content": "人工知能の分野での主要な貢献者は誰ですか?"}]


def _concurrent(client, model: str, n: int, max_tokens: int) -> dict:
    questions = [WORK] * n
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        replies = list(pool.map(lambda m: _ask(client, model, m, max_tokens), questions))
    seconds = time.perf_counter() - start
    tokens = sum(r.usage.completion_tokens for r in replies)
    return {
        "requests": n,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def _single(client, model: str, tokenizer, max_tokens: int, local_model=None) -> dict:
    messages = WORK
    start = time.perf_counter()
    reply = _ask(client, model, messages, max_tokens)
    seconds = time.perf_counter() - start
    out = {
        "http_tokens": reply.usage.completion_tokens,
        "http_seconds": round(seconds, 3),
        "http_tokens_per_s": round(reply.usage.completion_tokens / seconds, 1),
    }
    if local_model is not None:
        from llama2_colab import ChatSession

        session = ChatSession(local_model, tokenizer, max_new_tokens=max_tokens, do_sample=False)
        start = time.perf_counter()
        text = session.send(messages[0]["content"])
        seconds = time.perf_counter() - start
        stats = session.last_stats
        out |= {
            "local_tokens": stats.new_tokens,
            "local_seconds": round(seconds, 3),
            "local_tokens_per_s": round(stats.new_tokens / seconds, 1),
            "local_decode_tokens_per_s": round(stats.tokens_per_s, 1),
            "same_reply": text == reply.choices[0].message.content.strip(),
        }
    return out


def _random_weights_vllm(model: str, root: Path):
    """Start vLLM on the catalog architecture with dummy weights; return (engine, url, name)."""
    from transformers import AutoTokenizer, LlamaConfig

    from llama2_colab import ensure_tiny_llama, make_plan
    from llama2_colab.catalog import find_entry
    from llama2_colab.chat_template import reference_chat_template
    from llama2_colab.engine_commands import vllm_command
    from llama2_colab.runtime import detect_runtime
    from llama2_colab.serve import (
        EngineLaunch,
        EngineProcess,
        free_port,
        prepare_serving_folder,
    )

    tiny = ensure_tiny_llama()
    source = root / "source"
    source.mkdir()
    LlamaConfig(**find_entry(model).config).save_pretrained(source)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (source / name).write_bytes((tiny / name).read_bytes())
    template = reference_chat_template(AutoTokenizer.from_pretrained(source))
    folder = prepare_serving_folder(source, root, "served", template)
    plan, port = make_plan(model, detect_runtime()), free_port()
    command = vllm_command(
        plan, str(folder), model, "127.0.0.1", port, str(folder / "chat_template.jinja")
    ) + ["--load-format", "dummy"]
    launch = EngineLaunch(
        "vllm",
        tuple(command),
        "127.0.0.1",
        port,
        str(root),
        base_url=f"http://127.0.0.1:{port}/v1",
        model=model,
    )
    return EngineProcess(launch, echo=lambda line: sys.stderr.write(line)), launch.base_url, model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--random-weights", action="store_true", help="vLLM only: --load-format dummy")
    p.add_argument("--continuous-batching", action="store_true")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--no-local", action="store_true", help="skip the local ChatSession run")
    args = p.parse_args()
    from transformers import AutoTokenizer

    from llama2_colab import ensure_tiny_llama

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.engine == "vllm":
            engine, base_url, name = _random_weights_vllm(args.model, Path(tmp))
            engine.wait_ready()
            stop = engine.stop
        else:
            extra = ["--engine", "transformers"]
            extra += ["--continuous-batching"] if args.continuous_batching else []
            server = BackgroundServer(model=args.model, args=extra)
            server.wait_ready()
            base_url, name, stop = server.base_url, server.model, server.stop
        cold = time.perf_counter() - start
        try:
            result = _measure(args, base_url, name, AutoTokenizer, ensure_tiny_llama, cold)
        finally:
            stop()
    print(json.dumps(result, indent=2))
    return 0 if result["prompt_ids_match"] else 1


def _measure(args, base_url, name, auto_tokenizer, ensure_tiny_llama, cold) -> dict:
    """Every figure but the cold start, against a ready server."""
    client = _client(base_url)
    tokenizer = auto_tokenizer.from_pretrained(ensure_tiny_llama())  # Llama 2's own tokenizer
    matches = [
        _ask(client, name, d, 1).usage.prompt_tokens == len(encode_dialog(tokenizer, d))
        for d in DIALOGS
    ]
    _ask(client, name, DIALOGS[0], args.max_tokens)  # warm-up
    local = None
    if args.engine == "transformers" and not args.no_local:
        import torch

        from llama2_colab import load_with_plan, make_plan
        from llama2_colab.models import ModelChoice, cpu_threads_for
        from llama2_colab.runtime import detect_runtime

        plan = make_plan(args.model, detect_runtime())  # as the server plans it
        local, tokenizer = load_with_plan(plan)
        threads = cpu_threads_for(ModelChoice(args.model, ""), plan.device)
        if threads is not None:
            torch.set_num_threads(threads)  # as the server runs it
    return {
        "model": name,
        "engine": args.engine,
        "base_url": base_url,
        "continuous_batching": args.continuous_batching,
        "max_tokens": args.max_tokens,
        "cold_start_s": round(cold, 2),
        "prompt_ids_match": all(matches),
        "single": _single(client, name, tokenizer, args.max_tokens, local),
        "concurrent": [_concurrent(client, name, n, args.max_tokens) for n in (1, 4, 8)],
    }


if __name__ == "__main__":
    raise SystemExit(main())
