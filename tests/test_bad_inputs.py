"""Every bad input and damaged file meets a clear message, and nothing of the user's is lost.

Table-driven: each case names what a user does, the message they must see, and the exit code;
each checks that the files involved and the chat history are exactly as before. CLI cases run
`cli.main` in-process (no model is loaded: every refusal comes first); the closed-pipe cases
need a real pipe and run a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from transformers import StoppingCriteria

from llama2_colab.chat import ChatSession, encode_dialog, fit_dialog
from llama2_colab.checks import check_model_dir
from llama2_colab.errors import UserFacingError, redact_secrets
from llama2_colab.generation import stream_generate
from llama2_colab.models import ModelChoice, load_model_and_tokenizer
from llama2_colab.runtime import preset_runtime, recommend_settings
from llama2_colab.tiny import build_tiny_llama, check_tiny_cache, ensure_tiny_llama

TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a real token; not one


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under root (or root itself) and a digest of its bytes."""
    root = Path(root)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


# ---------------------------------------------------------------------------------------------
# tiny DIR: written only into a new or empty folder, or over a tiny model written before


def _users_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("# My project\n")
    (folder / "config.json").write_text('{"mine": true}\n')


def _other_model(folder: Path, tiny_dir: Path) -> None:
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 4096  # someone else's model, in the same layout
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "README.md").write_text("My fine-tuned model\n")


TINY_REFUSALS = [
    # (what the user types, how the folder is prepared, the message they see)
    ("", "users_files_in_cwd", "No folder given"),
    ("   ", "users_files_in_cwd", "No folder given"),
    (".", "users_files_in_cwd", r"'\.' already holds files \(README\.md, config\.json\)"),
    ("proj", "users_files", r"already holds files \(README\.md, config\.json\)"),
    ("other-model", "other_model", "already holds files .*would overwrite them"),
    ("notes.txt", "a_file", "is a file, not a folder"),
    ("notes.txt/tiny", "a_file", "Cannot write the tiny model to 'notes.txt/tiny'"),
    ("hidden", "only_a_hidden_file", r"already holds files \(\.keep\)"),
    ("x" * 300, None, "Cannot write the tiny model to 'x{300}'"),  # no file system takes it
]


@pytest.mark.parametrize(("target", "setup", "message"), TINY_REFUSALS)
def test_tiny_never_writes_over_files(
    tmp_path, monkeypatch, capsys, tiny_dir, target, setup, message
):
    monkeypatch.chdir(tmp_path)
    if setup == "users_files_in_cwd":
        _users_files(tmp_path)
    elif setup == "users_files":
        _users_files(tmp_path / target)
    elif setup == "other_model":
        _other_model(tmp_path / target, tiny_dir)
    elif setup == "a_file":
        (tmp_path / "notes.txt").write_text("my notes\n")
    elif setup == "only_a_hidden_file":
        (tmp_path / target).mkdir()
        (tmp_path / target / ".keep").write_text("")
    before = _snapshot(tmp_path)
    code, out, err = run_cli(capsys, "tiny", target)
    assert code == 1
    assert re.search(message, err), err
    assert "What to do:" in err and "Wrote" not in out
    _no_traceback(err)
    assert _snapshot(tmp_path) == before


def test_tiny_writes_into_an_empty_folder_and_again_over_its_own(tmp_path, capsys):
    target = tmp_path / "empty"
    target.mkdir()
    code, out, _ = run_cli(capsys, "tiny", str(target))
    assert code == 0 and f"Wrote the offline tiny Llama 2 to {target}" in out
    first = _snapshot(target)
    (target / "my-notes.txt").write_text("kept\n")  # the user's file in the tiny folder
    code, _, _ = run_cli(capsys, "tiny", str(target))
    assert code == 0
    assert _snapshot(target) == {**first, "my-notes.txt": _snapshot(target)["my-notes.txt"]}
    assert (target / "my-notes.txt").read_text() == "kept\n"
    assert not [p for p in target.iterdir() if p.name.startswith(".tiny-build-")]


def test_build_tiny_llama_refuses_the_same_way_from_python(tmp_path):
    _users_files(tmp_path / "proj")
    before = _snapshot(tmp_path)
    with pytest.raises(UserFacingError, match="already holds files"):
        build_tiny_llama(tmp_path / "proj")
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# A damaged tiny-model cache is rebuilt, once, and says so


def _truncate_weights(d: Path) -> None:
    f = d / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)


def _bad_config(d: Path) -> None:
    (d / "config.json").write_text('{"model_type": "llama", ')


def _bad_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").write_text("")


