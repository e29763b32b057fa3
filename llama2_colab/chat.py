"""Chatting with Llama 2 correctly: reference-exact dialog tokens, a context budget, a session.

Three layers, each usable on its own:

- `encode_dialog(tokenizer, messages)` turns a list of `{"role", "content"}` messages into the
  token ids Meta's reference `chat_completion` (github.com/meta-llama/llama,
  `llama/generation.py`) builds: the system prompt folded into the first user turn, every
  finished user/assistant pair as `BOS [INST] user [/INST] answer EOS`, the newest user turn as
  `BOS [INST] user [/INST]`, each piece encoded on its own and literally (a user who types `</s>`
  gets the characters, not an end-of-sequence token).
- `fit_dialog(...)` makes the prompt plus `max_new_tokens` fit the model's context window by
  leaving out the oldest whole user/assistant pairs; the system prompt and the newest message
  always stay, and the result says what was left out.
- `ChatSession` keeps the history and the system prompt, streams each reply through
  `generation.stream_generate`, and changes its history only when a turn completes.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal, TypedDict

from transformers import StoppingCriteria, StoppingCriteriaList

from .errors import UserFacingError
from .fast_decode import FastDecoder, fast_stream_generate
from .generation import GenerationStats, stream_generate
from .renames import renamed_attribute, renamed_function, renamed_keywords, warn_renamed

__all__ = [
    "B_INST",
    "E_INST",
    "B_SYS",
    "E_SYS",
    "SPECIAL_TAGS",
    "ChatSession",
    "DialogFit",
    "Message",
    "StopOnEvent",
    "check_dialog",
    "check_message",
    "encode_dialog",
    "fit_dialog",
    "read_context_window",
    "render_dialog",
]

# The constants of Meta's reference implementation (llama/generation.py), verbatim.
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
ROLES = ("system", "user", "assistant")


class Message(TypedDict):
    """One message of a dialog, as Meta's reference code types it."""

    role: Literal["system", "user", "assistant"]
    content: str


def check_dialog(messages: Sequence[Message]) -> None:
    """Raise ValueError, saying what to fix, unless messages form a dialog Llama 2 can answer."""
    example = '[{"role": "user", "content": "Hello"}]'
    if not isinstance(messages, (list, tuple)):
        raise ValueError(
            f"The dialog must be a list of messages, not {type(messages).__name__}. Pass a list "
            f"such as {example}."
        )
    if not messages:
        raise ValueError(f"The dialog is empty. Pass a list of messages such as {example}.")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(
                f"Message {i} is {msg!r}; every message must be a dict with a 'role' and a "
                "'content'."
            )
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise ValueError(
                f"Message {i} has the role {role!r}; Llama 2 chat knows only 'system', 'user' "
                "and 'assistant'."
            )
        if not isinstance(content, str):
            raise ValueError(
                f"Message {i} ({role}) has content of type {type(content).__name__}; "
                "the content must be a string."
            )
        _check_text(content, f"Message {i} ({role})")
        if role == "system" and i != 0:
            raise ValueError(
                f"Message {i} is a system message; a system message may only come first. "
                "Move it to the start (or set it as the session's system prompt)."
            )
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not turns:
        raise ValueError(
            "The dialog has a system message but no user message; add a user message after it."
        )
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            n = i + (len(messages) - len(turns))
            raise ValueError(
                f"Message {n} is from the {msg['role']} but the {expected} should speak here: "
                "after the optional system message, roles must alternate user, assistant, "
                "user, ... starting with the user."
            )
    if turns[-1]["role"] != "user":
        raise ValueError(
            "The last message is from the assistant; the dialog must end with a user message "
            "for Llama 2 to answer. Append the user's next message."
        )


def check_message(text: str) -> None:
    """Raise TypeError/ValueError, saying what to fix, unless text can be sent as a message."""
    if not isinstance(text, str):
        raise TypeError(f"The message must be a string, not {type(text).__name__}.")
    if not text.strip():
        raise ValueError("The message is empty; type something to send.")
    _check_text(text, "Your message")


