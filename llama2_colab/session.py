"""`ChatSession`: a conversation with Llama 2, on a local model or an endpoint, one step at a time.

The session keeps the history and the system prompt, builds every prompt with Meta's format and
fits it to the context (`chat`), and has its replies written by an engine (`reply`): a
`local_model.LocalModel` (a model and tokenizer here) or an `endpoint.Endpoint` (an
OpenAI-compatible server). Both give the same guarantees, checked by the same tests.

It is a small state machine behind one lock: `idle`, `replying` (a reply is being written),
`stopping` (Stop was pressed and the reply is ending). One operation at a time: while a reply is
being written, every other change (a second send, regenerate, undo, clear, import, assigning
`history`, switching the model) is refused with a `SessionBusyError` that says why, and changes
nothing. The history changes only when a turn completes, and only through the session: reading
`history` gives a copy that refuses changes in place (`HistoryView`), so no list method can
slip past the lock.

What reaches the engine is checked here first, with a TypeError or ValueError that says what
to pass: the settings (`do_sample` a bool, a `context_window` within the model's own), the
arguments of `send` (`on_text` a function, `stop_event` an Event, `stopping_criteria` a list of
criteria), `generate_kwargs` by the engine (`LocalModel`: transformers' documented types and
`GenerationConfig.validate`), and every message by the engine's own rules as well (an endpoint's
template refuses typed special tokens such as `</s>`).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from transformers import StoppingCriteria

from .chat import (
    DialogFit,
    Message,
    _check_count,
    _check_text,
    check_dialog,
    check_message,
    fit_dialog,
)
from .endpoint import Endpoint
from .generation import GenerationStats
from .local_model import LocalModel
from .renames import renamed_attribute, renamed_keywords, warn_renamed
from .reply import ReplyEngine, ReplyRequest

__all__ = ["ChatSession", "HistoryView", "SessionBusyError", "SessionState"]


class SessionState(StrEnum):
    """What a session is doing: only `idle` accepts a new operation."""

    IDLE = "idle"
    REPLYING = "replying"  # a reply is being written
    STOPPING = "stopping"  # stop() was called; the reply is ending


class SessionBusyError(RuntimeError):
    """An action refused because the session is writing a reply; nothing was changed."""


class HistoryView(list):
    """The conversation as it was when read: a copy, which refuses changes in place.

    It compares, iterates, indexes and serializes as a list of message dicts. Changing it in
    place (`append`, `clear`, `del h[0]`, ...) raises TypeError saying what to do instead, since
    a change to a copy would change nothing, and a change to the session's own list would slip
    past its lock (mid-reply, the reply being recorded would silently undo it).
    """

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            "session.history is a copy of the conversation, so changing it in place would change "
            "nothing. Use session.undo() (the last exchange) or session.clear(), or assign "
            "session.history = [...] to replace it (checked, and refused mid-reply)."
        )

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __reduce__(self):
        return (list, (list(self),))  # a copy or a pickle is a plain list


@dataclass(frozen=True)
class _Turn:
    reply: str
    stats: GenerationStats
    fit: DialogFit
    stopped: bool


def _make_engine(model, tokenizer, fast: bool, endpoint) -> ReplyEngine:
    """The engine the session was given: a local model and tokenizer, or an endpoint."""
    if endpoint is not None:
        if model is not None or tokenizer is not None:
            raise TypeError(
                "Give ChatSession either a model and its tokenizer or an endpoint, not both."
            )
        if not isinstance(endpoint, Endpoint):
            raise TypeError(
                f"endpoint must be an Endpoint, not {type(endpoint).__name__}: e.g. "
                "endpoint=Endpoint('http://127.0.0.1:8000/v1', 'tiny')."
            )
        if fast:
            raise TypeError("fast=True is a local model's decode path; an endpoint has its own.")
        return endpoint
    return LocalModel(model, tokenizer, fast)


class ChatSession:
    """A conversation with Llama 2: history, a system prompt re-sent every turn, streamed replies.

    `ChatSession(model, tokenizer)` replies with a model in this process;
    `ChatSession(endpoint=Endpoint(url, model_name, api_key=None))` with an OpenAI-compatible
    server. Bad arguments are refused at once with a TypeError or ValueError saying what to fix.

    History changes only when a turn completes: an exception (an `EndpointError` for a server
    that is down, refuses, times out or breaks off) or a KeyboardInterrupt during a reply leaves
    it exactly as before. `stop()` (thread-safe, for a Stop button) ends the reply being written
    early: the partial reply is kept as the answer and `last_stopped` is True, so you can read it
    and `regenerate()` for a whole one. A reply stopped before any text arrived is not recorded.

    One operation at a time (see `state`): while a reply is being written (say, in the chat
    app's thread), a second `send`, `regenerate`, `undo`, `clear`, `import_json`, an assignment
    to `history` or a model switch is refused with a `SessionBusyError` (a RuntimeError) that
    says so, rather than racing the reply and losing one of the two.
    """

    context_limit = renamed_attribute("context_limit", "context_window")

    @renamed_keywords(context_limit="context_window")
    def __init__(
        self,
        model=None,
        tokenizer=None,
        system_prompt: str | None = "",
        max_new_tokens: int = 256,
        temperature: float = 0.6,  # Meta's reference defaults
        top_p: float = 0.9,
        do_sample: bool = True,
        context_window: int | None = None,  # None: the engine's own (the model's config)
        generate_kwargs: dict | None = None,  # more for generate(), e.g. {"top_k": 20}
        history: Sequence[Message] = (),
        last_stats: GenerationStats | None = None,
        last_fit: DialogFit | None = None,
        last_stopped: bool = False,
        fast: bool = False,  # opt-in greedy fast path of a local model (fast_decode)
        *,
        endpoint: Endpoint | None = None,
    ):
        self._lock = threading.Lock()
        self._state = SessionState.IDLE
        self._stop_event: threading.Event | None = None
        self._engine: ReplyEngine | None = _make_engine(model, tokenizer, fast, endpoint)
        self.system_prompt = "" if system_prompt is None else system_prompt
        self.max_new_tokens, self.context_window = max_new_tokens, context_window
        self.temperature, self.top_p, self.do_sample = temperature, top_p, do_sample
        self.generate_kwargs = {} if generate_kwargs is None else generate_kwargs
        self.last_stats, self.last_fit, self.last_stopped = last_stats, last_fit, last_stopped
        _check_text(self._system_text(), "The system prompt")
        _check_history(history)
        self._check_settings()
        self._history: list[Message] = [dict(m) for m in history]

    def _check_settings(self) -> None:
        """Raise TypeError/ValueError, saying what to fix, unless the settings can be used."""
        _check_count(self.max_new_tokens, "max_new_tokens", 1, "a few hundred is typical")
        self._check_window()
        _check_sampling(self.do_sample, self.temperature, self.top_p)
        self._need_engine().check_options(self.generate_kwargs, self.do_sample)

    def _check_window(self) -> None:
        """Raise TypeError/ValueError unless context_window is None or within the model's own."""
        if self.context_window is None:
            return
        _check_count(self.context_window, "context_window", 2, "None uses the model's own")
        own = self._need_engine().context_window()
        if self.context_window > own:
            raise ValueError(
                f"context_window={self.context_window:,} is more than the model's own {own:,} "
                "positions: past them a Llama model produces garbage, so the budget would let "
                f"a long chat fail instead of trimming it. Give at most {own}, or None for the "
                "model's own."
            )

    def __repr__(self) -> str:
        engine = self._engine.describe() if self._engine is not None else "no model"
        return (
            f"ChatSession({engine}, state={self._state.value!r}, "
            f"{len(self._history) // 2} exchange(s), max_new_tokens={self.max_new_tokens})"
        )

    # -- the engine ----------------------------------------------------------------------------
    @property
    def engine(self) -> ReplyEngine | None:
        """What writes the replies: a `LocalModel`, an `Endpoint`, or None after `unload()`."""
        return self._engine

    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint the replies come from (None for a local model)."""
        return self._engine if isinstance(self._engine, Endpoint) else None

    @property
    def model(self):
        """The local model (None with an endpoint, or after `unload()`)."""
        return self._engine.model if isinstance(self._engine, LocalModel) else None

    @model.setter
    def model(self, value) -> None:
        if value is None:
            self.unload()
        else:
            self.use_model(value, self.tokenizer)

    @property
    def tokenizer(self):
        """Llama 2's tokenizer the prompt is counted with (the model's own, when local)."""
        return getattr(self._engine, "tokenizer", None)

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self.use_model(self.model, value)

    @property
    def fast(self) -> bool:
        """Whether a local model writes greedy replies on the opt-in fast path."""
        return bool(getattr(self._engine, "fast", False))

    @fast.setter
    def fast(self, value: bool) -> None:
        if isinstance(self._engine, LocalModel):
            self._engine.fast = bool(value)
        elif value:
            raise TypeError("fast=True is a local model's decode path; an endpoint has its own.")

    @property
    def _decoder(self):
        """The fast path's decoder, once a fast reply has run (None before)."""
        return getattr(self._engine, "decoder", None)

    def use_model(self, model, tokenizer, fast: bool | None = None) -> None:
        """Reply with this local model from now on (the history stays); refused mid-reply."""
        engine = LocalModel(model, tokenizer, self.fast if fast is None else fast)
        self._switch(engine, "switch the model")

    def use_endpoint(self, endpoint: Endpoint) -> None:
        """Reply through this endpoint from now on (the history stays); refused mid-reply."""
        self._switch(_make_engine(None, None, False, endpoint), "switch to an endpoint")

    def unload(self) -> None:
        """Let go of the engine (frees a local model no one else holds); refused mid-reply."""
        self._switch(None, "unload the model")

    def _switch(self, engine: ReplyEngine | None, doing: str) -> None:
        with self._lock:
            self._refuse_unless_idle(doing)
            self._engine = engine

    def _need_engine(self) -> ReplyEngine:
        engine = self._engine
        if engine is None:
            raise RuntimeError(
                "This chat session has no model now (unload() was called, or the chat app is "
                "loading another). Give it one: session.use_model(model, tokenizer) or "
                "session.use_endpoint(Endpoint(url, model_name))."
            )
        return engine

    # -- what the model sees -------------------------------------------------------------------
    @property
    def limit(self) -> int:
        """Deprecated: the window the budget uses (`context_window`, else the model's own)."""
        warn_renamed("limit", "context_window")
        return self.window_in_use()

    def window_in_use(self) -> int:
        """Return the context window the budget uses: `context_window`, else the engine's own."""
        return self.context_window or self._need_engine().context_window()

    def build_messages(self, text: str, history: Sequence[Message] | None = None) -> list[Message]:
        """Return system prompt + history + text: the messages of the next prompt."""
        history = self._history if history is None else history
        system = self._system_text()
        # A blank system prompt is left out: an empty <<SYS>> block makes Llama 2 act oddly.
        head = [{"role": "system", "content": system}] if system.strip() else []
        return head + [dict(m) for m in history] + [{"role": "user", "content": text}]

    def plan_prompt(self, text: str, history: Sequence[Message] | None = None) -> DialogFit:
        """Return the prompt that send(text) would use, fitted to the context window."""
        check_message(text)
        _check_text(self._system_text(), "The system prompt")
        self._check_window()
        messages = self.build_messages(text, history)
        engine = self._need_engine()
        _check_for_engine(engine, messages)
        return fit_dialog(engine.tokenizer, messages, self.window_in_use(), self.max_new_tokens)

    def _system_text(self) -> str:
        """The system prompt as text ("" for None); TypeError for anything else."""
        if self.system_prompt is None:
            return ""
        if not isinstance(self.system_prompt, str):
            raise TypeError(
                f"The system prompt must be a string (or None for none), not "
                f"{type(self.system_prompt).__name__}."
            )
        return self.system_prompt

    @property
    def context_used(self) -> int:
        """Tokens the last turn occupied: its prompt plus its reply (0 before any turn)."""
        if self.last_stats is None:
            return 0
        return self.last_stats.prompt_tokens + self.last_stats.new_tokens

    # -- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> SessionState:
        """`idle`, `replying` or `stopping`."""
        return self._state

    @property
    def busy(self) -> bool:
        """True while a reply is being written (or stopped)."""
        return self._state is not SessionState.IDLE

    @property
    def history(self) -> HistoryView:
        """A copy of the finished exchanges, user and assistant in turn (system prompt apart).

        The copy refuses changes in place (TypeError): change the conversation with `undo()`,
        `clear()`, `import_json()` or by assigning `history`, which the session checks.
        """
        return HistoryView(dict(m) for m in self._history)

    @history.setter
    def history(self, messages: Sequence[Message]) -> None:
        # Refused mid-reply rather than silently undone when the reply is recorded.
        _check_history(messages)
        with self._lock:
            self._refuse_unless_idle("replace the history")
            self._history = [dict(m) for m in messages]

    def _refuse_unless_idle(self, doing: str) -> None:
        """Raise SessionBusyError saying why, unless idle (call with the lock held)."""
        if self._state is SessionState.REPLYING:
            why = "is still generating a reply (in another thread or the chat app)"
            advice = "Wait for it to finish, or call stop(), then try again."
        elif self._state is SessionState.STOPPING:
            why = "is still generating a reply that is being stopped"
            advice = "Try again in a moment."
        else:
            return
        raise SessionBusyError(
            f"Cannot {doing} now: this chat session {why}. {advice} Nothing was changed."
        )

    def stop(self) -> bool:
        """End the reply being written early (safe from any thread; for a Stop button).

        Returns True if a reply was stopped. With no reply being written it does nothing and
        returns False: the next reply is not cut short.
        """
        with self._lock:
            if self._state is not SessionState.REPLYING:
                return False
            self._state = SessionState.STOPPING
            self._stop_event.set()
            return True

    @contextmanager
    def _replying(self, doing: str, stop_event) -> Iterator[tuple[ReplyEngine, threading.Event]]:
        """Hold the session for one reply: (engine, stop event); refused unless idle."""
        with self._lock:
            self._refuse_unless_idle(doing)
            engine = self._need_engine()
            event = stop_event if stop_event is not None else threading.Event()
            self._state, self._stop_event = SessionState.REPLYING, event
        try:
            yield engine, event
        finally:
            with self._lock:
                self._state, self._stop_event = SessionState.IDLE, None

    # -- turns ---------------------------------------------------------------------------------
    def _generate(self, engine: ReplyEngine, history, text, on_text, criteria, stop) -> _Turn:
        """One reply to text after history, written by engine; the settings are read now."""
        _check_sampling(self.do_sample, self.temperature, self.top_p)
        engine.check_options(self.generate_kwargs, self.do_sample)
        if criteria and not isinstance(engine, LocalModel):
            raise TypeError(
                "stopping_criteria are transformers objects: they work with a local model only. "
                "Use stop() to end an endpoint's reply."
            )
        fit = self.plan_prompt(text, history)
        request = ReplyRequest(
            fit,
            bool(self.do_sample),
            self.temperature,
            self.top_p,
            dict(self.generate_kwargs),
            tuple(criteria or ()),
        )
        reply = engine.reply(request, on_text, stop)
        return _Turn(reply.text.strip(), reply.stats, fit, stopped=reply.stopped)

    def _record(self, turn: _Turn, history: list[Message], text: str) -> str:
        with self._lock:
            self.last_stats, self.last_fit, self.last_stopped = turn.stats, turn.fit, turn.stopped
            if turn.stopped and not turn.reply:
                return ""
            self._history = history + [
                {"role": "user", "content": text},
                {"role": "assistant", "content": turn.reply},
            ]
            return turn.reply

    def send(
        self,
        text: str,
        on_text: Callable[[str], None] | None = None,
        stopping_criteria: Sequence[StoppingCriteria] | None = None,
        stop_event: threading.Event | None = None,
    ) -> str:
        """Stream Llama 2's reply to text (pieces go to on_text); return it and record the turn.

        `stop_event`: your own Event that ends this reply when set, even before it begins (the
        chat app's Stop); by default a fresh one, which `stop()` sets.
        """
        _check_reply_arguments(self._engine, on_text, stopping_criteria, stop_event)
        with self._replying("send a message", stop_event) as (engine, stop):
            history = list(self._history)
            turn = self._generate(engine, history, text, on_text, stopping_criteria, stop)
            return self._record(turn, history, text)

    def regenerate(
        self,
        on_text: Callable[[str], None] | None = None,
        stopping_criteria: Sequence[StoppingCriteria] | None = None,
        stop_event: threading.Event | None = None,
    ) -> str:
        """Replace the last reply with a fresh one and return it (a failure keeps the old one)."""
        _check_reply_arguments(self._engine, on_text, stopping_criteria, stop_event)
        with self._replying("regenerate", stop_event) as (engine, stop):
            if not self._history:
                raise ValueError("There is no reply to regenerate yet; send a message first.")
            history, text = list(self._history[:-2]), self._history[-2]["content"]
            turn = self._generate(engine, history, text, on_text, stopping_criteria, stop)
            return self._record(turn, history, text)

    def undo(self) -> str | None:
        """Remove the last user/assistant exchange; return that user message (None if none)."""
        with self._lock:
            self._refuse_unless_idle("undo")
            if not self._history:
                return None
            text = self._history[-2]["content"]
            self._history = self._history[:-2]
            return text

    def clear(self) -> None:
        """Forget the conversation (the system prompt and the settings stay)."""
        with self._lock:
            self._refuse_unless_idle("clear the conversation")
            self._history = []
            self.last_stats, self.last_fit, self.last_stopped = None, None, False

    # -- saving --------------------------------------------------------------------------------
    def export_json(self) -> str:
        """Return the system prompt and the history as a JSON string (UTF-8 text, always)."""
        system = self._system_text()
        _check_text(system, "The system prompt")  # a lone surrogate cannot be written to a file
        data = {"system_prompt": system, "messages": self._history}
        return json.dumps(data, ensure_ascii=False, indent=1)

    def import_json(self, text: str) -> None:
        """Replace system prompt and history with an export; ValueError (nothing changed) if bad."""
        system, messages = _read_export(text, self.system_prompt)
        with self._lock:
            self._refuse_unless_idle("import a chat")
            self.system_prompt = system
            self._history = [{"role": m["role"], "content": m["content"]} for m in messages]
            self.last_stats, self.last_fit, self.last_stopped = None, None, False


