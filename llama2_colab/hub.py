"""What this package asks the Hugging Face Hub before loading a model, each call with a deadline.

A model outside the catalog is known only by its Hub id, so before any weight downloads:

- `fetch_config` fetches its config.json (a few KB) and checks it the way a local folder's is
  checked (`checks`): valid JSON, a Llama-family causal LM, sane sizes that split into heads.
  A bad repository is named before gigabytes download, and before anything is built from it.
- `check_tokenizer_files` makes sure the repository has a tokenizer (tokenizer.json or
  tokenizer.model); without one, transformers says "install sentencepiece", which never helps.

Every call runs under `faults.with_deadline`, so a Hub that accepts and never answers is named
within seconds, and every refusal becomes a `UserFacingError` (`auth.explain_hub_error`).
"""

from __future__ import annotations

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError

from .auth import explain_hub_error, find_hub_error, find_token, hub_endpoint, is_offline
from .catalog import did_you_mean, find_entry
from .checks import TOKENIZER_FILES, check_family, read_json_object
from .config_values import check_model_config
from .errors import UserFacingError
from .faults import hub_timeout_s, with_deadline

__all__ = ["check_tokenizer_files", "fetch_config"]


def _refusal(err: BaseException, repo_id: str, token: str | None, doing: str) -> UserFacingError:
    """The UserFacingError for a failed Hub call: what the Hub (or the network) said, and why."""
    if isinstance(err, UserFacingError):
        return err
    hub_err = find_hub_error(err) or err
    status, what, todo = explain_hub_error(hub_err, repo_id, bool(token or find_token()))
    if status != "not_found" and find_entry(repo_id) is None:  # a name like one it knows?
        todo = did_you_mean(repo_id) + todo
    return UserFacingError(f"Could not {doing} {repo_id}: {what}", todo)


def fetch_config(repo_id: str, token: str | None = None, cache_dir: str | None = None) -> dict:
    """Return a Hub model's config.json, checked; UserFacingError for any refusal or fault.

    In offline mode (HF_HUB_OFFLINE=1) the cached copy is used, if there is one.
    """
    seconds = hub_timeout_s()

    def download() -> str:
        return hf_hub_download(
            repo_id,
            "config.json",
            token=token,
            cache_dir=cache_dir,
            endpoint=hub_endpoint(),
            etag_timeout=seconds,
        )

    try:
        file = with_deadline(download, f"fetching {repo_id}'s config.json", seconds)
    except RemoteEntryNotFoundError:  # the Hub has the repository, but no config.json in it
        raise UserFacingError(
            f"{repo_id} has no config.json: it is not a model transformers can load.",
            f"{did_you_mean(repo_id)}Check the repository id; a Llama 2 model's repository has "
            "config.json, the tokenizer files and the weights (e.g. "
            "meta-llama/Llama-2-7b-chat-hf).",
        ) from None
    except Exception as err:  # noqa: BLE001 - every Hub failure becomes a message
        raise _refusal(err, repo_id, token, "fetch the config.json of") from None
    todo = "The repository's config.json is damaged or not a transformers config: use another."
    config = read_json_object(file, "it is damaged", todo, f"{repo_id}'s config.json")
    check_family(config.get("model_type"), config.get("architectures"), repo_id)
    check_model_config(config, f"{repo_id}'s config.json", todo)
    return config


def check_tokenizer_files(repo_id: str, token: str | None = None) -> None:
    """Raise UserFacingError if the Hub repository has no tokenizer file (asked only online)."""
    if is_offline():  # the cache decides; transformers names a missing file there
        return

    def files() -> list[str]:
        return HfApi(endpoint=hub_endpoint()).list_repo_files(repo_id, token=token)

    try:
        names = with_deadline(files, f"listing {repo_id}'s files")
    except Exception as err:  # noqa: BLE001 - every Hub failure becomes a message
        raise _refusal(err, repo_id, token, "list the files of") from None
    if not any(name in TOKENIZER_FILES for name in names):
        raise UserFacingError(
            f"{repo_id} has no tokenizer ({' or '.join(TOKENIZER_FILES)}), so its text cannot "
            "be turned into token ids.",
            "Use a repository that includes its tokenizer, or load the base model's: "
            "AutoTokenizer.from_pretrained('meta-llama/Llama-2-7b-hf') (same tokenizer for "
            "every Llama 2).",
        )