def _no_weights(d: Path) -> None:
    (d / "model.safetensors").unlink()


def _cache_is_a_file(d: Path) -> None:
    shutil.rmtree(d)
    d.write_text("something else\n")


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_truncate_weights, "truncated"),
        (_bad_config, "not valid JSON"),
        (_bad_tokenizer, "tokenizer.json is unreadable"),
        (_no_weights, "has no weights"),
        (_cache_is_a_file, "it is a file, not a folder"),
    ],
)
def test_a_damaged_tiny_cache_is_rebuilt_once_and_says_so(
    tmp_path, tiny_dir, monkeypatch, damage, says
):
    from llama2_colab.tiny import tiny_cache_dir

    monkeypatch.setenv("LLAMA2_COLAB_CACHE", str(tmp_path))
    cache = tiny_cache_dir()
    shutil.copytree(tiny_dir, cache)
    good = _snapshot(cache)
    damage(cache)
    with pytest.warns(UserWarning, match=f"cannot be used .*{says}.*rebuilding it"):
        again = ensure_tiny_llama()
    assert again == cache and check_tiny_cache(cache) is None
    assert _snapshot(cache) == good  # the rebuild is the same model, byte for byte
    if damage is _cache_is_a_file:  # not ours to delete: kept beside it
        assert cache.with_name(cache.name + ".damaged").read_text() == "something else\n"
    with_no_warning = _snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: a whole cache is used as it is
        ensure_tiny_llama()
    assert _snapshot(tmp_path) == with_no_warning


@pytest.mark.parametrize("what", ["a file", "a folder of yours"])
def test_a_cache_dir_you_name_is_never_moved_or_overwritten(tmp_path, what):
    target = tmp_path / "mine"
    if what == "a file":
        target.write_text("my notes\n")
    else:
        _users_files(target)
    before = _snapshot(tmp_path)
    with pytest.raises(UserFacingError, match="holds something other than the tiny model"):
        ensure_tiny_llama(target)
    assert _snapshot(tmp_path) == before


def test_a_cache_dir_that_is_empty_is_filled_without_a_warning(tmp_path, tiny_dir):
    (tmp_path / "empty").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty folder is not a damaged cache
        assert _snapshot(ensure_tiny_llama(tmp_path / "empty")) == _snapshot(tiny_dir)


def test_a_tiny_cache_that_fails_to_load_is_rebuilt_and_loads(tmp_path, tiny_dir, monkeypatch):
    from llama2_colab.tiny import tiny_cache_dir

    monkeypatch.setenv("LLAMA2_COLAB_CACHE", str(tmp_path))
    cache = tiny_cache_dir()
    shutil.copytree(tiny_dir, cache)
    # Same size and a valid header, but the bytes say float16 where float32 was stored: passes
    # the cheap checks, fails in safetensors.
    f = cache / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n].replace(b'"F32"', b'"I64"')
    f.write_bytes(data[:8] + header + data[8 + n :])
    settings = recommend_settings(preset_runtime("cpu"))
    with pytest.warns(UserWarning, match="failed to load .*rebuilding it"):
        model, tok = load_model_and_tokenizer(ModelChoice("tiny", "test"), settings)
    assert model.config.model_type == "llama" and tok.bos_token_id == 1
    assert _snapshot(cache) == _snapshot(tiny_dir)


def test_a_cache_path_no_file_system_takes_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMA2_COLAB_CACHE", str(tmp_path / ("x" * 300)))
    code, _, err = run_cli(capsys, "plan", "tiny")
    assert code == 1 and "for the tiny model's cache" in err and "LLAMA2_COLAB_CACHE" in err
    _no_traceback(err)
    assert _snapshot(tmp_path) == {}


