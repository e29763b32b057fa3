"""The models this project knows: Llama 2 and Code Llama, with their architecture configs as data.

The configs are public facts (each repository's `config.json` on the Hub), stored in
`data/catalog.json` so that planning memory needs no download and no token.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "META_LLAMA_FORM",
    "TINY_STEM",
    "CatalogEntry",
    "load_catalog",
    "find_entry",
    "suggest_names",
    "did_you_mean",
    "model_page_url",
    "speaker_name",
]

META_LLAMA_FORM = "https://ai.meta.com/resources/models-and-libraries/llama-downloads/"
# How the offline tiny model's folders are named (`tiny.tiny_cache_dir`), and so how it is served.
TINY_STEM = "tiny-llama-2"
TINY_SPEAKER = "tiny Llama 2 (toy)"


@dataclass(frozen=True)
class CatalogEntry:
    """One known model: its Hub id, family, size, variant, whether it is gated, and its config."""

    id: str
    family: str  # "Llama 2" | "Code Llama"
    size: str  # "7B", "13B", ...
    variant: str  # "base" | "chat" | "python" | "instruct"
    gated: bool
    config: dict

    @property
    def short_name(self) -> str:
        """The repository name without its owner, e.g. `Llama-2-7b-chat-hf`."""
        return self.id.split("/", 1)[-1]


def load_catalog() -> list[CatalogEntry]:
    """Return every catalog entry, read from the package's `data/catalog.json`."""
    text = resources.files("llama2_colab").joinpath("data/catalog.json").read_text("utf-8")
    return [CatalogEntry(**item) for item in json.loads(text)["models"]]


def find_entry(name: str) -> CatalogEntry | None:
    """Return the entry for a Hub id or a repository name (case-insensitive), or None.

    `meta-llama/Llama-2-13b-chat-hf`, `llama-2-13b-chat-hf` and a mirror such as
    `NousResearch/Llama-2-13b-chat-hf` all find the same entry: the architecture is the same.
    """
    wanted = name.strip().lower()
    entries = load_catalog()
    for entry in entries:
        if entry.id.lower() == wanted:
            return entry
    short = wanted.split("/", 1)[-1]
    for entry in entries:
        if entry.short_name.lower() == short:
            return entry
    return None


def suggest_names(name: str, limit: int = 3) -> list[str]:
    """Return the catalog ids closest to a (probably mistyped) name, best first."""
    ids = [entry.id for entry in load_catalog()]
    lowered = {i.lower(): i for i in ids}
    wanted = name.strip().lower()
    if "/" not in wanted:  # compare a bare name with the bare names
        shorts = {i.split("/", 1)[-1].lower(): i for i in ids}
        close = difflib.get_close_matches(wanted, list(shorts), n=limit, cutoff=0.5)
        return [shorts[c] for c in close]
    close = difflib.get_close_matches(wanted, list(lowered), n=limit, cutoff=0.5)
    return [lowered[c] for c in close]


def did_you_mean(name: str) -> str:
    """Return "Did you mean X or Y? " for the closest catalog ids other than name, or ""."""
    close = [c for c in suggest_names(name) if c.lower() != name.strip().lower()]
    return f"Did you mean {' or '.join(close)}? " if close else ""


def model_page_url(repo_id: str, endpoint: str = "https://huggingface.co") -> str:
    """Return the model's page on the Hub, where you request access to a gated model."""
    return f"{endpoint.rstrip('/')}/{repo_id}"


def speaker_name(model: str | None) -> str:
    """Return what to call a model's replies: what really answers, never the toy as Llama 2.

    "Llama 2" (or "Code Llama") for a model of the catalog, or a mirror of one; "tiny Llama 2
    (toy)" for the offline tiny model (by its name, "tiny", or its folder's); otherwise the
    model's short name (a folder's or a repository's own name).
    """
    name = (model or "").strip().rstrip("/\\")
    short = name.replace("\\", "/").rsplit("/", 1)[-1]
    if short.lower() == "tiny" or short.lower().startswith(TINY_STEM):
        return TINY_SPEAKER
    entry = find_entry(name) if name else None
    if entry is not None:
        return entry.family
    return short or "the model"
