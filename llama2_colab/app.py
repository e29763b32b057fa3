"""A chat app inside the notebook (ipywidgets): what the a16z Llama 2 chatbot offers, run locally.

The app is a thin face on `ChatSession`: every button calls a handler method you can also call
yourself, generation runs on a background thread (so Stop works while the notebook is idle), and
an error never touches the history: it is shown in the app and your message goes back in the box.

    app = ChatApp(session, facts, model_name="meta-llama/Llama-2-7b-chat-hf")
    app            # shows the app in a notebook cell
    app.message.value = "Hello"; app.send_button.click(); app.wait()   # the same, headless
"""

from __future__ import annotations

import gc
import html
import re
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

from .chat import ChatSession, encode_dialog, read_context_limit
from .models import load_with_plan, oom_as_advice
from .plan import make_plan
from .runtime import RuntimeFacts

__all__ = ["CHAT_MODELS", "ChatApp", "describe_models"]

# What the model dropdown offers: the three Llama 2 chat models and the offline tiny one.
CHAT_MODELS = {
    "meta-llama/Llama-2-7b-chat-hf": "Llama 2 7B chat",
    "meta-llama/Llama-2-13b-chat-hf": "Llama 2 13B chat",
    "meta-llama/Llama-2-70b-chat-hf": "Llama 2 70B chat",
    "tiny": "tiny Llama 2 (offline, random weights)",
}
DEFAULT_SYSTEM_PROMPT = "You are a helpful, respectful and honest assistant. Answer concisely."


def describe_models(facts: RuntimeFacts) -> dict[str, tuple[str, object]]:
    """Return {model id: (dropdown label saying whether it fits this runtime, its LoadPlan)}."""
    out: dict[str, tuple[str, object]] = {}
    for name, title in CHAT_MODELS.items():
        plan = make_plan(name, facts)
        if plan.fits:
            room = f"{plan.max_context_tokens:,} tokens of context"
            label = f"{title}: fits ({plan.format_label}, {room})"
        else:
            label = f"{title}: does not fit this runtime"
        out[name] = (label, plan)
    return out


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


_CSS = (
    "<style>.l2c-chat{font-family:sans-serif;max-height:420px;overflow-y:auto;padding:4px}"
    ".l2c-msg{white-space:pre-wrap;margin:4px 0;padding:6px 10px;border-radius:8px}"
    ".l2c-user{background:#e8f0fe}.l2c-bot{background:#f1f3f4}"
    ".l2c-note{color:#666;font-size:90%}.l2c-err{color:#b00020}</style>"
)