def test_a_cache_root_that_is_a_file_is_named_and_kept(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    root.write_text("my file\n")
    monkeypatch.setenv("LLAMA2_COLAB_CACHE", str(root))
    code, _, err = run_cli(capsys, "plan", "tiny")
    assert code == 1 and f"The tiny-model cache folder '{root}' is a file" in err
    assert "LLAMA2_COLAB_CACHE" in err
    _no_traceback(err)
    assert root.read_text() == "my file\n"


# ---------------------------------------------------------------------------------------------
# Local model folders: checked before loading, each problem named with what to do


def _llama(d: Path) -> None:
    pass


def _set_config(**changes):
    def damage(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        config.update(changes)
        (d / "config.json").write_text(json.dumps(config))

    return damage


def _write(name: str, text: str):
    def damage(d: Path) -> None:
        (d / name).write_text(text)

    return damage


def _remove(*names: str):
    def damage(d: Path) -> None:
        for name in names:
            (d / name).unlink()

    return damage


def _sharded_with_a_missing_shard(d: Path) -> None:
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _garbage_weights(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" * 4)


def _empty_bin(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"")


# (name, damage, message, also refused by `plan`: only config problems stop a plan)
FOLDER_CASES = [
    ("invalid-config", _write("config.json", "{not json"), "is not valid JSON", True),
    ("config-list", _write("config.json", "[1, 2]"), "is not a JSON object", True),
    ("no-config", _remove("config.json"), "has no config.json", False),
    (
        "gpt2",
        _set_config(model_type="gpt2", architectures=["GPT2LMHeadModel"]),
        r"holds a gpt2 model \(GPT2LMHeadModel\), not a Llama-family model",
        True,
    ),
    (
        "bert",
        _set_config(model_type="bert", architectures=["BertForMaskedLM"]),
        r"holds a bert model \(BertForMaskedLM\), not a Llama-family model",
        True,
    ),
    ("no-type", _set_config(model_type=None), "a model of no type .*not a Llama-family", True),
    (
        "classifier",
        _set_config(architectures=["LlamaForSequenceClassification"]),
        "not as a text generator",
        True,
    ),
    (
        "no-tokenizer",
        _remove("tokenizer.json", "tokenizer.model"),
        r"has no tokenizer \(tokenizer.json",
        False,
    ),
    ("truncated", _truncate_weights, "is damaged: it is truncated", False),
    ("no-weights", _remove("model.safetensors"), "has no weights", False),
    ("missing-shard", _sharded_with_a_missing_shard, "lacks 1 of its 2 weight files", False),
    ("garbage-weights", _garbage_weights, "model.safetensors' is damaged", False),
    ("empty-bin", _empty_bin, "pytorch_model.bin' is empty", False),
]


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, tiny_dir):
    """One damaged copy of the tiny model per case, plus a file and a missing path."""
    root = tmp_path_factory.mktemp("bad-models")
    for name, damage, _, _ in FOLDER_CASES:
        shutil.copytree(tiny_dir, root / name)
        damage(root / name)
    (root / "a-file").write_text("not a folder\n")
    return root


PATH_CASES = [
    ("a-file", "is a file, not a model folder"),
    ("no-such-folder", "There is no folder"),
]
ALL_FOLDER_CASES = [(c[0], c[2]) for c in FOLDER_CASES] + PATH_CASES


@pytest.mark.parametrize(("name", "message"), ALL_FOLDER_CASES)
@pytest.mark.parametrize("how", ["demo --model", "LLAMA2_COLAB_MODEL", "bench --model"])
def test_a_bad_model_folder_is_named_before_loading(
    bad_models, monkeypatch, capsys, name, message, how
):
    folder = bad_models / name
    before = _snapshot(bad_models)
    if how == "demo --model":
        code, out, err = run_cli(capsys, "demo", "--model", str(folder))
    elif how == "LLAMA2_COLAB_MODEL":
        monkeypatch.setenv("LLAMA2_COLAB_MODEL", str(folder))
        code, out, err = run_cli(capsys, "demo")
    else:
        code, out, err = run_cli(capsys, "bench", "--model", str(folder), "--no-bandwidth")
    assert code == 1
    assert re.search(message, err), err
    assert "What to do:" in err and "Loaded in" not in out
    _no_traceback(err)
    assert _snapshot(bad_models) == before


@pytest.mark.parametrize(("name", "message"), [(c[0], c[2]) for c in FOLDER_CASES if c[3]])
def test_plan_names_a_bad_config(bad_models, capsys, name, message):
    before = _snapshot(bad_models)
    code, _, err = run_cli(capsys, "plan", str(bad_models / name), "--gpu", "T4")
    assert code == 1 and re.search(message, err), err
    _no_traceback(err)
    assert _snapshot(bad_models) == before


@pytest.mark.parametrize(("name", "message"), ALL_FOLDER_CASES)
def test_loading_a_bad_folder_from_python_is_a_user_facing_error(bad_models, name, message):
    settings = recommend_settings(preset_runtime("cpu"))
    with pytest.raises(UserFacingError, match=message):
        load_model_and_tokenizer(ModelChoice(str(bad_models / name), "test"), settings)


def test_a_whole_llama_folder_passes_the_checks(tiny_dir):
    assert check_model_dir(tiny_dir)["model_type"] == "llama"


# ---------------------------------------------------------------------------------------------
# CLI numbers: checked before anything loads, with the range that makes sense

NUMBER_CASES = [
    (["bench", "--threads", "0"], 2, "--threads: 0 is out of range: give a number from 1 to"),
    (["bench", "--threads", "100000"], 2, r"--threads: 100,000 is out of range.*CPU core"),
    (["bench", "--threads", "-3"], 2, "--threads: -3 is out of range"),
    (["bench", "--threads", "two"], 2, "--threads: 'two' is not a whole number"),
    (["bench", "--prompt-tokens", "0"], 2, "--prompt-tokens: 0 is out of range: give a number at"),
    (["bench", "--prompt-tokens", "1.5"], 2, "--prompt-tokens: '1.5' is not a whole number"),
    (
        ["bench", "--model", "tiny", "--prompt-tokens", "1000000000"],
        1,
        "1,000,000,000-token prompt plus 64 new tokens .* the model has 4,096",
    ),
    (
        ["bench", "--model", "tiny", "--prompt-tokens", "4000", "--new-tokens", "200"],
        1,
        "4,000-token prompt plus 200 new tokens is 4,200 positions; the model has 4,096",
    ),
    (
        ["bench", "--new-tokens", "0"],
        2,
        "--new-tokens: 0 is out of range: give a number at least 2",
    ),
    (["bench", "--new-tokens", "1"], 2, r"--new-tokens: 1 is out of range.*decode speed"),
    (["bench", "--new-tokens", "-5"], 2, "--new-tokens: -5 is out of range"),
    (["bench", "--repeats", "0"], 2, "--repeats: 0 is out of range: give a number from 1 to 1,000"),
    (["bench", "--repeats", "1000000"], 2, "--repeats: 1,000,000 is out of range"),
    (["bench", "--warmup", "-1"], 2, "--warmup: -1 is out of range: give a number from 0 to 100"),
    (["bench", "--warmup", "5000"], 2, "--warmup: 5,000 is out of range"),
    (["bench", "--fast", "turbo"], 1, "Unknown fast path"),
    (["demo", "--max-new-tokens", "0"], 2, "--max-new-tokens: 0 is out of range: give a number"),
    (["demo", "--max-new-tokens", "-1"], 2, "--max-new-tokens: -1 is out of range"),
    (["demo", "--max-new-tokens", "5000"], 2, r"--max-new-tokens: 5,000 is out of range.*4,096"),
    (["demo", "--seed", "-1"], 2, "--seed: -1 is out of range: give a number from 0 to"),
    (["demo", "--seed", str(2**32)], 2, "--seed: 4,294,967,296 is out of range"),
    (["demo", "--seed", "lucky"], 2, "--seed: 'lucky' is not a whole number"),
    (["demo", ""], 1, "The message is empty"),
    (["demo", "a [INST] b"], 1, r"contains '\[INST\]'"),
    (["demo", "caf\udcff"], 1, r"contains '\\udcff' at position 3"),  # a stray byte in argv
    (["plan"], 1, "Which model\\? Give a name"),
    (["plan", "  "], 1, "Which model\\? Give a name"),
    (["plan", "tiny", "--gpu", "TPU"], 1, "Pass --gpu with one of those names"),
    (["plan", "tiny", "--gpu", ""], 2, "--gpu: is empty: give T4, .* or leave --gpu out"),
    (["plan", "tiny", "--gpu", "  "], 2, "--gpu: is empty"),  # never this machine instead
    (["plan", "tiny", "--dtype", "int4"], 2, "--dtype: invalid choice: 'int4'"),
    (["plan", "llama-3-8b"], 1, "No architecture known for 'llama-3-8b'"),
]


@pytest.mark.parametrize(("argv", "code", "message"), NUMBER_CASES)
def test_cli_numbers_and_names_are_checked_first(capsys, argv, code, message):
    got, out, err = run_cli(capsys, *argv)
    assert got == code
    assert re.search(message, err), err
    _no_traceback(err)
    assert "Loaded in" not in out and "[bench] loading" not in err


def test_plan_list_json_is_json(capsys):
    code, out, _ = run_cli(capsys, "plan", "--list", "--json")
    assert code == 0
    ids = [entry["id"] for entry in json.loads(out)]
    assert "meta-llama/Llama-2-7b-chat-hf" in ids


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_plan_honours_dtype(capsys, dtype):
    code, out, _ = run_cli(capsys, "plan", "tiny", "--gpu", "T4", "--dtype", dtype, "--json")
    plan = json.loads(out)
    assert code == 0 and plan["dtype"] == dtype and dtype in plan["bytes_by_format"]


def test_plan_dtype_sets_the_bytes_of_the_weights(capsys):
    # An A100 defaults to bfloat16; asked for float32, every weight takes twice the bytes.
    code32, out32, _ = run_cli(
        capsys, "plan", "meta-llama/Llama-2-7b-chat-hf", "--gpu", "A100-40GB", "--json"
    )
    code16, out16, _ = run_cli(
        capsys,
        "plan",
        "meta-llama/Llama-2-7b-chat-hf",
        "--gpu",
        "A100-40GB",
        "--dtype",
        "float32",
        "--json",
    )
    assert json.loads(out32)["dtype"] == "bfloat16"
    assert json.loads(out16)["dtype"] == "float32"
    assert json.loads(out16)["weights_bytes"] == 2 * json.loads(out32)["weights_bytes"]
    assert code32 == 0 and code16 in (0, 2)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["plan", "meta-llama/Llama-2-70b-chat-hf", "--gpu", "T4"], 2),  # does not fit
        (["plan", "tiny", "--gpu", "T4"], 0),
    ],
)
def test_a_closed_pipe_keeps_the_exit_code(argv, code):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama2_colab", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader (`| head -0`) is gone before the command prints
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_bench_with_one_new_token_from_python_is_refused_not_measured():
    from llama2_colab.bench_harness import bench_model

    with pytest.raises(UserFacingError, match="new_tokens=1 is out of range; decode speed"):
        bench_model("tiny", new_tokens=1)


