"""Streaming generation with honest timing: time to first token and decode tokens per second.

One mechanism for everything that streams (the demo, the chat session, the app, the benchmark):
`stream_generate` runs `model.generate` with a `transformers.TextStreamer` subclass, so text
arrives as it is produced, and the same streamer timestamps every new token.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from transformers import CompileConfig, TextStreamer

from .errors import UserFacingError

__all__ = [
    "GenerationStats",
    "ReplyStreamer",
    "check_prompt_ids",
    "fast_generate_kwargs",
    "stream_generate",
]

_GENERATE_LOGGER = "transformers.generation.utils"  # where generate() logs its warnings


@dataclass(frozen=True)
class GenerationStats:
    """How long a generation took, split the way users feel it."""

    prompt_tokens: int
    new_tokens: int
    ttft_s: float  # from calling generate() to the first new token (prefill + first step)
    total_s: float  # from calling generate() to the last new token

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first, divided by the time after the first."""
        if self.new_tokens < 2 or self.total_s <= self.ttft_s:
            return 0.0
        return (self.new_tokens - 1) / (self.total_s - self.ttft_s)


class ReplyStreamer(TextStreamer):
    """A TextStreamer that hands each new piece of the reply to a callback and times tokens.

    The pieces add up to exactly the decoded reply. Byte-fallback tokenizers (Llama 2's) spell a
    character they have no piece for as 2-4 byte tokens (`<0xE3>` `<0x81>` `<0x93>`), and decode
    a run of byte tokens as a whole: until the run ends, its text can still change (a half
    character is "\ufffd"; a run with one bad byte is all "\ufffd"). So a run of byte tokens is
    held back until a word piece follows it or the reply ends (a special token, which decodes
    to nothing, does not end it), and the text never shows a replacement character that the
    reply does not have.

    It adds no device sync per token: generate() already copies each new token to the CPU
    before `put` (and waits for its stop check), as it does for a plain `TextStreamer`; `put`
    only reads that CPU tensor and the clock. Its host work per token is bounded too: each new
    piece is decoded from a short window (the ids since the piece before last), not from the
    whole reply, so token 2,000 costs what token 20 does (about 11 us on a CPU, where decoding
    2,000 tokens in full took 0.4 ms). `put` runs inside generate()'s loop, so on a GPU the next
    step waits for it, and a fast 7B step on an H200 class GPU is about 5 ms.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None = None):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text
        self.token_times: list[float] = []
        self.reply_ids: list[int] = []  # the reply's token ids so far
        # The window decoded per piece: reply_ids[window_start:] is decoded, and the text of
        # reply_ids[window_start:shown_ids] has already gone to on_text. Both move forward
        # only after a word piece, so a window never starts inside a run of byte tokens.
        self.window_start = 0
        self.shown_ids = 0
        self.awaiting_prompt = True  # generate() sends the prompt first; it is never shown
        # Special tokens are skipped when decoding, so the bytes on either side of one join up.
        self.hidden_ids = frozenset(getattr(tokenizer, "all_special_ids", ()))

    def put(self, value) -> None:
        """Receive token ids from generate(); the first call carries the prompt."""
        if not self.awaiting_prompt:
            self.token_times.extend([time.perf_counter()] * int(value.numel()))
        if self.on_text is None or self.awaiting_prompt:
            # The prompt is never shown. With nobody reading the text, only time the tokens:
            # decoding the growing reply on every token is the one avoidable cost a streamer adds.
            self.awaiting_prompt = False
            return
        self.reply_ids.extend(value.reshape(-1).tolist())
        if self.reply_ids[-1] in self.hidden_ids:
            return  # shows nothing, and a byte run may go on across it: wait for a word
        last = self.tokenizer.convert_ids_to_tokens(self.reply_ids[-1])
        if isinstance(last, str) and len(last) == 6 and last.startswith("<0x"):
            return  # inside a run of byte tokens: its text is not final yet
        self._show_new_text(stream_end=False)

    def end(self) -> None:
        """Flush the last piece of text (when someone listens) and get ready for the next reply."""
        if self.on_text is not None:
            self._show_new_text(stream_end=True)
        self.reply_ids, self.window_start, self.shown_ids = [], 0, 0
        self.awaiting_prompt = True

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Forward each decoded piece to the callback (nothing is printed by default)."""
        if self.on_text is not None and text:
            self.on_text(text)

    def _show_new_text(self, stream_end: bool) -> None:
        """Send the text of the ids not yet shown, decoded together with the piece before them.

        Decoding the earlier piece alongside keeps what a piece's first token looks like in
        context (Llama's decoder drops the space in front of the very first word only), so the
        pieces add up to the decoded reply: the shown part's text is a prefix of the window's.
        An earlier piece that decodes to nothing (special tokens only) is no context, so the
        window then reaches back to the last token that shows.
        """
        ids = self.reply_ids
        if self.shown_ids == len(ids):
            return
        start = self.window_start
        before = self.tokenizer.decode(ids[start : self.shown_ids], **self.decode_kwargs)
        while not before and start > 0:  # only skipped special tokens: reach back to a word
            start -= 1
            before = self.tokenizer.decode(ids[start : self.shown_ids], **self.decode_kwargs)
        text = self.tokenizer.decode(ids[start:], **self.decode_kwargs)
        if not text.startswith(before):  # not seen with Llama's tokenizer; stay exact anyway
            whole = self.tokenizer.decode(ids, **self.decode_kwargs)
            shown = self.tokenizer.decode(ids[: self.shown_ids], **self.decode_kwargs)
            before, text = shown, whole if whole.startswith(shown) else shown
        self.on_finalized_text(text[len(before) :], stream_end=stream_end)
        self.window_start, self.shown_ids = self.shown_ids, len(ids)