def _check_text(text: str, what: str) -> None:
    """Raise ValueError unless text is valid Unicode text without the Llama 2 turn tags."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} contains {text[err.start]!r} at position {err.start}, half of a character "
            "pair (a lone surrogate, as from a damaged copy-paste or file), which is not text a "
            "tokenizer can read. Remove that character, or retype the text around it."
        ) from None
    _check_tags(text, what)


def _check_tags(text: str, what: str) -> None:
    """Raise ValueError if text contains one of the tags that delimit Llama 2 turns."""
    for tag in SPECIAL_TAGS:
        if tag in text:
            raise ValueError(
                f"{what} contains {tag!r}. The tags {', '.join(SPECIAL_TAGS)} mark turns in the "
                "Llama 2 prompt, so a message must not contain them (Meta's reference refuses "
                "them too). Remove or reword that text."
            )


def _fold_dialog(messages: Sequence[Message]) -> tuple[list[tuple[str, str]], str]:
    """Return (finished (user, assistant) pairs, newest user text) with the system folded in."""
    check_dialog(messages)
    msgs = [dict(m) for m in messages]
    if msgs[0]["role"] == "system":
        # As the reference does: the system text goes, unstripped, in front of the first user
        # message; strip() is later applied to this folded text as a whole.
        first = B_SYS + msgs[0]["content"] + E_SYS + msgs[1]["content"]
        msgs = [{"role": "user", "content": first}] + msgs[2:]
    users = [m["content"] for m in msgs[::2]]
    answers = [m["content"] for m in msgs[1::2]]
    return list(zip(users[:-1], answers, strict=True)), users[-1]


def _pair_text(user: str, answer: str) -> str:
    return f"{B_INST} {user.strip()} {E_INST} {answer.strip()} "


def _last_text(user: str) -> str:
    return f"{B_INST} {user.strip()} {E_INST}"


def _encode_segment(tokenizer, text: str) -> list[int]:
    """Encode text as plain characters: no BOS/EOS added, and `<s>` or `</s>` typed literally."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if tokenizer.bos_token_id in ids or tokenizer.eos_token_id in ids:
        raise RuntimeError(
            f"{type(tokenizer).__name__} turned text into BOS/EOS tokens even with "
            "split_special_tokens=True; use a Llama 2 tokenizer from transformers >= 4.40."
        )
    return ids


def encode_dialog(tokenizer, messages: Sequence[Message]) -> list[int]:
    """Return the prompt token ids for messages, exactly as Meta's reference chat_completion."""
    pairs, last = _fold_dialog(messages)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids: list[int] = []
    for user, answer in pairs:
        ids += [bos] + _encode_segment(tokenizer, _pair_text(user, answer)) + [eos]
    ids += [bos] + _encode_segment(tokenizer, _last_text(last))
    return ids


def render_dialog(messages: Sequence[Message], bos: str = "<s>", eos: str = "</s>") -> str:
    """Return the prompt encode_dialog builds, as text with `<s>`/`</s>` where BOS/EOS go."""
    pairs, last = _fold_dialog(messages)
    text = "".join(f"{bos}{_pair_text(u, a)}{eos}" for u, a in pairs)
    return text + f"{bos}{_last_text(last)}"


def read_context_window(model_or_config) -> int:
    """Return the model's context window in tokens (max_position_embeddings from its config)."""
    config = getattr(model_or_config, "config", model_or_config)
    window = getattr(config, "max_position_embeddings", None)
    if not isinstance(window, int) or window <= 0:
        raise ValueError(
            f"{type(config).__name__} has no max_position_embeddings; pass context_window= "
            "explicitly."
        )
    return window


read_context_limit = renamed_function("read_context_limit", read_context_window)


