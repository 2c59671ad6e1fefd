"""Writing folders and files safely: a full disk named with the path and the way out, and folders that appear whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path


def disk_error(error: BaseException, where: str | os.PathLike, after: str = "nothing half-written is kept") -> OSError:
    """``error`` (an OSError, or an exception that carries one, as ``datasets`` wraps them) as an OSError naming ``where``."""
    found = next((e for e in _chain(error) if isinstance(e, OSError)), None)
    if getattr(found, "named", False):  # already says where
        return found
    if found is not None and found.errno in (errno.ENOSPC, errno.EDQUOT):
        message = (f"no space left on the device while writing {where} ({after}); free space there, or write elsewhere "
                   "(--out, --folder, --cache_dir or HF_DATASETS_CACHE)")
    elif found is not None:
        message = f"cannot write {where}: {found.strerror or found} ({after})"
    else:
        message = f"cannot write {where}: {error} ({after})"
    named = OSError(message)  # one argument: the message reads as it is (no "[Errno 28]"); the cause keeps the errno
    named.named, named.path = True, str(where)
    return named


@contextlib.contextmanager
def full_disk_named(where: str | os.PathLike, after: str = "nothing half-written is kept"):
    """Run the block; a full disk (or quota) anywhere in what it raises comes out as :func:`disk_error` naming ``where``."""
    try:
        yield
    except Exception as e:
        if not disk_full(e):
            raise
        raise disk_error(e, where, after) from e


def disk_full(error: BaseException) -> bool:
    """Whether a full disk (or quota) is in an exception's chain of causes (``datasets`` wraps it in DatasetGenerationError)."""
    return any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in _chain(error))


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


FOLDER_MARKER = "qid_folder.json"  # in every folder qid writes whole: what made it, and that it is complete


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, made_by: str):
    """Build a folder in a hidden sibling and put it in ``target``'s place only when the body succeeds.

    Yields ``(folder, info)``: write the contents into ``folder`` and anything worth recording into the dict ``info``
    (saved as ``qid_folder.json``). An interrupted run (an error, a kill, a full disk) leaves ``target`` as it was, or
    absent, never half-written; its leftovers are hidden ``.NAME.incomplete-*`` siblings, removed by the next run. A
    ``target`` that holds files but no ``qid_folder.json`` is not replaced: it may be the user's own.
    """
    target = Path(target)
    if target.is_dir() and any(target.iterdir()) and not (target / FOLDER_MARKER).is_file():
        raise ValueError(f"{target}: holds files and is not a folder qid wrote ({FOLDER_MARKER} is missing); it would be replaced "
                         "whole, so choose a new or empty folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.incomplete-*"):  # a killed run's leftovers: never complete
        shutil.rmtree(stale, ignore_errors=True)
    building = target.with_name(f".{target.name}.incomplete-{os.getpid()}")
    building.mkdir()
    info: dict = {"made_by": made_by}
    try:
        with full_disk_named(target, "the folder is as it was"):
            yield building, info
            (building / FOLDER_MARKER).write_text(json.dumps(info, indent=2, default=str))
            if target.exists():
                old = target.with_name(f".{target.name}.incomplete-{os.getpid()}-old")
                target.rename(old)  # from here to the next rename, target is absent: a kill leaves nothing that reads as complete
                building.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                building.rename(target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
