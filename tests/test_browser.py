"""The chat app (06) and the token handling (02) in a real browser, the way a learner meets them.

A Jupyter server starts on 127.0.0.1 (random port, random token) on a copy of the notebooks;
headless Chromium, driven by playwright, opens a notebook, runs all, and uses it like a person:
types, clicks, waits for the reply to stream. A widget-version mismatch, a JavaScript error or a
layout bug shows only here: every Python test stays green while the page is broken.

Front ends: JupyterLab (the README stack, ipywidgets 8) or, when the environment has only the
classic Notebook 6 (Colab's widget versions: ipywidgets 7.7.1), that one. Screenshots of each
state go to bench-results/screenshots/<front end>/ (git-ignored). Install what this needs with
`bash scripts/browser_setup.sh PYTHON`; select these tests with `-m browser`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import string
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("LLAMA2_COLAB_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "bench-results" / "screenshots"
# What a page shows when a widget cannot be drawn (ipywidgets 7 and 8, Lab and classic).
BROKEN = (
    "Click to show javascript error",
    "Error displaying widget",
    "is not registered",
    "Failed to display Jupyter Widget",
    "Failed to load model class",
)
ASKED = "What GPU does a free Colab runtime give you?"
BUSY_S = 240  # the longest wait for a kernel (Run all of 06 takes ~15 s on two CPU cores)


def _front_end() -> str | None:
    """Return "lab" or "classic": the Jupyter front end this Python has (None: neither)."""
    try:
        import jupyterlab  # noqa: F401

        return "lab"
    except ImportError:
        pass
    try:
        import notebook

        if int(notebook.__version__.split(".")[0]) < 7:
            return "classic"
    except ImportError:
        pass
    return None


def _skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (bash scripts/browser_setup.sh .venv/bin/python)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no browser at {CHROMIUM} (apt-get install chromium, or set LLAMA2_COLAB_CHROMIUM)"
    if _front_end() is None:
        return "no Jupyter front end (pip install jupyterlab, or notebook<7 for Colab's widgets)"
    return None


if (_reason := _skip_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)

FRONT = _front_end()


# -- the server --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Jupyter server on a copy of the notebooks, and the REST calls the tests need."""

    def __init__(self, root: Path, env: dict):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(24)
        common = ["--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={self.port}"]
        if FRONT == "lab":
            settings = root.parent / "lab-settings"
            tracker = settings / "@jupyterlab" / "notebook-extension"
            tracker.mkdir(parents=True)
            # Every cell in the DOM (Lab 4 otherwise draws only the cells on screen).
            (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
            news = settings / "@jupyterlab" / "apputils-extension"
            news.mkdir(parents=True)  # no "Would you like to get notified..." over the app
            (news / "notification.jupyterlab-settings").write_text(
                '{"fetchNews": "false", "checkForUpdates": false}'
            )
            args = [
                "-m",
                "jupyterlab",
                *common,
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={root}",
                f"--LabApp.user_settings_dir={settings}",
                f"--LabApp.workspaces_dir={root.parent / 'lab-workspaces'}",
            ]
        else:
            args = [
                "-m",
                "notebook",
                *common,
                f"--NotebookApp.token={self.token}",
                f"--NotebookApp.notebook_dir={root}",
            ]
        self.log = open(root.parent / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *args], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                self.get("/api/status")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Jupyter did not start: {self.log_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}{path}{sep}token={self.token}"

    def get(self, path: str):
        import json

        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            return json.loads(response.read())

    def kernel_state(self, notebook: str) -> str | None:
        """The execution state ("idle", "busy", "starting") of the notebook's kernel, if any."""
        for session in self.get("/api/sessions"):
            if Path(session.get("path", "")).name == notebook and session.get("kernel"):
                return session["kernel"].get("execution_state")
        return None

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.root.parent / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


FAKE_TOKEN = "hf_" + "".join(secrets.choice(string.ascii_letters) for _ in range(34))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser") / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        LLAMA2_COLAB_MODEL="tiny",
        HF_TOKEN=FAKE_TOKEN,  # only ever shown masked: the page must never hold it whole
        HF_HOME=str(root.parent / "hf-home"),  # no saved login of yours is found or written
        JUPYTER_CONFIG_DIR=str(root.parent / "jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(root.parent / "jupyter-runtime"),
        PYTHONUNBUFFERED="1",
    )
    srv = Server(root, env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """One notebook open in the browser, with the page's own errors collected."""

    def __init__(self, browser, server: Server, name: str):
        self.server, self.name = server, name
        self.shots = SHOTS / FRONT
        self.shots.mkdir(parents=True, exist_ok=True)
        # Colab's output column is ~850 px wide: this viewport gives the notebook about that.
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda err: self.errors.append(f"pageerror: {err}"))
        self.page.on("console", self._console)
        path = f"/lab/tree/{name}?reset" if FRONT == "lab" else f"/notebooks/{name}"
        self.page.goto(server.url(path), wait_until="domcontentloaded", timeout=60_000)
        self.page.wait_for_selector(".jp-Notebook .jp-Cell, #notebook .cell", timeout=60_000)

    def _console(self, msg) -> None:
        # The page's own errors: a widget that fails to render logs one; a missing favicon or a
        # blocked external image (no network here) is not the page's fault.
        if msg.type == "error" and not re.search(r"Failed to load resource|favicon", msg.text):
            self.errors.append(f"console: {msg.text}")

    def close(self) -> None:
        self.context.close()

    def shot(self, what: str, locator=None) -> Path:
        path = self.shots / f"{Path(self.name).stem}-{what}.png"
        (locator or self.page).screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path

    # -- the kernel ---------------------------------------------------------------------------
    def prompts(self) -> list[str]:
        sel = ".jp-CodeCell .jp-InputPrompt" if FRONT == "lab" else ".code_cell .input_prompt"
        return [t.strip() for t in self.page.locator(sel).all_inner_texts()]

    def front_end_idle(self) -> bool:
        """What the page shows: a connected kernel, idle."""
        if FRONT == "lab":
            ready = (
                "() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
                " return s !== null && s.getAttribute('data-status') === 'idle'; }"
            )
        else:
            ready = (
                "() => !!(window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel &&"
                " Jupyter.notebook.kernel.is_connected() &&"
                " document.querySelector('#kernel_indicator_icon.kernel_idle_icon') !== null)"
            )
        return self.page.evaluate(ready)

    def wait_kernel_ready(self) -> None:
        """Wait until the page has a connected, idle kernel (a Run all sent earlier is lost)."""
        deadline = time.monotonic() + BUSY_S
        while not self.front_end_idle():
            assert time.monotonic() < deadline, f"no idle kernel after {BUSY_S} s"
            time.sleep(0.5)
        self._wait_idle()

    def _wait_idle(self) -> None:
        deadline, calm = time.monotonic() + BUSY_S, 0
        while calm < 3:  # idle on three checks in a row: not between two cells
            # The server may say "starting" until the first cell runs (it can miss the kernel's
            # first status message), so "busy" from it counts, and the page has the last word.
            state = self.server.kernel_state(self.name)
            busy = state == "busy" or not self.front_end_idle()
            busy = busy or any("*" in p for p in self.prompts())
            calm = 0 if busy else calm + 1
            if time.monotonic() > deadline:
                sessions = self.server.get("/api/sessions")
                raise AssertionError(f"the kernel is not idle after {BUSY_S} s: {sessions}")
            time.sleep(0.5)

    def run_all(self) -> None:
        """Run all cells the way a user does, then wait until every cell has run."""
        self.wait_kernel_ready()
        if FRONT == "lab":
            self.page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            self.page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        else:
            self.page.evaluate("() => Jupyter.notebook.execute_all_cells()")
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-InputPrompt, .input_prompt')]"
            ".some(p => p.textContent.includes('*'))",
            timeout=30_000,
        )
        self._wait_idle()
        prompts = self.prompts()
        unrun = [i for i, p in enumerate(prompts) if not re.search(r"\[\d+\]", p)]
        assert not unrun, (
            f"cells {unrun} did not run (an error stopped them):\n{self.errors_text()}"
        )

    def errors_text(self) -> str:
        sel = ".jp-OutputArea-output[data-mime-type*='error'], .output_error"
        return "\n".join(self.page.locator(sel).all_inner_texts())

    def assert_healthy(self) -> None:
        """No JavaScript error of the page's own, no broken widget, no cell error."""
        text = self.page.locator("body").inner_text()
        broken = [b for b in BROKEN if b in text]
        assert not broken, f"a widget could not be drawn: {broken}\n" + "\n".join(self.errors)
        assert not self.errors_text(), self.errors_text()
        assert not self.errors, "\n".join(self.errors)


