"""The one call that needs the network, and the plan of what it would send.

``upload`` creates the repo if needed and sends a folder with ``huggingface_hub``'s
``upload_folder``: with ``hf_xet`` (a dependency of huggingface_hub) it streams files, commits a
large folder in several batches, and a rerun after an interruption resumes (files already
committed are skipped, uploaded data is deduplicated). ``upload_plan`` lists the files that call
would send, by the library's own planning, offline. The token comes from the usual login
(``hf auth login`` or ``HF_TOKEN``) and is never read or written here.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..data.disk import FOLDER_MARKER

IGNORED = [FOLDER_MARKER, "*.lock"]  # our own record of the folder, and datasets' lock files


def upload_plan(folder: str | os.PathLike) -> list[str]:
    """The paths in the repo that :func:`upload` would send, selected as ``upload_folder`` selects them (no network)."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(folder).resolve()
    files = [p.relative_to(root).as_posix() for p in sorted(root.glob("**/*")) if p.is_file()]  # symlinked files followed, as upload reads them
    return list(filter_repo_objects(files, ignore_patterns=IGNORED + list(DEFAULT_IGNORE_PATTERNS)))


def upload(folder: str | os.PathLike, repo_id: str, repo_type: str = "model", private: bool = True, commit_message: str | None = None) -> str:
    """Create the repo if needed and upload the folder (resumable, in as many commits as it needs); returns the commit URL."""
    from huggingface_hub import HfApi

    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}.")
    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, ignore_patterns=IGNORED,
                             commit_message=commit_message or "Upload with qwen_instruct_det")
    return str(getattr(info, "commit_url", info))
