"""Validate before building: every model config, and every convert input against its weights.

A local config.json (the Hub's is in test_hub_faults.py) and Meta's params.json are checked for
types and sane ranges before anything is allocated: a size of zero or below, a string where a
number belongs, heads that do not split, 200,000 layers (which used to hang, growing memory on
the meta device), an absurd vocabulary. `convert` then checks params.json against the shards
(layer count, shapes, what a shard holds) before it writes anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from test_convert import make_params, write_meta_folder

from llama2_colab.config_values import check_meta_params, check_model_config
from llama2_colab.errors import UserFacingError

CONFIG_CASES = [
    ({"hidden_size": -64}, r"hidden_size=-64: it must be from 1 to 65,536"),
    ({"num_hidden_layers": 0}, r"num_hidden_layers=0: it must be from 1"),
    ({"intermediate_size": "192"}, r"intermediate_size='192': it must be a whole number, not str"),
    ({"vocab_size": 32000.5}, r"vocab_size=32000\.5: it must be a whole number, not float"),
    ({"num_attention_heads": True}, r"num_attention_heads=True: it must be a whole number"),
    ({"num_attention_heads": 3, "head_dim": None}, r"3 does not divide it"),
    ({"num_key_value_heads": 3}, r"3 does not divide 4, so the heads cannot share them"),
    ({"num_hidden_layers": 200_000}, r"num_hidden_layers=200,000: it must be from 1 to 1,024"),
    ({"vocab_size": 10**12}, r"vocab_size=1,000,000,000,000: it must be from 1 to 1,048,576"),
    ({"rms_norm_eps": "tiny"}, r"rms_norm_eps='tiny': it must be a number above 0"),
    ({"rms_norm_eps": -1e-5}, r"rms_norm_eps=-1e-05: it must be a number above 0"),
    ({"head_dim": 15}, r"heads of 15 dimensions: rotary position embeddings need an even"),
    ({"rope_parameters": {"rope_theta": 0}}, r"rope_theta=0: it must be a number above 0"),
    ({"max_position_embeddings": None}, r"max_position_embeddings=None: it must be a whole"),
    # Values that pass the range checks but that transformers cannot build a model from.
    (
        {"rope_parameters": {"rope_type": "bogus", "rope_theta": 10000.0}},
        r"rope_type='bogus' \(in rope_parameters\): transformers knows default, ",
    ),
    ({"rope_scaling": {"type": "bogus", "factor": 2.0}}, r"rope_type='bogus'"),
    ({"dtype": "int4"}, r"dtype='int4': a Llama model's weights are floating-point numbers"),
    ({"dtype": "float8_e4m3fn"}, r"dtype='float8_e4m3fn': a Llama model's weights are float"),
    ({"dtype": "bogus"}, r"dtype='bogus': a Llama model's weights are floating-point"),
    ({"torch_dtype": "int8"}, r"torch_dtype='int8': a Llama model's weights"),
    ({"pad_token_id": 50_000}, r"pad_token_id=50000: a token id must be a whole number from 0"),
    ({"eos_token_id": 99_999}, r"eos_token_id=99999: a token id must be"),
    ({"bos_token_id": -5}, r"bos_token_id=-5: a token id must be"),
    ({"eos_token_id": [2, 99_999]}, r"eos_token_id=\[2, 99999\]: a token id must be"),
    ({"model_type": ["llama"]}, r"model_type=\['llama'\], a list: it must be a name"),
    (
        {"quantization_config": {"quant_method": "gptq", "bits": 4}},
        r"already quantized \(quantization_config, quant_method 'gptq'\).* cannot load",
    ),
]


@pytest.fixture(scope="module")
def bad_configs(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("configs")
    for i, (changes, _) in enumerate(CONFIG_CASES):
        shutil.copytree(tiny_dir, root / f"case{i}")
        config = json.loads((root / f"case{i}" / "config.json").read_text())
        (root / f"case{i}" / "config.json").write_text(json.dumps({**config, **changes}))
    return root


@pytest.mark.parametrize("i", range(len(CONFIG_CASES)), ids=[str(c[0]) for c in CONFIG_CASES])
@pytest.mark.parametrize("command", ["plan", "demo"])
def test_a_local_config_is_checked_before_anything_is_built(bad_configs, capsys, i, command):
    folder = str(bad_configs / f"case{i}")
    argv = ["plan", folder, "--gpu", "T4"] if command == "plan" else ["demo", "--model", folder]
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and re.search(CONFIG_CASES[i][1], err), err
    assert "config.json" in err and "What to do:" in err
    assert "Traceback" not in err and "Loaded in" not in out


def _remove(name: str):
    return lambda folder: (folder / name).unlink()


def _loop(name: str):
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).symlink_to(folder / name)

    return damage


def _text(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


SIDE_CASES = [
    ("no tokenizer_config.json", _remove("tokenizer_config.json"), r"has no BOS or EOS token"),
    (
        "a looping tokenizer_config.json",
        _loop("tokenizer_config.json"),
        r"tokenizer_config.json': a symbolic link loops back on itself",
    ),
    ("a damaged generation_config.json", _text("generation_config.json", "{"), r"not valid JSON"),
    ("a tokenizer.json that is a list", _text("tokenizer.json", "[]"), r"not a JSON object"),
]


@pytest.mark.parametrize(
    ("damage", "message"), [c[1:] for c in SIDE_CASES], ids=[c[0] for c in SIDE_CASES]
)
def test_the_files_beside_the_config_are_checked_too(tiny_dir, tmp_path, capsys, damage, message):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    damage(folder)
    code, out, err = run_cli(capsys, "demo", "--model", str(folder), "--max-new-tokens", "2")
    assert code == 1 and re.search(message, err), err
    assert "What to do:" in err and "Traceback" not in err and "You: " not in out


def test_a_5000_digit_number_in_config_json_is_named(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    text = json.dumps(json.loads((folder / "config.json").read_text()))
    hidden = f'"hidden_size": {json.loads(text)["hidden_size"]}'
    (folder / "config.json").write_text(text.replace(hidden, '"hidden_size": 1' + "0" * 5000))
    code, out, err = run_cli(capsys, "plan", str(folder), "--gpu", "T4")
    assert code == 1 and "config.json' is not readable JSON (ValueError: Exceeds the limit" in err
    assert "Traceback" not in err and "What to do:" in err


def _weight_cases(config: dict) -> list[tuple[str, dict, str]]:
    """(what, changes to the tiny model's config.json, the message), its weights as they are."""
    layers, vocab, hidden = (config[k] for k in ("num_hidden_layers", "vocab_size", "hidden_size"))
    return [
        (
            "more layers than the weights hold",
            {"num_hidden_layers": 2 * layers},
            rf"num_hidden_layers={2 * layers}, but the weights hold {layers} layers \(0 to "
            rf"{layers - 1}\): layers {layers} to {2 * layers - 1} would run on random values",
        ),
        (
            "fewer layers than the weights hold",
            {"num_hidden_layers": layers // 2},
            rf"num_hidden_layers={layers // 2}, but the weights hold {layers} layers .* of the "
            "weights would go unused",
        ),
        (
            "another vocabulary size",
            {"vocab_size": vocab // 2},
            rf"config.json says vocab_size={vocab // 2:,}, but lm_head.weight is {vocab} x",
        ),
        (
            "another hidden size",
            {"hidden_size": 2 * hidden},
            rf"config.json says hidden_size={2 * hidden}, but .* is .*{hidden}.* in the weights "
            r"\(and \d+ more tensors\)",
        ),
    ]


@pytest.mark.parametrize("i", range(4))
def test_a_config_that_does_not_match_its_weights_is_refused(tiny_dir, tmp_path, capsys, i):
    # Before, more layers than the weights hold ran with layers of random values (exit 0).
    config = json.loads((tiny_dir / "config.json").read_text())
    what, changes, message = _weight_cases(config)[i]
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    code, out, err = run_cli(capsys, "demo", "--model", str(folder), "--max-new-tokens", "2")
    assert code == 1 and re.search(message, err), (what, err)
    assert "its config.json and its weights disagree" in err and "What to do:" in err
    assert "Llama 2: " not in out and "Traceback" not in err


def test_200000_layers_are_refused_not_built(bad_configs):
    # Before, this grew past 3.6 GB on the meta device and did not end; the guard catches a hang.
    i = next(i for i, (c, _) in enumerate(CONFIG_CASES) if c.get("num_hidden_layers") == 200_000)
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "plan", str(bad_configs / f"case{i}")],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=240,
    )
    assert run.returncode == 1 and "num_hidden_layers=200,000" in run.stderr


def test_every_real_llama_config_passes():
    from llama2_colab.catalog import load_catalog

    for entry in load_catalog():  # 7B to 70B, Code Llama: none is refused
        check_model_config(entry.config, entry.id)


def test_the_real_params_json_of_llama_2_70b_passes():
    params = {"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64}
    params |= {"n_kv_heads": 8, "n_layers": 80, "norm_eps": 1e-05, "vocab_size": -1}
    checked = check_meta_params(params, "params.json", "")
    assert checked["n_kv_heads"] == 8 and checked["rope_theta"] == 10000.0


# --- convert: params.json against the weights it describes, before writing -------------------


@pytest.fixture(scope="module")
def meta_two_layers(tmp_path_factory):
    folder, _ = write_meta_folder(tmp_path_factory.mktemp("meta"), make_params(2), 1)
    return folder


@pytest.fixture
def meta_copy(meta_two_layers, tmp_path):
    shutil.copytree(meta_two_layers, tmp_path / meta_two_layers.name)
    shutil.copy(meta_two_layers.parent / "tokenizer.model", tmp_path / "tokenizer.model")
    return tmp_path / meta_two_layers.name


def _set_params(folder: Path, **changes) -> None:
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, **changes}))


