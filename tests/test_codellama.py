"""Code Llama's prompts, token-exact against Meta's reference, on the offline tiny Code Llama.

`MetaTokenizer` and `meta_infilling_prompt_tokens` below restate Meta's `llama/tokenizer.py`
and `llama/generation.py` (github.com/meta-llama/codellama) on SentencePiece and the tiny
model's `tokenizer.model`; the library builds its prompts with the Hugging Face tokenizer.
Equal ids mean a learner's prompt is the one Code Llama was trained on.
"""

from __future__ import annotations

import pytest

spm = pytest.importorskip("sentencepiece")

from llama2_colab.codellama import (  # noqa: E402
    decode_infilling,
    encode_completion,
    encode_infilling,
    encode_instruct,
    ensure_tiny_code_llama,
    infill_tokens,
)
from llama2_colab.errors import UserFacingError  # noqa: E402

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

# Code that starts with spaces is where transformers' Llama tokenizer and SentencePiece differ:
# the library must still give Meta's tokens there.
INFILL_CASES = [
    ('def remove_non_ascii(s: str) -> str:\n    """ ', "\n    return result\n"),
    ("def fibonacci(n):\n", "    return fibonacci(n - 1) + fibonacci(n - 2)"),
    ("x = np.array([1, 2, 3])\ny = ", " + 1"),
    ("for i in range(10):", ""),
    ("html = '<s>strike</s>'  # ", " ▁<PRE> stays text"),
    ("s = '☺ smile'\n", "print(s)  # ☺"),
    ("    return x", "\n\ndef g():\n    pass"),
    (" leading space", "  two spaces"),
    ("▁x = 1\n", "▁"),
    ("", "only a suffix"),
]


class MetaTokenizer:
    """Meta's llama/tokenizer.py (Code Llama), as written there."""

    def __init__(self, model_path: str):
        self.sp_model = spm.SentencePieceProcessor(model_file=model_path)
        self.bos_id = self.sp_model.bos_id()
        self.eos_id = self.sp_model.eos_id()
        self.prefix_id = self.sp_model.piece_to_id("▁<PRE>") or None
        self.middle_id = self.sp_model.piece_to_id("▁<MID>") or None
        self.suffix_id = self.sp_model.piece_to_id("▁<SUF>") or None
        self.eot_id = self.sp_model.piece_to_id("▁<EOT>") or None

    def encode(self, s: str, bos: bool, eos: bool) -> list[int]:
        t = self.sp_model.encode(s)
        return ([self.bos_id] if bos else []) + t + ([self.eos_id] if eos else [])

    def encode_infilling(self, s: str) -> list[int]:
        return self.sp_model.encode("☺" + s)[2:]

    def decode_infilling(self, t: list[int]) -> str:
        return self.sp_model.decode([self.sp_model.piece_to_id("☺")] + t)[1:]


def meta_infilling_prompt_tokens(tok: MetaTokenizer, pre: str, suf: str, suffix_first=False):
    """Meta's infilling_prompt_tokens."""
    if suffix_first:
        return (
            [tok.bos_id, tok.prefix_id, tok.suffix_id]
            + tok.encode_infilling(suf)
            + [tok.middle_id]
            + tok.encode(pre, bos=False, eos=False)
        )
    return (
        [tok.bos_id, tok.prefix_id]
        + tok.encode(pre, bos=False, eos=False)
        + [tok.suffix_id]
        + tok.encode_infilling(suf)
        + [tok.middle_id]
    )


def meta_chat_tokens(tok: MetaTokenizer, dialog: list[dict]) -> list[int]:
    """Meta's chat_completion prompt assembly (models without <step>: all Code Llama 2023)."""
    if dialog[0]["role"] == "system":
        dialog = [
            {
                "role": dialog[1]["role"],
                "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"],
            }
        ] + dialog[2:]
    tokens: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False):
        tokens += tok.encode(
            f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} ",
            bos=True,
            eos=True,
        )
    tokens += tok.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}", bos=True, eos=False)
    return tokens


