"""Chatting with Llama 2 correctly: reference-exact dialog tokens, and a context budget.

Two layers, each usable on its own:

- `encode_dialog(tokenizer, messages)` turns a list of `{"role", "content"}` messages into the
  token ids Meta's reference `chat_completion` (github.com/meta-llama/llama,
  `llama/generation.py`) builds: the system prompt folded into the first user turn, every
  finished user/assistant pair as `BOS [INST] user [/INST] answer EOS`, the newest user turn as
  `BOS [INST] user [/INST]`, each piece encoded on its own and literally (a user who types `</s>`
  gets the characters, not an end-of-sequence token).
- `fit_dialog(...)` makes the prompt plus `max_new_tokens` fit the model's context window by
  leaving out the oldest whole user/assistant pairs; the system prompt and the newest message
  always stay, and the result says what was left out.

`ChatSession`, which keeps a conversation and has each reply written by a local model or an
endpoint, lives in `session` (built on these layers); `from llama2_colab.chat import
ChatSession` still works.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from .errors import UserFacingError
from .renames import renamed_attribute, renamed_function, renamed_keywords

__all__ = [
    "B_INST",
    "E_INST",
    "B_SYS",
    "E_SYS",
    "SPECIAL_TAGS",
    "DialogFit",
    "Message",
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
    """Encode text as plain characters: no BOS/EOS added, and `<s>` or `</s>` typed literally.

    `verbose=False`: this counts, and the budget refuses what does not fit, so transformers'
    "sequence length is longer than the specified maximum" warning would only come first.
    """
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)[
        "input_ids"
    ]
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
    raise _message_too_long(tokenizer, head + [turns[-1]], context_window, max_new_tokens)


def _message_too_long(tokenizer, last: list[Message], window: int, new: int) -> UserFacingError:
    """The error for a last message (with the system prompt) that leaves no room for a reply."""
    need = len(encode_dialog(tokenizer, last))
    yours = f"Your message{' with the system prompt' if len(last) > 1 else ''}"
    if need >= window:
        return UserFacingError(
            f"{yours} takes {need} tokens: more than the model's whole {window}-token "
            "context, before any reply.",
            f"Shorten the message (or the system prompt) to well under {window} tokens.",
        )
    return UserFacingError(
        f"{yours} takes {need} tokens, and with {new} new tokens that exceeds the "
        f"model's {window}-token context.",
        f"Shorten the message (or the system prompt), or lower max new tokens to at most "
        f"{window - need}.",
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


# Moved to their own modules; `from llama2_colab.chat import ChatSession` still works.
_MOVED = {"ChatSession": "session", "StopOnEvent": "local_model"}


def __getattr__(name: str):
    """The session and the Stop criterion, from the modules they moved to (on first use)."""
    if name in _MOVED:
        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
