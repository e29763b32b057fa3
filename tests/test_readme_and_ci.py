"""The README's Quick start is exactly two commands, and CI runs the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README needs a '## Quick start' section"
    blocks = re.findall(r"```bash\n(.*?)```", section.group(1), re.S)
    assert len(blocks) == 1, "one code block"
    return [ln for ln in blocks[0].splitlines() if ln.strip()]


def test_quick_start_is_demo_then_tests():
    demo, tests = _quick_start_commands()
    assert demo.endswith("python -m llama2_colab demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = _quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines()


def test_setup_never_pins_torch_into_the_package():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    for text in (pyproject, requirements):
        deps = [ln for ln in text.splitlines() if re.match(r'\s*"?torch\b', ln)]
        assert deps == [], f"torch must not be a dependency (Colab ships it): {deps}"


def _stack_pythons() -> dict[str, str]:
    """{venv: the Python minor version .ci/run requires of it}, e.g. {".venv": "3.11"}."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    return dict(re.findall(r"^python_is (\.venv[\w-]*)/bin/python (\d+\.\d+)$", ci, re.M))


def test_ci_runs_both_ends_of_requires_python():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    floor = re.search(r'^requires-python = ">=(\d+\.\d+)"$', pyproject, re.M)
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    colab = re.search(r"^COLAB_PYTHON=(\d+\.\d+)\b", setup, re.M)
    assert floor and colab
    # The newest stack runs the declared floor; Colab's runs the Python setup.sh builds it on.
    assert _stack_pythons() == {".venv": floor[1], ".venv-colab": colab[1]}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"^\| newest \|[^|]*\| {re.escape(floor[1])}\b", readme, re.M)
    assert re.search(rf"^\| Colab's \|[^|]*\| {re.escape(colab[1])}\b", readme, re.M)


def test_the_readme_says_how_to_open_the_notebooks_outside_colab():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "`.venv/bin/jupyter lab`" in readme, "the one command that opens JupyterLab in .venv"
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    latest = re.search(r"^  latest\).*?;;", setup, re.M | re.S)
    assert latest and "jupyterlab" in latest.group(0), "setup.sh --dev installs JupyterLab"