class ChatApp:
    """The chat app: conversation, message box, Send/Stop/Regenerate/Undo/Clear, settings."""

    def __init__(
        self,
        session: ChatSession,
        facts: RuntimeFacts,
        model_name: str,
        loader: Callable[[object], tuple] | None = None,
        models: dict[str, tuple[str, object]] | None = None,
    ):
        import ipywidgets as w

        self.session = session
        self.facts = facts
        self.model_name = model_name
        self.loader = loader or load_with_plan
        self.models = dict(models if models is not None else describe_models(facts))
        if model_name not in self.models:  # e.g. Code Llama, or a local directory
            self.models[model_name] = (f"{model_name} (loaded)", None)
        self._worker: threading.Thread | None = None
        # While streaming: (user text, reply so far, whether it replaces the last exchange).
        self._pending: tuple[str, str, bool] | None = None
        self._last_render = 0.0
        # The reply length you chose: the context may cap the slider below it for a while
        # (a long system prompt), and it comes back when the cap lifts.
        self._wanted_max_new_tokens = int(session.max_new_tokens)
        self._capping = False

        wide = w.Layout(width="100%")
        self.model = w.Dropdown(
            options=[(label, name) for name, (label, _) in self.models.items()],
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
        # Labels get the room they need (the default cuts "Max new tokens" to "Max new ..."),
        # and each slider fits a third of Colab's ~850 px output; the row wraps when narrower.
        label = {"description_width": "initial"}
        slider = w.Layout(width="270px", margin="2px 12px 2px 0")
        self.temperature = w.FloatSlider(
            value=session.temperature,
            min=0.01,
            max=5.0,
            step=0.01,
            description="Temperature",
            style=label,
            layout=slider,
        )
        self.top_p = w.FloatSlider(
            value=session.top_p,
            min=0.01,
            max=1.0,
            step=0.01,
            description="Top p",
            style=label,
            layout=slider,
        )
        self.max_new_tokens = w.IntSlider(
            value=session.max_new_tokens,
            min=1,
            max=max(4096, session.max_new_tokens),
            step=1,
            description="Max new tokens",
            style=label,
            layout=slider,
        )
        self.conversation = w.HTML(layout=wide)
        self.message = w.Textarea(
            placeholder="Type a message, then Send", layout=w.Layout(width="100%", height="60px")
        )
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = w.Button(description="Stop", button_style="warning", icon="stop")
        self.regenerate_button = w.Button(description="Regenerate", icon="refresh")
        self.undo_button = w.Button(description="Undo", icon="undo")
        self.clear_button = w.Button(description="Clear", button_style="danger", icon="trash")
        self.status = w.HTML()

        self.send_button.on_click(lambda _: self.on_send())
        self.stop_button.on_click(lambda _: self.on_stop())
        self.regenerate_button.on_click(lambda _: self.on_regenerate())
        self.undo_button.on_click(lambda _: self.on_undo())
        self.clear_button.on_click(lambda _: self.on_clear())
        self.load_button.on_click(lambda _: self.on_load())
        self.system.observe(lambda _: self._bound_max_new_tokens(), names="value")
        self.max_new_tokens.observe(self._on_max_new_tokens, names="value")

        settings = w.VBox(
            [
                w.HBox([self.model, self.load_button]),
                self.system,
                w.HBox(
                    [self.temperature, self.top_p, self.max_new_tokens],
                    layout=w.Layout(flex_flow="row wrap"),
                ),
            ]
        )
        buttons = w.HBox(
            [
                self.send_button,
                self.stop_button,
                self.regenerate_button,
                self.undo_button,
                self.clear_button,
            ]
        )
        self.widget = w.VBox([settings, self.conversation, self.message, buttons, self.status])
        self._apply_limit()
        self._set_busy(False)
        self._render(force=True)

    # -- display --------------------------------------------------------------------------------
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    @property
    def busy(self) -> bool:
        """True while a reply is being generated or a model is loading."""
        return self._worker is not None and self._worker.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the running reply or load finishes (for scripts and tests)."""
        if self._worker is not None:
            self._worker.join(timeout)

    def conversation_text(self) -> str:
        """Return the conversation as plain text, one `You:`/`Llama 2:` line per message."""
        lines = []
        for msg in self._messages():
            who = "You" if msg["role"] == "user" else "Llama 2"
            lines.append(f"{who}: {msg['content']}")
        return "\n".join(lines)

    def refresh(self) -> None:
        """Show the session as it is now (after you changed its history or prompt in code)."""
        self.system.value = self.session.system_prompt
        self._render(force=True)

    def import_json(self, text: str) -> None:
        """Load a conversation saved with `session.export_json()` and show it at once."""
        if self.busy:
            raise RuntimeError("Still answering; press Stop first, then load the conversation.")
        self.session.import_json(text)  # ValueError, with nothing changed, if it is not one
        self.refresh()
        n = len(self.session.history) // 2
        self._show(f"Loaded a conversation of {n} exchange{'s' if n != 1 else ''}.")

    def status_text(self) -> str:
        """Return the status line under the app (speed, context used, or an error) as text."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.status.value))

    def _messages(self) -> list[dict]:
        msgs = [dict(m) for m in self.session.history]
        if self._pending is not None:
            user, reply, replaces = self._pending
            msgs = msgs[:-2] if replaces else msgs
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return msgs

    def _render(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_render < 0.05:  # at most 20 updates a second
            return
        self._last_render = now
        parts = []
        for msg in self._messages():
            cls, who = ("l2c-user", "You") if msg["role"] == "user" else ("l2c-bot", "Llama 2")
            text = html.escape(msg["content"]) or "&hellip;"
            parts.append(f'<div class="l2c-msg {cls}"><b>{who}:</b> {text}</div>')
        if not parts:
            parts.append('<div class="l2c-note">No messages yet.</div>')
        self.conversation.value = _CSS + '<div class="l2c-chat">' + "".join(parts) + "</div>"

    def _show(self, text: str, error: bool = False) -> None:
        cls = "l2c-err" if error else "l2c-note"
        self.status.value = f'<div class="{cls}">{html.escape(text)}</div>'

    def _set_busy(self, busy: bool) -> None:
        for button in (
            self.send_button,
            self.regenerate_button,
            self.undo_button,
            self.clear_button,
            self.load_button,
        ):
            button.disabled = busy
        self.stop_button.disabled = not busy
        self.model.disabled = busy

    # -- the context budget -------------------------------------------------------------------
    def _apply_limit(self) -> None:
        """Use the smaller of the model's context and what the plan leaves room for."""
        if self.session.model is None:
            return
        limit = read_context_limit(self.session.model)
        plan = self.models.get(self.model_name, (None, None))[1]
        room = getattr(plan, "max_context_tokens", 0) if plan is not None else 0
        self.session.context_limit = min(limit, room) if room else limit
        self._bound_max_new_tokens()

    def _bound_max_new_tokens(self) -> None:
        """Let max new tokens go as far as the context leaves after the system prompt."""
        if self.session.model is None:
            return
        messages = [{"role": "user", "content": "?"}]
        if self.system.value.strip():
            messages.insert(0, {"role": "system", "content": self.system.value})
        try:
            floor = len(encode_dialog(self.session.tokenizer, messages))
        except ValueError:
            return  # a bad system prompt is reported when you send
        top = max(self.session.limit - floor, 1)
        self._capping = True  # the slider moves because of the cap, not because you moved it
        try:
            if top > self.max_new_tokens.max:
                self.max_new_tokens.max = top
            self.max_new_tokens.value = min(self._wanted_max_new_tokens, top)
            self.max_new_tokens.max = top
        finally:
            self._capping = False

    def _on_max_new_tokens(self, change) -> None:
        if not self._capping:
            self._wanted_max_new_tokens = int(change["new"])

    # -- handlers -------------------------------------------------------------------------------
    def _sync_settings(self) -> None:
        self.session.system_prompt = self.system.value
        self.session.temperature = float(self.temperature.value)
        self.session.top_p = float(self.top_p.value)
        self.session.max_new_tokens = int(self.max_new_tokens.value)

    def _start(self, target: Callable[[], None]) -> None:
        self._set_busy(True)
        self._worker = threading.Thread(target=target, daemon=True)
        self._worker.start()

    def on_send(self) -> None:
        """Send the message box's text; the reply streams into the conversation."""
        if self.busy:
            return self._show("Still answering; press Stop first.", error=True)
        if self.session.model is None:
            return self._show("No model is loaded: pick one and press Load model.", error=True)
        text = self.message.value
        self._sync_settings()
        try:
            fit = self.session.plan_prompt(text)  # bad input is refused before any work
        except Exception as err:  # noqa: BLE001 - every refusal is shown, never raised
            return self._show(_message_of(err), error=True)
        self.message.value = ""
        self._pending = (text, "", False)
        self._render(force=True)
        self._show("Generating..." + (f" ({fit.describe()})" if fit.dropped else ""))
        self._start(lambda: self._run(lambda cb: self.session.send(text, on_text=cb), text))

    def on_regenerate(self) -> None:
        """Replace the last reply with a new one (new settings apply)."""
        if self.busy:
            return self._show("Still answering; press Stop first.", error=True)
        if not self.session.history:
            return self._show("Nothing to regenerate yet: send a message first.", error=True)
        if self.session.model is None:
            return self._show("No model is loaded: pick one and press Load model.", error=True)
        self._sync_settings()
        self._pending = (self.session.history[-2]["content"], "", True)
        self._render(force=True)
        self._show("Generating a new reply...")
        self._start(lambda: self._run(lambda cb: self.session.regenerate(on_text=cb), None))

    def _run(self, call: Callable[[Callable[[str], None]], str], text: str | None) -> None:
        def on_text(piece: str) -> None:
            user, reply, replaces = self._pending
            self._pending = (user, reply + piece, replaces)
            self._render()

        plan = self.models.get(self.model_name, (None, None))[1]
        try:
            # A CUDA out-of-memory error becomes the plan's advice (shorter chat, restart...).
            with oom_as_advice(plan, "generating") if plan is not None else nullcontext():
                reply = call(on_text)
        except BaseException as err:  # noqa: BLE001 - shown in the app; history is untouched
            self._pending = None
            if text is not None and not self.message.value:
                self.message.value = text  # give the user their message back
            self._show(f"Error, nothing was lost: {_message_of(err)}", error=True)
        else:
            self._pending = None
            if text is not None and not reply and not self.message.value:
                self.message.value = text  # stopped before any text: nothing was recorded
            self._show(self._summary())
        finally:
            self._pending = None
            self._render(force=True)
            self._set_busy(False)

    def _summary(self) -> str:
        s, fit = self.session.last_stats, self.session.last_fit
        if s is None or fit is None:
            return ""
        speed = f" at {s.tokens_per_s:.1f} tokens/s" if s.new_tokens > 1 else ""
        parts = [
            f"{s.new_tokens} token{'s' if s.new_tokens != 1 else ''}{speed}",
            f"first token after {s.ttft_s:.2f} s",
            f"context used {self.session.context_used:,} of {fit.context_limit:,}",
        ]
        if fit.dropped:
            parts.append(f"left out the {fit.dropped_turns} oldest exchange(s) to fit")
        if self.session.last_stopped:
            parts.append("stopped early (the partial reply is kept; Regenerate for a new one)")
        return " · ".join(parts)

    def on_stop(self) -> None:
        """End the reply being generated; what has arrived so far is kept."""
        self.session.stop()

    def on_undo(self) -> None:
        """Remove the last exchange and put its message back in the box to edit."""
        if self.busy:
            return
        text = self.session.undo()
        if text is not None and not self.message.value:
            self.message.value = text
        self._render(force=True)
        self._show("Removed the last exchange." if text is not None else "Nothing to undo.")

    def on_clear(self) -> None:
        """Start a new conversation (the system prompt and settings stay)."""
        if self.busy:
            return
        self.session.clear()
        self._render(force=True)
        self._show("Cleared.")

    def on_load(self) -> None:
        """Load the model picked in the dropdown (in the background); the history stays."""
        if self.busy:
            return
        name = self.model.value
        label, plan = self.models[name]
        if name == self.model_name and self.session.model is not None:
            return self._show(f"{label.split(':')[0]} is already loaded.")
        if plan is None:
            try:
                plan = make_plan(name, self.facts)
            except Exception as err:  # noqa: BLE001 - shown in the app
                return self._show(f"Cannot plan {name}: {_message_of(err)}", error=True)
        if not plan.fits:
            return self._show(
                f"{CHAT_MODELS.get(name, name)} does not fit: {plan.advice}", error=True
            )
        self._show(f"Loading {name}... (a real model downloads once, then loads in minutes)")
        self._start(lambda: self._load(name, plan))

    def _load(self, name: str, plan) -> None:
        try:
            # Free the old model first: a T4 cannot hold two Llama 2 models at once.
            self.session.model = None
            _free_memory()
            model, tokenizer = self.loader(plan)
        except BaseException as err:  # noqa: BLE001 - shown in the app; history is untouched
            self._show(
                f"Could not load {name}: {_message_of(err)} Pick a model and press Load model.",
                error=True,
            )
        else:
            self.session.model, self.session.tokenizer = model, tokenizer
            self.model_name = name
            self.models[name] = (self.models[name][0], plan)
            self._apply_limit()
            self._show(f"Loaded {name}; the conversation continues with it.")
        finally:
            self._set_busy(False)


def _message_of(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted."
    what, todo = getattr(err, "what", None), getattr(err, "todo", None)
    if what:
        return f"{what} {todo or ''}".strip()
    return str(err) or type(err).__name__
