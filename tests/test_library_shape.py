"""The library stays readable in an afternoon: short bodies, imports at the top, no private writes.

Measured with `ast` over `llama2_colab/`, so a newcomer's next change keeps the shape the
codebases we admire have (STYLE.md, "Patterns from the codebases we admire").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "llama2_colab"
MAX_BODY_LINES = 60

# Files left out of these checks (none now).
LEAD_OWNED: set[str] = set()

# Imports allowed inside a function, by the module imported, each with its measured reason
# (`python -X importtime`, 2-core CPU machine, 2026-11-27).
LAZY_MODULES = {
    "torch": "3.6 s to import; `import llama2_colab` and `access` never need it",
    "transformers": "1.4 s to import (and pulls torch); `access` and `plan --list` need neither",
    "accelerate": "1.9 s to import (pulls torch); only random 4-bit weights need it",
    "bitsandbytes": "GPU-only, not installed on CPU machines; only 4-bit loading needs it",
    "safetensors.torch": "pulls torch (3.6 s); only writing a converted checkpoint needs it",
    "ipywidgets": "0.26 s and an optional extra (`notebooks`); only the chat app needs it",
    "IPython.display": "only a notebook displays; comes with ipywidgets, not with the library",
    "google.colab": "exists only on Colab",
    "resource": "Unix-only standard module (no Windows); the RSS fallback needs it",
    "psutil": "optional on a bare GPU box (scripts/gpu_check.sh); RAM falls back to /proc",
    "openai": "an optional extra (`serve`; Colab ships it), 0.9 s to import; only an endpoint "
    "needs it, and a missing one gets a pip command",
    "google.protobuf": "imported to check it is installed: a missing one gets a pip command",
    "sentencepiece": "optional: only reading or writing a tokenizer.model needs its protobuf "
    "module, and a missing one gets a pip command",
}
# Relative imports allowed inside a function, by file, each with its measured reason.
LAZY_RELATIVE = {
    "cli.py": "each command imports only its own modules: `access` answers in ~0.1 s, without "
    "the 1.4 s transformers import that `.generation` and `.chat` pay at their top",
    "__init__.py": "the lazy `__getattr__` is what keeps `import llama2_colab` cheap",
}
# Files whose imports are left as they are for now, and why.
IMPORTS_LEFT_FOR_NOW = {}


def _library_files() -> list[Path]:
    return sorted(p for p in LIBRARY.glob("*.py") if p.name not in LEAD_OWNED)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return node.end_lineno - node.body[0].lineno + 1


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: p.name)
def test_no_function_body_is_over_60_lines(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = {f.name: _body_lines(f) for f in _functions(tree) if _body_lines(f) > MAX_BODY_LINES}
    assert not long, f"{path.name}: split these into small steps: {long}"


def _local_imports(tree: ast.AST):
    for function in _functions(tree):
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield function.name, alias.name, 0
            elif isinstance(node, ast.ImportFrom):
                yield function.name, node.module or "", node.level


def _allowed(file: str, module: str, level: int) -> bool:
    if file in IMPORTS_LEFT_FOR_NOW:
        return True
    if level:
        return file in LAZY_RELATIVE
    return any(module == lazy or module.startswith(lazy + ".") for lazy in LAZY_MODULES)


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: p.name)
def test_imports_are_at_the_top_unless_measured(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    stray = [
        f"{function}: {'.' * level}{module}"
        for function, module, level in _local_imports(tree)
        if not _allowed(path.name, module, level)
    ]
    assert not stray, f"{path.name}: move to the top (or measure why not): {stray}"


def _written_private(tree: ast.AST):
    """Yield `obj._name` written anywhere, where obj is not self or cls (our own state)."""
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("_")
        ):
            yield ast.unparse(node)
        for target in targets:
            for sub in ast.walk(target):
                if (
                    isinstance(sub, ast.Attribute)
                    and sub.attr.startswith("_")
                    and not sub.attr.startswith("__")
                    and not (isinstance(sub.value, ast.Name) and sub.value.id in ("self", "cls"))
                ):
                    yield ast.unparse(target)


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: p.name)
def test_no_private_attribute_of_another_library_is_written(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not list(_written_private(tree)), path.name


def test_reply_streamer_overrides_only_the_documented_hooks():
    """transformers' streamers document put, end and on_finalized_text as the hooks to override."""
    from transformers import TextStreamer

    from llama2_colab.generation import ReplyStreamer

    ours = {
        name
        for name, value in vars(ReplyStreamer).items()
        if callable(value) and not name.startswith("__")
    }
    overridden = {name for name in ours if hasattr(TextStreamer, name)}
    assert overridden == {"put", "end", "on_finalized_text"}

    parents_state = set(vars(TextStreamer(None)))  # what the parent's __init__ keeps
    tree = ast.parse(Path(LIBRARY / "generation.py").read_text(encoding="utf-8"))
    streamer = next(
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "ReplyStreamer"
    )
    written = {
        sub.attr
        for node in ast.walk(streamer)
        if isinstance(node, ast.Assign | ast.AugAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        for sub in ast.walk(target)
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
        if sub.value.id == "self"
    }
    assert not written & parents_state, f"writes the parent's state: {written & parents_state}"
