"""A chat template that gives `encode_dialog`'s ids when a server renders and tokenizes it.

Serving engines (`transformers serve`, vLLM) build a prompt by rendering the tokenizer's chat
template to a string and tokenizing that string with `add_special_tokens=False`. Llama 2's Hub
template, tokenized so by transformers 5's Llama tokenizer (`legacy=False`), loses the word-start
`▁` of every `[INST]` that follows a `<s>`: `▁[INST]` (518) becomes `[INST]` (29961), n turns
differ from Meta's reference in n tokens (notebook 05 shows it).

`reference_chat_template(tokenizer)` returns a template whose rendered string that tokenizer
turns into exactly `encode_dialog`'s ids. It is Meta's format with one change where the tokenizer
needs it (a space after each `<s>`, which the tokenizer turns into the missing `▁`), and it is
chosen by checking, with that tokenizer itself, a set of probe dialogs: a system prompt, several
turns, an empty answer, leading and inner spaces, newlines, accents, CJK and an emoji.

It refuses what `encode_dialog` refuses (the turn tags `[INST]`, `[/INST]`, `<<SYS>>`,
`<</SYS>>` in a message, a system message that is not first, roles out of turn, a dialog ending
on the assistant), with the same wording. It also refuses a message that contains one of the
tokenizer's special tokens (`<s>`, `</s>`, `<unk>`): `encode_dialog` keeps a typed `</s>` as
five characters, but a server tokenizes the rendered string, where a typed `</s>` would become a
real end-of-sequence token and let a user end their turn and forge the next one. A rendered
string cannot say "these characters are text", so the template refuses instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from .chat import SPECIAL_TAGS, Message, encode_dialog
from .errors import UserFacingError

__all__ = [
    "PROBE_DIALOGS",
    "check_served_text",
    "reference_chat_template",
    "served_special_tokens",
    "template_ids",
    "template_matches",
]

# Dialogs on which a template must give encode_dialog's ids, token for token.
PROBE_DIALOGS: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": "Hello"},),
    (
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "  What is a T4?  "},
    ),
    (
        {"role": "system", "content": " leading space in the system prompt"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": " an answer with  two spaces "},
        {"role": "user", "content": "Café, naïve, 日本語, 🙂 and a tab\there"},
    ),
    (
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "\n\nnewlines first\nthen text"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "(brackets) [not a tag] 1+1=2"},
    ),
)

# Meta's format: the system prompt folded into the first user message, each finished exchange
# `<s>[INST] user [/INST] answer </s>`, the prompt ending on the open turn `<s>[INST] user [/INST]`.
# BOS_GAP is "" or " " (what this tokenizer needs after `<s>`); TAGS and SPECIALS are Jinja lists.
_TEMPLATE = """\
{%- set tags = TAGS -%}
{%- set specials = SPECIALS -%}
{%- if messages | length == 0 -%}
{{- raise_exception('The dialog is empty. Send a list of messages such as [{"role": "user", \
"content": "Hello"}].') -}}
{%- endif -%}
{%- for message in messages -%}
{%- set i = loop.index0 -%}
{%- set what = 'Message ' ~ i ~ ' (' ~ message['role'] ~ ')' -%}
{%- if message['role'] not in ['system', 'user', 'assistant'] -%}
{{- raise_exception('Message ' ~ i ~ ' has the role ' ~ message['role'] ~ '; Llama 2 chat \
knows only system, user and assistant.') -}}
{%- endif -%}
{%- if message['content'] is not string -%}
{{- raise_exception(what ~ ' has no text content; the content must be a string.') -}}
{%- endif -%}
{%- for tag in tags -%}
{%- if tag in message['content'] -%}
{{- raise_exception(what ~ ' contains ' ~ tag ~ '. The tags [INST], [/INST], <<SYS>>, \
<</SYS>> mark turns in the Llama 2 prompt, so a message must not contain them (Meta\\'s \
reference refuses them too). Remove or reword that text.') -}}
{%- endif -%}
{%- endfor -%}
{%- for token in specials -%}
{%- if token in message['content'] -%}
{{- raise_exception(what ~ ' contains ' ~ token ~ ', a special token of the tokenizer. The \
server tokenizes the rendered prompt, so it would become a real token (a typed </s> would end \
the turn and let a message forge the next one). Remove it.') -}}
{%- endif -%}
{%- endfor -%}
{%- if message['role'] == 'system' and i != 0 -%}
{{- raise_exception('Message ' ~ i ~ ' is a system message; a system message may only come \
first.') -}}
{%- endif -%}
{%- endfor -%}
{%- if messages[0]['role'] == 'system' -%}
{%- set system = messages[0]['content'] -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set system = none -%}
{%- set turns = messages -%}
{%- endif -%}
{%- if turns | length == 0 -%}
{{- raise_exception('The dialog has a system message but no user message; add a user message \
after it.') -}}
{%- endif -%}
{%- for message in turns -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('Message ' ~ (messages | length - turns | length + loop.index0) ~ ' is from \
the ' ~ message['role'] ~ ' but roles must alternate user, assistant, user, ... starting with \
the user.') -}}
{%- endif -%}
{%- if loop.first and system is not none -%}
{%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] -%}
{%- else -%}
{%- set content = message['content'] -%}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{{- bos_token + BOS_GAP + '[INST] ' + content.strip() + ' [/INST]' -}}
{%- else -%}
{{- ' ' + content.strip() + ' ' + eos_token -}}
{%- endif -%}
{%- endfor -%}
{%- if turns[-1]['role'] != 'user' -%}
{{- raise_exception('The last message is from the assistant; the dialog must end with a user \
message for Llama 2 to answer.') -}}
{%- endif -%}
"""


def _jinja_list(items: Sequence[str]) -> str:
    """A Jinja list literal of plain strings."""
    quoted = (item.replace("\\", "\\\\").replace("'", "\\'") for item in items)
    return "[" + ", ".join(f"'{item}'" for item in quoted) + "]"


def _template(bos_gap: str, specials: Sequence[str]) -> str:
    """The template text with this tokenizer's gap after `<s>` and its special tokens."""
    return (
        _TEMPLATE.replace("BOS_GAP", repr(bos_gap))
        .replace("TAGS", _jinja_list(SPECIAL_TAGS))
        .replace("SPECIALS", _jinja_list(specials))
    )


