"""Run a notebook once in a live kernel and read its values from tests (on jupyter_client).

The lessons keep only the asserts that teach; the checks a test needs read the executed
notebook's namespace instead, so a learner can change any knob and still Run all:

    nb = executed("05_chat_prompting")      # runs every code cell once per test session
    assert nb.value("ids[:4]") == [1, 518, 25580, 29962]

`value` returns any JSON-able expression evaluated in the notebook's kernel. Each cell's stderr
is kept (`nb.stderr`) for the test that no unexplained warning reaches a learner, and what each
cell shows a learner (`nb.printed`: its stdout and the text of its displayed values) for the test
that the figures the markdown quotes are the ones the cells print.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 600


class NotebookCellError(AssertionError):
    """A notebook cell raised: the test shows the cell and its traceback."""


@dataclass
class ExecutedNotebook:
    """A notebook whose code cells all ran, top to bottom, in a kernel that stays up."""

    name: str
    kernel_manager: object
    client: object
    # (cell index, stderr text) for every code cell that wrote to stderr
    stderr: list[tuple[int, str]] = field(default_factory=list)
    # cell index -> what the code cell showed: its stdout, then its displayed values as text
    printed: dict[int, str] = field(default_factory=dict)

    def run(self, code: str) -> tuple[str, str]:
        """Execute code in the notebook's kernel; return (stdout, stderr); raise if it fails."""
        out = self._execute(code)
        return out["stdout"], out["stderr"]

    def _execute(self, code: str) -> dict[str, str]:
        """Execute code; return its "stdout", "stderr" and "display" text; raise if it fails."""
        out: dict[str, list[str]] = {"stdout": [], "stderr": [], "display": []}
        error: list[str] = []

        def hook(msg: dict) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]].append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out["display"].append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                error.append("\n".join(content["traceback"]))

        reply = self.client.execute_interactive(
            code, output_hook=hook, timeout=CELL_TIMEOUT_S, store_history=True
        )
        if reply["content"]["status"] != "ok" or error:
            raise NotebookCellError(f"{self.name}:\n{code}\n\n" + "\n".join(error))
        return {name: "".join(parts) for name, parts in out.items()}

    def value(self, expression: str):
        """Return the JSON-able value of expression, evaluated in the notebook's namespace."""
        marker = "@@value@@"
        stdout, _ = self.run(f"print({marker!r} + __import__('json').dumps({expression}))")
        return json.loads(stdout.split(marker, 1)[1])

    def close(self) -> None:
        self.client.stop_channels()
        self.kernel_manager.shutdown_kernel(now=True)


def execute_notebook(name: str) -> ExecutedNotebook:
    """Start a kernel in notebooks/ and run every code cell of notebooks/<name>.ipynb in order."""
    from jupyter_client.manager import start_new_kernel

    path = NOTEBOOKS / f"{name}.ipynb"
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(NOTEBOOKS))
    nb = ExecutedNotebook(name, km, kc)
    try:
        for index, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            out = nb._execute("".join(cell["source"]))
            nb.printed[index] = out["stdout"] + out["display"]
            if out["stderr"].strip():
                nb.stderr.append((index, out["stderr"]))
    except BaseException:
        nb.close()
        raise
    return nb