def _shard(value):
    def damage(folder: Path) -> None:
        torch.save(value, folder / "consolidated.00.pth")

    return damage


def _rename_a_layer(folder: Path) -> None:
    sd = torch.load(folder / "consolidated.00.pth", weights_only=True)
    sd = {k.replace("layers.1.", "layers.7."): v for k, v in sd.items()}
    torch.save(sd, folder / "consolidated.00.pth")


def _int_weights(folder: Path) -> None:
    sd = torch.load(folder / "consolidated.00.pth", weights_only=True)
    sd["layers.0.attention.wq.weight"] = sd["layers.0.attention.wq.weight"].long()
    torch.save(sd, folder / "consolidated.00.pth")


def _reshape(name: str, change):
    """Replace tensor `name` of the shard by change(tensor); change None: remove it."""

    def damage(folder: Path) -> None:
        sd = torch.load(folder / "consolidated.00.pth", weights_only=True)
        if change is None:
            del sd[name]
        else:
            sd[name] = change(sd[name])
        torch.save(sd, folder / "consolidated.00.pth")

    return damage


def _retype(name: str, dtype):
    return _reshape(name, lambda t: t.to(dtype))


def _params_text(change):
    def damage(folder: Path) -> None:
        text = json.dumps(json.loads((folder / "params.json").read_text()))
        (folder / "params.json").write_text(change(text))

    return damage


