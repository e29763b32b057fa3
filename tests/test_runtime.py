"""The dtype and attention decision for the GPUs learners actually get, from facts alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llama2_colab import GpuFacts, RuntimeFacts, preset_runtime, recommend_settings


@pytest.mark.parametrize(
    "gpu, dtype",
    [
        ("T4", "float16"),  # Turing 7.5: no bf16 tensor cores, whatever torch says
        ("V100", "float16"),  # Volta 7.0
        ("L4", "bfloat16"),  # Ada 8.9
        ("A100-40GB", "bfloat16"),
        ("A100-80GB", "bfloat16"),
        ("H100", "bfloat16"),
        ("cpu", "float32"),
    ],
)
def test_dtype_follows_compute_capability(gpu, dtype):
    settings = recommend_settings(preset_runtime(gpu))
    assert settings.dtype == dtype
    assert settings.attn_implementation == "sdpa"  # never FlashAttention-2 (refuses Turing)


def test_t4_gets_fp16_on_the_gpu_with_reason():
    settings = recommend_settings(preset_runtime("T4"))
    assert (settings.device, settings.device_map) == ("cuda", "auto")
    assert "7.5" in settings.reason and "float16" in settings.reason


def test_cpu_only_machine_loads_on_the_cpu():
    settings = recommend_settings(preset_runtime("cpu"))
    assert (settings.device, settings.device_map) == ("cpu", None)


def test_boundary_is_compute_capability_8_0():
    def facts(cc):
        return RuntimeFacts(False, GpuFacts("x", cc, 16 * 2**30), 2**34, 2**33, 2**35)

    assert recommend_settings(facts((7, 9))).dtype == "float16"
    assert recommend_settings(facts((8, 0))).dtype == "bfloat16"


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="T4"):
        preset_runtime("RTX9090")


def test_doctor_json_reports_this_machine_as_torch_sees_it():
    import torch

    out = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "doctor", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(out)
    assert report["colab"] is False
    assert report["attn_implementation"] == "sdpa"
    assert isinstance(report["ram_total_bytes"], int) and report["ram_total_bytes"] > 0
    if not torch.cuda.is_available():
        assert report["gpu"] is None
        assert (report["device"], report["dtype"]) == ("cpu", "float32")
        return
    props = torch.cuda.get_device_properties(0)
    assert report["gpu"]["name"] == props.name
    assert report["gpu"]["compute_capability"] == [props.major, props.minor]
    assert report["device"] == "cuda"
    # float16 below compute capability 8.0 (a T4 is 7.5), bfloat16 from Ampere up.
    assert report["dtype"] == ("bfloat16" if props.major >= 8 else "float16")


def test_detect_runtime_works_without_psutil():
    """scripts/gpu_check.sh runs from the repo on bare GPU boxes that may lack psutil."""
    code = (
        "import sys; sys.modules['psutil'] = None\n"
        "from llama2_colab.runtime import detect_runtime\n"
        "f = detect_runtime(); print(f.ram_total_bytes, f.ram_available_bytes)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    total, available = map(int, out.stdout.split())
    import psutil

    assert total == psutil.virtual_memory().total
    assert 0 < available <= total
