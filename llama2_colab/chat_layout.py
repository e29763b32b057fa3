"""How the chat app looks: its widgets, their arrangement, the conversation as HTML, its states.

`ChatLayout` holds the ipywidgets and decides nothing; `ChatApp` (in `app`) drives it. The
app's states (`AppState`) are here because each one has a look: idle (everything but Stop
works), replying (only Stop), stopping and loading (nothing, until they end).
"""

from __future__ import annotations

import html
from enum import StrEnum

from .chat import Message
from .errors import redact_secrets
from .session import ChatSession

__all__ = ["AppState", "ChatLayout", "conversation_html"]


class AppState(StrEnum):
    """What the app is doing: only `idle` starts a new operation."""

    IDLE = "idle"
    REPLYING = "replying"  # a reply is streaming in
    STOPPING = "stopping"  # Stop was pressed; the reply is ending
    LOADING = "loading"  # a model is loading


_CSS = (
    "<style>.l2c-chat{font-family:sans-serif;max-height:420px;overflow-y:auto;padding:4px}"
    ".l2c-msg{white-space:pre-wrap;margin:4px 0;padding:6px 10px;border-radius:8px}"
    ".l2c-user{background:#e8f0fe}.l2c-bot{background:#f1f3f4}"
    ".l2c-note{color:#666;font-size:90%}.l2c-err{color:#b00020}</style>"
)


def conversation_html(messages: list[Message], speaker: str = "Llama 2") -> str:
    """Return the conversation as the app shows it: one styled block per message.

    `speaker` names the replies: what really answers (the app passes "tiny Llama 2 (toy)" for
    the offline tiny model, so it is never taken for Llama 2).
    """
    parts = []
    for msg in messages:
        user = msg["role"] == "user"
        cls, who = ("l2c-user", "You") if user else ("l2c-bot", html.escape(speaker))
        text = html.escape(redact_secrets(msg["content"])) or "&hellip;"  # tokens masked
        parts.append(f'<div class="l2c-msg {cls}"><b>{who}:</b> {text}</div>')
    if not parts:
        parts.append('<div class="l2c-note">No messages yet.</div>')
    return _CSS + '<div class="l2c-chat">' + "".join(parts) + "</div>"


class ChatLayout:
    """The app's widgets and how they are arranged; it holds no conversation and decides nothing."""

    def __init__(self, session: ChatSession, options: list[tuple[str, str]], model_name: str):
        import ipywidgets as w

        self.model = w.Dropdown(
            options=options,
            value=model_name,
            description="Model",
            layout=w.Layout(width="auto", flex="1 1 auto"),  # what the button leaves
        )
        self.load_button = w.Button(
            description="Load model", icon="download", layout=w.Layout(flex="0 0 auto")
        )
        self.system = w.Textarea(
            value=session.system_prompt,
            description="System",
            placeholder="A system prompt, re-sent with every turn (empty: none)",
            layout=w.Layout(width="100%", height="70px"),
        )
        self._add_sliders(w, session)
        self.conversation = w.HTML(layout=w.Layout(width="100%"))
        self.message = w.Textarea(
            placeholder="Type a message, then Send", layout=w.Layout(width="100%", height="60px")
        )
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = w.Button(description="Stop", button_style="warning", icon="stop")
        self.regenerate_button = w.Button(description="Regenerate", icon="refresh")
        self.undo_button = w.Button(description="Undo", icon="undo")
        self.clear_button = w.Button(description="Clear", button_style="danger", icon="trash")
        self.status = w.HTML()
        self.widget = self._arrange(w)

    def _add_sliders(self, w, session: ChatSession) -> None:
        # Labels get the room they need (the default cuts "Max new tokens" to "Max new ..."),
        # and each slider fits a third of Colab's ~850 px output; the row wraps when narrower.
        look = {
            "style": {"description_width": "initial"},
            "layout": w.Layout(width="270px", margin="2px 12px 2px 0"),
        }
        self.temperature = w.FloatSlider(
            value=session.temperature,
            min=0.01,
            max=5.0,
            step=0.01,
            description="Temperature",
            **look,
        )
        self.top_p = w.FloatSlider(
            value=session.top_p, min=0.01, max=1.0, step=0.01, description="Top p", **look
        )
        self.max_new_tokens = w.IntSlider(
            value=session.max_new_tokens,
            min=1,
            max=max(4096, session.max_new_tokens),
            step=1,
            description="Max new tokens",
            **look,
        )

    def _arrange(self, w):
        sliders = w.HBox(
            [self.temperature, self.top_p, self.max_new_tokens],
            layout=w.Layout(flex_flow="row wrap"),
        )
        settings = w.VBox([w.HBox([self.model, self.load_button]), self.system, sliders])
        buttons = w.HBox(
            [
                self.send_button,
                self.stop_button,
                self.regenerate_button,
                self.undo_button,
                self.clear_button,
            ]
        )
        return w.VBox([settings, self.conversation, self.message, buttons, self.status])

    def show(self, text: str, error: bool = False) -> None:
        """Put a note (or an error, in red) on the status line."""
        cls = "l2c-err" if error else "l2c-note"
        self.status.value = f'<div class="{cls}">{html.escape(text)}</div>'

    def set_busy(self, busy: bool) -> None:
        """While busy only Stop works; otherwise everything but Stop."""
        self.show_state(AppState.REPLYING if busy else AppState.IDLE)

    def show_state(self, state: AppState) -> None:
        """Idle: everything but Stop works; replying: only Stop; stopping or loading: nothing."""
        for widget in (
            self.send_button,
            self.regenerate_button,
            self.undo_button,
            self.clear_button,
            self.load_button,
            self.model,
        ):
            widget.disabled = state is not AppState.IDLE
        self.stop_button.disabled = state is not AppState.REPLYING
