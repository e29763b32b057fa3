"""A model and tokenizer in this process, as a reply engine (the `reply.ReplyEngine` protocol).

Replies go through `generation.stream_generate` (or, opt-in with `fast=True`, greedy replies
through `fast_decode`'s static cache and CUDA graph); Stop is a transformers `StoppingCriteria`
that reads a `threading.Event`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
import threading
from collections.abc import Callable
from dataclasses import replace

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.utils import GenerationMixin

from .chat import DialogFit, read_context_window
from .fast_decode import FastDecoder, fast_stream_generate
from .generation import stream_generate
from .reply import EngineReply, ReplyRequest

__all__ = ["LocalModel", "StopOnEvent", "check_generate_kwargs"]


class StopOnEvent(StoppingCriteria):
    """A StoppingCriteria that ends generation once a threading.Event is set (the Stop button).

    generate() streams each token, then asks its stopping criteria, so a Stop pressed before
    generation began, or while the prompt was read, still lets one token through. Pass the
    reply's text through `pass_text`: it holds back the first token's text until the first
    check, and drops it if the event was already set then (`set_before_first_token`), so a reply
    stopped before its first token shows and keeps nothing.
    """

    def __init__(self, event: threading.Event, on_text: Callable[[str], None] | None = None):
        self.event = event
        self.on_text = on_text
        self.set_before_first_token: bool | None = None  # None until the first check
        self._held: list[str] = []

    def __call__(self, input_ids, scores, **kwargs):
        """Return True for every sequence once the event is set."""
        stopped = self.event.is_set()
        if self.set_before_first_token is None:
            self.set_before_first_token = stopped
            self.release()
        return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)

    def pass_text(self, piece: str) -> None:
        """Hand piece on to on_text; the first token's text waits for the first check."""
        if self.set_before_first_token is None:
            self._held.append(piece)
        elif not self.set_before_first_token and self.on_text is not None:
            self.on_text(piece)

    def release(self) -> None:
        """Hand on the held text unless Stop came first (for a reply that ended unchecked)."""
        held, self._held = self._held, []
        if not self.set_before_first_token and self.on_text is not None:
            for piece in held:
                self.on_text(piece)


# generate() arguments the session sets itself, each with what to do instead.
_SESSION_SETS = {
    "max_new_tokens": "set session.max_new_tokens instead (the context budget caps it)",
    "max_length": "set session.max_new_tokens instead (the context budget caps it)",
    "eos_token_id": "the session stops at the tokenizer's end-of-sequence token",
    "input_ids": "the session builds the prompt from the history",
    "inputs": "the session builds the prompt from the history",
    "attention_mask": "the session builds the prompt from the history",
    "streamer": "pass on_text= to send() to receive the reply as it streams",
}


# Settings that make generate() return more than one streamed text: the session streams one.
_ONE_REPLY = {
    "num_beams": "beam search does not stream in transformers",
    "num_return_sequences": "it keeps one reply; regenerate() gives another",
}
_EXTRA_OUTPUTS = (
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
)


@functools.cache
def _generate_names() -> frozenset[str]:
    """Every name generate() takes: its own arguments and every GenerationConfig setting."""
    own = set(inspect.signature(GenerationMixin.generate).parameters) - {"self", "kwargs"}
    return frozenset(own | _config_names())


@functools.cache
def _config_names() -> frozenset[str]:
    """The settings of a GenerationConfig (what goes into one, not generate()'s own arguments)."""
    return frozenset(GenerationConfig().to_dict()) | frozenset(_documented_types())


@functools.cache
def _documented_types() -> dict[str, str]:
    """Each generation setting's type as transformers documents it, where it is a plain one."""
    doc = GenerationConfig.__doc__ or ""
    return dict(re.findall(r"^\s*(\w+) \(`(int|float|bool|str)`[,)]", doc, re.MULTILINE))


