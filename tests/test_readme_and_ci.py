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
