"""The serving engine and its command line, decided from a plan: pure, tested on any machine.

- `choose_engine(facts, vllm_installed)`: vLLM when it is installed and the GPU is one it
  supports, else `transformers serve` (one GPU or the CPU).
- `transformers_serve_command(...)` and `vllm_command(...)`: the engine's command line from a
  plan (dtype, 4-bit, context window, tensor-parallel size, share of GPU memory).
- `client_snippet(...)`: the copy-paste client a user is shown.
"""

from __future__ import annotations

import re
import sys

from .checks import looks_like_local_path
from .errors import UserFacingError, redact_secrets
from .faults import expand_user
from .plan import GPU_RESERVE_BYTES, LoadPlan, TensorParallelPlan
from .runtime import ATTENTION, RuntimeFacts

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "CB_BLOCK_TOKENS",
    "CB_MAX_BATCH_TOKENS",
    "CB_MAX_SEQUENCES",
    "cb_num_blocks",
    "choose_engine",
    "client_snippet",
    "gpu_memory_utilization",
    "served_name",
    "transformers_serve_command",
    "vllm_command",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

# vLLM's CUDA builds support compute capability 7.0 and up (V100, T4, A100, L4, H100).
VLLM_MIN_CAPABILITY = (7, 0)
# vLLM may not take more of a GPU than this, whatever the plan leaves.
MAX_GPU_MEMORY_UTILIZATION = 0.95
# Continuous batching: transformers sizes its paged KV cache from free memory when not told (on
# a CPU that took 14 GiB of RAM for the tiny model, measured), so serve sizes it from the plan:
# the room the plan leaves for KV cache, at most CB_MAX_SEQUENCES full contexts, in blocks of
# CB_BLOCK_TOKENS (transformers' default). A forward pass takes at most CB_MAX_BATCH_TOKENS
# tokens: their activations fit the plan's reserve, as a 2k-token prompt's do.
CB_BLOCK_TOKENS = 256
CB_MAX_SEQUENCES = 16
CB_MAX_BATCH_TOKENS = 2048


def choose_engine(facts: RuntimeFacts, vllm_installed: bool, requested: str = "auto") -> str:
    """Return the engine to serve with: "vllm" or "transformers" (`transformers serve`).

    "auto" picks vLLM when it is installed and the GPU has compute capability 7.0 or more (it
    batches requests and pages its KV cache); otherwise `transformers serve`, which runs on one
    GPU or the CPU. An explicit request is honoured; vLLM without a GPU is refused.
    """
    if requested not in ("auto", "vllm", "transformers"):
        raise ValueError(f"engine must be auto, vllm or transformers, not {requested!r}")
    gpu_ok = facts.gpu is not None and facts.gpu.compute_capability >= VLLM_MIN_CAPABILITY
    if requested == "vllm" and not gpu_ok:
        raise UserFacingError(
            "vLLM needs an NVIDIA GPU with compute capability 7.0 or more, and there is none.",
            "Leave out --engine (transformers serve runs on the CPU too), or use a GPU runtime.",
        )
    if requested != "auto":
        return requested
    return "vllm" if vllm_installed and gpu_ok else "transformers"


def served_name(model: str) -> str:
    """Return the model name clients send: "tiny", a Hub id as is, a folder's own name."""
    name = model.strip()
    if name.lower() == "tiny":
        return "tiny"
    if looks_like_local_path(name):
        name = expand_user(name).resolve().name
    # A token in a folder's name is masked: the name is shown, and every client sends it.
    # transformers 5.15 reads "name@rev" as a revision of name.
    return re.sub(r"[^A-Za-z0-9._/-]", "-", redact_secrets(name)).strip("/") or "model"


def gpu_memory_utilization(plan: LoadPlan | TensorParallelPlan) -> float:
    """Return the share of each GPU vLLM may take: the plan's usable memory over the GPU's total."""
    if isinstance(plan, TensorParallelPlan):
        usable = plan.usable_memory_bytes_per_gpu
        total = usable + GPU_RESERVE_BYTES
    else:
        usable, total = plan.usable_memory_bytes, plan.usable_memory_bytes + plan.reserve_bytes
    share = usable / total if total else MAX_GPU_MEMORY_UTILIZATION
    return min(MAX_GPU_MEMORY_UTILIZATION, int(share * 100) / 100)


