"""A chat app inside the notebook (ipywidgets): what the a16z Llama 2 chatbot offers, run locally.

Three parts: `ChatLayout` (in `chat_layout`) holds the widgets and how they are arranged;
`ChatApp`, here, is the controller that wires them to the `ChatSession` it drives, the third
part, which keeps the conversation (on a local model or an OpenAI-compatible endpoint). Every
button calls a handler method you can also call yourself, generation runs on a background
thread (so Stop works while the notebook is idle), and an error never touches the history: it
is shown in the app and your message goes back in the box.

The app is a small state machine behind one lock (`AppState`: idle, replying, stopping,
loading): one operation at a time, every refused action says why on the status line, and the
buttons and the model list always show what is really going on and what is really loaded (a
refused or failed model switch puts the list back).

    app = ChatApp(session, facts, model_name="meta-llama/Llama-2-7b-chat-hf")
    app            # shows the app in a notebook cell
    app.message.value = "Hello"; app.send_button.click(); app.wait()   # the same, headless
"""

from __future__ import annotations

import gc
import html
import math
import re
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

from .catalog import speaker_name
from .chat import Message, encode_dialog
from .chat_layout import AppState, ChatLayout, conversation_html
from .endpoint import Endpoint
from .errors import StreamRedactor, redact_secrets
from .models import load_with_plan, oom_as_advice
from .plan import LoadPlan, make_plan
from .runtime import RuntimeFacts
from .session import ChatSession

__all__ = [
    "CHAT_MODELS",
    "AppState",
    "ChatApp",
    "ChatLayout",
    "ModelOption",
    "conversation_html",
    "describe_models",
]

# What the model dropdown offers: the three Llama 2 chat models and the offline tiny one.
CHAT_MODELS = {
    "meta-llama/Llama-2-7b-chat-hf": "Llama 2 7B chat",
    "meta-llama/Llama-2-13b-chat-hf": "Llama 2 13B chat",
    "meta-llama/Llama-2-70b-chat-hf": "Llama 2 70B chat",
    "tiny": "tiny Llama 2 (offline toy, not Llama 2)",
}
DEFAULT_SYSTEM_PROMPT = "You are a helpful, respectful and honest assistant. Answer concisely."


class ModelOption(NamedTuple):
    """One entry of the model dropdown: its label (does it fit?) and the plan behind it."""

    label: str
    plan: LoadPlan | None  # None: not planned yet (a model you loaded yourself)


def describe_models(facts: RuntimeFacts) -> dict[str, ModelOption]:
    """Return {model id: (dropdown label saying whether it fits this runtime, its LoadPlan)}."""
    out: dict[str, ModelOption] = {}
    for name, title in CHAT_MODELS.items():
        plan = make_plan(name, facts)
        if plan.fits:
            room = f"{plan.context_window:,} tokens of context"
            label = f"{title}: fits ({plan.format_label}, {room})"
        else:
            label = f"{title}: does not fit"
        out[name] = ModelOption(label, plan)
    return out


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


