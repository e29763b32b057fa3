"""Serving Llama 2 over an OpenAI-compatible API, on an existing engine.

Decide, then act, as everywhere in this package:

- `engine_commands`: the engine (vLLM or `transformers serve`) and its command line from a
  plan. Pure, so the command for a T4 or 4 x A100 is tested on any machine.
- `prepare_serving_folder(...)`: the model's files linked (never copied, never changed) into a
  fresh folder whose `chat_template.jinja` is `chat_template.reference_chat_template`, so the
  engine sends `encode_dialog`'s ids, token for token. Your Hub cache and model folder are only
  read.
- `EngineProcess`: the engine as a child process, ready when `/v1/models` answers, stopped with
  SIGINT (then harder), its last lines kept so that a failure is explained.
- `serve(...)` is what `python -m llama2_colab serve` runs; `background_server.BackgroundServer`
  runs that command in the background for a notebook.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from transformers import AutoTokenizer

from .auth import explain_hub_error, find_hub_error, find_token, hub_endpoint
from .chat_template import reference_chat_template, template_matches
from .checks import check_model_dir, looks_like_local_path
from .engine_commands import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    choose_engine,
    client_snippet,
    served_name,
    transformers_serve_command,
    vllm_command,
)
from .errors import UserFacingError, redact_secrets
from .faults import expand_user, fault_boundary
from .listeners import family, listening_pids
from .models import ModelChoice, choose_model, cpu_threads_for
from .plan import LoadPlan, TensorParallelPlan, make_plan, make_tp_plan
from .runtime import RuntimeFacts, detect_runtime
from .tiny import ensure_tiny_llama, tiny_cache_dir

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "SERVE_PACKAGES",
    "die_with_this_process",
    "EngineLaunch",
    "EngineProcess",
    "check_port_free",
    "client_host",
    "free_port",
    "prepare_serving_folder",
    "serve",
]

# What `transformers serve` needs beyond transformers (its `is_serve_available`); Colab ships all.
SERVE_PACKAGES = ("fastapi", "uvicorn", "openai", "pydantic")
SERVE_INSTALL = (
    "pip install 'llama2-colab[serve]'  (or: pip install fastapi uvicorn openai pydantic)"
)
READY_TIMEOUT_S = 900.0  # a 13B load from a slow disk takes minutes
# Files of a model folder the serving folder does not link: its own template replaces them.
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


# -- checks before anything starts -------------------------------------------------------------


def check_port_free(host: str, port: int) -> None:
    """Raise UserFacingError if host:port cannot be listened on (in use, or no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise _host_error(host, err.strerror) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:  # a real address, but another machine's
                raise _host_error(host, err.strerror) from None
            raise _port_error(host, port, err.strerror or str(err)) from None


def _host_error(host: str, why: str) -> UserFacingError:
    """The message for a host that is no address of this machine (no such name, or not ours)."""
    return UserFacingError(
        f"The host {host!r} is not an address of this machine ({why}).",
        "Use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface).",
    )


def _port_error(host: str, port: int, why: str) -> UserFacingError:
    """The message for a port that cannot be used."""
    return UserFacingError(
        f"Cannot serve on {host}:{port}: {why} (another server, or an earlier `serve` that is "
        "still running, holds that port).",
        f"Pass another port (--port {port + 1}), or stop the program that holds it "
        f"(`lsof -i :{port}` names it).",
    )


def free_port(host: str = DEFAULT_HOST) -> int:
    """Return a TCP port that is free on host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _missing(packages: Sequence[str]) -> list[str]:
    """The packages of a list that cannot be imported here."""
    return [name for name in packages if importlib.util.find_spec(name) is None]


def _check_engine_installed(engine: str) -> None:
    """Raise UserFacingError with the pip command if the engine's packages are missing."""
    if engine == "vllm":
        if _missing(["vllm"]):
            raise UserFacingError("vLLM is not installed.", "pip install vllm")
        return
    missing = _missing(SERVE_PACKAGES)
    if missing:
        raise UserFacingError(
            f"`transformers serve` needs {', '.join(missing)}, not installed here (Colab "
            "ships them).",
            SERVE_INSTALL,
        )


# -- acting: files, folder, launch -------------------------------------------------------------


def _model_files(choice: ModelChoice, token: str | None) -> Path:
    """Return the folder holding the model's files: the tiny model, your folder, a Hub snapshot."""
    if choice.is_tiny:
        return ensure_tiny_llama()
    if looks_like_local_path(choice.name):
        check_model_dir(choice.name)
        return expand_user(choice.name).resolve()
    try:
        return Path(
            snapshot_download(
                choice.name, allow_patterns=_HUB_PATTERNS, token=token, endpoint=hub_endpoint()
            )
        )
    except Exception as err:  # noqa: BLE001 - every Hub failure becomes a message
        hub_err = find_hub_error(err) or err
        _, what, todo = explain_hub_error(hub_err, choice.name, bool(token))
        raise UserFacingError(what, todo) from None


def prepare_serving_folder(source: Path, root: Path, name: str, template: str) -> Path:
    """Link source's files into root/name, with the reference chat template; return that folder.

    Only links are written (and the template file): the model's own files are never copied or
    changed. The engine then loads root/name, whose tokenizer carries the template.
    """
    target = root / name
    target.mkdir(parents=True, exist_ok=False)
    for item in sorted(Path(source).iterdir()):
        if item.is_file() and item.name not in _TEMPLATE_FILES and not item.name.startswith("."):
            os.symlink(item.absolute(), target / item.name)
    (target / "chat_template.jinja").write_text(template, encoding="utf-8")
    return target


def _checked_template(source: Path, folder_root: Path, name: str) -> Path:
    """Build the serving folder and check its tokenizer gives encode_dialog's ids."""
    template = reference_chat_template(AutoTokenizer.from_pretrained(source))
    folder = prepare_serving_folder(source, folder_root, name, template)
    if not template_matches(AutoTokenizer.from_pretrained(folder)):
        raise UserFacingError(
            f"The serving folder {folder} does not load the reference chat template.",
            "Upgrade transformers (5.15 or newer reads chat_template.jinja) and try again.",
        )
    return folder


@dataclass(frozen=True)
class EngineLaunch:
    """How to start a serving engine: the command, where, with what environment, and for whom."""

    engine: str  # "transformers" | "vllm"
    command: tuple[str, ...]
    host: str
    port: int
    cwd: str  # the serving root: the engine finds the model by its served name there
    env: dict = field(default_factory=dict)  # added to this process's environment
    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1
    model: str = ""  # the name clients send
    context_window: int = 0  # what the plan leaves room for

    @property
    def display(self) -> str:
        """The command as you would type it: `transformers serve ...` or `vllm serve ...`."""
        if self.engine == "vllm":
            return " ".join(["vllm", *self.command[1:]])
        return " ".join(["transformers", *self.command[4:]])


def _engine_env(choice: ModelChoice, plan: LoadPlan) -> dict:
    """The engine's environment: offline (it reads the serving folder), quiet, its CPU threads."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    threads = cpu_threads_for(choice, plan.device)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _plan_for(name: str, facts: RuntimeFacts, gpus: int) -> LoadPlan | TensorParallelPlan:
    """The plan to serve with; a model that does not fit is refused with the plan's advice."""
    plan = make_plan(name, facts) if gpus == 1 else make_tp_plan(name, facts, gpus)
    if not plan.fits:
        raise UserFacingError(f"{plan.model} does not fit: {plan.reason}", plan.advice)
    return plan


def client_host(host: str) -> str:
    """The host a client on this machine connects to (0.0.0.0 listens on every interface)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _vllm_executable() -> str:
    """The `vllm` command of this Python's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "vllm"
    return str(beside) if beside.is_file() else (shutil.which("vllm") or "vllm")


def build_launch(
    model: str | None,
    host: str,
    port: int,
    root: Path,
    engine: str = "auto",
    gpus: int = 1,
    continuous_batching: bool = False,
    say: Callable[[str], None] | None = None,
) -> EngineLaunch:
    """Decide model, plan and engine, prepare the serving folder in root; return the launch.

    `say` prints what was decided (default: stdout, redacted).
    """
    say = say or _show
    facts = detect_runtime()
    token = find_token()
    choice = choose_model(facts, requested=model, has_token=bool(token))
    say(f"Model   : {choice.name} ({choice.reason})")
    engine = choose_engine(facts, not _missing(["vllm"]), engine)
    if gpus > 1 and engine != "vllm":
        raise UserFacingError(
            f"`transformers serve` runs a model on one GPU, and --gpus {gpus} asks for more.",
            "Install vLLM (pip install vllm) on the multi-GPU machine, or run "
            f"`torchrun --nproc-per-node {gpus} -m llama2_colab demo` for one reply.",
        )
    _check_engine_installed(engine)
    plan = _plan_for(choice.name, facts, gpus)
    say(f"Plan    : {plan.format_label}, room for {plan.context_window:,} tokens of context")
    name = served_name(choice.name)
    folder = _checked_template(_model_files(choice, token), root, name)
    if engine == "vllm":
        template = str(folder / "chat_template.jinja")
        command = vllm_command(plan, str(folder), name, host, port, template)
        command[0] = _vllm_executable()
    else:
        command = transformers_serve_command(plan, name, host, port, continuous_batching)
    return EngineLaunch(
        engine=engine,
        command=tuple(command),
        host=host,
        port=port,
        cwd=str(root),
        env=_engine_env(choice, plan),
        base_url=f"http://{client_host(host)}:{port}/v1",
        model=name,
        context_window=plan.context_window,
    )


# -- the engine process ------------------------------------------------------------------------


def _answers(url: str, timeout: float = 2.0) -> bool:
    """True if a GET of url answers 200 (no proxy: the server is on this machine)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _failure(launch: EngineLaunch, lines: Sequence[str], status: int | None) -> UserFacingError:
    """Explain why the engine stopped: port taken, package missing, out of memory, or its words."""
    text = "\n".join(lines)
    if "address already in use" in text.lower():
        return _port_error(launch.host, launch.port, "address already in use")
    if "cannot assign requested address" in text.lower():
        return _host_error(launch.host, "cannot assign requested address")
    missing = re.search(r"No module named '([A-Za-z0-9_]+)", text)
    if missing:
        return UserFacingError(
            f"The engine ({launch.engine}) needs the {missing[1]} package, not installed here.",
            f"pip install {missing[1]}, then run serve again.",
        )
    if "OutOfMemoryError" in text or "CUDA out of memory" in text:
        return UserFacingError(
            f"The GPU ran out of memory while {launch.engine} loaded the model.",
            "Restart the runtime so that no earlier model holds GPU memory, then run serve "
            "again; `python -m llama2_colab plan MODEL` shows what fits.",
        )
    tail = "\n".join(lines[-15:]) or "(it printed nothing)"
    return UserFacingError(
        f"The engine ({launch.engine}) stopped before it was ready (exit status {status}). "
        f"Its last lines:\n{tail}",
        "Fix what those lines say, then run serve again.",
    )


# From <linux/prctl.h>: "send me this signal when my parent dies".
PR_SET_PDEATHSIG = 1


def die_with_this_process() -> Callable[[], None] | None:
    """A child's preexec_fn: on Linux the child gets SIGTERM when this process dies; else None.

    A `kill -9` of serve runs none of its cleanup, and the engine would go on serving, owned
    by no one. (The kernel watches the thread that started the child: `run_engine` starts and
    stops the engine in one call, in one thread.)
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # it died before the request took hold
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


class EngineProcess:
    """A serving engine running as a child process; its last lines are kept for messages.

    The child stays in this process's group, so Ctrl-C in a terminal (SIGINT to the group)
    reaches it too; `stop()` signals it directly when this process decides to end it. On Linux
    it also gets SIGTERM if this process is killed outright (`kill -9`), so it never outlives it.
    """

    def __init__(self, launch: EngineLaunch, echo: Callable[[str], None] | None = None):
        self.launch = launch
        self.lines: deque[str] = deque(maxlen=200)
        self.process = subprocess.Popen(
            list(launch.command),
            cwd=launch.cwd,
            env={**os.environ, **launch.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            preexec_fn=die_with_this_process(),
        )
        self._reader = threading.Thread(target=self._read, args=(echo,), daemon=True)
        self._reader.start()

    def _read(self, echo: Callable[[str], None] | None) -> None:
        for line in self.process.stdout:  # whole lines: a token never spans two
            line = redact_secrets(line)  # the engine names the model's folder, requests...
            self.lines.append(line.rstrip("\n"))
            if echo is not None:
                echo(line)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait until `/v1/models` answers; return the seconds it took, or raise why not."""
        start = time.perf_counter()
        while True:
            status = self.process.poll()
            if status is not None:
                self._reader.join(timeout=5)
                raise _failure(self.launch, list(self.lines), status)
            if _answers(self.launch.base_url + "/models") and self._owns_port():
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise UserFacingError(
                    f"{self.launch.engine} did not answer on {self.launch.base_url} within "
                    f"{timeout:.0f} s.",
                    "Its output above says where it is; a first download can take long.",
                )
            time.sleep(0.25)

    def _owns_port(self) -> bool:
        """True unless another process, not this engine, is the one listening on its port.

        Two serves started together both find the port free; until the second engine fails to
        bind, the first one's answers. (Where /proc cannot tell, the answer is trusted.)
        """
        owners = listening_pids(self.launch.port, family(self.process.pid))
        return owners is None or bool(owners)

    def stop(self, already_signalled: bool = False, grace: float = 10.0) -> int | None:
        """Stop the engine: SIGINT (a graceful shutdown), SIGTERM, then SIGKILL; return its status.

        `already_signalled`: the engine got the same Ctrl-C (its process group did), so it is
        given a few seconds to stop on its own first.
        """
        steps = [(None, grace / 2)] if already_signalled else []
        steps += [(signal.SIGINT, grace), (signal.SIGTERM, grace / 2), (signal.SIGKILL, grace)]
        for sig, wait_s in steps:
            if self.process.poll() is not None:
                break
            if sig is not None:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        self._reader.join(timeout=5)
        return self.process.poll()


# -- the command -------------------------------------------------------------------------------


class _Terminated(Exception):
    """SIGTERM arrived (`kill PID`, a notebook's terminate()): stop the engine, then exit."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _say_ready(launch: EngineLaunch, seconds: float, say: Callable[[str], None]) -> None:
    """Say the URL, the model name, the context to keep to and a client snippet."""
    say(
        f'\nReady in {seconds:.1f} s: {launch.base_url} serves "{launch.model}" on '
        f"{launch.engine} (Ctrl-C stops it).\n"
        f"Context: keep each prompt plus max_tokens within {launch.context_window:,} tokens.\n\n"
        "Ask it from Python (pip install openai):\n\n"
        f"{client_snippet(launch.base_url, launch.model)}\n"
    )


def _show(text: str) -> None:
    """Print one of serve's own lines on stdout, any token in it masked."""
    print(redact_secrets(text), flush=True)


def _to_stderr(line: str) -> None:
    """Relay a line of the engine's (already redacted as it was read) on stderr."""
    if sys.stderr is not None:
        sys.stderr.write(line)
        sys.stderr.flush()


def run_engine(
    launch: EngineLaunch,
    ready_timeout: float = READY_TIMEOUT_S,
    say: Callable[[str], None] = _show,
) -> int:
    """Start the engine, say when it answers, serve until Ctrl-C or SIGTERM; return the status.

    `say` prints serve's own lines (redacted, as `_show` does); the engine's lines are relayed
    on stderr, redacted as they are read.
    """
    say(f"Engine  : {launch.display}")
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    engine = EngineProcess(launch, echo=_to_stderr)
    try:
        _say_ready(launch, engine.wait_ready(ready_timeout), say)
        status = engine.process.wait()
        if status in (0, 130, -signal.SIGINT, -signal.SIGTERM):  # stopped by someone else
            say(f"\nThe engine stopped (exit status {status}).")
            return 0 if status == 0 else 1
        engine.stop()  # collects the last lines
        raise _failure(launch, list(engine.lines), status)
    except KeyboardInterrupt:
        engine.stop(already_signalled=True)
        say("\nStopped: the server is down.")
        return 130
    except _Terminated:
        engine.stop()
        say("\nStopped (SIGTERM): the server is down.")
        return 143
    finally:
        engine.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _new_serving_folder() -> Path:
    """Make this server's own folder beside the tiny model's cache (stale ones swept); return it.

    A cache on a read-only or full disk is named as the place $LLAMA2_COLAB_CACHE chooses.
    """
    parent = tiny_cache_dir().parent / "serve"
    also = (
        "Serving folders are made beside the tiny model's cache: set LLAMA2_COLAB_CACHE to a "
        "folder you can write to."
    )
    with fault_boundary(f"Cannot make the serving folder under {str(parent)!r}", also):
        parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(parent)
        root = Path(tempfile.mkdtemp(prefix="serve-", dir=parent))
        try:
            (root / "pid").write_text(str(os.getpid()), encoding="ascii")
        except OSError:
            shutil.rmtree(root, ignore_errors=True)
            raise
    return root


def _sweep_stale(root: Path) -> None:
    """Remove the serving folders of servers that were killed before they could (links only)."""
    for folder in root.glob("serve-*"):
        try:
            pid = int((folder / "pid").read_text(encoding="ascii"))
            os.kill(pid, 0)  # still running: leave it
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):  # no pid file yet, or not ours to judge
            continue


def serve(
    model: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    engine: str = "auto",
    gpus: int = 1,
    continuous_batching: bool = False,
    ready_timeout: float = READY_TIMEOUT_S,
    say: Callable[[str], None] | None = None,
) -> int:
    """Serve a model over an OpenAI-compatible API until Ctrl-C; return the exit status.

    Checks the port, plans the model (refusing one that does not fit), prepares the serving
    folder with the reference chat template, starts the engine and says when it answers.
    Everything it prints goes through `say` (default: stdout), tokens masked.
    """
    say = say or _show
    check_port_free(host, port)
    root = _new_serving_folder()
    try:
        launch = build_launch(model, host, port, root, engine, gpus, continuous_batching, say)
        # transformers 5.15 lists the Hub cache in /v1/models and answers 500 when it is missing.
        Path(hub_constants.HF_HUB_CACHE).mkdir(parents=True, exist_ok=True)
        return run_engine(launch, ready_timeout, say)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- in the background, for a notebook ---------------------------------------------------------