def test_bench_text_never_shows_an_unmeasured_speed_as_zero():
    from llama2_colab.bench_harness import format_bench

    result = {
        "model": "tiny",
        "random_weights": False,
        "device_name": "CPU",
        "device": "cpu",
        "dtype": "float32",
        "attn_implementation": "sdpa",
        "threads": 1,
        "prompt_tokens": 16,
        "new_tokens": 2,
        "repeats": 1,
        "tokens_per_s": 0.0,
        "tokens_per_s_iqr": [0.0, 0.0],
        "ttft_s": 0.01,
        "baseline_tokens_per_s": 0.0,
        "baseline_tokens_per_s_iqr": [0.0, 0.0],
        "baseline_ttft_s": 0.01,
        "ratio": 0.0,
        "paired_ratio_median": 0.0,
        "paired_ratio_iqr": [0.0, 0.0],
        "peak_memory_bytes": 0,
        "peak_memory_kind": "x",
        "fast_paths": {},
    }
    text = format_bench(result)
    assert "0.0 tok/s" not in text and text.count("n/a (not measured") == 2


# ---------------------------------------------------------------------------------------------
# One redaction step: a token never reaches the screen, wherever it came from


def test_user_facing_errors_mask_tokens():
    err = UserFacingError(f"Request with {TOKEN} failed", f"Do not paste {TOKEN} here")
    assert TOKEN not in str(err) and TOKEN not in err.what + err.todo
    assert "hf_...4567" in err.what and "hf_...4567" in err.todo