def _read_export(text, system_now) -> tuple[str, list[Message]]:
    """(system prompt, messages) of an export_json text; TypeError/ValueError saying what is off."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise TypeError(
            f"import_json takes the JSON text export_json() produced, not {type(text).__name__}."
        )
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if _looks_like_a_path(text):
            raise ValueError(
                f"import_json takes the JSON text, and {text.strip()!r} looks like a file's "
                "path. Read the file first: session.import_json(open(path, encoding='utf-8')"
                ".read())."
            ) from None
        raise ValueError(
            f"That is not a chat export (not valid JSON: {err}). Paste the text that "
            "export_json() produced."
        ) from None
    except RecursionError:
        raise ValueError(
            "That is not a chat export: its JSON is nested thousands of levels deep. Paste "
            "the text that export_json() produced."
        ) from None
    if isinstance(data, list):  # a bare message list, optionally with a system message
        data = {"messages": data}
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ValueError(
            'A chat export is an object {"system_prompt": "...", "messages": [...]}; '
            "this JSON has no 'messages' list."
        )
    messages = list(data["messages"])
    system = data.get("system_prompt", system_now)
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        system = messages.pop(0).get("content")
    if not isinstance(system, str):
        raise ValueError("The export's system prompt must be a string.")
    _check_text(system, "The export's system prompt")
    _check_history(messages)
    return system, messages


def _looks_like_a_path(text) -> bool:
    """True for one short line that names a file (as `/tmp/chat.json`), not JSON text."""
    if not isinstance(text, str) or "\n" in text.strip() or len(text) > 4096:
        return False
    name = text.strip()
    return (
        bool(name)
        and name[0] not in "{["
        and (os.path.exists(os.path.expanduser(name)) or name.lower().endswith(".json"))
    )


def _check_history(messages) -> None:
    """Raise ValueError unless messages are finished user/assistant pairs."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(
            f"This chat history cannot be used: it must be a list of messages, not "
            f"{type(messages).__name__}."
        )
    try:
        # A history is a dialog that is still waiting for its next user message.
        check_dialog(list(messages) + [{"role": "user", "content": "next"}])
    except ValueError as err:
        raise ValueError(
            f"This chat history cannot be used: {err} A history holds finished exchanges (a "
            "user message, then the assistant's reply); leave out a message without its reply "
            "and send it with send()."
        ) from None