class ChatApp:
    """The chat app's controller: it wires a `ChatLayout` to the `ChatSession` it drives.

    Every button calls a handler method you can also call yourself (`on_send`, `on_stop`, ...);
    the widgets are the layout's, reachable from the app too (`app.message` is
    `app.layout.message`). `state` says what the app is doing (an `AppState`).
    """

    def __init__(
        self,
        session: ChatSession,
        facts: RuntimeFacts,
        model_name: str | None = None,
        loader: Callable[[object], tuple] | None = None,
        models: dict[str, tuple[str, object]] | None = None,
    ):
        self.session = session
        self.facts = facts
        self.loader = loader or load_with_plan
        given = models if models is not None else describe_models(facts)
        self.models = {name: ModelOption(*option) for name, option in given.items()}
        self._endpoints: dict[str, Endpoint] = {}  # dropdown entries that are endpoints
        self.model_name = self._add_current(model_name)
        # One lock for the state, the widgets and the pending exchange; re-entrant because
        # changing a widget can run an observer that takes it again.
        self._lock = threading.RLock()
        self._state = AppState.IDLE
        self._stop_event: threading.Event | None = None
        self._loading: str | None = None  # the model being loaded
        self._worker: threading.Thread | None = None
        self._following = False  # showing a reply your code started on the session
        # While streaming: the exchange being written (see _Pending).
        self._pending: _Pending | None = None
        self._redactor = StreamRedactor()
        self._last_render = 0.0
        # The reply length you chose: the context may cap the slider below it for a while
        # (a long system prompt), and it comes back when the cap lifts.
        self._wanted_max_new_tokens = int(session.max_new_tokens)
        self._capping = False
        options = [(option.label, name) for name, option in self.models.items()]
        self.layout = ChatLayout(session, options, self.model_name)
        self._connect()
        self._apply_context_window()
        self.layout.show_state(AppState.IDLE)
        self._render(force=True)

    def _add_current(self, model_name: str | None) -> str:
        """The dropdown entry of what the session runs now, added if the list lacks it."""
        endpoint = self.session.endpoint
        if endpoint is not None:
            name = model_name or endpoint.describe()
            self._endpoints[name] = endpoint
            self.models.setdefault(name, ModelOption(endpoint.describe(), None))
            return name
        if not model_name:
            raise TypeError(
                "Name the model the session holds: ChatApp(session, facts, model_name=...)."
            )
        if model_name not in self.models:  # e.g. Code Llama, or a local directory
            self.models[model_name] = ModelOption(f"{model_name} (loaded)", None)
        return model_name

    def __getattr__(self, name: str):
        """The layout's widgets, as attributes of the app (`app.send_button`, `app.message`)."""
        if name != "layout" and "layout" in self.__dict__:
            return getattr(self.layout, name)
        raise AttributeError(name)

    def _connect(self) -> None:
        ui = self.layout
        ui.send_button.on_click(lambda _: self.on_send())
        ui.stop_button.on_click(lambda _: self.on_stop())
        ui.regenerate_button.on_click(lambda _: self.on_regenerate())
        ui.undo_button.on_click(lambda _: self.on_undo())
        ui.clear_button.on_click(lambda _: self.on_clear())
        ui.load_button.on_click(lambda _: self.on_load())
        ui.model.observe(self._on_pick, names="value")
        ui.system.observe(lambda _: self._bound_max_new_tokens(), names="value")
        ui.max_new_tokens.observe(self._on_max_new_tokens, names="value")
        ui.temperature.observe(self._on_sampling_slider, names="value")
        ui.top_p.observe(self._on_sampling_slider, names="value")

    # -- display --------------------------------------------------------------------------------
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.layout.widget)

    @property
    def state(self) -> AppState:
        """What the app is doing now: idle, replying, stopping or loading."""
        return self._state

    @property
    def busy(self) -> bool:
        """True while a reply is being generated or stopped, or a model is loading."""
        return self._state is not AppState.IDLE

    def wait(self, timeout: float | None = None) -> None:
        """Block until the running reply or load finishes (for scripts and tests)."""
        if self._worker is not None:
            self._worker.join(timeout)

    def conversation_text(self) -> str:
        """Return the conversation as plain text, one line per message, each named by its speaker.

        You write as "You"; the replies are named for what really answers (`speaker`): "Llama 2"
        for a real Llama 2, "tiny Llama 2 (toy)" for the offline tiny model.
        """
        lines = []
        for msg in self._messages():
            who = "You" if msg["role"] == "user" else self.speaker
            lines.append(f"{who}: {msg['content']}")
        return "\n".join(lines)

    @property
    def speaker(self) -> str:
        """What the replies come from, as the conversation names it (`catalog.speaker_name`)."""
        endpoint = self.session.endpoint
        return speaker_name(endpoint.model if endpoint is not None else self.model_name)

    def refresh(self) -> None:
        """Show the session as it is now (after you changed its history or prompt in code)."""
        with self._lock:
            self.layout.system.value = self.session.system_prompt
            self._render(force=True)

    def import_json(self, text: str) -> None:
        """Load a conversation saved with `session.export_json()` and show it at once."""
        with self._lock:
            refusal = self._refusal("load the conversation")
            if refusal:
                raise RuntimeError(refusal)
            self.session.import_json(text)  # ValueError, with nothing changed, if it is not one
            self.refresh()
            n = len(self.session.history) // 2
            self._show(f"Loaded a conversation of {n} exchange{'s' if n != 1 else ''}.")

    def status_text(self) -> str:
        """Return the status line under the app (speed, context used, or an error) as text."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.layout.status.value))

    def _messages(self) -> list[Message]:
        msgs: list[Message] = [
            Message(role=m["role"], content=m["content"]) for m in self.session.history
        ]
        if self._pending is not None:
            p = self._pending
            msgs = msgs[:-2] if p.replaces else msgs
            msgs += [
                Message(role="user", content=p.user),
                Message(role="assistant", content=p.reply),
            ]
        return msgs

    def _render(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_render < 0.05:  # at most 20 updates a second
            return
        self._last_render = now
        self.layout.conversation.value = conversation_html(self._messages(), self.speaker)

    def _show(self, text: str, error: bool = False) -> None:
        self.layout.show(text, error)

    # -- the context budget -------------------------------------------------------------------
    def _plan(self) -> LoadPlan | None:
        return self.models.get(self.model_name, ModelOption("", None)).plan

    def _apply_context_window(self) -> None:
        """Use the smaller of the model's context and what the plan leaves room for."""
        engine = self.session.engine
        if engine is None:
            return
        window = engine.context_window()
        plan = self._plan()
        room = plan.context_window if plan is not None else 0
        self.session.context_window = min(window, room) if room else window
        self._bound_max_new_tokens()

    def _bound_max_new_tokens(self) -> None:
        """Let max new tokens go as far as the context leaves after the system prompt."""
        if self.session.engine is None:
            return
        system = self.layout.system.value
        messages = [Message(role="user", content="?")]
        if system.strip():
            messages.insert(0, Message(role="system", content=system))
        try:
            floor = len(encode_dialog(self.session.tokenizer, messages))
        except ValueError:
            return  # a bad system prompt is reported when you send
        top = max(self.session.window_in_use() - floor, 1)
        slider = self.layout.max_new_tokens
        self._capping = True  # the slider moves because of the cap, not because you moved it
        try:
            if top > slider.max:
                slider.max = top
            slider.value = min(self._wanted_max_new_tokens, top)
            slider.max = top
        finally:
            self._capping = False

    def _on_max_new_tokens(self, change) -> None:
        if not self._capping:
            self._wanted_max_new_tokens = int(change["new"])

    def _on_sampling_slider(self, change) -> None:
        """A slider set to NaN or infinity (from code) goes back at once, and the app says why."""
        slider, value = change["owner"], change["new"]
        if isinstance(value, int | float) and math.isfinite(value):
            return
        slider.value = change["old"]
        self._show(
            f"{slider.description} must be a number from {slider.min:g} to {slider.max:g}, not "
            f"{value}; it stays {change['old']:g}.",
            error=True,
        )

    # -- the state machine ----------------------------------------------------------------------
    def _refusal(self, doing: str) -> str | None:
        """Why nothing new can start now, in the user's words (None: it can). Hold the lock."""
        if self._state is AppState.REPLYING:
            return f"Still answering; press Stop first, then {doing}."
        if self._state is AppState.STOPPING:
            return f"Stopping the reply; {doing} in a moment."
        if self._state is AppState.LOADING:
            return f"Loading {self._loading}; {doing} once it has loaded."
        if self.session.busy:
            self._follow_session()  # the buttons show it, and Stop works on it
            return f"The session is answering a call from your code; {doing} once it ends."
        return None

    def _follow_session(self) -> None:
        """Show a reply your code started on the session until it ends (with the lock held)."""
        if self._following:
            return
        self._following = True
        self.layout.show_state(AppState.REPLYING)  # only Stop works, as for the app's own reply
        threading.Thread(target=self._wait_for_session, daemon=True).start()

    def _wait_for_session(self) -> None:
        while self.session.busy:
            time.sleep(0.05)
        with self._lock:
            self._following = False
            if self._state is AppState.IDLE:  # the buttons show the app's own state again
                self.layout.show_state(AppState.IDLE)
                self._render(force=True)  # the reply your code got is in the history now

    def _enter(self, state: AppState) -> None:
        """Move to state (with the lock held) and show it on the buttons."""
        self._state = state
        self.layout.show_state(state)

    def _start(self, state: AppState, target: Callable[[], None]) -> None:
        """Enter state and run target on a background thread (with the lock held)."""
        self._enter(state)
        self._worker = threading.Thread(target=target, daemon=True)
        self._worker.start()

    def _shown_model(self) -> str | None:
        return self._loading if self._state is AppState.LOADING else self.model_name

    def _put_back_model(self) -> None:
        """Show the model that is really loaded (or being loaded) in the dropdown."""
        if self.layout.model.value != self._shown_model():
            self.layout.model.value = self._shown_model()

    def _on_pick(self, change) -> None:
        """A model picked while the app is busy goes back at once, and the app says why."""
        with self._lock:
            refusal = self._refusal("pick another model")
            if refusal and change["new"] != self._shown_model():
                self._put_back_model()
                self._show(refusal, error=True)

    # -- handlers -------------------------------------------------------------------------------
    def _sync_settings(self) -> None:
        ui = self.layout
        self.session.system_prompt = ui.system.value
        self.session.temperature = float(ui.temperature.value)
        self.session.top_p = float(ui.top_p.value)
        self.session.max_new_tokens = int(ui.max_new_tokens.value)

    def _reply_refusal(self, doing: str, regenerating: bool = False) -> str | None:
        """Why a reply cannot start now (None: it can); the same checks for Send and Regenerate."""
        refusal = self._refusal(doing)
        if refusal:
            return refusal
        if regenerating and not self.session.history:
            return "Nothing to regenerate yet: send a message first."
        if self.session.engine is None:
            return "No model is loaded: pick one and press Load model."
        return None

    def on_send(self) -> None:
        """Send the message box's text; the reply streams into the conversation."""
        with self._lock:
            refusal = self._reply_refusal("send")
            if refusal:
                return self._show(refusal, error=True)
            text = self.layout.message.value
            self._sync_settings()
            try:
                fit = self.session.plan_prompt(text)  # bad input is refused before any work
            except Exception as err:  # noqa: BLE001 - every refusal is shown, never raised
                return self._show(_message_of(err), error=True)
            self.layout.message.value = ""
            self._pending = _Pending(text, "", replaces=False)
            self._redactor = StreamRedactor()  # a token split across pieces is never shown
            self._render(force=True)
            note = f" ({fit.describe()})" if fit.dropped else ""
            self._show(f"Generating with {self.speaker}{self._not_loaded_note()}...{note}")
            stop = self._stop_event = threading.Event()
            send = self.session.send
            self._start(
                AppState.REPLYING,
                lambda: self._run(lambda cb: send(text, on_text=cb, stop_event=stop), text),
            )

    def on_regenerate(self) -> None:
        """Replace the last reply with a new one (new settings apply)."""
        with self._lock:
            refusal = self._reply_refusal("regenerate", regenerating=True)
            if refusal:
                return self._show(refusal, error=True)
            self._sync_settings()
            self._pending = _Pending(self.session.history[-2]["content"], "", replaces=True)
            self._redactor = StreamRedactor()
            self._render(force=True)
            self._show("Generating a new reply...")
            stop = self._stop_event = threading.Event()
            again = self.session.regenerate
            self._start(
                AppState.REPLYING,
                lambda: self._run(lambda cb: again(on_text=cb, stop_event=stop), None),
            )

    def _on_text(self, piece: str) -> None:
        with self._lock:
            shown = self._redactor.feed(piece)  # what could still be a token waits
            self._pending = self._pending._replace(reply=self._pending.reply + shown)
            self._render()

    def _give_back(self, text: str | None) -> None:
        """Put the user's message back in the box (unless they already typed a new one)."""
        if text is not None and not self.layout.message.value:
            self.layout.message.value = text

    def _run(self, call: Callable[[Callable[[str], None]], str], text: str | None) -> None:
        plan = self._plan()
        reply, note, error = None, "", False
        try:
            # A CUDA out-of-memory error becomes the plan's advice (shorter chat, restart...).
            with oom_as_advice(plan, "generating") if plan is not None else nullcontext():
                reply = call(self._on_text)
        except BaseException as err:  # noqa: BLE001 - shown in the app; history is untouched
            note, error = f"Error, nothing was lost: {_message_of(err)}", True
        else:
            if not reply:  # stopped before any text arrived: nothing was recorded
                note = "Stopped before the first token: the conversation is as it was."
        finally:
            with self._lock:
                self._pending = None
                if not reply:
                    self._give_back(text)  # an error, or stopped before any text: not recorded
                self._render(force=True)
                self._show(note or self._summary(), error=error)
                self._stop_event = None
                self._enter(AppState.IDLE)

    def _not_loaded_note(self) -> str:
        """` (you picked X, which is not loaded ...)` when the list shows another model."""
        picked = self.layout.model.value
        if picked is None or picked == self.model_name:
            return ""
        title = CHAT_MODELS.get(picked, picked)
        return f" (you picked {title}, which is not loaded: press Load model to use it)"

    def _summary(self) -> str:
        s, fit = self.session.last_stats, self.session.last_fit
        if s is None or fit is None:
            return ""
        speed = f" at {s.tokens_per_s:.1f} tokens/s" if s.new_tokens > 1 else ""
        parts = [
            f"{s.new_tokens} token{'s' if s.new_tokens != 1 else ''}{speed}",
            f"first token after {s.ttft_s:.2f} s",
            f"context used {self.session.context_used:,} of {fit.context_window:,}",
        ]
        if fit.dropped:
            parts.append(f"left out the {fit.dropped_turns} oldest exchange(s) to fit")
        if self._not_loaded_note():
            parts.append(f"answered by {self.speaker}{self._not_loaded_note()}")
        if self.session.last_stopped:
            parts.append("stopped early (the partial reply is kept; Regenerate for a new one)")
        return " · ".join(parts)

    def on_stop(self) -> None:
        """End the reply being generated (the app's, or one your code asked for); keep what came."""
        with self._lock:
            if self._state is AppState.IDLE and self.session.busy:  # your code's reply
                stopped = self.session.stop()
                self._follow_session()
                return self._show(
                    "Stopping the reply your code asked for; what has arrived is kept."
                    if stopped
                    else "Already stopping; the reply ends in a moment."
                )
            if self._state is AppState.REPLYING:
                self._stop_event.set()  # even if the reply has not begun yet
                self.session.stop()
                self._enter(AppState.STOPPING)
                return self._show("Stopping...")
            if self._state is AppState.LOADING:
                why = f"Loading {self._loading} cannot be stopped halfway; wait for it to finish."
            elif self._state is AppState.STOPPING:
                why = "Already stopping; the reply ends in a moment."
            else:
                why = "Nothing to stop: no reply is being written."
            self._show(why, error=True)

    def on_undo(self) -> None:
        """Remove the last exchange and put its message back in the box to edit."""
        with self._lock:
            refusal = self._refusal("undo")
            if refusal:
                return self._show(refusal, error=True)
            text = self.session.undo()
            self._give_back(text)
            self._render(force=True)
            self._show("Removed the last exchange." if text is not None else "Nothing to undo.")

    def on_clear(self) -> None:
        """Start a new conversation (the system prompt and settings stay)."""
        with self._lock:
            refusal = self._refusal("clear")
            if refusal:
                return self._show(refusal, error=True)
            self.session.clear()
            self._render(force=True)
            self._show("Cleared.")

    def on_load(self) -> None:
        """Load the model picked in the dropdown (in the background); the history stays."""
        with self._lock:
            name = self.layout.model.value
            refusal = self._refusal("load another model")
            if refusal:
                self._put_back_model()
                return self._show(refusal, error=True)
            if name is None:
                return self._show("Pick a model first, then press Load model.", error=True)
            title = CHAT_MODELS.get(name, name)
            if name == self.model_name and self.session.engine is not None:
                return self._show(f"{title} is already loaded.")
            if name in self._endpoints:
                return self._switch_to_endpoint(name)
            plan, why = self._plan_for(name, title)
            if why:
                self._put_back_model()
                return self._show(why, error=True)
            self._loading = name
            self._show(f"Loading {name}... (a real model downloads once, then loads in minutes)")
            self._start(AppState.LOADING, lambda: self._load(name, plan))

    def _plan_for(self, name: str, title: str) -> tuple[LoadPlan | None, str]:
        """(the plan for name, "") or (None, why it cannot be loaded here)."""
        plan = self.models[name].plan
        if plan is None:
            try:
                plan = make_plan(name, self.facts)
            except Exception as err:  # noqa: BLE001 - shown in the app
                return None, f"Cannot plan {name}: {_message_of(err)}"
        if not plan.fits:
            return None, f"{title} does not fit: {plan.advice}"
        return plan, ""

    def _switch_to_endpoint(self, name: str) -> None:
        """Reply through the endpoint picked (with the lock held); nothing loads."""
        self.session.use_endpoint(self._endpoints[name])
        self.model_name = name
        self._apply_context_window()
        self._show(f"Switched to {name}; the conversation continues with it.")

    def _load(self, name: str, plan) -> None:
        try:
            # Free the old model first: a T4 cannot hold two Llama 2 models at once.
            self.session.unload()
            _free_memory()
            model, tokenizer = self.loader(plan)
            self.session.use_model(model, tokenizer)
        except BaseException as err:  # noqa: BLE001 - shown in the app; history is untouched
            with self._lock:
                if self.session.engine is None:
                    self.model_name = None  # nothing is loaded now, and the list says so
                now = "No model is loaded now" if self.model_name is None else "The model stays"
                self._show(
                    f"Could not load {name}: {_message_of(err)} {now}: pick a model and press "
                    "Load model.",
                    error=True,
                )
                self._finish_loading()
        else:
            with self._lock:
                self.model_name = name
                self.models[name] = self.models[name]._replace(plan=plan)
                self._apply_context_window()
                self._show(f"Loaded {name}; the conversation continues with it.")
                self._finish_loading()

    def _finish_loading(self) -> None:
        self._loading = None
        self._enter(AppState.IDLE)
        self._put_back_model()


class _Pending(NamedTuple):
    """The exchange being streamed: your message, the reply so far, and whether it replaces
    the last exchange (Regenerate)."""

    user: str
    reply: str
    replaces: bool


def _message_of(err: BaseException) -> str:
    """The error as the app shows it: what happened and what to do, any token masked."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted."
    what, todo = getattr(err, "what", None), getattr(err, "todo", None)
    if what:
        return redact_secrets(f"{what} {todo or ''}".strip())
    return redact_secrets(str(err) or type(err).__name__)