def template_ids(tokenizer, messages: Sequence[Message], template: str | None = None) -> list[int]:
    """Return the ids a server sends for messages: the template rendered, then tokenized."""
    out = tokenizer.apply_chat_template(
        list(messages),
        chat_template=template,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    return list(out["input_ids"])


def template_matches(tokenizer, template: str | None = None) -> bool:
    """Return True if template (None: the tokenizer's own) gives encode_dialog's ids on probes."""
    return all(
        template_ids(tokenizer, dialog, template) == encode_dialog(tokenizer, dialog)
        for dialog in PROBE_DIALOGS
    )


def served_special_tokens(tokenizer) -> list[str]:
    """Return the special tokens the reference template refuses in a message (`<s>`, `</s>`...)."""
    return sorted(
        {t for t in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) if t}
        | set(getattr(tokenizer, "all_special_tokens", ()))
    )


def check_served_text(text: str, what: str, specials: Sequence[str]) -> None:
    """Raise ValueError, in the template's words, if text holds one of the special tokens.

    What a server's reference template would refuse (with a bare HTTP 500 from `transformers
    serve`), refused before the request is sent, with the reason.
    """
    for token in specials:
        if token in text:
            raise ValueError(
                f"{what} contains {token}, a special token of the tokenizer. The server "
                "tokenizes the rendered prompt, so it would become a real token (a typed </s> "
                "would end the turn and let a message forge the next one). Remove it, or write "
                "it with spaces (< / s >)."
            )


def reference_chat_template(tokenizer) -> str:
    """Return a chat template that this tokenizer turns into encode_dialog's ids, token for token.

    Raises UserFacingError if neither form of Meta's format does (not a Llama 2 tokenizer).
    """
    specials = served_special_tokens(tokenizer)
    for bos_gap in (" ", ""):
        template = _template(bos_gap, specials)
        if template_matches(tokenizer, template):
            return template
    raise UserFacingError(
        f"No chat template makes {type(tokenizer).__name__} give the ids of Meta's reference "
        "Llama 2 format, so a server could not send the prompts Llama 2 chat was trained on.",
        "Serve a Llama 2 chat model with its own tokenizer (a Hub Llama 2 repo, 'tiny', or a "
        "folder from `python -m llama2_colab convert`).",
    )