@dataclass(frozen=True)
class DialogFit:
    """A prompt that fits the context window, and what was left out to make it fit."""

    input_ids: list[int]
    messages: list[Message]  # the messages actually encoded (system, kept turns, newest user)
    dropped: list[Message]  # user/assistant messages left out, oldest first
    context_window: int
    max_new_tokens: int

    context_limit = renamed_attribute("context_limit", "context_window")

    @property
    def prompt_tokens(self) -> int:
        """How many tokens the prompt takes."""
        return len(self.input_ids)

    @property
    def dropped_turns(self) -> int:
        """How many user/assistant pairs were left out."""
        return len(self.dropped) // 2

    def describe(self) -> str:
        """Return one line for the user: the budget, and what was left out if anything."""
        line = (
            f"prompt {self.prompt_tokens} + up to {self.max_new_tokens} new tokens "
            f"of {self.context_window}"
        )
        if self.dropped:
            first = self.dropped[0]["content"].strip().replace("\n", " ")
            first = first if len(first) <= 40 else first[:37] + "..."
            line += (
                f'; left out the {self.dropped_turns} oldest exchange(s) to fit (from "{first}")'
            )
        return line


@renamed_keywords(context_limit="context_window")
def fit_dialog(
    tokenizer, messages: Sequence[Message], context_window: int, max_new_tokens: int
) -> DialogFit:
    """Return the prompt for messages that leaves room for max_new_tokens, oldest turns dropped."""
    _check_count(context_window, "context_window", 2, "Llama 2 has 4096")
    _check_count(max_new_tokens, "max_new_tokens", 1, "a few hundred is typical")
    if max_new_tokens >= context_window:
        raise UserFacingError(
            f"max_new_tokens={max_new_tokens} does not fit a {context_window}-token context.",
            f"Choose a value between 1 and {context_window - 1}; a few hundred is typical.",
        )
    check_dialog(messages)
    system = messages[0] if messages[0]["role"] == "system" else None
    head = [system] if system else []
    turns = [m for m in messages if m["role"] != "system"]  # user, assistant, ..., user
    pairs = list(zip(turns[:-1:2], turns[1::2], strict=True))
    budget = context_window - max_new_tokens

    def seg(text: str) -> int:
        return len(_encode_segment(tokenizer, text))

    def fold(user: Message) -> str:
        return B_SYS + system["content"] + E_SYS + user["content"] if system else user["content"]

    # A pair costs the same wherever it sits, except the first one kept, which carries the
    # folded system prompt. Walk back from the newest pair while the pairs fit on their own,
    # then move the start forward until they fit with the system prompt folded in as well.
    newest = 1 + seg(_last_text(turns[-1]["content"]))
    costs: dict[int, int] = {}
    total, start = newest, len(pairs)
    while start > 0:
        user, answer = pairs[start - 1]
        cost = 2 + seg(_pair_text(user["content"], answer["content"]))
        if total + cost > budget:
            break
        costs[start - 1], total, start = cost, total + cost, start - 1
    for first in range(start, len(pairs) + 1):
        if first == len(pairs):
            need = 1 + seg(_last_text(fold(turns[-1])))
        else:
            user, answer = pairs[first]
            total -= costs[first]
            need = total + 2 + seg(_pair_text(fold(user), answer["content"]))
        if need > budget:
            continue
        kept = head + turns[2 * first :]
        ids = encode_dialog(tokenizer, kept)
        if len(ids) <= budget:  # always true when segments add up, as they do for Llama 2
            return DialogFit(ids, kept, turns[: 2 * first], context_window, max_new_tokens)
    need = len(encode_dialog(tokenizer, ([system] if system else []) + [turns[-1]]))
    yours = f"Your message{' with the system prompt' if system else ''}"
    if need >= context_window:
        raise UserFacingError(
            f"{yours} takes {need} tokens: more than the model's whole {context_window}-token "
            "context, before any reply.",
            f"Shorten the message (or the system prompt) to well under {context_window} tokens.",
        )
    raise UserFacingError(
        f"{yours} takes {need} tokens, and with {max_new_tokens} new tokens that exceeds the "
        f"model's {context_window}-token context.",
        "Shorten the message (or the system prompt), or lower max new tokens "
        f"to at most {context_window - need}.",
    )