def _check_value(key: str, value) -> None:
    """Raise TypeError unless value has the type transformers documents for the setting key."""
    if key in ("logits_processor", "stopping_criteria") and value is not None:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise TypeError(f"generate_kwargs[{key!r}] must be a list, not {type(value).__name__}.")
        for item in value:
            if not callable(item):
                kind = "LogitsProcessor" if "logits" in key else "StoppingCriteria"
                raise TypeError(
                    f"generate_kwargs[{key!r}] holds {type(item).__name__} {item!r}: each item "
                    f"must be a transformers {kind}."
                )
    kind = _documented_types().get(key)
    if value is None or kind is None:
        return
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        named = {"int": "a whole number", "float": "a number", "bool": "True or False"}
        raise TypeError(
            f"generate_kwargs[{key!r}] must be {named.get(kind, 'text')}, not "
            f"{type(value).__name__} {value!r}."
        )


def _check_one_reply(kwargs: dict) -> None:
    """Raise ValueError for settings that would give more than one streamed text reply."""
    for key, why in _ONE_REPLY.items():
        if kwargs.get(key) not in (None, 1):
            raise ValueError(
                f"generate_kwargs sets {key}={kwargs[key]!r}, but a ChatSession streams one "
                f"reply ({why}). Leave {key} out."
            )
    for key in _EXTRA_OUTPUTS:
        if kwargs.get(key):
            raise ValueError(
                f"generate_kwargs sets {key}, but a ChatSession keeps only the reply's text. "
                "Leave it out; for scores or hidden states, call model.generate() yourself."
            )


def _validate_config(kwargs: dict, do_sample: bool) -> None:
    """Raise ValueError with transformers' own reason if GenerationConfig.validate refuses them."""
    settings = {k: v for k, v in kwargs.items() if k in _config_names()}
    config = GenerationConfig()
    try:
        for key, value in (settings | {"do_sample": do_sample}).items():
            setattr(config, key, value)
        config.validate(strict=True, user_set_attributes=set(settings))
    except Exception as err:  # noqa: BLE001 - whatever transformers refuses is said, in its words
        said = str(err).replace("GenerationConfig is invalid:", "").split("\nIf you're using")[0]
        mode = "sampling" if do_sample else "greedy decoding (do_sample=False)"
        raise ValueError(
            f"generate_kwargs {settings} cannot be used with {mode}: {' '.join(said.split())}"
        ) from None


def check_generate_kwargs(kwargs: dict, do_sample: bool = True) -> None:
    """Raise TypeError/ValueError, saying what to fix, unless kwargs can go to generate().

    Names are checked against generate()'s arguments and transformers' settings, values against
    the types transformers documents, and the settings with `do_sample` by
    `GenerationConfig.validate(strict=True)`: a setting generate() would refuse, or silently
    ignore, is refused now, with transformers' reason.
    """
    if not isinstance(kwargs, dict):
        raise TypeError(
            f"generate_kwargs must be a dict such as {{'top_k': 20}}, not {type(kwargs).__name__}."
        )
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"generate_kwargs keys are argument names, not {key!r}.")
        if key in _SESSION_SETS:
            raise ValueError(
                f"generate_kwargs sets {key}, which ChatSession sets itself: {_SESSION_SETS[key]}."
            )
        if key not in _generate_names():
            close = difflib.get_close_matches(key, _generate_names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"generate_kwargs has {key!r}, which is neither a generation setting nor an "
                f"argument of generate().{hint} The settings are transformers' GenerationConfig "
                "fields (top_k, repetition_penalty, min_new_tokens, ...)."
            )
        _check_value(key, kwargs[key])
    _check_one_reply(kwargs)
    _validate_config(kwargs, bool(do_sample))


def _check_model(model, tokenizer) -> None:
    """Raise TypeError, saying what to pass, unless model and tokenizer look like a loaded pair."""
    how = (
        "Load them first, e.g. model, tokenizer = load_with_plan(make_plan(name, facts)), then "
        "pass ChatSession(model, tokenizer); or pass endpoint=Endpoint(url, model_name)."
    )
    if isinstance(model, str):
        raise TypeError(
            f"ChatSession got the text {str(model)[:80]!r} where a loaded transformers model "
            f"belongs: a model's name is not the model. {how}"
        )
    if model is None or tokenizer is None:
        missing = (
            "a model and its tokenizer"
            if model is tokenizer
            else ("a model" if model is None else "the model's tokenizer")
        )
        raise TypeError(f"ChatSession needs {missing}, and got None. {how}")
    if isinstance(model, str) or not callable(getattr(model, "generate", None)):
        raise TypeError(
            f"The model must be a loaded transformers model (with generate()), not "
            f"{type(model).__name__} {str(model)[:60]!r}. {how}"
        )
    if not callable(tokenizer) or getattr(tokenizer, "eos_token_id", None) is None:
        raise TypeError(
            f"The tokenizer must be the model's transformers tokenizer (callable, with an "
            f"end-of-sequence token), not {type(tokenizer).__name__}. {how}"
        )


