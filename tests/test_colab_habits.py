"""Colab habits: Drive is opt-in and checked for room; Run all never mounts it unasked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llama2_colab import UserFacingError
from llama2_colab.colab import drive_cache_dir

ROOT = Path(__file__).resolve().parents[1]


def test_an_unmounted_drive_is_none_not_a_folder_named_none(tmp_path):
    assert drive_cache_dir(mount_point=str(tmp_path / "drive")) is None
    assert list(tmp_path.iterdir()) == []


def test_a_full_drive_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "MyDrive").mkdir()
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(UserFacingError) as err:
        drive_cache_dir(mount_point=str(tmp_path), need_bytes=free + 10**12)
    assert "GB free" in err.value.what and "USE_DRIVE" in err.value.todo
    assert list((tmp_path / "MyDrive").iterdir()) == []  # nothing created


def test_a_drive_with_room_gets_the_cache_folder(tmp_path):
    (tmp_path / "MyDrive").mkdir()
    path = drive_cache_dir(mount_point=str(tmp_path), need_bytes=1)
    assert path == tmp_path / "MyDrive" / "llama2-colab" / "hf-cache" and path.is_dir()


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_drive_is_mounted_only_behind_an_opt_in_form_field(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "drive.mount(" in source:
            assert 'USE_DRIVE = False  # @param {type:"boolean"}' in source
            assert "if USE_DRIVE" in source
