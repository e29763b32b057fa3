"""Meta's download route: turn the folder `download.sh` leaves into a Hugging Face folder.

Meta's form mails you a link; `download.sh` asks for it and leaves one folder per model:

    llama-2-7b-chat/consolidated.00.pth   the weights (13B: .00-.01, 70B: .00-.07, split for
                                          model parallelism: each file holds a slice of each matrix)
    llama-2-7b-chat/params.json           dim, n_layers, n_heads, n_kv_heads (70B), multiple_of,
                                          ffn_dim_multiplier, norm_eps, rope_theta, vocab_size
    llama-2-7b-chat/checklist.chk         md5 sums (`md5sum -c checklist.chk`)
    tokenizer.model                       SentencePiece: beside (Llama 2) or inside (Code Llama)

`convert_meta_checkpoint` writes what `AutoModelForCausalLM` and `AutoTokenizer` load. What it
has to get right, as transformers' old `convert_llama_weights_to_hf.py` did (the transformers 5
wheel no longer ships it):

- the rotary permutation: Meta rotates adjacent pairs (x0, x1), Hugging Face rotates the two
  halves of each head (x0, x_{d/2}), so the rows of `wq` and `wk` are reordered per head
  (`wk` with the key/value heads: 8 for the 70B, grouped-query attention);
- the shards: column-parallel matrices (wq, wk, wv, w1, w3, output) are split along dim 0,
  row-parallel ones (wo, w2) and the embedding along dim 1; the norms are copied in every shard;
- the config: the feed-forward size derived from `multiple_of`/`ffn_dim_multiplier` as Meta's
  `llama/model.py` does, `norm_eps`, `rope_theta`, and the vocabulary size (Code Llama: 32016).

It streams: shards are memory-mapped and the output is written a few layers at a time, so the
RAM it needs is about one output file (2 GiB) plus the largest matrix, 3.5 GiB in all for 7B,
not the whole model (the old script held every shard in RAM and then built a second copy).
Measured on a 0.77 GiB bf16 checkpoint with 256 MiB files: 0.45 GiB of memory at the peak.
`check_resources` states the need, with numbers, before any work starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .checks import parse_json, read_json_object
from .config_values import check_meta_params
from .errors import UserFacingError, redact_secrets
from .faults import (
    describe_fault,
    expand_user,
    fault_boundary,
    find_regular_file,
    library_message,
    refuse_dangling_link,
    require_writable,
)
from .runtime import GiB, detect_runtime
from .tiny import LLAMA2_CHAT_TEMPLATE
from .vocab import read_tokenizer_model, tokenizer_from_pieces
from .weight_report import count_spans
from .workdirs import claim, open_to_umask, remove_stale_work, work_folder, work_prefix

__all__ = [
    "MARKER_FILE",
    "MAX_FILE_BYTES",
    "MetaCheckpoint",
    "check_resources",
    "conversion_needs",
    "compute_intermediate_size",
    "convert_meta_checkpoint",
    "inspect_meta_checkpoint",
    "permute_rotary",
    "write_hf_tokenizer",
]

MARKER_FILE = "llama2_colab_conversion.json"  # marks an OUT_DIR this command wrote
_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
_DTYPES = ("float16", "bfloat16", "float32")
MAX_FILE_BYTES = 2 * GiB  # one output safetensors file; bounds the RAM the conversion needs
_REQUIRED_PARAMS = ("dim", "n_layers", "n_heads", "norm_eps")
_MAX_FFN = 262_144  # as config_values.CONFIG_LIMITS["intermediate_size"]
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")
# Every Llama 2 and Code Llama has heads of 128 dimensions (7B: 4096 / 32, 13B: 5120 / 40, 34B
# and 70B: 8192 / 64; Meta's params.json). The shards' rope.freqs (head size / 2 numbers) say
# it of the checkpoint at hand; without them, this is what a wrong n_heads is checked against.
LLAMA2_HEAD_DIM = 128
_REFETCH = "download it again with download.sh (wget --continue resumes)"


@dataclass(frozen=True)
class MetaCheckpoint:
    """What a Meta-format folder holds, read from params.json and the file sizes alone."""

    folder: Path
    shards: tuple[Path, ...]  # consolidated.00.pth, consolidated.01.pth, ... in order
    tokenizer: Path  # tokenizer.model (in the folder or its parent)
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads unless grouped-query attention (70B, Code Llama 34B)
    intermediate_size: int  # feed-forward size, derived as Meta's llama/model.py does
    norm_eps: float
    rope_theta: float
    vocab_size: int  # from params.json, or -1 there: read from the tokenizer later
    checkpoint_bytes: int  # sum of the shard files (bf16 for Meta's releases)
    mmap_ok: bool  # every shard is a zip-format torch file, so torch.load can memory-map it

    @property
    def n_params(self) -> int:
        """Return the parameter count params.json implies (vocab from params or 32000)."""
        head_dim = self.dim // self.n_heads
        vocab = self.vocab_size if self.vocab_size > 0 else 32000
        attn = 2 * self.dim * self.dim + 2 * self.dim * self.n_kv_heads * head_dim
        ffn = 3 * self.dim * self.intermediate_size
        return self.n_layers * (attn + ffn + 2 * self.dim) + 2 * vocab * self.dim + self.dim


def compute_intermediate_size(
    dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None
) -> int:
    """Return the feed-forward size Meta's `FeedForward` builds (11008 for 7B, 28672 for 70B)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def permute_rotary(weight, n_heads: int):
    """Return wq/wk with each head's rows reordered from Meta's pairwise rotary to HF's halves."""
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _read_params(folder: Path) -> dict:
    path = folder / "params.json"
    if not find_regular_file(path, str(path), "download it again with download.sh"):
        raise UserFacingError(
            f"{folder} has no params.json, so it is not a Meta-format model folder.",
            "Point convert at the folder download.sh made for one model, e.g. llama-2-7b-chat/.",
        )
    params = read_json_object(
        path,
        "it is damaged",
        "Download it again with download.sh (it is a few hundred bytes).",
        str(path),
    )
    params = params.get("model", params)
    missing = [k for k in _REQUIRED_PARAMS if not isinstance(params, dict) or k not in params]
    if missing:
        raise UserFacingError(
            f"{path} lacks {', '.join(missing)}: it does not describe a Llama model.",
            "Download it again with download.sh.",
        )
    return check_meta_params(params, str(path), "Download params.json again with download.sh.")