# -- 06: the chat app ----------------------------------------------------------------------------
WATCH = """(root) => {
  // The tiny model replies faster than polling can see: record every state the DOM goes through.
  window.__replies = [];
  const last = () => {
    const bots = root.querySelectorAll('.l2c-bot');
    return bots.length ? bots[bots.length - 1].innerText : null;
  };
  new MutationObserver(() => {
    const t = last();
    const seen = window.__replies;
    if (t !== null && seen[seen.length - 1] !== t) seen.push(t);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


# Done: a new status line (not "Generating..."), and Send enabled again.
DONE = """(root) => {
  const s = root.querySelectorAll('.l2c-note, .l2c-err'), e = s[s.length - 1];
  const send = [...root.querySelectorAll('button')].find(b => b.textContent.trim() === 'Send');
  return e !== undefined && !e.hasAttribute('data-old') && !send.disabled &&
    !/^(Generating|Loading)/.test(e.textContent.trim());
}"""


class ChatUI:
    """The app's controls, found the way a user finds them: by what they say."""

    def __init__(self, page: Page):
        self.p = page
        pg = page.page
        self.message = pg.locator("textarea[placeholder='Type a message, then Send']")
        self.root = self.message.locator(
            "xpath=ancestor::div[contains(@class,'widget-vbox')][last()]"
        )
        self.system = self.root.locator("textarea").first
        self.model = self.root.locator("select")
        self.conversation = self.root.locator(".l2c-chat")

    def button(self, label: str):
        return self.root.locator(f"button:has-text('{label}')")

    def max_new_tokens(self):
        return self.slider_readout("Max new tokens")

    def slider_readout(self, label: str):
        return self.root.locator(f".widget-slider:has-text('{label}') .widget-readout")

    def set_slider(self, label: str, value: float, shown: str) -> None:
        """Type a value into a slider's readout, as a user can, and wait until it shows."""
        readout = self.slider_readout(label)
        readout.click()
        readout.press("Control+a")
        readout.type(str(value))
        readout.press("Enter")
        self.p.page.wait_for_function(
            "([el, shown]) => el.textContent.trim() === shown",
            arg=[readout.element_handle(), shown],
            timeout=10_000,
        )

    def set_max_new_tokens(self, n: int) -> None:
        self.set_slider("Max new tokens", n, str(n))

    def wait_status(self, part: str) -> None:
        """Wait until the status line says part (it is redrawn as a new element each time)."""
        self.p.page.wait_for_function(
            "([root, part]) => { const s = root.querySelectorAll('.l2c-note, .l2c-err');"
            " return s.length > 0 && s[s.length - 1].textContent.includes(part); }",
            arg=[self.root.element_handle(), part],
            timeout=30_000,
        )

    def status_text(self) -> str:
        return self.root.locator(".l2c-note, .l2c-err").last.inner_text()

    def bot_texts(self) -> list[str]:
        return self.conversation.locator(".l2c-bot").all_inner_texts()

    def user_texts(self) -> list[str]:
        return self.conversation.locator(".l2c-user").all_inner_texts()

    def mark_status(self) -> None:
        """Mark the status line: it is redrawn as a new element when its text changes."""
        self.p.page.evaluate(
            "(root) => root.querySelectorAll('.l2c-note, .l2c-err')"
            ".forEach(e => e.setAttribute('data-old', '1'))",
            self.root.element_handle(),
        )

    def press_and_wait(self, label: str) -> None:
        """Press a button, then wait until its work is done: a new status, Send enabled again."""
        self.mark_status()
        self.button(label).click()
        self.p.page.wait_for_function(DONE, arg=self.root.element_handle(), timeout=120_000)

    def watch(self) -> None:
        self.p.page.evaluate(WATCH, self.root.element_handle())

    def replies_seen(self) -> list[str]:
        return self.p.page.evaluate("() => window.__replies")