class _CompileOnAnyDevice(CompileConfig):
    """A CompileConfig that compiles on the CPU too (transformers compiles only on accelerators).

    transformers reads this class flag; it offers no public switch, so the flag is set here, on
    our own subclass, and no instance of theirs is written.
    """

    _compile_all_devices = True


def fast_generate_kwargs(
    static_cache: bool = False,
    prompt_lookup_tokens: int = 0,
    max_cache_len: int | None = None,
    device_type: str = "cuda",
) -> dict:
    """Return the extra generate() kwargs that switch on the opt-in fast paths.

    - `static_cache`: a pre-allocated KV cache and a `torch.compile`d decode step (CUDA graphs on
      a GPU). The first call compiles (a minute or more); later calls of the same shape are
      faster where Python overhead, not memory bandwidth, limits speed. Size the cache from the
      plan (`max_cache_len`): a 4096-token cache for fp16 7B is 2 GiB, more than a T4 has left.
    - `prompt_lookup_tokens`: prompt-lookup decoding, which guesses the next tokens by copying
      from the prompt and checks them in one forward pass. It helps when the answer quotes the
      prompt (summaries, code edits) and costs a little when it does not. 10 is the usual value.

    Pass the result through `stream_generate(..., **fast_generate_kwargs(...))`. Greedy output is
    the same as without them.
    """
    for name, value, least in (
        ("prompt_lookup_tokens", prompt_lookup_tokens, 0),
        ("max_cache_len", max_cache_len, 1),
    ):
        if value is None and name == "max_cache_len":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number of at least {least}, not {value!r}.")
    if static_cache and prompt_lookup_tokens:
        raise ValueError("Choose one fast path: a static cache or prompt lookup, not both.")
    kwargs: dict = {}
    if static_cache:
        if device_type == "cuda":
            config = CompileConfig(mode="reduce-overhead")  # CUDA graphs remove launch overhead
        else:
            config = _CompileOnAnyDevice(mode="default")  # CUDA graphs need a GPU
        kwargs["cache_implementation"] = "static"
        kwargs["compile_config"] = config
        if max_cache_len is not None:
            kwargs["max_cache_len"] = int(max_cache_len)
    if prompt_lookup_tokens:
        kwargs["prompt_lookup_num_tokens"] = int(prompt_lookup_tokens)
    return kwargs