def _find_shards(folder: Path) -> tuple[Path, ...]:
    """The consolidated.NN.pth files in order; only regular files (a device is read forever)."""
    found = sorted(
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _SHARD_RE.match(p.name)) and find_regular_file(p, str(p), _REFETCH)
    )
    if not found:
        raise UserFacingError(
            f"{folder} has params.json but no consolidated.00.pth.",
            "The download stopped early: run download.sh again (wget --continue resumes).",
        )
    numbers = [n for n, _ in found]
    if numbers != list(range(len(numbers))):
        gaps = sorted(set(range(max(numbers) + 1)) - set(numbers))
        raise UserFacingError(
            f"{folder} lacks shard(s) {', '.join(f'consolidated.{n:02d}.pth' for n in gaps)}.",
            "The download stopped early: run download.sh again (wget --continue resumes).",
        )
    return tuple(p for _, p in found)


def _is_hf_folder(folder: Path) -> bool:
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    return (folder / "config.json").is_file() and has_weights


def inspect_meta_checkpoint(meta_dir: str | os.PathLike) -> MetaCheckpoint:
    """Return what a Meta-format folder holds; raise UserFacingError if it is not one."""
    # Absolute but links kept: "." gets its real name (and chat-ness), and a linked folder keeps
    # the name and the neighbours (tokenizer.model) it has where the user put it.
    folder = Path(os.path.abspath(expand_user(meta_dir)))
    with fault_boundary(f"Cannot read the checkpoint in {folder}"):
        return _inspect(folder)


def _inspect(folder: Path) -> MetaCheckpoint:
    """What the folder holds, every value of params.json checked (`check_meta_params`)."""
    refuse_dangling_link(folder, str(folder), "give the model folder itself")
    if not folder.exists():
        raise UserFacingError(f"{folder} does not exist.", "Check the path to the model folder.")
    if not folder.is_dir():
        raise UserFacingError(
            f"{folder} is a file, not a folder.",
            "Give the folder that holds params.json and consolidated.00.pth.",
        )
    if _is_hf_folder(folder):
        raise UserFacingError(
            f"{folder} is already a Hugging Face folder (config.json and weights): "
            "nothing to convert.",
            f"Load it as it is: AutoModelForCausalLM.from_pretrained({str(folder)!r}).",
        )
    params = _read_params(folder)
    shards = _find_shards(folder)
    tokenizer = next(
        (
            p
            for p in (folder / "tokenizer.model", folder.parent / "tokenizer.model")
            if find_regular_file(p, str(p), _REFETCH)
        ),
        None,
    )
    if tokenizer is None:
        raise UserFacingError(
            f"No tokenizer.model in {folder} or in {folder.parent}.",
            "download.sh puts it next to the model folders (Llama 2) or inside them (Code "
            "Llama); download it again or copy it into the model folder.",
        )
    return MetaCheckpoint(
        folder=folder,
        shards=shards,
        tokenizer=tokenizer,
        dim=params["dim"],
        n_layers=params["n_layers"],
        n_heads=params["n_heads"],
        n_kv_heads=params["n_kv_heads"],
        intermediate_size=_checked_intermediate_size(params, folder),
        norm_eps=params["norm_eps"],
        rope_theta=params["rope_theta"],
        vocab_size=params["vocab_size"],
        checkpoint_bytes=sum(p.stat().st_size for p in shards),
        mmap_ok=all(zipfile.is_zipfile(p) for p in shards),
    )