def _loop_meta(name: str):
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).symlink_to((folder / name).name)

    return damage


def _fifo_meta(name: str):
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        os.mkfifo(folder / name)  # read, it would wait for a writer forever

    return damage


META_CASES = [
    ("fewer layers in params", lambda f: _set_params(f, n_layers=1), r"n_layers=1, but .*2 layer"),
    ("more layers in params", lambda f: _set_params(f, n_layers=3), r"n_layers=3, but .*2 layer"),
    (
        "a layer missing",
        _rename_a_layer,
        r"n_layers=2, but .* holds 2 layer\(s\) \(layers 0 and 7: layer 1 missing, layer 7 beyond",
    ),
    (
        "a shard holding a tensor",
        _shard(torch.zeros(3, 4)),
        r"holds a float32 Tensor of shape \(3, 4\)",
    ),
    ("a shard holding a list", _shard([1, 2, 3]), r"holds a list of 3 items"),
    ("a shard holding an int", _shard(7), r"holds an int \('7'\)"),
    (
        "a shard holding ints",
        _int_weights,
        r"holds an int64 Tensor of shape \(64, 64\) as layers.0.attention.wq.weight: not float",
    ),
    (
        "a shard holding complex numbers",
        _retype("layers.1.feed_forward.w2.weight", torch.complex64),
        r"holds a complex64 Tensor of shape .* as layers.1.feed_forward.w2.weight: not float",
    ),
    (
        "wq with an extra dimension",
        _reshape("layers.0.attention.wq.weight", lambda t: t.t()[None]),
        r"layers.0.attention.wq.weight has shape \(1, 64, 64\), but params.json implies",
    ),
    (
        "n_heads the weights were not made for",
        lambda f: _set_params(f, n_heads=8),
        r"n_heads=8: heads of 8 dimensions, but the shards' rope.freqs holds 8 frequencies.*"
        r"heads of 16 \(n_heads=4\)",
    ),
    (
        "no rope.freqs and a head size no Llama 2 has",
        _reshape("rope.freqs", None),
        r"heads of 16 dimensions, but every Llama 2 and Code Llama has heads of 128",
    ),
    (
        "a 5,001-digit dim",
        _params_text(lambda t: t.replace('"dim": 64', '"dim": 1' + "0" * 5000)),
        r"params.json is not readable JSON \(ValueError: Exceeds the limit \(4300 digits\)",
    ),
    (
        "params.json nested 100,000 deep",
        _params_text(lambda t: "[" * 100_000 + "]" * 100_000),
        r"params.json is not readable JSON \(it is nested thousands of levels deep\)",
    ),
    (
        "params.json a looping link",
        _loop_meta("params.json"),
        r"params.json: a symbolic link loops back on itself",
    ),
    (
        "tokenizer.model a looping link",
        _loop_meta("../tokenizer.model"),
        r"tokenizer.model: a symbolic link loops",
    ),
    ("params.json a named pipe", _fifo_meta("params.json"), r"params.json is a named pipe"),
    ("dim of another model", lambda f: _set_params(f, dim=32, n_heads=2), r"has shape"),
    (
        "ffn_dim_multiplier as a string",
        lambda f: _set_params(f, ffn_dim_multiplier="1.3"),
        r"ffn_dim_multiplier='1.3': it must be a number",
    ),
    (
        "200,000 layers",
        lambda f: _set_params(f, n_layers=200_000),
        r"n_layers=200,000: it must be from 1 to 1,024",
    ),
    ("n_heads as text", lambda f: _set_params(f, n_heads="4"), r"n_heads='4': it must be a whole"),
    ("norm_eps of zero", lambda f: _set_params(f, norm_eps=0), r"norm_eps=0: it must be a number"),
]


@pytest.mark.parametrize(
    ("damage", "message"), [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES]
)
def test_convert_checks_its_inputs_before_writing(meta_copy, tmp_path, capsys, damage, message):
    damage(meta_copy)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(capsys, "convert", str(meta_copy), str(tmp_path / "hf"))
    assert code == 1 and re.search(message, err), err
    assert "Wrote" not in out and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no OUT_DIR, no work folder


def test_check_meta_params_fills_the_defaults():
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "norm_eps": 1e-5}
    assert check_meta_params(params, "p", "") == {
        **params,
        "n_kv_heads": 4,
        "vocab_size": -1,
        "multiple_of": 256,
        "ffn_dim_multiplier": None,
        "rope_theta": 10000.0,
    }
    with pytest.raises(UserFacingError, match="vocab_size=0"):
        check_meta_params({**params, "vocab_size": 0}, "p", "")