def _reply_of(bot_text: str) -> str:
    return bot_text.split(":", 1)[1].strip() if ":" in bot_text else bot_text


def _assert_streamed(states: list[str], final: str) -> None:
    """The reply arrived piece by piece, each state a start of the final one (nothing lost)."""
    replies = [_reply_of(s).rstrip("…") for s in states]
    assert len({r for r in replies if r}) >= 2, f"no streaming seen: {states}"
    for r in replies:
        # Also no "\ufffd" while streaming that the reply does not have (random weights do
        # write invalid bytes, which the reply then shows too).
        assert final.startswith(r.strip()), f"text shown while streaming was lost: {r!r}"


def test_the_chat_app_in_a_browser(browser, server):
    page = Page(browser, server, "06_chat_app.ipynb")
    try:
        _drive_chat_app(page)
    finally:
        page.close()


def _press_stop_mid_reply(ui: ChatUI, label: str) -> tuple[str, str]:
    """Start a reply with a button, press Stop while it streams: the text shown, the status."""
    ui.watch()
    ui.mark_status()
    ui.button(label).click()
    ui.p.page.wait_for_function(
        f"(root) => window.__replies.some(r => r.length > 200) || ({DONE})(root)",
        arg=ui.root.element_handle(),
        timeout=60_000,
    )
    written = _reply_of(ui.replies_seen()[-1]).rstrip("…").strip()  # on screen as Stop is pressed
    stop = ui.button("Stop")
    if not stop.is_disabled():
        ui.p.shot("app-streaming", ui.root)
        stop.click(timeout=5_000, force=True)  # a reply that ends first leaves Stop disabled
        ui.p.page.wait_for_function(DONE, arg=ui.root.element_handle(), timeout=120_000)
    return written, ui.status_text()