class LocalModel:
    """A model and its tokenizer in this process, as a reply engine."""

    def __init__(self, model, tokenizer, fast: bool = False):
        _check_model(model, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        # Opt-in, not measured on a GPU yet: greedy replies (do_sample=False, no extra generate
        # kwargs or stopping criteria) through fast_decode's static cache and CUDA graph.
        self.fast = bool(fast)
        self.decoder: FastDecoder | None = None  # kept while the dialog fits its cache

    def context_window(self) -> int:
        """Return the model's context window (max_position_embeddings)."""
        return read_context_window(self.model)

    def check_options(self, options: dict, do_sample: bool = True) -> None:
        """Raise TypeError/ValueError unless options are generate() kwargs the session allows."""
        check_generate_kwargs(options, do_sample)

    def check_text(self, text: str, what: str) -> None:
        """Accept any text `encode_dialog` accepts: a typed `</s>` is encoded as characters."""

    def describe(self) -> str:
        """Return e.g. `LlamaForCausalLM on cpu (this process)`."""
        device = getattr(self.model, "device", "?")
        return f"{type(self.model).__name__} on {device} (this process)"

    def reply(
        self, request: ReplyRequest, on_text: Callable[[str], None] | None, stop: threading.Event
    ) -> EngineReply:
        """Generate one reply here, streaming pieces to on_text, until EOS, the cap or stop."""
        extra = dict(request.options)
        watch = StopOnEvent(stop, on_text)
        criteria = [watch, *request.stopping_criteria]
        criteria += list(extra.pop("stopping_criteria", None) or [])
        if self.fast and not (request.do_sample or extra or request.stopping_criteria):
            return self._reply_fast(request.fit, watch)
        if request.do_sample:
            sampling = {
                "do_sample": True,
                "temperature": request.temperature,
                "top_p": request.top_p,
            }
        else:
            sampling = {"do_sample": False, "temperature": None, "top_p": None}
        text, _, stats = _stream(self, request.fit, watch.pass_text, criteria, sampling | extra)
        return _kept(watch, text, stats)

    def _reply_fast(self, fit: DialogFit, watch: StopOnEvent) -> EngineReply:
        """One greedy reply on the fast path, on a decoder kept while the reply fits its cache."""
        needed = len(fit.input_ids) + fit.max_new_tokens
        if self.decoder is None or self.decoder.max_cache_len < needed:
            # Round up, so that a growing dialog re-records its CUDA graph only now and then.
            size = min(-(-needed // 256) * 256, max(needed, self.context_window()))
            self.decoder = FastDecoder(self.model, size)
        text, _, stats = fast_stream_generate(
            self.model,
            self.tokenizer,
            torch.tensor([fit.input_ids]),
            on_text=watch.pass_text,
            max_new_tokens=fit.max_new_tokens,
            decoder=self.decoder,
            should_stop=lambda: bool(watch(torch.zeros(1, 1), None)[0]),  # as generate() asks
        )
        return _kept(watch, text, stats)


def _kept(watch: StopOnEvent, text: str, stats) -> EngineReply:
    """The reply as kept: nothing of it if Stop came before its first token."""
    if watch.set_before_first_token:  # the one token made after Stop is neither shown nor kept
        return EngineReply("", replace(stats, new_tokens=0, ttft_s=0.0, total_s=0.0), True)
    watch.release()  # a reply that ended (EOS, the cap) before any check: its text goes on
    return EngineReply(text, stats, stopped=watch.event.is_set())


def _stream(engine: LocalModel, fit: DialogFit, on_text, criteria, kwargs: dict):
    """stream_generate on the fitted prompt: (text, new ids, stats)."""
    return stream_generate(
        engine.model,
        engine.tokenizer,
        torch.tensor([fit.input_ids]),
        on_text=on_text,
        max_new_tokens=fit.max_new_tokens,
        eos_token_id=engine.tokenizer.eos_token_id,
        stopping_criteria=StoppingCriteriaList(criteria),
        **kwargs,
    )
