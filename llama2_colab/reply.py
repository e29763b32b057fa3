"""The one small protocol a chat session drives a reply through: start it, stream it, stop it.

Two engines speak it, each in its own module: `local_model.LocalModel` (a model and tokenizer in
this process, through `generation.stream_generate` or the opt-in `fast_decode` path) and
`endpoint.Endpoint` (an OpenAI-compatible HTTP server such as `transformers serve` or vLLM).
`ChatSession` builds the prompt, keeps the history and counts the context the same way for both;
an engine only turns one fitted prompt into one streamed reply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .chat import DialogFit
from .generation import GenerationStats

__all__ = ["EngineReply", "ReplyEngine", "ReplyRequest"]


@dataclass(frozen=True)
class ReplyRequest:
    """One reply to write: the fitted prompt and the sampling settings, read when it starts."""

    fit: DialogFit  # the messages kept, their Llama 2 token ids, and max_new_tokens
    do_sample: bool
    temperature: float
    top_p: float
    options: dict = field(default_factory=dict)  # the session's generate_kwargs
    stopping_criteria: tuple = ()  # transformers StoppingCriteria: a local model only


@dataclass(frozen=True)
class EngineReply:
    """What an engine wrote: the text as streamed, its timing, and whether Stop ended it."""

    text: str
    stats: GenerationStats
    stopped: bool


@runtime_checkable
class ReplyEngine(Protocol):
    """Where replies come from: a local model or an endpoint.

    - start and stream: `reply(request, on_text, stop)` starts one reply, hands each new piece
      of text to `on_text` as it arrives (the pieces add up to the reply) and returns the whole
      reply once it ends;
    - stop: setting `stop` (from any thread) ends the reply early; what arrived is returned
      with `stopped=True`. A `stop` set before the reply starts ends it at once.

    A failure raises and returns nothing, so the session's history never holds half a turn.
    """

    tokenizer: object  # Llama 2's tokenizer: the session counts the context with it

    def context_window(self) -> int:
        """Return how many tokens the prompt and the reply may take together."""
        ...

    def check_options(self, options: dict, do_sample: bool = True) -> None:
        """Raise TypeError/ValueError, saying what to fix, unless options suit this engine.

        `do_sample`: whether the reply samples (an option may suit one mode, not the other).
        """
        ...

    def check_text(self, text: str, what: str) -> None:
        """Raise ValueError, saying what to fix, unless this engine can send text (named what)."""
        ...

    def describe(self) -> str:
        """Return a short line naming the model and where it runs (no secret in it)."""
        ...

    def reply(
        self,
        request: ReplyRequest,
        on_text: Callable[[str], None] | None,
        stop: threading.Event,
    ) -> EngineReply:
        """Write one reply, streaming its pieces to on_text, until it ends or stop is set."""
        ...
