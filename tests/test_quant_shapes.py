"""Every 4-bit layer the project builds packs on every CPU, AVX512-BF16 ones included.

bitsandbytes (0.49+) repacks NF4 weights for CPUs with AVX512-BF16 the first time a layer runs,
in blocks of 32 output rows (it asserts `N must be divisible by block_n` otherwise) and with one
scale per quantization block of each row (the input size must be a multiple of the block size).
On a CPU without AVX512-BF16 that code never runs, so a bad shape passes there and breaks a
newcomer's suite elsewhere. These tests check each quantized layer's shape against the packing
rule on any CPU, and run bitsandbytes' own packing step on it where that bitsandbytes has one.
"""

from __future__ import annotations

import copy

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

# bitsandbytes.functional._convert_weight_packed_for_cpu(qweight, quant_state, block_n=32)
CPU_PACK_BLOCK_N = 32


def _load_tiny_nf4(tiny_dir):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    return AutoModelForCausalLM.from_pretrained(
        tiny_dir, quantization_config=config, dtype=torch.float32, device_map="cpu"
    )


def _scaled_down_13b_nf4():
    from test_bench import _scaled_down_13b

    from llama2_colab.bench_harness import build_random_model

    return build_random_model(
        "13b", device="cpu", dtype="float32", quantization="nf4", config=_scaled_down_13b()
    )


@pytest.fixture(scope="module", params=["tiny Llama 2", "scaled-down 13B (bench tests)"])
def nf4_model(request, tiny_dir):
    if request.param == "tiny Llama 2":
        return _load_tiny_nf4(tiny_dir)
    return _scaled_down_13b_nf4()


def _linear4bit_layers(model) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def test_every_4bit_layer_meets_the_avx512_bf16_packing_rule(nf4_model):
    layers = _linear4bit_layers(nf4_model)
    assert layers, "the model has no 4-bit layers: the test would check nothing"
    bad = [
        f"{name}: {m.out_features} rows x {m.in_features} columns"
        for name, m in layers
        if m.out_features % CPU_PACK_BLOCK_N or m.in_features % m.weight.quant_state.blocksize
    ]
    assert not bad, f"bitsandbytes cannot pack these on AVX512-BF16 CPUs: {bad}"


def test_bitsandbytes_own_cpu_packing_accepts_every_4bit_layer(nf4_model):
    import bitsandbytes.functional as F

    pack = getattr(F, "_convert_weight_packed_for_cpu", None)
    if pack is None:
        pytest.skip(f"bitsandbytes {bnb.__version__} has no AVX512-BF16 CPU repacking step")
    for name, layer in _linear4bit_layers(nf4_model):
        weight = layer.weight
        packed, _ = pack(weight.data.clone(), copy.deepcopy(weight.quant_state))
        assert packed.numel() * packed.element_size() > 0, name