def _checked_intermediate_size(params: dict, folder: Path) -> int:
    """The feed-forward size params.json implies, refused if it is out of any sane range."""
    size = compute_intermediate_size(
        params["dim"], params["multiple_of"], params["ffn_dim_multiplier"]
    )
    if not 1 <= size <= _MAX_FFN:
        raise UserFacingError(
            f"{folder / 'params.json'} implies a feed-forward size of {size:,} (dim "
            f"{params['dim']:,}, multiple_of {params['multiple_of']:,}, ffn_dim_multiplier "
            f"{params['ffn_dim_multiplier']}); it must be from 1 to {_MAX_FFN:,}.",
            "Download params.json again with download.sh.",
        )
    return size


def conversion_needs(
    checkpoint: MetaCheckpoint, dtype: str, max_file_bytes: int = MAX_FILE_BYTES
) -> tuple[int, int]:
    """Return (RAM, disk) bytes the conversion needs: one output file in RAM, the model on disk."""
    out_bytes = checkpoint.n_params * (4 if dtype == "float32" else 2)
    biggest = max(checkpoint.intermediate_size, checkpoint.vocab_size, 32000) * checkpoint.dim
    # One output file being filled, plus the tensor being joined and cast (float32 at most);
    # without memory-mapping (an old-format shard), every shard is read into RAM as well.
    ram = min(out_bytes, max_file_bytes) + 2 * biggest * 4 + GiB // 2
    if not checkpoint.mmap_ok:
        ram += checkpoint.checkpoint_bytes
    return ram, out_bytes + 64 * 2**20  # the weights, plus the tokenizer and some slack


