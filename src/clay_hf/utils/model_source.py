"""One check for every command that loads a model: a mistyped local folder is named as such, never reported as a
failed connection to the Hub."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .errors import ClayUserError
from .outputs import sha256_file

T = TypeVar("T")


class ModelSourceError(ClayUserError, FileNotFoundError):
    """`model_name_or_path` is neither a model folder nor a model the Hub (or its offline cache) provides."""


def looks_like_hub_id(name_or_path: str) -> bool:
    """Whether `name_or_path` could be a Hub repository id (`name` or `owner/name`), not only a local path."""
    if name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path:
        return False
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return False
    return True


def model_reference(name_or_path: str | Path | None) -> str | None:
    """How a file records the model that made it: a local folder or file as its absolute path (so that the record
    works from any working directory), a Hub id as it is."""
    if not name_or_path:
        return None
    path = Path(str(name_or_path)).expanduser()
    return str(path.resolve()) if path.exists() else str(name_or_path)


#: The files whose bytes are a model's weights: a save_pretrained folder's (whole or sharded), or an exported file.
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.onnx", "*.onnx.data")


def model_revision(name_or_path: str | Path | None, config: Any = None) -> str | None:
    """What identifies a model's weights beyond its name, so that a resume can tell a folder whose weights were
    replaced: `sha256:…` over a local model's weight files (a folder's, or the file itself), a Hub model's commit
    (`config._commit_hash`); None when neither is known."""
    if name_or_path:
        path = Path(str(name_or_path)).expanduser()
        files = (
            sorted({file for pattern in WEIGHT_FILE_PATTERNS for file in path.glob(pattern)}) if path.is_dir() else []
        )
        files = [path] if path.is_file() else files
        if files:
            digest = hashlib.sha256()
            for file in files:
                digest.update(f"{file.name}:{sha256_file(file)}\n".encode())
            return f"sha256:{digest.hexdigest()}"
    commit = getattr(config, "_commit_hash", None)
    return f"commit:{commit}" if commit else None


def check_model_source(name_or_path: str | Path) -> None:
    """Raise [`ModelSourceError`] for a local path that is not a model folder; Hub ids pass."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{text}: a folder without config.json, not a save_pretrained model folder.")
        return
    if path.exists():
        raise ModelSourceError(f"{text}: a file, not a model folder (a save_pretrained folder or a Hub id).")
    if not looks_like_hub_id(text):
        raise ModelSourceError(f"{text}: no such folder (and not a Hub repository id).")


def from_pretrained_checked(cls: type[T], name_or_path: str | Path, **kwargs: Any) -> T:
    """`cls.from_pretrained(name_or_path, **kwargs)`, with a one-line error that says what is missing: the folder,
    or the Hub repository (and whether the Hub was offline)."""
    check_model_source(name_or_path)
    try:
        return cls.from_pretrained(name_or_path, **kwargs)
    except OSError as error:
        if Path(str(name_or_path)).expanduser().exists():
            raise
        where = (
            "not in the offline Hub cache (HF_HUB_OFFLINE=1)"
            if constants.HF_HUB_OFFLINE
            else "not a model the Hub provides"
        )
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelSourceError(f"{name_or_path}: no such local folder, and {where} ({detail})") from None


__all__ = [
    "ModelSourceError",
    "check_model_source",
    "from_pretrained_checked",
    "looks_like_hub_id",
    "model_reference",
]