@pytest.fixture(scope="module")
def code_dir():
    return ensure_tiny_code_llama()


@pytest.fixture(scope="module")
def tokenizer(code_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(code_dir)


@pytest.fixture(scope="module")
def meta(code_dir):
    return MetaTokenizer(str(code_dir / "tokenizer.model"))


def test_tiny_code_llama_has_code_llamas_vocabulary_layout(code_dir, tokenizer, meta):
    assert len(tokenizer) == meta.sp_model.vocab_size() == 32016
    assert tuple(infill_tokens(tokenizer)) == (32007, 32008, 32009, 32010)
    assert (meta.prefix_id, meta.suffix_id, meta.middle_id, meta.eot_id) == (
        32007,
        32008,
        32009,
        32010,
    )
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(code_dir)
    assert config.vocab_size == 32016
    assert config.rope_parameters["rope_theta"] == 1_000_000.0


@pytest.mark.parametrize("suffix_first", [False, True], ids=["PSM", "SPM"])
@pytest.mark.parametrize(("prefix", "suffix"), INFILL_CASES)
def test_infilling_prompt_matches_meta(tokenizer, meta, prefix, suffix, suffix_first):
    want = meta_infilling_prompt_tokens(meta, prefix, suffix, suffix_first)
    assert encode_infilling(tokenizer, prefix, suffix, suffix_first) == want


def test_infilling_prompt_reads_as_the_documented_format(tokenizer):
    pre, suf = "def f(x):\n    return ", "\n"
    ids = encode_infilling(tokenizer, pre, suf)
    assert tokenizer.decode(ids) == f"<s> <PRE> {pre} <SUF>{suf} <MID>"


@pytest.mark.parametrize(
    "code", ["def fibonacci(n):", "import numpy as np\n\nx = ", "<s>", "    indented", ""]
)
def test_completion_prompt_matches_meta(tokenizer, meta, code):
    assert encode_completion(tokenizer, code) == meta.encode(code, bos=True, eos=False)


@pytest.mark.parametrize(
    "dialog",
    [
        [{"role": "user", "content": "Write a function that reverses a string."}],
        [
            {"role": "system", "content": "Answer in Python only."},
            {"role": "user", "content": "Sum a list."},
            {"role": "assistant", "content": "def total(xs):\n    return sum(xs)"},
            {"role": "user", "content": "Now the mean."},
        ],
    ],
    ids=["one-turn", "system-and-history"],
)
def test_instruct_prompt_matches_meta(tokenizer, meta, dialog):
    assert encode_instruct(tokenizer, dialog) == meta_chat_tokens(meta, dialog)


@pytest.mark.parametrize("middle", ["result = 1", " x + 1", "\n    pass", "print('☺')"])
def test_decode_infilling_matches_meta(tokenizer, meta, middle):
    ids = meta.encode_infilling(middle) + [meta.eot_id, 5, 6]  # the model stops at <EOT>
    assert decode_infilling(tokenizer, ids) == meta.decode_infilling(ids[: ids.index(32010)])
    assert decode_infilling(tokenizer, ids) == middle


def test_infilling_on_a_llama_2_tokenizer_says_what_to_use(tiny_model_and_tokenizer):
    _, llama2_tokenizer = tiny_model_and_tokenizer
    with pytest.raises(UserFacingError) as info:
        encode_infilling(llama2_tokenizer, "def f():", "")
    assert "not Code Llama's" in info.value.what and "CodeLlama-7b" in info.value.todo


def test_tiny_code_llama_infills_and_stops(code_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(code_dir).eval()
    ids = encode_infilling(tokenizer, "def add(a, b):\n    return ", "\n")
    stop = [infill_tokens(tokenizer).eot, tokenizer.eos_token_id]
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=stop, pad_token_id=0
    )
    assert out.shape[1] > len(ids)
    assert isinstance(decode_infilling(tokenizer, out[0, len(ids) :].tolist()), str)
