"""Facts about the machine, and the loading settings they call for.

Two halves, kept apart on purpose: `detect_runtime()` probes the machine and returns plain facts;
`recommend_settings(facts)` decides from facts alone. That is what lets the decision be tested
for a T4, an A100 or a CPU-only box on any machine (see `preset_runtime`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import asdict, dataclass

__all__ = [
    "ATTENTION",
    "GiB",
    "T4_MENU_PATH",
    "GpuFacts",
    "RuntimeFacts",
    "Settings",
    "GPU_PRESETS",
    "detect_runtime",
    "preset_runtime",
    "recommend_settings",
    "settings_for",
    "format_report",
    "runtime_report_dict",
]

GiB = 1024**3
# The attention kernel, everywhere: FlashAttention-2 refuses Turing GPUs (a T4) outright, and on
# a T4 SDPA already picks the memory-efficient kernel.
ATTENTION = "sdpa"
# Where Colab switches the runtime to a GPU; every message that sends you there says this.
T4_MENU_PATH = "Runtime > Change runtime type > T4 GPU"


@dataclass(frozen=True)
class GpuFacts:
    """One CUDA device as torch sees it."""

    name: str
    compute_capability: tuple[int, int]
    total_memory_bytes: int


@dataclass(frozen=True)
class RuntimeFacts:
    """What the notebook is running on: Colab or not, the GPU, RAM and disk."""

    colab: bool
    gpu: GpuFacts | None
    ram_total_bytes: int
    ram_available_bytes: int
    disk_free_bytes: int


@dataclass(frozen=True)
class Settings:
    """How to load a model on a runtime: device, dtype, attention kernel, and why."""

    device: str  # "cuda" or "cpu"
    dtype: str  # "float16" | "bfloat16" | "float32"
    attn_implementation: str  # always ATTENTION ("sdpa") here
    device_map: str | None  # "auto" on a GPU (accelerate places the weights), None on the CPU
    reason: str

    @property
    def torch_dtype(self):
        """The torch dtype object for `dtype` (imports torch)."""
        import torch

        return getattr(torch, self.dtype)


# Typical values as `torch.cuda.get_device_properties(0)` reports them, and the host RAM of the
# machine you usually get them on. T4: free Colab (14.75 GiB usable of 16 GB; 12.7 GiB RAM).
GPU_PRESETS: dict[str, RuntimeFacts] = {
    "T4": RuntimeFacts(
        True, GpuFacts("Tesla T4", (7, 5), 15_835_660_288), 13_609_431_040, 12_000_000_000, 80 * GiB
    ),
    "V100": RuntimeFacts(
        True,
        GpuFacts("Tesla V100-SXM2-16GB", (7, 0), 16_935_682_048),
        54_757_216_256,
        50 * GiB,
        80 * GiB,
    ),
    "L4": RuntimeFacts(
        True, GpuFacts("NVIDIA L4", (8, 9), 23_580_311_552), 56_867_946_496, 50 * GiB, 80 * GiB
    ),
    "A100-40GB": RuntimeFacts(
        True,
        GpuFacts("NVIDIA A100-SXM4-40GB", (8, 0), 42_298_834_944),
        89_632_923_648,
        80 * GiB,
        80 * GiB,
    ),
    "A100-80GB": RuntimeFacts(
        False,
        GpuFacts("NVIDIA A100-SXM4-80GB", (8, 0), 85_097_971_712),
        180 * GiB,
        170 * GiB,
        200 * GiB,
    ),
    "H100": RuntimeFacts(
        False,
        GpuFacts("NVIDIA H100 80GB HBM3", (9, 0), 84_929_347_584),
        200 * GiB,
        190 * GiB,
        200 * GiB,
    ),
    "cpu": RuntimeFacts(False, None, 24 * GiB, 22 * GiB, 50 * GiB),
}


def preset_runtime(name: str) -> RuntimeFacts:
    """Return the facts of a named machine (T4, V100, L4, A100-40GB, A100-80GB, H100, cpu)."""
    for key, facts in GPU_PRESETS.items():
        if key.lower() == name.lower():
            return facts
    known = ", ".join(GPU_PRESETS)
    raise ValueError(f"Unknown GPU {name!r}. Choose one of: {known}.")


def _in_colab() -> bool:
    if "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


def _memory_bytes() -> tuple[int, int]:
    """(total, available) system RAM: psutil if installed, else the OS's own counters."""
    try:
        import psutil
    except ImportError:  # e.g. a bare GPU box running scripts/gpu_check.sh from the repo
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                info = dict(line.split(":", 1) for line in f)
            return total, int(info["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return total, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    mem = psutil.virtual_memory()
    return int(mem.total), int(mem.available)


def detect_runtime() -> RuntimeFacts:
    """Probe this machine: Colab or not, the first CUDA GPU, RAM and free disk."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = GpuFacts(
            name=props.name,
            compute_capability=(props.major, props.minor),
            total_memory_bytes=int(props.total_memory),
        )
    ram_total, ram_available = _memory_bytes()
    return RuntimeFacts(
        colab=_in_colab(),
        gpu=gpu,
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
        disk_free_bytes=_disk_free_bytes(os.path.expanduser("~")),
    )


def _disk_free_bytes(folder: str) -> int:
    """Free bytes on the disk that holds folder, or would hold it (HOME may not exist yet)."""
    path = os.path.abspath(folder)
    while True:
        try:
            return int(shutil.disk_usage(path).free)
        except OSError:
            parent = os.path.dirname(path)
            if parent == path:
                return 0
            path = parent


def settings_for(device: str, dtype: str, reason: str) -> Settings:
    """Return the loading settings for a device and dtype already decided, and why.

    The rest follows from the device: SDPA attention (`ATTENTION`) everywhere, and on a GPU
    `device_map="auto"` so accelerate places the weights straight on it.
    """
    device_map = "auto" if device == "cuda" else None
    return Settings(device, dtype, ATTENTION, device_map, reason)


def recommend_settings(facts: RuntimeFacts) -> Settings:
    """Decide device, dtype and attention kernel from the facts alone.

    bf16 only from compute capability 8.0 (Ampere) up. A T4 (7.5) has no bf16 tensor cores;
    `torch.cuda.is_bf16_supported()` still says True there because it counts emulation, and
    emulated bf16 matmuls run about 17x slower than fp16 on a T4. So we never ask torch.
    """
    if facts.gpu is None:
        return settings_for(
            "cpu",
            "float32",
            "No CUDA GPU: float32 on the CPU (fp16 matmuls on a CPU are slow or missing).",
        )
    major, minor = facts.gpu.compute_capability
    if (major, minor) >= (8, 0):
        return settings_for(
            "cuda",
            "bfloat16",
            f"{facts.gpu.name} has compute capability {major}.{minor} >= 8.0: native bfloat16, "
            "same memory as float16 and no overflow risk.",
        )
    return settings_for(
        "cuda",
        "float16",
        f"{facts.gpu.name} has compute capability {major}.{minor} < 8.0: no bfloat16 tensor "
        "cores, so float16 (bfloat16 would be emulated, ~17x slower on a T4). "
        "SDPA attention: FlashAttention-2 needs compute capability 8.0.",
    )


def runtime_report_dict(facts: RuntimeFacts, settings: Settings | None = None) -> dict:
    """Return the facts and the recommended settings as one JSON-ready dict."""
    settings = settings or recommend_settings(facts)
    gpu = None
    if facts.gpu is not None:
        gpu = asdict(facts.gpu)
        gpu["compute_capability"] = list(facts.gpu.compute_capability)
    return {
        "colab": facts.colab,
        "gpu": gpu,
        "ram_total_bytes": facts.ram_total_bytes,
        "ram_available_bytes": facts.ram_available_bytes,
        "disk_free_bytes": facts.disk_free_bytes,
        "device": settings.device,
        "dtype": settings.dtype,
        "attn_implementation": settings.attn_implementation,
        "device_map": settings.device_map,
        "reason": settings.reason,
    }


def format_report(facts: RuntimeFacts, settings: Settings | None = None) -> str:
    """Return a short human-readable runtime report with the recommended settings."""
    settings = settings or recommend_settings(facts)
    where = "Google Colab" if facts.colab else "not Colab (local or other cloud)"
    if facts.gpu is None:
        gpu = "none (CPU only)"
    else:
        major, minor = facts.gpu.compute_capability
        gpu = (
            f"{facts.gpu.name}, compute capability {major}.{minor}, "
            f"{facts.gpu.total_memory_bytes / GiB:.2f} GiB"
        )
    lines = [
        f"Runtime : {where}",
        f"GPU     : {gpu}",
        f"RAM     : {facts.ram_total_bytes / GiB:.1f} GiB total, "
        f"{facts.ram_available_bytes / GiB:.1f} GiB available",
        f"Disk    : {facts.disk_free_bytes / GiB:.0f} GiB free",
        f"Settings: dtype={settings.dtype}, attn_implementation={settings.attn_implementation}, "
        f"device_map={settings.device_map}",
        f"Why     : {settings.reason}",
    ]
    if facts.gpu is None and facts.colab:
        lines.append(f"Hint    : {T4_MENU_PATH}, then run the notebook again.")
    return "\n".join(lines)