def transformers_serve_command(
    plan: LoadPlan, model: str, host: str, port: int, continuous_batching: bool = False
) -> list[str]:
    """Return the `transformers serve` command for a plan, serving `model` (a folder's name).

    The plan's dtype (float16 on a T4, never bfloat16), 4-bit NF4 when the plan chose it, SDPA
    attention, the GPU (device_map "auto", as `load_with_plan` does) or the CPU, and with
    continuous batching a KV cache of the size the plan leaves room for. transformers serve has
    no context-window flag: the plan's context is printed for the user to keep to.
    """
    command = [sys.executable, "-P", "-m", "transformers.cli.transformers", "serve", model]
    command += ["--host", host, "--port", str(port), "--dtype", plan.dtype]
    command += ["--device", "auto" if plan.device == "cuda" else "cpu"]
    command += ["--attn-implementation", ATTENTION]
    if plan.quantization == "nf4":
        command += ["--quantization", "bnb-4bit"]  # NF4 with double quantization
    elif plan.quantization == "int8":
        command += ["--quantization", "bnb-8bit"]
    if continuous_batching:
        command += ["--continuous-batching", "--cb-block-size", str(CB_BLOCK_TOKENS)]
        command += ["--cb-num-blocks", str(cb_num_blocks(plan))]
        command += ["--cb-max-batch-tokens", str(min(CB_MAX_BATCH_TOKENS, plan.context_window))]
    return command


def cb_num_blocks(plan: LoadPlan) -> int:
    """Return the KV-cache blocks for continuous batching: what the plan leaves room for."""
    room = max(0, plan.usable_memory_bytes - plan.weights_bytes) // plan.kv_bytes_per_token
    tokens = min(room, CB_MAX_SEQUENCES * plan.context_window)
    return max(1, tokens // CB_BLOCK_TOKENS)


def vllm_command(
    plan: LoadPlan | TensorParallelPlan,
    model_path: str,
    name: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    chat_template: str | None = None,
) -> list[str]:
    """Return the `vllm serve` command for a plan: dtype, context, tensor parallelism, memory.

    `--max-model-len` is the context the plan leaves room for, `--tensor-parallel-size` the
    plan's GPU count (1 for a single-GPU plan), `--gpu-memory-utilization` the plan's usable
    share of each GPU, `--quantization bitsandbytes` for a 4-bit NF4 plan (quantized while
    loading). `chat_template` is the reference template's file.
    """
    if not plan.fits:
        raise UserFacingError(f"{plan.model} does not fit: {plan.reason}", plan.advice)
    if plan.quantization == "int8":
        raise UserFacingError(
            "vLLM quantizes while loading to 4-bit only, and this plan asks for int8.",
            "Plan with --quantization nf4 (or none) for vLLM.",
        )
    size = plan.gpus if isinstance(plan, TensorParallelPlan) else 1
    command = ["vllm", "serve", model_path, "--served-model-name", name]
    command += ["--host", host, "--port", str(port), "--dtype", plan.dtype]
    command += ["--max-model-len", str(plan.context_window)]
    command += ["--tensor-parallel-size", str(size)]
    command += ["--gpu-memory-utilization", f"{gpu_memory_utilization(plan):.2f}"]
    if plan.quantization == "nf4":
        command += ["--quantization", "bitsandbytes"]
    if chat_template:
        command += ["--chat-template", chat_template]
    return command


def client_snippet(base_url: str, model: str, max_tokens: int = 128) -> str:
    """Return Python a user can paste to ask the server one question with the openai client."""
    return (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}", api_key="not-needed")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{model}",\n'
        '    messages=[{"role": "user", "content": "What is a T4?"}],\n'
        f"    max_tokens={max_tokens},\n"
        ")\n"
        "print(reply.choices[0].message.content)"
    )