def _check_count(value, name: str, least: int, hint: str) -> None:
    """Raise TypeError/ValueError unless value is a whole number of tokens >= least."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be a whole number of tokens, not {type(value).__name__} ({value!r}); "
            f"{hint}."
        )
    if value < least:
        raise ValueError(f"{name}={value} is too small: it must be at least {least}; {hint}.")


class StopOnEvent(StoppingCriteria):
    """A StoppingCriteria that ends generation once a threading.Event is set (the Stop button)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        """Return True for every sequence once the event is set."""
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


def _as_tensor(ids: list[int]):
    """The prompt ids as the 1 x N tensor generation takes."""
    import torch

    return torch.tensor([ids])


@dataclass(frozen=True)
class _Turn:
    reply: str
    stats: GenerationStats
    fit: DialogFit
    stopped: bool


@dataclass(eq=False)
class ChatSession:
    """A conversation with Llama 2: history, a system prompt re-sent every turn, streamed replies.

    History changes only when a turn completes: an exception or a KeyboardInterrupt during
    generation leaves it exactly as before. `stop()` (thread-safe, for a Stop button) ends the
    reply being generated early: the partial reply is kept as the answer and `last_stopped` is
    True, so you can read it and `regenerate()` if you want a whole one. A reply stopped before
    its first token is not recorded at all, and `last_stats.new_tokens` is 0.

    One turn at a time: while a reply is being generated (say, in the chat app's thread), a
    second `send`, `regenerate`, `undo`, `clear` or `import_json` is refused with a RuntimeError
    that says so, rather than racing the first and losing one of the two turns.
    """

    model: object = field(repr=False)
    tokenizer: object = field(repr=False)
    system_prompt: str = ""
    max_new_tokens: int = 256
    temperature: float = 0.6  # Meta's reference defaults
    top_p: float = 0.9
    do_sample: bool = True
    context_window: int | None = None  # None: the model's own (read_context_window)
    generate_kwargs: dict = field(default_factory=dict)  # more for generate(), e.g. top_k
    history: list[Message] = field(default_factory=list)
    last_stats: GenerationStats | None = None
    last_fit: DialogFit | None = None
    last_stopped: bool = False
    # Opt-in, not measured on a GPU yet: greedy replies (do_sample=False, no extra generate
    # kwargs or stopping criteria) through fast_decode's static cache and CUDA graph.
    fast: bool = False
    _decoder: FastDecoder | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop_at: float = field(default=0.0, init=False, repr=False)  # perf_counter() of the Stop
    _guard: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _busy: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.system_prompt is None:  # "no system prompt", as a caller would mean it
            self.system_prompt = ""
        _check_history(self.history, self.system_prompt)
        self.history = [dict(m) for m in self.history]

    # -- what the model sees -------------------------------------------------------------------
    context_limit = renamed_attribute("context_limit", "context_window")

    @property
    def limit(self) -> int:
        """Deprecated: the window the budget uses (`context_window`, else the model's own)."""
        warn_renamed("limit", "context_window")
        return self.window_in_use()

    def window_in_use(self) -> int:
        """Return the context window the budget uses: `context_window`, else the model's own."""
        return self.context_window or read_context_window(self.model)

    def build_messages(self, text: str, history: Sequence[Message] | None = None) -> list[Message]:
        """Return system prompt + history + text: the messages of the next prompt."""
        history = self.history if history is None else history
        system = self._system_text()
        # A blank system prompt is left out: an empty <<SYS>> block makes Llama 2 act oddly.
        head = [{"role": "system", "content": system}] if system.strip() else []
        return head + [dict(m) for m in history] + [{"role": "user", "content": text}]

    def plan_prompt(self, text: str, history: Sequence[Message] | None = None) -> DialogFit:
        """Return the prompt that send(text) would use, fitted to the context window."""
        check_message(text)
        _check_text(self._system_text(), "The system prompt")
        if self.context_window is not None:
            _check_count(self.context_window, "context_window", 2, "None uses the model's own")
        messages = self.build_messages(text, history)
        return fit_dialog(self.tokenizer, messages, self.window_in_use(), self.max_new_tokens)

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

    # -- turns ---------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a reply is being generated."""
        return self._busy

    def stop(self) -> None:
        """End the reply being generated early (safe from any thread; for a Stop button).

        The request is consumed by the reply it ends. With no reply being generated it does
        nothing: the next reply is not cut short.
        """
        with self._guard:
            if self._busy and not self._stop.is_set():
                self._stop_at = time.perf_counter()
                self._stop.set()

    @contextmanager
    def _one_turn(self, doing: str) -> Iterator[None]:
        """Hold the session for one change of its history; refuse if a reply is in progress."""
        with self._guard:
            if self._busy:
                raise RuntimeError(
                    f"Cannot {doing} now: this chat session is still generating a reply (in "
                    "another thread or the chat app). Wait for it to finish, or call stop(), "
                    "then try again. Nothing was changed."
                )
            self._busy = True
            self._stop.clear()
        try:
            yield
        finally:
            with self._guard:
                self._busy = False
                self._stop.clear()

    def _generate(self, history, text, on_text, stopping_criteria) -> _Turn:
        import torch

        try:
            _check_sampling(self.do_sample, self.temperature, self.top_p)
            _check_generate_kwargs(self.generate_kwargs)
            fit = self.plan_prompt(text, history)
            extra = dict(self.generate_kwargs)
            criteria = [StopOnEvent(self._stop), *(stopping_criteria or [])]
            criteria += list(extra.pop("stopping_criteria", None) or [])
            began = time.perf_counter()
            if self.fast and not (self.do_sample or extra or stopping_criteria):
                return self._unless_stopped_first(self._generate_fast(fit, on_text), began)
            if self.do_sample:
                sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            else:
                sampling = {"do_sample": False, "temperature": None, "top_p": None}
            reply, _, stats = stream_generate(
                self.model,
                self.tokenizer,
                torch.tensor([fit.input_ids]),
                on_text=on_text,
                max_new_tokens=fit.max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList(criteria),
                **(sampling | extra),
            )
            turn = _Turn(reply.strip(), stats, fit, stopped=self._stop.is_set())
            return self._unless_stopped_first(turn, began)
        finally:
            self._stop.clear()

    def _unless_stopped_first(self, turn: _Turn, began: float) -> _Turn:
        """Return the turn, or an empty one if Stop came before its first token did.

        generate() asks its stopping criteria only after each token, so a Stop pressed before
        generation or while the prompt is read still lets one token through: made after Stop,
        it is not kept, and nothing is recorded.
        """
        if turn.stopped and self._stop_at < began + turn.stats.ttft_s:
            none = replace(turn.stats, new_tokens=0, ttft_s=0.0, total_s=0.0)
            return _Turn("", none, turn.fit, stopped=True)
        return turn

    def _generate_fast(self, fit: DialogFit, on_text) -> _Turn:
        """One greedy reply on the fast path, on a decoder kept while the reply fits its cache."""
        needed = len(fit.input_ids) + fit.max_new_tokens
        if self._decoder is None or self._decoder.max_cache_len < needed:
            # Round up, so that a growing dialog re-records its CUDA graph only now and then.
            size = min(-(-needed // 256) * 256, max(needed, self.window_in_use()))
            self._decoder = FastDecoder(self.model, size)
        reply, _, stats = fast_stream_generate(
            self.model,
            self.tokenizer,
            _as_tensor(fit.input_ids),
            on_text=on_text,
            max_new_tokens=fit.max_new_tokens,
            decoder=self._decoder,
            should_stop=self._stop.is_set,
        )
        return _Turn(reply.strip(), stats, fit, stopped=self._stop.is_set())

    def _record(self, turn: _Turn, history: list[Message], text: str) -> str:
        self.last_stats, self.last_fit, self.last_stopped = turn.stats, turn.fit, turn.stopped
        if turn.stopped and not turn.reply:
            return ""
        self.history = history + [
            {"role": "user", "content": text},
            {"role": "assistant", "content": turn.reply},
        ]
        return turn.reply

    def send(
        self,
        text: str,
        on_text: Callable[[str], None] | None = None,
        stopping_criteria: Sequence[StoppingCriteria] | None = None,
    ) -> str:
        """Stream Llama 2's reply to text (pieces go to on_text); return it and record the turn."""
        with self._one_turn("send a message"):
            history = list(self.history)
            turn = self._generate(history, text, on_text, stopping_criteria)
            return self._record(turn, history, text)

    def regenerate(
        self,
        on_text: Callable[[str], None] | None = None,
        stopping_criteria: Sequence[StoppingCriteria] | None = None,
    ) -> str:
        """Replace the last reply with a fresh one and return it (a failure keeps the old one)."""
        with self._one_turn("regenerate"):
            if not self.history:
                raise ValueError("There is no reply to regenerate yet; send a message first.")
            history, text = list(self.history[:-2]), self.history[-2]["content"]
            turn = self._generate(history, text, on_text, stopping_criteria)
            return self._record(turn, history, text)

    def undo(self) -> str | None:
        """Remove the last user/assistant exchange; return that user message (None if none)."""
        with self._one_turn("undo"):
            if not self.history:
                return None
            text = self.history[-2]["content"]
            self.history = self.history[:-2]
            return text

    def clear(self) -> None:
        """Forget the conversation (the system prompt and the settings stay)."""
        with self._one_turn("clear the conversation"):
            self.history = []
            self.last_stats, self.last_fit, self.last_stopped = None, None, False

    # -- saving --------------------------------------------------------------------------------
    def export_json(self) -> str:
        """Return the system prompt and the history as a JSON string."""
        data = {"system_prompt": self._system_text(), "messages": self.history}
        return json.dumps(data, ensure_ascii=False, indent=1)

    def import_json(self, text: str) -> None:
        """Replace system prompt and history with an export; ValueError (nothing changed) if bad."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(
                f"import_json takes the JSON text export_json() produced, not "
                f"{type(text).__name__}."
            )
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
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
        system = data.get("system_prompt", self.system_prompt)
        if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
            system = messages.pop(0).get("content")
        if not isinstance(system, str):
            raise ValueError("The export's system prompt must be a string.")
        _check_history(messages, system)
        with self._one_turn("import a chat"):
            self.system_prompt = system
            self.history = [{"role": m["role"], "content": m["content"]} for m in messages]
            self.last_stats, self.last_fit, self.last_stopped = None, None, False


# `ChatSession(..., context_limit=N)` (the old name) still works, with a DeprecationWarning.
ChatSession.__init__ = renamed_keywords(context_limit="context_window")(ChatSession.__init__)


def _check_history(messages: list, system: str = "") -> None:
    """Raise ValueError unless messages are finished user/assistant pairs (plus system text)."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(
            f"This chat history cannot be used: it must be a list of messages, not "
            f"{type(messages).__name__}."
        )
    try:
        if not isinstance(system, str):
            raise ValueError(f"the system prompt must be a string, not {type(system).__name__}")
        _check_text(system, "The system prompt")
        # A history is a dialog that is still waiting for its next user message.
        check_dialog(list(messages) + [{"role": "user", "content": "next"}])
    except ValueError as err:
        raise ValueError(f"This chat history cannot be used: {err}") from None


# generate() arguments the session sets itself, each with what to do instead.
_SESSION_SETS = {
    "max_new_tokens": "set session.max_new_tokens instead (the context budget caps it)",
    "max_length": "set session.max_new_tokens instead (the context budget caps it)",
    "eos_token_id": "the session stops at the tokenizer's end-of-sequence token",
    "input_ids": "the session builds the prompt from the history",
    "attention_mask": "the session builds the prompt from the history",
    "streamer": "pass on_text= to send() to receive the reply as it streams",
}


def _check_generate_kwargs(kwargs: dict) -> None:
    """Raise ValueError for a generate_kwargs key that the session sets itself."""
    if not isinstance(kwargs, dict):
        raise TypeError(f"generate_kwargs must be a dict, not {type(kwargs).__name__}.")
    for key in kwargs:
        if key in _SESSION_SETS:
            raise ValueError(
                f"generate_kwargs sets {key}, which ChatSession sets itself: {_SESSION_SETS[key]}."
            )


def _check_sampling(do_sample: bool, temperature, top_p) -> None:
    """Raise ValueError, saying the usual values, if sampling settings cannot work."""
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