def stream_generate(
    model,
    tokenizer,
    input_ids,
    on_text: Callable[[str], None] | None = None,
    **generate_kwargs,
) -> tuple[str, list[int], GenerationStats]:
    """Generate from a 1 x N tensor of ids, streaming text; return (text, new ids, stats)."""
    import torch

    check_prompt_ids(model, input_ids)
    wanted = generate_kwargs.get("max_new_tokens")
    if wanted is not None and (
        isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1
    ):
        raise ValueError(
            f"max_new_tokens={wanted!r} cannot be generated: give a whole number of at least 1."
        )
    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(window, int) and input_ids.shape[1] + (wanted or 0) > window:
        raise ValueError(
            f"The prompt ({input_ids.shape[1]} tokens) plus max_new_tokens ({wanted or 0}) "
            f"exceeds the model's {window} positions: past them a Llama model produces garbage. "
            "Shorten the prompt or lower max_new_tokens."
        )
    input_ids = input_ids.to(model.device)
    cache_cap = generate_kwargs.get("max_cache_len")
    if cache_cap is not None and wanted is not None and input_ids.shape[1] + wanted > cache_cap:
        # transformers would quietly allocate a bigger static cache: on a T4 that is an OOM.
        raise UserFacingError(
            f"The prompt ({input_ids.shape[1]} tokens) plus max_new_tokens ({wanted}) does not "
            f"fit the static cache of {cache_cap} tokens sized for this GPU.",
            "Shorten the prompt or max_new_tokens, or turn the static cache off.",
        )
    attention_mask = torch.ones_like(input_ids)
    streamer = ReplyStreamer(tokenizer, on_text)
    generate_kwargs.setdefault("pad_token_id", tokenizer.eos_token_id)
    if generate_kwargs.get("stop_strings"):  # generate() finds stop strings with the tokenizer
        generate_kwargs.setdefault("tokenizer", tokenizer)
    start = time.perf_counter()
    with torch.inference_mode(), _without_length_warning():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            streamer=streamer,
            **generate_kwargs,
        )
    new_ids = output[0, input_ids.shape[1] :].tolist()
    times = streamer.token_times
    stats = GenerationStats(
        prompt_tokens=int(input_ids.shape[1]),
        new_tokens=len(new_ids),
        ttft_s=(times[0] - start) if times else 0.0,
        total_s=(times[-1] - start) if times else 0.0,
    )
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    return text, new_ids, stats


class _BothLengthsFilter(logging.Filter):
    """Drops transformers' "Both `max_new_tokens` and `max_length`" warning, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Both `max_new_tokens`")


@contextlib.contextmanager
def _without_length_warning():
    """Run generate() without the "both lengths set" warning, passing no extra kwarg for it.

    Llama 2's generation_config sets max_length=4096, so every call that gives max_new_tokens
    makes transformers warn that both are set (max_new_tokens wins; nothing is wrong). Passing
    max_length=None would silence it too, but then the package would hand generate() a kwarg
    the pipeline does not; a filter on transformers' generation logger, for this call only,
    keeps the package's kwargs a subset of the pipeline's.
    """
    hf_logger = logging.getLogger(_GENERATE_LOGGER)
    quiet = _BothLengthsFilter()
    hf_logger.addFilter(quiet)
    try:
        yield
    finally:
        hf_logger.removeFilter(quiet)


def _check_input_ids(input_ids, torch) -> None:
    """Raise TypeError/ValueError unless input_ids is one prompt: a 1 x N tensor of token ids."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"input_ids must be a torch tensor of shape 1 x N, not {type(input_ids).__name__}; "
            "wrap a list of ids as torch.tensor([ids])."
        )
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        shape = " x ".join(str(n) for n in input_ids.shape) or "a scalar"
        hint = (
            "wrap the ids as torch.tensor([ids]) (or input_ids.unsqueeze(0))"
            if input_ids.dim() == 1
            else "stream one prompt at a time: call stream_generate once per row"
        )
        raise ValueError(
            f"stream_generate streams one prompt: input_ids is {shape}, not 1 x N; {hint}."
        )
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: the prompt needs at least one token (BOS).")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must hold integer token ids, not {input_ids.dtype}.")


def check_prompt_ids(model, input_ids) -> None:
    """Raise TypeError/ValueError unless input_ids is one prompt of ids the model has rows for.

    An id past the embedding (a tokenizer of another model, an id typed by hand) would otherwise
    end in an IndexError deep inside the model, or in a CUDA assert that kills the session.
    """
    import torch

    _check_input_ids(input_ids, torch)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embedding, "num_embeddings", None)
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or (isinstance(rows, int) and high >= rows):
        bad = low if low < 0 else high
        span = f"from 0 to {rows - 1}" if isinstance(rows, int) else "from 0 up"
        raise ValueError(
            f"input_ids holds the id {bad}, but this model's ids run {span}: "
            "encode the prompt with this model's own tokenizer."
        )