def _drive_chat_app(page: Page) -> None:
    page.run_all()
    ui = ChatUI(page)
    # The app draws itself, or the page says why it cannot: either ends the wait.
    page.page.wait_for_function(
        "(broken) => document.querySelector(\"textarea[placeholder='Type a message, then Send']\")"
        " || broken.some(b => document.body.innerText.includes(b))",
        arg=list(BROKEN),
        timeout=30_000,
    )
    page.assert_healthy()
    box = ui.root.bounding_box()
    assert box["height"] > 300 and box["width"] > 500, f"the app area is blank: {box}"
    # What the cells below the app did through code shows in the app: nothing was lost.
    assert any("tomatoes, basil and cheese" in t for t in ui.user_texts())
    for label in ("Temperature", "Top p", "Max new tokens"):  # labels in full, not "Max new ..."
        assert ui.root.locator(f".widget-label:text-is('{label}')").count() == 1, label
    # Nothing cut off ("Temperat...", "Load mo...") and nothing sticking out at this width.
    # (5 px of slack: a widget's 2 px margins; a cut label hides tens of pixels.)
    cut = page.page.evaluate(
        "(root) => { const right = root.getBoundingClientRect().right + 5;"
        " return [...root.querySelectorAll('.widget-label, button, select, textarea, .widget-box')]"
        ".filter(e => e.offsetWidth > 0 &&"
        " (e.scrollWidth > e.clientWidth + 5 || e.getBoundingClientRect().right > right))"
        ".map(e => (e.textContent.trim() || e.className).slice(0, 60)); }",
        ui.root.element_handle(),
    )
    assert not cut, f"cut off at {box['width']:.0f} px: {cut}"
    page.shot("app-after-run-all", ui.root)

    # Send: the reply streams into the conversation.
    ui.set_max_new_tokens(120)
    ui.button("Clear").click()
    ui.conversation.locator(".l2c-note").wait_for()
    ui.watch()
    ui.message.fill(ASKED)  # a question the tiny model was taught: the README shows this exchange
    ui.press_and_wait("Send")
    final = _reply_of(ui.bot_texts()[-1])
    _assert_streamed(ui.replies_seen(), final)
    assert ui.user_texts() == [f"You: {ASKED}"]
    assert ui.message.input_value() == ""
    status = ui.status_text()
    assert "first token after" in status, status
    meter = re.search(r"context used ([\d,]+) of ([\d,]+)", status).groups()
    used, limit = (int(n.replace(",", "")) for n in meter)
    assert 0 < used <= limit
    page.shot("app-reply", ui.root)

    # Stop mid-reply: a long reply is cut, and the part already written stays. The toy was
    # taught short answers and ends them itself; at temperature 5 it rambles on, which gives Stop
    # something to cut. A reply may still end on its own as Stop is pressed: then try again.
    ui.set_slider("Temperature", 5, "5.00")
    ui.set_slider("Top p", 1, "1.00")
    ui.set_max_new_tokens(3000)
    ui.message.fill("Tell me a very long story.")
    for label in ("Send",) + ("Regenerate",) * 7:
        written, status = _press_stop_mid_reply(ui, label)
        if "stopped early" in status:
            break
    page.shot("app-stopped", ui.root)
    assert "stopped early" in status, status
    stopped = _reply_of(ui.bot_texts()[-1])
    _assert_streamed(ui.replies_seen(), stopped)
    assert written and stopped.startswith(written)  # what was written when you pressed Stop stays
    assert int(re.search(r"(\d+) tokens?", status).group(1)) < 3000
    ui.set_slider("Temperature", 0.6, "0.60")
    ui.set_slider("Top p", 0.9, "0.90")

    # Regenerate: a new reply to the same message; no message is doubled.
    ui.set_max_new_tokens(60)
    ui.press_and_wait("Regenerate")
    assert ui.user_texts() == [f"You: {ASKED}", "You: Tell me a very long story."]
    assert "stopped early" not in ui.status_text() and "context used" in ui.status_text()
    page.shot("app-regenerated", ui.root)

    # Undo: the last exchange goes, its message comes back to the box to edit.
    ui.button("Undo").click()
    page.page.wait_for_function(
        "(el) => el.value === 'Tell me a very long story.'", arg=ui.message.element_handle()
    )
    assert ui.user_texts() == [f"You: {ASKED}"]
    assert "Removed the last exchange" in ui.status_text()

    # System prompt: a very long one leaves no room for a reply; shortening it gives it back.
    ui.system.fill("Be brief. " * 2000)
    page.page.wait_for_function(
        "(el) => el.textContent.trim() === '1'", arg=ui.max_new_tokens().element_handle()
    )
    ui.system.fill("You answer like a pirate.")
    page.page.wait_for_function(
        "(el) => el.textContent.trim() === '60'", arg=ui.max_new_tokens().element_handle()
    )
    ui.message.fill("Ahoy?")
    ui.press_and_wait("Send")
    assert ui.user_texts()[-1] == "You: Ahoy?" and "context used" in ui.status_text()
    page.shot("app-system-prompt", ui.root)

    # Switch model. On a CPU (or a T4, for 70B) a model that does not fit is refused with advice;
    # where it would fit, loading it offline fails with a message. Either way nothing is lost,
    # and picking the tiny model again gets a working app back.
    before = ui.user_texts()
    values = ui.model.locator("option").evaluate_all("(os) => os.map(o => o.textContent)")
    assert len(values) == 4, values
    big = next(v for v in values if "70B" in v)
    ui.model.select_option(label=big)
    ui.press_and_wait("Load model")
    assert re.search("does not fit|Could not load", ui.status_text()), ui.status_text()
    assert ui.user_texts() == before
    ui.model.select_option(label=next(v for v in values if "tiny" in v))
    ui.press_and_wait("Load model")
    assert re.search("already loaded|Loaded tiny", ui.status_text()), ui.status_text()
    ui.message.fill("Still there?")
    ui.press_and_wait("Send")
    assert ui.user_texts() == [*before, "You: Still there?"]
    page.shot("app-model-switch", ui.root)
    page.assert_healthy()


# -- 02: the token is shown masked, never whole ------------------------------------------------
def test_the_login_notebook_never_puts_the_token_in_the_page(browser, server):
    page = Page(browser, server, "02_login.ipynb")
    try:
        page.run_all()
        page.assert_healthy()
        text = page.page.locator("body").inner_text()
        masked = f"hf_...{FAKE_TOKEN[-4:]}"
        assert masked in text, "the token cell does not show the token masked"
        assert "A token is already set" in text
        html_now = page.page.content()
        assert FAKE_TOKEN not in html_now and FAKE_TOKEN[3:] not in html_now
        page.shot("login")
    finally:
        page.close()
