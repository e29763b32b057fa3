"""Fast batch-1 greedy decoding: a static KV cache and, on a GPU, the decode step as a CUDA graph.

An opt-in path, not the default: no GPU has measured it yet (`scripts/gpu_check.sh` does). It is
written the way gpt-fast writes it, one small function per step:

- `make_static_cache`: a KV cache allocated once, at a fixed size, so that every decode step
  reads and writes the same memory (what a CUDA graph needs);
- `prefill`: the prompt in one forward pass, the first new token out;
- `decode_one_token`: one token in, the next token's logits out.

On a GPU, `FastDecoder` records `decode_one_token` once as a CUDA graph (`torch.cuda.CUDAGraph`)
and replays it for every later token: one launch per token instead of hundreds of kernel
launches from Python, and no `torch.compile`. The cache's write position and the token's
position live in device tensors that the graph reads, so one graph serves every position.

It also never lets the GPU wait for Python: the next step is queued before the host waits for
this token (a copy to page-locked memory and an event), so streaming the text, the Stop check
and the next launch overlap the GPU's work. generate() waits for each token before it queues
anything more. After EOS the one step already queued is thrown away.

On a CPU the same functions run without the graph, and greedy output is the default path's,
token for token, in either order (tests/test_fast_decode.py).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable

import torch
from transformers import StaticCache

from .errors import UserFacingError
from .generation import GenerationStats, ReplyStreamer, check_prompt_ids

__all__ = [
    "FastDecoder",
    "decode_one_token",
    "fast_stream_generate",
    "make_static_cache",
    "prefill",
]


def make_static_cache(model, max_cache_len: int) -> StaticCache:
    """Return a static KV cache for batch 1 that holds max_cache_len tokens."""
    return StaticCache(config=model.config, max_cache_len=int(max_cache_len))


def _cache_kwarg(model) -> str:
    """The name forward() takes the cache by: `cache` (transformers 5.24) or `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefill(model, cache: StaticCache, input_ids, positions) -> torch.Tensor:
    """Run the prompt (1 x N ids at 1 x N positions) into the cache; return the last logits."""
    out = model(
        input_ids=input_ids,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{_cache_kwarg(model): cache},
    )
    return out.logits[:, -1]


def decode_one_token(model, cache: StaticCache, token, position) -> torch.Tensor:
    """Run one token (1 x 1) at one position (1 x 1) through the model; return its logits."""
    out = model(
        input_ids=token,
        position_ids=position,
        use_cache=True,
        **{_cache_kwarg(model): cache},
    )
    return out.logits[:, -1]


def _pick(logits, eos_token_id: int | None, allow_eos: bool) -> torch.Tensor:
    """Greedy choice as generate() makes it (float32 scores; EOS barred before min_new_tokens)."""
    scores = logits.to(dtype=torch.float32, copy=True)  # never write the graph's output
    if not allow_eos and eos_token_id is not None:
        scores[:, eos_token_id] = float("-inf")
    return scores.argmax(dim=-1, keepdim=True)


class FastDecoder:
    """A model with its own static cache (and, on a GPU, its recorded decode step), reusable
    across replies: the CUDA graph is recorded on the first reply and replayed ever after."""

    def __init__(
        self,
        model,
        max_cache_len: int,
        use_graph: bool | None = None,
        overlap: bool | None = None,
    ):
        if isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int):
            raise ValueError(f"max_cache_len must be a whole number, not {max_cache_len!r}.")
        if max_cache_len < 2:
            raise ValueError(f"max_cache_len must be at least 2, not {max_cache_len}.")
        self.model = model
        self.max_cache_len = max_cache_len
        self.cache = make_static_cache(model, max_cache_len)
        on_gpu = model.device.type == "cuda"
        self.use_graph = on_gpu if use_graph is None else (use_graph and on_gpu)
        self.token = torch.zeros((1, 1), dtype=torch.long, device=model.device)
        self.position = torch.zeros((1, 1), dtype=torch.long, device=model.device)
        self.graph = None  # recorded on the first decode step that needs it
        self.logits = None  # the graph's output, rewritten by every replay
        self.graph_error: str | None = None  # why there is no graph on a GPU, if there is none
        if self.use_graph and _syncs_the_host(model):
            self.use_graph = False
            self.graph_error = (
                "not recorded: LLM.int8 layers check their outliers on the host every call"
            )
        # Queue the next step before waiting for this token on the host (see `to_host`). On by
        # default on a GPU, where the wait would otherwise leave the GPU idle; `overlap=True`
        # runs the same order on a CPU, which is how the tests check it.
        self.overlap = on_gpu if overlap is None else bool(overlap)
        self.host_token = (
            torch.zeros(1, dtype=torch.long, pin_memory=True) if on_gpu else None
        )  # page-locked, so the copy to it runs while the GPU works on
        self.token_ready = torch.cuda.Event() if on_gpu else None

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise UserFacingError if the prompt plus max_new_tokens does not fit the cache."""
        if prompt_tokens + max_new_tokens > self.max_cache_len:
            raise UserFacingError(
                f"The prompt ({prompt_tokens} tokens) plus max_new_tokens ({max_new_tokens}) "
                f"does not fit the fast path's static cache of {self.max_cache_len} tokens.",
                "Shorten the prompt or max_new_tokens, or make a FastDecoder with a bigger "
                "max_cache_len (it costs GPU memory: see the plan's context window).",
            )

    def start(self, input_ids) -> torch.Tensor:
        """Empty the cache, run the prompt; return the logits for the first new token."""
        self.cache.reset()
        n = input_ids.shape[1]
        positions = torch.arange(n, device=self.model.device).unsqueeze(0)
        self.position.fill_(n)
        return prefill(self.model, self.cache, input_ids, positions)

    def step(self, token) -> torch.Tensor:
        """Feed the last token in (on the device, 1 x 1); return the next token's logits."""
        self.token.copy_(token)
        if not self.use_graph:
            logits = decode_one_token(self.model, self.cache, self.token, self.position)
        elif self.graph is None:
            logits = self._record()
        else:
            self.graph.replay()
            logits = self.logits
        self.position.add_(1)
        return logits

    @property
    def queues_ahead(self) -> bool:
        """Whether the next step may be queued before this token is read (see `to_host`).

        Not while the graph is still to be recorded: recording waits for the GPU and traces a
        whole forward pass, and the first token would wait for it.
        """
        return self.overlap and (self.graph is not None or not self.use_graph)

    def to_host(self, token) -> Callable[[], int]:
        """Start copying a picked token (1 x 1, on the device) to the host; return its reader.

        On a GPU the copy is queued behind the pick and the reader waits for that copy only, so
        a step queued in between keeps running while the host streams the token: the GPU never
        waits for Python between tokens. On a CPU the token is already there.
        """
        if self.host_token is None:
            return lambda: int(token)
        self.host_token.copy_(token.reshape(-1), non_blocking=True)
        self.token_ready.record()

        def read() -> int:
            self.token_ready.synchronize()
            return int(self.host_token[0])

        return read

    def _record(self) -> torch.Tensor:
        """Run this step on a side stream (its warm-up), then record it as a CUDA graph."""
        caller = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(caller)
        with torch.cuda.stream(side):
            logits = decode_one_token(self.model, self.cache, self.token, self.position)
        caller.wait_stream(side)
        # The warm-up step was real: its KV entry is written and its logits are this step's.
        # Recording runs nothing; every replay reads the token, the position and the cache's
        # write index from the same device tensors, as they are then.
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.logits = decode_one_token(self.model, self.cache, self.token, self.position)
            self.graph = graph
        except Exception as err:  # an op that cannot be recorded: stay eager, say why
            # A failed capture can leave its own stream current: give the caller theirs back.
            torch.cuda.set_stream(caller)
            torch.cuda.synchronize()
            cause = err.__context__ or err  # the first error, not "failed during capture"
            self.graph_error = f"{type(cause).__name__}: {cause}"[:300]
            self.use_graph = False
        return logits


def _syncs_the_host(model) -> bool:
    """True for a model with bitsandbytes int8 layers, which no CUDA graph can record."""
    return any(type(m).__name__ == "Linear8bitLt" for m in model.modules())


def _check_request(model, input_ids, max_new_tokens, min_new_tokens) -> None:
    """Raise ValueError for a request the fast path cannot make (the default path's rules)."""
    check_prompt_ids(model, input_ids)
    for name, value, least in (
        ("max_new_tokens", max_new_tokens, 1),
        ("min_new_tokens", min_new_tokens, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(
                f"{name}={value!r} cannot be generated: give a whole number of at least {least}."
            )
    window = getattr(model.config, "max_position_embeddings", None)
    if isinstance(window, int) and input_ids.shape[1] + max_new_tokens > window:
        raise ValueError(
            f"The prompt ({input_ids.shape[1]} tokens) plus max_new_tokens ({max_new_tokens}) "
            f"exceeds the model's {window} positions. Shorten the prompt or lower max_new_tokens."
        )


def fast_stream_generate(
    model,
    tokenizer,
    input_ids,
    on_text: Callable[[str], None] | None = None,
    max_new_tokens: int = 256,
    min_new_tokens: int = 0,
    decoder: FastDecoder | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[str, list[int], GenerationStats]:
    """Greedy-decode like `stream_generate` on the fast path; return (text, new ids, stats).

    Pass a `FastDecoder` to reuse its cache and CUDA graph across replies (the chat does); without
    one, a decoder sized for this request is made and thrown away. `should_stop` is asked after
    every token (a Stop button): True ends the reply there, keeping what was generated.
    """
    _check_request(model, input_ids, max_new_tokens, min_new_tokens)
    n = int(input_ids.shape[1])
    decoder = decoder or FastDecoder(model, n + max_new_tokens)
    decoder.check_fits(n, max_new_tokens)
    eos = tokenizer.eos_token_id
    streamer = ReplyStreamer(tokenizer, on_text)
    streamer.put(input_ids.cpu())  # like generate(): the prompt first, never shown
    input_ids = input_ids.to(model.device)
    new_ids: list[int] = []
    start = time.perf_counter()
    with torch.inference_mode():
        token = _pick(decoder.start(input_ids), eos, allow_eos=min_new_tokens == 0)
        while True:
            read = decoder.to_host(token)
            last = len(new_ids) + 1 >= max_new_tokens
            queued = decoder.queues_ahead and not last
            if queued:
                logits = decoder.step(token)  # queued before the wait: wasted only after EOS
            new_ids.append(read())  # the one wait for the device per token, as in generate()
            streamer.put(torch.tensor(new_ids[-1:]))
            if last or new_ids[-1] == eos or (should_stop is not None and should_stop()):
                break
            if not queued:
                logits = decoder.step(token)
            token = _pick(logits, eos, allow_eos=len(new_ids) >= min_new_tokens)
    streamer.end()
    times = streamer.token_times
    stats = GenerationStats(
        prompt_tokens=n,
        new_tokens=len(new_ids),
        ttft_s=times[0] - start,
        total_s=times[-1] - start,
    )
    return tokenizer.decode(new_ids, skip_special_tokens=True), new_ids, stats