def check_resources(
    checkpoint: MetaCheckpoint,
    dtype: str,
    ram_available_bytes: int,
    disk_free_bytes: int,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> None:
    """Raise UserFacingError, with the numbers, if RAM or disk cannot hold the conversion."""
    need_ram, need_disk = conversion_needs(checkpoint, dtype, max_file_bytes)
    if ram_available_bytes < need_ram:
        raise UserFacingError(
            f"Converting {checkpoint.folder.name} needs about {need_ram / GiB:.1f} GiB of free "
            f"RAM; this machine has {ram_available_bytes / GiB:.1f} GiB available.",
            "Free memory (restart the runtime, close other notebooks) or convert on a machine "
            "with more RAM.",
        )
    if disk_free_bytes < need_disk:
        raise UserFacingError(
            f"The converted {checkpoint.folder.name} takes {need_disk / GiB:.1f} GiB of disk in "
            f"{dtype}; the output folder's disk has {disk_free_bytes / GiB:.1f} GiB free.",
            "Free disk space or write OUT_DIR to a bigger disk (on Colab: /content, not Drive).",
        )


def _load_shard(path: Path, mmap: bool) -> dict:
    """Return one shard's state dict (memory-mapped when it can be), checked to be one."""
    import torch

    try:
        part = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises KeyError, IndexError...
        fault = describe_fault(err, f"Cannot read {path}")
        if fault is not None and not isinstance(err, RuntimeError):
            raise fault from None
        raise UserFacingError(
            f"{path.name} could not be read ({library_message(err, 200)}).",
            "The file is damaged or incomplete: run download.sh again and check it with "
            "`md5sum -c checklist.chk` in the model folder.",
        ) from None
    if not isinstance(part, dict) or not all(isinstance(k, str) for k in part):
        raise UserFacingError(
            f"{path.name} holds {_kind(part)}, not the named weights of a Llama checkpoint "
            "(a dict from names such as layers.0.attention.wq.weight to tensors).",
            "It is not one of Meta's consolidated.NN.pth files, or it is damaged: download the "
            "model again with download.sh.",
        )
    return part


def _kind(value) -> str:
    """A short description of what a file or an entry holds, for a message."""
    name = type(value).__name__
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a tensor: its numbers' type too
        name = f"{str(value.dtype).removeprefix('torch.')} {name}"
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if hasattr(value, "shape"):
        return f"{article} {name} of shape {tuple(value.shape)}"
    if isinstance(value, list | tuple | dict):
        return f"{article} {name} of {len(value):,} items"
    return f"{article} {name} ({str(value)[:40]!r})"


def _layers(numbers: set[int]) -> str:
    """ "layer 3" or "layers 0 and 5", for a message."""
    return f"layer{'s' * (len(numbers) > 1)} {count_spans(numbers)}"


def _meta_layout(c: MetaCheckpoint, vocab: int) -> dict[str, tuple[tuple[int, ...], int | None]]:
    """Every tensor convert reads: Meta's name -> (its whole shape, the dim shards split it on)."""
    kv, f = c.n_kv_heads * (c.dim // c.n_heads), c.intermediate_size
    layout = {
        "tok_embeddings.weight": ((vocab, c.dim), 1),
        "norm.weight": ((c.dim,), None),
        "output.weight": ((vocab, c.dim), 0),
    }
    for i in range(c.n_layers):
        p = f"layers.{i}."
        layout[p + "attention.wq.weight"] = ((c.dim, c.dim), 0)
        layout[p + "attention.wk.weight"] = ((kv, c.dim), 0)
        layout[p + "attention.wv.weight"] = ((kv, c.dim), 0)
        layout[p + "attention.wo.weight"] = ((c.dim, c.dim), 1)
        layout[p + "feed_forward.w1.weight"] = ((f, c.dim), 0)
        layout[p + "feed_forward.w2.weight"] = ((c.dim, f), 1)
        layout[p + "feed_forward.w3.weight"] = ((f, c.dim), 0)
        layout[p + "attention_norm.weight"] = ((c.dim,), None)
        layout[p + "ffn_norm.weight"] = ((c.dim,), None)
    return layout


class _Shards:
    """The model-parallel shards, checked against params.json, then joined one name at a time."""

    def __init__(self, checkpoint: MetaCheckpoint):
        self.ckpt = checkpoint
        self.parts = [_load_shard(p, checkpoint.mmap_ok) for p in checkpoint.shards]
        # Each shard holds 1/N of wq's rows, so the first shard tells how many there must be
        # (if wq is a matrix of dim columns at all: anything else is a shape check's to name).
        wq = self.parts[0].get("layers.0.attention.wq.weight")
        shape = tuple(getattr(wq, "shape", ()))
        if len(shape) == 2 and shape[1] == checkpoint.dim and 0 < shape[0] <= checkpoint.dim:
            shape = shape if checkpoint.dim % shape[0] == 0 else ()
        else:
            shape = ()
        if shape:
            expected, found = checkpoint.dim // shape[0], len(self.parts)
            if expected != found:
                last = f"consolidated.{expected - 1:02d}.pth"
                raise UserFacingError(
                    f"This model comes in {expected} shards (consolidated.00.pth to {last}); "
                    f"{checkpoint.folder} has {found}.",
                    "The download stopped early: run download.sh again (wget --continue "
                    "resumes), then check it with `md5sum -c checklist.chk`.",
                )

    def check(self, vocab: int) -> None:
        """Raise UserFacingError unless the shards hold exactly the layers and shapes expected."""
        c = self.ckpt
        layers = {int(m.group(1)) for k in self.parts[0] if (m := _LAYER_KEY.match(k))}
        if layers != set(range(c.n_layers)):
            lacking, beyond = set(range(c.n_layers)) - layers, layers - set(range(c.n_layers))
            why = [f"{_layers(lacking)} missing"] * bool(lacking)
            why += [f"{_layers(beyond)} beyond n_layers"] * bool(beyond)
            held = f"{_layers(layers)}: {', '.join(why)}" if layers else "no layers"
            raise UserFacingError(
                f"params.json says n_layers={c.n_layers}, but {c.shards[0].name} holds "
                f"{len(layers)} layer(s) ({held}): params.json and the weights describe "
                "different models.",
                "Download params.json and the consolidated.NN.pth files again with download.sh.",
            )
        self._check_head_size()
        for name, (shape, dim) in _meta_layout(c, vocab).items():
            pieces = self._pieces(name)
            whole = list(pieces[0].shape)
            if dim is not None and len(whole) == len(shape):
                whole[dim] *= len(pieces)
            _expect(name, tuple(whole), shape)

    def _check_head_size(self) -> None:
        """Raise UserFacingError unless params.json's heads have the size the weights were made for.

        Shapes cannot tell a wrong n_heads (wq is dim x dim whatever it says), and the rotary
        permutation would then silently scramble every head. Meta's shards carry rope.freqs,
        one number per pair of a head's dimensions; a checkpoint without it is held to the
        head size of every Llama 2 and Code Llama, 128.
        """
        c = self.ckpt
        freqs = self.parts[0].get("rope.freqs")
        size = getattr(freqs, "shape", ())
        known = 2 * size[0] if len(size) == 1 else LLAMA2_HEAD_DIM
        if c.dim // c.n_heads == known:
            return
        source = (
            f"the shards' rope.freqs holds {known // 2} frequencies, one per pair of a head's "
            f"dimensions: heads of {known}"
            if len(size) == 1
            else f"every Llama 2 and Code Llama has heads of {known} dimensions (7B: dim 4096, "
            "32 heads), and the shards carry no rope.freqs that says otherwise"
        )
        heads = f" (n_heads={c.dim // known})" if known and c.dim % known == 0 else ""
        raise UserFacingError(
            f"params.json says dim={c.dim} with n_heads={c.n_heads}: heads of "
            f"{c.dim // c.n_heads} dimensions, but {source}{heads}. Converted with the wrong "
            "head count, the rotary permutation would scramble every head: a broken model.",
            "params.json belongs to another model or was edited: download it again with "
            "download.sh.",
        )

    def _pieces(self, name: str) -> list:
        """Every shard's tensor `name`, refused if missing, not a float tensor, or mismatched."""
        import torch

        pieces = []
        for path, part in zip(self.ckpt.shards, self.parts, strict=True):
            piece = part.get(name)
            if piece is None:
                raise UserFacingError(
                    f"{path.name} has no tensor {name!r}: it is not a Llama checkpoint or it is "
                    "damaged.",
                    "Download it again with download.sh.",
                )
            if not isinstance(piece, torch.Tensor) or not piece.is_floating_point():
                what = "not floating-point weights" if hasattr(piece, "dtype") else "not weights"
                raise UserFacingError(
                    f"{path.name} holds {_kind(piece)} as {name}: {what} (Meta's are bfloat16).",
                    "It is damaged or not Meta's file: download the model again.",
                )
            pieces.append(piece)
        if any(p.shape != pieces[0].shape for p in pieces):
            shapes = ", ".join(str(tuple(p.shape)) for p in pieces)
            raise UserFacingError(
                f"The shards disagree on the shape of {name}: {shapes}.",
                "The folder mixes files of different models: download the model again.",
            )
        return pieces

    def get(self, name: str, dim: int | None):
        """Return tensor `name` joined along dim (None: replicated, the same in every shard)."""
        import torch

        pieces = self._pieces(name)
        if dim is None:
            if any(not torch.equal(p, pieces[0]) for p in pieces[1:]):
                raise UserFacingError(
                    f"The shards hold different copies of {name}, which every shard repeats.",
                    "The folder mixes files of different models: download the model again.",
                )
            return pieces[0].clone()
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


def _expect(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """Raise UserFacingError unless a tensor's joined shape is the one params.json implies."""
    if shape != expected:
        raise UserFacingError(
            f"{name} has shape {shape}, but params.json implies {expected}.",
            "params.json and the weights come from different models, or a shard is missing: "
            "download the model again.",
        )


_HF_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def _layer_tensors(shards: _Shards, i: int, layout: dict) -> dict:
    """Return layer i's tensors under Hugging Face names, joined and permuted."""
    c = shards.ckpt
    result = {}
    for meta, hf in _HF_NAMES.items():
        name = f"layers.{i}.{meta}"
        result[f"model.layers.{i}.{hf}"] = shards.get(name, layout[name][1])
    q, k = f"model.layers.{i}.self_attn.q_proj.weight", f"model.layers.{i}.self_attn.k_proj.weight"
    result[q] = permute_rotary(result[q], c.n_heads)
    result[k] = permute_rotary(result[k], c.n_kv_heads)
    return result


def write_hf_tokenizer(tokenizer_model: str | os.PathLike, out_dir: str | os.PathLike, chat: bool):
    """Write a Hugging Face Llama tokenizer built from Meta's tokenizer.model; return it.

    It is built from the pieces and their scores (`vocab.tokenizer_from_pieces`), not through
    transformers' converter: that one orders the merges by id, and then `"    return"` splits as
    `▁▁▁▁` + `return` where SentencePiece (and the Hub's Llama 2 tokenizer) gives `▁▁▁` +
    `▁return`, so indented code would get other ids than the model was trained on.
    """
    tokenizer = _read_tokenizer(tokenizer_model, chat)
    _save_tokenizer(tokenizer, tokenizer_model, Path(out_dir))
    return tokenizer


def _read_tokenizer(tokenizer_model: str | os.PathLike, chat: bool):
    """Return the Hugging Face tokenizer of a tokenizer.model (built in memory, nothing written)."""
    return tokenizer_from_pieces(
        read_tokenizer_model(tokenizer_model), LLAMA2_CHAT_TEMPLATE if chat else None
    )


def _save_tokenizer(tokenizer, tokenizer_model: str | os.PathLike, out: Path) -> None:
    """Write the tokenizer's files and a copy of tokenizer.model into out."""
    tokenizer.save_pretrained(out)
    shutil.copyfile(tokenizer_model, out / "tokenizer.model")


def _write_weights(
    shards: _Shards,
    out: Path,
    dtype: str,
    vocab: int,
    max_file_bytes: int,
    log: Callable[[str], None],
) -> None:
    """Write the weights as safetensors files of about max_file_bytes at most, and an index."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, dtype)
    layout = _meta_layout(shards.ckpt, vocab)
    groups: list[Callable[[], dict]] = [
        lambda: {"model.embed_tokens.weight": shards.get("tok_embeddings.weight", 1)},
        *[(lambda i=i: _layer_tensors(shards, i, layout)) for i in range(shards.ckpt.n_layers)],
        lambda: {
            "model.norm.weight": shards.get("norm.weight", None),
            "lm_head.weight": shards.get("output.weight", 0),
        },
    ]
    files: list[dict] = []
    pending: dict = {}
    pending_bytes = 0
    total_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            name = f"part-{len(files) + 1:05d}.safetensors"
            save_file(pending, str(out / name), metadata={"format": "pt"})
            files.append({k: name for k in pending})
            log(f"wrote part {len(files)} ({pending_bytes / GiB:.2f} GiB)")
            pending, pending_bytes = {}, 0

    for group in groups:
        tensors = {k: v.to(torch_dtype).contiguous() for k, v in group().items()}
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if pending and pending_bytes + size > max_file_bytes:
            flush()
        pending.update(tensors)
        pending_bytes += size
        total_bytes += size
    flush()
    _name_like_save_pretrained(out, files, total_bytes)


def _name_like_save_pretrained(out: Path, files: list[dict], total_bytes: int) -> None:
    """Rename the parts the way save_pretrained names them, now that their count is known."""
    weight_map = {}
    for n, names in enumerate(files, start=1):
        old = next(iter(names.values()))
        new = (
            "model.safetensors"
            if len(files) == 1
            else f"model-{n:05d}-of-{len(files):05d}.safetensors"
        )
        (out / old).rename(out / new)
        weight_map.update({k: new for k in names})
    if len(files) > 1:
        index = {
            "metadata": {"total_size": total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), "utf-8")


def _check_out_dir(out: Path, source: Path) -> None:
    """Refuse an OUT_DIR that holds anything this command did not write, or the source itself."""
    if out.exists() and not out.is_dir():
        raise UserFacingError(f"{out} is a file.", "Give a new folder name for OUT_DIR.")
    if out == source or out in source.parents:
        raise UserFacingError(
            f"{out} holds the checkpoint being converted ({source}); it is left as it is.",
            "Give an OUT_DIR outside the Meta model folder, e.g. a new folder beside it.",
        )
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / MARKER_FILE).is_file():
        raise UserFacingError(
            f"{out} is not empty and was not written by this command; it is left as it is.",
            "Give a new or empty folder for OUT_DIR.",
        )
    ours = _files_written(out)
    theirs = sorted(p.name for p in out.iterdir() if not ours(p))
    if theirs:
        raise UserFacingError(
            f"{out} was written by convert, but now also holds {', '.join(theirs[:5])}"
            f"{', ...' if len(theirs) > 5 else ''}, which convert did not write: converting "
            "again would replace the folder, so it is left as it is.",
            "Move those out first (an adapter, notes...), or give a new folder for OUT_DIR.",
        )


def _files_written(out: Path) -> Callable[[Path], bool]:
    """Return a test: is this entry of OUT_DIR, unchanged, a file the last conversion wrote?

    The marker lists each file with its size and modification time, so a file saved over ours
    under the same name (`merged.save_pretrained(out)`) counts as yours. A marker from before
    that list: the names save_pretrained and convert use.
    """
    try:
        listed = parse_json((out / MARKER_FILE).read_text("utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if isinstance(listed, dict):
        return lambda p: p.name == MARKER_FILE or (p.name in listed and _stamp(p) == listed[p.name])
    return lambda p: p.is_file() and bool(_OUR_NAMES.match(p.name))


_OUR_NAMES = re.compile(
    r"^(config\.json|generation_config\.json|tokenizer(_config)?\.json|tokenizer\.model|"
    r"special_tokens_map\.json|chat_template\.jinja|model(-\d{5}-of-\d{5})?\.safetensors|"
    r"model\.safetensors\.index\.json|" + re.escape(MARKER_FILE) + r")$"
)


def _work_stem(out: Path) -> str:
    """The stem of this conversion's work folders beside OUT_DIR (see `workdirs`)."""
    return f"{out.name}.converting"


def _work_prefix(out: Path) -> str:
    """The name of a run's work folder beside OUT_DIR, up to the random part: host and process."""
    return work_prefix(_work_stem(out))


def _out_path(out_dir: str | os.PathLike) -> Path:
    """OUT_DIR as an absolute path with its links resolved (a link that loops is refused)."""
    out = expand_user(out_dir)
    refuse_dangling_link(out, f"OUT_DIR {out}", "give a new folder")
    return Path(os.path.realpath(out))


def _read_inputs(checkpoint: MetaCheckpoint, chat: bool):
    """Return (tokenizer, vocab size, shards), every input checked against the others.

    Only reading happens here (the shards memory-mapped), so a mismatch between params.json,
    tokenizer.model and the weights is refused before anything is written.
    """
    tokenizer = _read_tokenizer(checkpoint.tokenizer, chat)
    vocab = checkpoint.vocab_size if checkpoint.vocab_size > 0 else len(tokenizer)
    if len(tokenizer) != vocab:
        raise UserFacingError(
            f"tokenizer.model has {len(tokenizer)} tokens but params.json says vocab_size={vocab}.",
            "The tokenizer belongs to another model: use the one download.sh fetched "
            "with these weights.",
        )
    shards = _Shards(checkpoint)
    shards.check(vocab)
    return tokenizer, vocab, shards


def convert_meta_checkpoint(
    meta_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "float16",
    ram_available_bytes: int | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Convert a Meta-format model folder into a Hugging Face folder at out_dir; return it.

    Every input (params.json, tokenizer.model, each shard's names and shapes) is checked against
    the others before anything is written. The output appears whole or not at all: it is
    written into a work folder beside out_dir and renamed. An existing out_dir is replaced only
    if this command wrote it; a file you add to it meanwhile is kept.
    """
    if dtype not in _DTYPES:
        raise UserFacingError(f"Unknown dtype {dtype!r}.", f"Use one of {', '.join(_DTYPES)}.")
    checkpoint = inspect_meta_checkpoint(meta_dir)
    with fault_boundary(f"Cannot use {out_dir} as OUT_DIR"):
        out = _out_path(out_dir)
        _check_out_dir(out, checkpoint.folder.resolve())
    if ram_available_bytes is None:
        ram_available_bytes = detect_runtime().ram_available_bytes
    check_resources(checkpoint, dtype, ram_available_bytes, 1 << 62, max_file_bytes)  # RAM
    name = checkpoint.folder.name.lower()
    chat = "chat" in name or "instruct" in name
    with fault_boundary(f"Cannot read the checkpoint in {checkpoint.folder}"):
        tokenizer, vocab, shards = _read_inputs(checkpoint, chat)
    log(
        f"{checkpoint.folder.name}: {len(checkpoint.shards)} shard(s), {checkpoint.n_layers} "
        f"layers, dim {checkpoint.dim}, {checkpoint.n_heads} heads ({checkpoint.n_kv_heads} "
        f"key/value), feed-forward {checkpoint.intermediate_size}"
    )
    with (
        fault_boundary(
            f"Cannot write the converted model to {out}",
            "Nothing half-written was left: run convert again when that is fixed.",
        ),
        ExitStack() as stack,
    ):
        with fault_boundary(f"Cannot write beside {out}", _BESIDE):
            out.parent.mkdir(parents=True, exist_ok=True)
            require_writable(out.parent, f"Cannot write beside {out}")
            remove_stale_work(out.parent, _work_stem(out), "a conversion", log)
            tmp = stack.enter_context(work_folder(out.parent, _work_stem(out)))
        disk_free = shutil.disk_usage(out.parent).free
        check_resources(checkpoint, dtype, ram_available_bytes, disk_free, max_file_bytes)
        _save_tokenizer(tokenizer, checkpoint.tokenizer, tmp)
        _write_weights(shards, tmp, dtype, vocab, max_file_bytes, log)
        _write_config(checkpoint, tmp, dtype, vocab, chat)
        open_to_umask(tmp)
        _write_marker(checkpoint, tmp, dtype)
        _put_in_place(tmp, out)
    log(f"Wrote {out}")
    return out


_BESIDE = "Give an OUT_DIR in a folder you can write to (on Colab, under /content)."


def _stamp(path: Path) -> list[int] | None:
    """A file's size and modification time, as the marker records them (None: not a file)."""
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns] if path.is_file() else None


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to OUT_DIR, replacing an earlier conversion (checked ours).

    Done under a claim on OUT_DIR's folder (`workdirs.claim`, which `tiny` takes too), with
    OUT_DIR checked again there: a folder that appeared or filled while this conversion ran,
    with files convert did not write, is left as it is. What was added to an earlier
    conversion's OUT_DIR meanwhile (a file saved there) is moved into the new one, never deleted.
    """
    with claim(out.parent):
        _refuse_appeared(out)
        if not out.exists():
            tmp.rename(out)
            return
        with work_folder(out.parent, _work_stem(out)) as hold:
            _replace(tmp, out, hold / "old")


def _refuse_appeared(out: Path) -> None:
    """Raise UserFacingError if OUT_DIR now holds what no conversion wrote (another command's)."""
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if out.exists() and not out.is_dir():
        names = [out.name]
    if names and not (out / MARKER_FILE).is_file():
        raise UserFacingError(
            f"{out} appeared while convert ran, holding {', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''} (another command wrote there meanwhile); it "
            "is left as it is, and this conversion is not kept.",
            "Give a new folder for OUT_DIR, and run convert again.",
        )


def _replace(tmp: Path, out: Path, old: Path) -> None:
    """Swap the earlier conversion at out for tmp, moving in what was added to it meanwhile."""
    ours = _files_written(out)
    out.rename(old)
    try:
        added = [p for p in old.iterdir() if not ours(p)]  # arrived between check and rename
        clash = [p.name for p in added if (tmp / p.name).exists()]
        if clash:
            raise UserFacingError(
                f"{out} gained {', '.join(clash)} while convert ran, under the name of a file it "
                "writes; the folder is left as it is.",
                "Move those out (or give a new OUT_DIR), then run convert again.",
            )
        tmp.rename(out)
    except BaseException:
        old.rename(out)  # the earlier conversion back, as it was
        raise
    for path in added:
        os.replace(path, out / path.name)


def _write_config(checkpoint: MetaCheckpoint, out: Path, dtype: str, vocab: int, chat: bool):
    from transformers import GenerationConfig, LlamaConfig

    # Llama 2: 4096 positions. Code Llama (rope_theta 1e6) was trained on 16k sequences.
    positions = 16384 if checkpoint.rope_theta > 10000.0 else 4096
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=checkpoint.dim,
        intermediate_size=checkpoint.intermediate_size,
        num_hidden_layers=checkpoint.n_layers,
        num_attention_heads=checkpoint.n_heads,
        num_key_value_heads=checkpoint.n_kv_heads,
        max_position_embeddings=positions,
        rms_norm_eps=checkpoint.norm_eps,
        rope_theta=checkpoint.rope_theta,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
        dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )
    config.save_pretrained(out)
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": positions}
    if chat:  # the sampling settings of Meta's chat examples, as in Llama-2-7b-chat-hf
        generation.update(do_sample=True, temperature=0.6, top_p=0.9)
    GenerationConfig(**generation).save_pretrained(out)


def _write_marker(checkpoint: MetaCheckpoint, out: Path, dtype: str) -> None:
    """Mark OUT_DIR as this command's, listing every file written (so nothing else is replaced)."""
    marker = {
        "converted_from": redact_secrets(str(checkpoint.folder)),  # a token in a path stays out
        "shards": [p.name for p in checkpoint.shards],
        "dtype": dtype,
        "files": {p.name: _stamp(p) for p in sorted(out.iterdir())},
    }
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", "utf-8")