def _check_for_engine(engine: ReplyEngine, messages: Sequence[Message]) -> None:
    """Raise ValueError if the engine cannot send one of the messages (its own rules)."""
    last = len(messages) - 1
    for i, message in enumerate(messages):
        if message["role"] == "system":
            what = "The system prompt"
        elif i == last:
            what = "Your message"
        else:
            what = f"Message {i} of the history ({message['role']})"
        engine.check_text(message["content"], what)


def _check_reply_arguments(engine, on_text, stopping_criteria, stop_event) -> None:
    """Raise TypeError, saying what to pass, unless send()'s arguments can be used."""
    if on_text is not None and not callable(on_text):
        raise TypeError(
            f"on_text must be a function that takes each piece of the reply (such as print, "
            f"or a list's append), or None, not {type(on_text).__name__} {on_text!r}."
        )
    if stop_event is not None and not (
        callable(getattr(stop_event, "is_set", None)) and callable(getattr(stop_event, "set", None))
    ):
        raise TypeError(
            f"stop_event must be a threading.Event (set it to end the reply), or None, not "
            f"{type(stop_event).__name__} {stop_event!r}."
        )
    if not stopping_criteria:
        return
    if not isinstance(engine, LocalModel | None):
        raise TypeError(
            "stopping_criteria are transformers objects: they work with a local model only. "
            "Use stop() to end an endpoint's reply."
        )
    if isinstance(stopping_criteria, str) or not isinstance(stopping_criteria, Sequence):
        raise TypeError(
            "stopping_criteria must be a list of transformers StoppingCriteria, not "
            f"{type(stopping_criteria).__name__}."
        )
    for i, criterion in enumerate(stopping_criteria):
        if not callable(criterion):
            raise TypeError(
                f"stopping_criteria[{i}] must be a transformers StoppingCriteria (called with "
                f"the ids and scores at each step), not {type(criterion).__name__} {criterion!r}."
            )


def _check_sampling(do_sample: bool, temperature, top_p) -> None:
    """Raise TypeError/ValueError, saying the usual values, if sampling settings cannot work."""
    if not isinstance(do_sample, bool):
        raise TypeError(
            f"do_sample must be True (sample) or False (greedy: the same reply every time), not "
            f"{type(do_sample).__name__} {do_sample!r}."
        )
    if not do_sample:
        return
    for name, value, ok, usual in (
        ("temperature", temperature, lambda v: v > 0, "above 0; 0.6 is Meta's default"),
        ("top_p", top_p, lambda v: 0 < v <= 1, "above 0 and at most 1; 0.9 is Meta's default"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, not {type(value).__name__}.")
        if not math.isfinite(value) or not ok(value):
            raise ValueError(
                f"{name}={value} cannot be used for sampling: it must be {usual}. For the same "
                "reply every time, set do_sample=False instead."
            )
