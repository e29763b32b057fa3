"""The package imports cheaply and every public name it lists resolves."""

from __future__ import annotations

import subprocess
import sys

import llama2_colab


def test_every_public_name_resolves():
    for name in llama2_colab.__all__:
        assert getattr(llama2_colab, name) is not None, name


def test_import_has_no_heavy_side_effects():
    heavy = "('torch', 'transformers', 'ipywidgets')"
    code = f"import sys, llama2_colab; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_is_a_plain_attribute_error():
    try:
        llama2_colab.no_such_helper  # noqa: B018
    except AttributeError as err:
        assert "no_such_helper" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_the_wheel_colab_installs_carries_the_data_files(tmp_path):
    """Colab installs from git (a wheel, not editable): the catalog and corpus must be inside."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("llama2_colab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"llama2_colab/data/catalog.json", "llama2_colab/data/tiny_corpus.txt"} <= names
    # Llama 2's vocabulary and its licence notice: the offline tiny model's tokenizer needs both.
    assert {
        "llama2_colab/data/llama2_vocab.json",
        "llama2_colab/data/LLAMA2_NOTICE.txt",
        "llama2_colab/data/LLAMA2_LICENSE.txt",  # the agreement, which redistribution must carry
    } <= names
    assert "llama2_colab/__main__.py" in names