def test_redaction_leaves_names_that_only_contain_hf_underscore(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    path = "/content/llama-2-7b-hf_mergedLoraAdapterEpoch3"
    assert redact_secrets(f'{{"model": "{path}"}}') == f'{{"model": "{path}"}}'
    assert TOKEN not in redact_secrets(f"/content/{TOKEN}/x and Bearer {TOKEN}")


def test_redaction_masks_the_token_in_the_environment_even_in_an_old_format(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "api_oldstyletoken1234")
    assert redact_secrets("url?t=api_oldstyletoken1234&x=1") == "url?t=...1234&x=1"
    assert redact_secrets("nothing secret") == "nothing secret"


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", TOKEN],  # pasted the token where the model goes
        ["bench", "--threads", TOKEN],  # argparse's own error
        ["demo", "--model", f"./{TOKEN}"],  # a path that does not exist
    ],
)
def test_cli_errors_mask_tokens(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code in (1, 2)
    assert TOKEN not in out + err and "hf_...4567" in err


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_token_pasted_as_the_model_is_masked_in_the_result(capsys, json_flag):
    # `access` answers on stdout, quoting the "model" it was given: the token, here.
    code, out, err = run_cli(capsys, "access", *json_flag, TOKEN)
    assert code != 0
    assert TOKEN not in out + err and "hf_...4567" in out


def test_an_unexpected_error_is_shown_with_the_token_masked(capsys, monkeypatch):
    import llama2_colab.runtime as runtime

    def broken():
        raise RuntimeError(f"driver said no to https://x/?token={TOKEN}")

    monkeypatch.setattr(runtime, "detect_runtime", broken)
    code, _, err = run_cli(capsys, "doctor")
    assert code == 1 and "this is a bug in llama2_colab" in err
    assert TOKEN not in err and "token=hf_...4567" in err


# ---------------------------------------------------------------------------------------------
# Chat: misleading messages, and nothing lost from the history


@pytest.fixture
def session(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    s = ChatSession(model, tok, system_prompt="Be brief.", max_new_tokens=4, do_sample=False)
    s.send("first")
    return s


def _set(name, value):
    def change(s: ChatSession) -> None:
        setattr(s, name, value)

    return change


SEND_CASES = [
    # (change to the session, text sent, exception, message)
    (None, "a \ud800 b", ValueError, r"'\\ud800' at position 2, half of a character pair"),
    (None, None, TypeError, "The message must be a string, not NoneType"),
    (None, 42, TypeError, "The message must be a string, not int"),
    (None, "   ", ValueError, "The message is empty"),
    (None, "x <</SYS>>", ValueError, "contains '<</SYS>>'"),
    (_set("system_prompt", "sys \udfff"), "hi", ValueError, "The system prompt contains"),
    (_set("system_prompt", 7), "hi", TypeError, "system prompt must be a string"),
    (_set("context_window", -5), "hi", ValueError, "context_window=-5 is too small"),
    (_set("context_window", "4096"), "hi", TypeError, "context_window must be a whole number"),
    (_set("max_new_tokens", 0), "hi", ValueError, "max_new_tokens=0 is too small"),
    (_set("max_new_tokens", 2.5), "hi", TypeError, "max_new_tokens must be a whole number"),
    (_set("max_new_tokens", 5000), "hi", Exception, "between 1 and 4095"),
    (_set("do_sample", True), "hi", None, None),  # a control: sampling with the defaults works
    (
        lambda s: (_set("do_sample", True)(s), _set("temperature", 0)(s)),
        "hi",
        ValueError,
        "temperature=0",
    ),
    (lambda s: (_set("do_sample", True)(s), _set("top_p", 1.5)(s)), "hi", ValueError, "top_p=1.5"),
    (
        lambda s: (_set("do_sample", True)(s), _set("temperature", float("nan"))(s)),
        "hi",
        ValueError,
        "temperature=nan",
    ),
]


@pytest.mark.parametrize(("change", "text", "error", "message"), SEND_CASES)
def test_bad_chat_input_is_refused_and_the_history_kept(session, change, text, error, message):
    if change is not None:
        change(session)
    history = [dict(m) for m in session.history]
    if error is None:
        session.send(text)
        assert len(session.history) == len(history) + 2
        return
    with pytest.raises(error, match=message):
        session.send(text)
    assert session.history == history


def test_a_long_message_never_advises_at_most_zero(session):
    session.context_window = 64
    history = list(session.history)
    with pytest.raises(UserFacingError) as caught:
        session.send(" ".join(["tomato"] * 100))
    assert "at most 0" not in str(caught.value)
    assert "more than the model's whole 64-token context" in str(caught.value)
    assert session.history == history


def test_no_system_prompt_is_none(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    s = ChatSession(model, tok, system_prompt=None, max_new_tokens=3, do_sample=False)
    assert s.plan_prompt("hi").messages == [{"role": "user", "content": "hi"}]
    s.send("hi")
    assert json.loads(s.export_json())["system_prompt"] == ""


DIALOG_CASES = [
    (None, "must be a list of messages, not NoneType"),
    ("hello", "must be a list of messages, not str"),
    ({"role": "user", "content": "hi"}, "must be a list of messages, not dict"),
    ([{"role": "user", "content": "\udcff"}], r"Message 0 \(user\) contains '\\udcff'"),
    (
        [{"role": "system", "content": "x\ud83d"}, {"role": "user", "content": "hi"}],
        r"Message 0 \(system\) contains '\\ud83d'",
    ),
]


@pytest.mark.parametrize(("messages", "message"), DIALOG_CASES)
def test_encode_dialog_says_what_is_wrong(tiny_model_and_tokenizer, messages, message):
    _, tok = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match=message):
        encode_dialog(tok, messages)


@pytest.mark.parametrize(
    ("window", "new", "error", "message"),
    [
        (-5, 10, ValueError, "context_window=-5 is too small: it must be at least 2"),
        (0, 10, ValueError, "context_window=0 is too small"),
        (4096, -1, ValueError, "max_new_tokens=-1 is too small"),
        (4096, True, TypeError, "max_new_tokens must be a whole number of tokens, not bool"),
        (None, 10, TypeError, "context_window must be a whole number of tokens, not NoneType"),
    ],
)
def test_fit_dialog_checks_its_numbers(tiny_model_and_tokenizer, window, new, error, message):
    _, tok = tiny_model_and_tokenizer
    with pytest.raises(error, match=message) as caught:
        fit_dialog(tok, [{"role": "user", "content": "hi"}], window, new)
    assert "between 1 and -" not in str(caught.value)


IMPORT_CASES = [
    ("[" * 100_000 + "]" * 100_000, ValueError, "nested thousands of levels deep"),
    (None, TypeError, "not NoneType"),
    ('{"system_prompt": "\\ud800", "messages": []}', ValueError, "export.s system prompt contains"),
    (
        '{"messages": [{"role": "user", "content": "\\udfff"}, '
        '{"role": "assistant", "content": "x"}]}',
        ValueError,
        r"Message 0 \(user\) contains",
    ),
    (b"\xff\xfe not utf-8", ValueError, "not valid JSON"),
]


@pytest.mark.parametrize(("text", "error", "message"), IMPORT_CASES)
def test_import_json_says_what_is_wrong_and_changes_nothing(session, text, error, message):
    before = session.export_json()
    with pytest.raises(error, match=message):
        session.import_json(text)
    assert session.export_json() == before


STREAM_CASES = [
    (
        lambda ids: torch.cat([ids, ids]),
        {},
        ValueError,
        "input_ids is 2 x .*call stream_generate once per row",
    ),
    (lambda ids: ids[0], {}, ValueError, r"input_ids is \d+, not 1 x N.*unsqueeze"),
    (lambda ids: ids[0].tolist(), {}, TypeError, "must be a torch tensor of shape 1 x N, not list"),
    (lambda ids: ids[:, :0], {}, ValueError, "input_ids is empty"),
    (lambda ids: ids.float(), {}, TypeError, "integer token ids"),
    (lambda ids: ids, {"max_new_tokens": 0}, ValueError, "max_new_tokens=0 cannot be generated"),
    (lambda ids: ids, {"max_new_tokens": 4095}, ValueError, "exceeds the model's 4096 positions"),
    (
        lambda ids: ids.repeat(1, 2100),
        {"max_new_tokens": 2},
        ValueError,
        "exceeds the model's 4096",
    ),
]


@pytest.mark.parametrize(("shape", "kwargs", "error", "message"), STREAM_CASES)
def test_stream_generate_refuses_what_it_cannot_stream(
    tiny_model_and_tokenizer, shape, kwargs, error, message
):
    model, tok = tiny_model_and_tokenizer
    ids = torch.tensor([tok("Hello there").input_ids])
    with pytest.raises(error, match=message):
        stream_generate(model, tok, shape(ids), **kwargs)


# ---------------------------------------------------------------------------------------------
# Concurrent sends: refused with a clear error, never a dropped turn


class _Gate(StoppingCriteria):
    """Holds generation at its first step until released, so another thread can act meanwhile."""

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        self.started.set()
        assert self.release.wait(60)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


@pytest.mark.parametrize(
    ("meanwhile", "message"),
    [
        (lambda s: s.send("second"), "Cannot send a message now: .*still generating a reply"),
        (lambda s: s.regenerate(), "Cannot regenerate now"),
        (lambda s: s.undo(), "Cannot undo now"),
        (lambda s: s.clear(), "Cannot clear the conversation now"),
        (lambda s: s.import_json('{"messages": []}'), "Cannot import a chat now"),
    ],
)
def test_a_second_change_during_a_reply_is_refused_and_no_turn_is_lost(session, meanwhile, message):
    gate = _Gate()
    before = list(session.history)
    results: list[str] = []
    worker = threading.Thread(
        target=lambda: results.append(session.send("in the app", stopping_criteria=[gate]))
    )
    worker.start()
    try:
        assert gate.started.wait(60)
        assert session.busy
        with pytest.raises(RuntimeError, match=message):
            meanwhile(session)
        assert session.history == before  # the refused call changed nothing
    finally:
        gate.release.set()
        worker.join(60)
    assert len(results) == 1 and not session.busy
    assert session.history == before + [
        {"role": "user", "content": "in the app"},
        {"role": "assistant", "content": results[0]},
    ]
    session.send("after")  # and the session works on
    assert len(session.history) == len(before) + 4


def test_stop_from_another_thread_ends_the_reply_and_is_used_up(session):
    gate = _Gate()
    session.max_new_tokens = 50
    worker = threading.Thread(target=lambda: session.send("long", stopping_criteria=[gate]))
    worker.start()
    assert gate.started.wait(60)
    session.stop()
    gate.release.set()
    worker.join(60)
    assert session.last_stopped and session.last_stats.new_tokens < 50
    session.max_new_tokens = 5
    session.send("next")
    assert not session.last_stopped


# ---------------------------------------------------------------------------------------------
# More public functions, more bad arguments


def _library_cases():
    from llama2_colab.bench import make_bench_prompt
    from llama2_colab.generation import fast_generate_kwargs

    return [
        (lambda m, t: ChatSession(m, t, history=None), ValueError, "must be a list of messages"),
        (lambda m, t: ChatSession(m, t, history="hi"), ValueError, "not str"),
        (lambda m, t: ChatSession(m, t, system_prompt=3), TypeError, "must be a string"),
        (
            lambda m, t: fast_generate_kwargs(prompt_lookup_tokens=-1),
            ValueError,
            "prompt_lookup_tokens must be a whole number of at least 0",
        ),
        (
            lambda m, t: fast_generate_kwargs(static_cache=True, max_cache_len=0),
            ValueError,
            "max_cache_len must be a whole number of at least 1",
        ),
        (lambda m, t: make_bench_prompt(t, 0), ValueError, "n_tokens must be a whole number"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_library_functions_say_what_is_wrong(tiny_model_and_tokenizer, case):
    model, tok = tiny_model_and_tokenizer
    call, error, message = _library_cases()[case]
    with pytest.raises(error, match=message):
        call(model, tok)


def test_run_bench_refuses_a_prompt_past_the_models_positions(tiny_model_and_tokenizer):
    from llama2_colab.bench import run_bench

    model, tok = tiny_model_and_tokenizer
    with pytest.raises(UserFacingError, match="the model has 4,096"):
        run_bench(model, tok, prompt_tokens=10**9, new_tokens=8, repeats=1)


def test_a_blank_model_request_means_no_request():
    from llama2_colab.models import choose_model

    choice = choose_model(preset_runtime("cpu"), requested="   ", env={})
    assert choice.name == "tiny" and "no GPU found" in choice.reason


# ---------------------------------------------------------------------------------------------
# A Hub model that is not Llama is named as such before any weight is downloaded

GPT2_CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 12}
BERT_CONFIG = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 768}


@pytest.fixture(scope="module")
def other_hub():
    """The stand-in Hub (tests/hub_server.py) serving a GPT-2 and a BERT config, no weights."""
    from hub_server import FakeRepo, start_hub

    hub, server, thread = start_hub(set())
    hub.repos["openai-community/gpt2"] = FakeRepo(
        files={"config.json": json.dumps(GPT2_CONFIG).encode()}
    )
    hub.repos["google-bert/bert-base-uncased"] = FakeRepo(
        files={"config.json": json.dumps(BERT_CONFIG).encode()}
    )
    yield hub
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.parametrize(
    ("repo", "kind"),
    [("openai-community/gpt2", "gpt2"), ("google-bert/bert-base-uncased", "bert")],
)
@pytest.mark.parametrize(
    "command", [["plan", "--gpu", "T4"], ["demo", "--model"], ["bench", "--model"]]
)
def test_a_hub_model_that_is_not_llama_is_named(
    other_hub, monkeypatch, tmp_path, capsys, repo, kind, command
):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-login"))
    monkeypatch.setenv("HF_ENDPOINT", other_hub.url)
    for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    argv = [command[0], repo, *command[1:]] if command[0] == "plan" else [*command, repo]
    code, out, err = run_cli(capsys, *argv)
    assert code == 1
    assert f"'{repo}' holds a {kind} model" in err and "not a Llama-family model" in err
    assert "Loaded in" not in out
    _no_traceback(err)
    downloads = [record.path for record in other_hub.log if "/resolve/" in record.path]
    assert downloads and all(path.endswith("/config.json") for path in downloads)


def test_plan_with_dtype_accepts_a_bf16_model_that_fits(capsys):
    # The case: 7B on a 24 GB CPU machine does not fit in float32 (the CPU default),
    # and does in bfloat16. Without --dtype the plan says no; with it, yes.
    model = "meta-llama/Llama-2-7b-chat-hf"
    code32, out32, _ = run_cli(capsys, "plan", model, "--gpu", "cpu", "--json")
    code16, out16, _ = run_cli(
        capsys, "plan", model, "--gpu", "cpu", "--dtype", "bfloat16", "--json"
    )
    assert (code32, json.loads(out32)["dtype"], json.loads(out32)["fits"]) == (2, "float32", False)
    assert (code16, json.loads(out16)["dtype"], json.loads(out16)["fits"]) == (0, "bfloat16", True)
