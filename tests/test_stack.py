"""The stack a learner runs: Colab's versions are the floor; the Setup cell changes none of them.

CI runs every test twice: in `.venv` with the newest releases, and in `.venv-colab` with exactly
what a Colab GPU runtime ships (`constraints/colab.txt`). These tests keep the declared lower
bounds, the pins, Google's published list and the notebooks' Setup cell telling the same story.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from llama2_colab.colab import REPO, colab_url, describe_install, install_url, setup_cell_source

ROOT = Path(__file__).resolve().parents[1]
COLAB_FREEZE = ROOT.parent / "shared" / "colab" / "pip-freeze.gpu.txt"
NOT_ON_COLAB = {"bitsandbytes", "hypothesis", "nbval"}  # pinned at our declared floor instead
UNPINNED = {"ruff"}  # a lint tool: the newest is what runs


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line.strip())
        if m:
            pins[_norm(m[1])] = m[2].split("+")[0]
    return pins


COLAB_PINS = _pins((ROOT / "constraints" / "colab.txt").read_text(encoding="utf-8"))


def _declared_requirements() -> list[Requirement]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs.extend(extra)
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs.append(line)
    return [Requirement(r) for r in reqs]


def _lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    return min(bounds) if bounds else None


def test_every_lower_bound_is_a_version_ci_runs():
    for req in _declared_requirements():
        name = _norm(req.name)
        if name in UNPINNED:
            continue
        assert name in COLAB_PINS, f"{req} has no pin in constraints/colab.txt: CI never runs it"
        assert _lower_bound(req) == Version(COLAB_PINS[name]), (
            f"{req}: the lower bound must be the version CI runs ({COLAB_PINS[name]})"
        )


def test_torch_is_never_a_dependency():
    assert all(_norm(r.name) != "torch" for r in _declared_requirements())


@pytest.mark.skipif(not COLAB_FREEZE.is_file(), reason="../shared/colab is not beside this clone")
def test_colab_pins_are_googles_published_versions():
    google = _pins(COLAB_FREEZE.read_text(encoding="utf-8"))
    for name, version in COLAB_PINS.items():
        if name in NOT_ON_COLAB:
            assert name not in google, f"Colab ships {name} now: pin its version"
        else:
            assert google.get(name) == version, f"{name}: Colab ships {google.get(name)}"


def _off_colab_pins() -> dict[str, str]:
    """Each pinned package this environment lacks or has at another version: what it has."""
    off = {}
    for name, version in COLAB_PINS.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            off[name] = "missing"
            continue
        if installed.split("+")[0] != version:
            off[name] = installed
    return off


# `setup.sh --stack colab` builds this venv; CI runs the suite in it. Decided by the venv, not
# by the versions found, so a stack that lost a pin fails below instead of skipping quietly.
IN_THE_COLAB_VENV = Path(sys.prefix).name == ".venv-colab"
colab_venv_only = pytest.mark.skipif(
    not IN_THE_COLAB_VENV, reason="not the Colab stack (bash scripts/setup.sh --dev --stack colab)"
)


IN_THE_NEWEST_VENV = Path(sys.prefix).name == ".venv"
COLAB_OS = ROOT.parent / "shared" / "colab" / "os-info-gpu.txt"


def _setup_colab_python() -> tuple[int, int]:
    """The Python minor version `setup.sh --stack colab` builds .venv-colab with."""
    text = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    found = re.search(r"^COLAB_PYTHON=(\d+)\.(\d+)\b", text, re.M)
    assert found, "scripts/setup.sh names Colab's Python as COLAB_PYTHON=3.x"
    return int(found[1]), int(found[2])


@pytest.mark.skipif(not COLAB_OS.is_file(), reason="../shared/colab is not beside this clone")
def test_the_colab_stack_is_built_on_the_python_colab_runs():
    published = re.search(r"^Python (\d+)\.(\d+)\.", COLAB_OS.read_text(encoding="utf-8"), re.M)
    assert published, f"{COLAB_OS} names Colab's Python"
    assert _setup_colab_python() == (int(published[1]), int(published[2]))


@colab_venv_only
def test_the_colab_venv_runs_colabs_python():
    # CI runs Colab's packages on Colab's minor version: 3.13 (Colab has 3.13.15).
    assert sys.version_info[:2] == _setup_colab_python(), (
        f"{sys.prefix} runs Python {sys.version.split()[0]}: rebuild it with "
        "`rm -rf .venv-colab && bash scripts/setup.sh --dev --stack colab`"
    )


@colab_venv_only
def test_the_colab_venv_opens_notebooks_in_colabs_classic_front_end():
    # ipywidgets 7.7.1 draws in the classic Notebook 6.5; JupyterLab 4 would need ipywidgets 8.
    assert importlib.metadata.version("notebook").startswith("6.")
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("jupyterlab")


@pytest.mark.skipif(not IN_THE_NEWEST_VENV, reason="not .venv (bash scripts/setup.sh --dev)")
def test_the_newest_venv_opens_notebooks_in_jupyterlab():
    # The README's `.venv/bin/jupyter lab` works after `bash scripts/setup.sh --dev`.
    assert Version(importlib.metadata.version("jupyterlab")) >= Version("4")
    run = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "jupyter"), "lab", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and Version(run.stdout.strip()) >= Version("4"), run.stderr


@colab_venv_only
def test_the_colab_stack_has_every_pin_at_its_version():
    # Each pin is Colab's version (or, for what Colab lacks, our declared floor): a package
    # missing here is one a learner on Colab has and CI never ran with.
    off = _off_colab_pins()
    assert not off, f"the Colab stack differs from constraints/colab.txt: {off}"


@colab_venv_only
def test_the_setup_cells_install_changes_nothing_colab_ships(tmp_path):
    # What the Setup cell runs on a Colab GPU runtime, with this checkout in place of GitHub.
    report = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--report",
            str(report),
            f"llama2-colab[notebooks,quant] @ {ROOT.as_uri()}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    changed = {
        _norm(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    touched = {n: v for n, v in changed.items() if n in COLAB_PINS and n not in NOT_ON_COLAB}
    assert touched == {}, f"the Setup cell would change what Colab ships: {touched}"


def _notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_the_setup_cell_is_the_generated_one(path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from clean_notebooks import setup_cell_index
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    index = setup_cell_index(cells)
    assert index is not None, "a '## Setup' heading followed by the Setup code cell"
    assert "".join(cells[index]["source"]) == setup_cell_source(), "run scripts/clean_notebooks.py"


def test_one_constant_names_the_repository_everywhere():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from clean_notebooks import badge_page
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    page = (ROOT / "colab_badge.md").read_text(encoding="utf-8")
    assert page == badge_page(_notebooks()), "run scripts/clean_notebooks.py"
    assert REPO in install_url() and install_url() in setup_cell_source()
    for doc in [ROOT / "README.md", ROOT / "colab_badge.md", *_notebooks()]:
        text = doc.read_text(encoding="utf-8")
        for url in re.findall(r"https://colab\.research\.google\.com/github/[^)\s\"]+", text):
            path = url.split(f"/blob/{'main'}/", 1)[-1]
            assert url == colab_url(path), f"{doc.name}: {url} does not come from REPO"
        for url in re.findall(r"git\+https://github\.com/[\w.@/-]+", text):
            assert url == install_url(), f"{doc.name}: {url} does not come from REPO"


def test_the_setup_report_names_versions_and_says_when_to_restart():
    # A module imported before pip changed it keeps its old code: the one case for a restart.
    code = (
        "import sys, types\n"
        "sys.modules['peft'] = types.SimpleNamespace(__version__='0.0.1')\n"
        "from llama2_colab.colab import describe_install\n"
        "print(describe_install())"
    )
    stale = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "Restart needed: peft 0.0.1 is imported but" in stale.stdout, stale.stderr
    fresh = describe_install()
    assert f"transformers {importlib.metadata.version('transformers')}" in fresh
    assert "No restart needed" in fresh


NO_BITSANDBYTES = """
import sys
sys.modules["bitsandbytes"] = None  # as on a fresh Colab runtime: it does not ship bitsandbytes
from llama2_colab import UserFacingError, load_with_plan, make_plan, preset_runtime
plan = make_plan("meta-llama/Llama-2-13b-chat-hf", preset_runtime("T4"))
try:
    load_with_plan(plan)
except UserFacingError as err:
    print("USER", err.what, "|", err.todo)
"""


def test_a_4bit_load_without_bitsandbytes_says_what_to_install():
    run = subprocess.run(
        [sys.executable, "-c", NO_BITSANDBYTES], capture_output=True, text=True, timeout=300
    )
    assert "USER" in run.stdout, run.stderr[-2000:]
    assert "needs the bitsandbytes package" in run.stdout
    assert "%pip install bitsandbytes" in run.stdout
    assert "Traceback" not in run.stderr
