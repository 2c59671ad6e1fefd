"""Fetch COCO 2017 (images and instance annotations) into the layout the builder reads.

    python dataset_scripts/download_coco.py data/coco [--parts annotations val train] [--skip-md5]

Downloads resume where they stopped (HTTP Range), each archive is checked against its
published MD5 before it is unpacked, and a finished part is skipped on the next run.
Result: data/coco/annotations/instances_{train,val}2017.json, data/coco/{train,val}2017/.
Needs the internet; the rest of the project never does.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

BASE = os.environ.get("QID_COCO_MIRROR", "http://images.cocodataset.org")  # a mirror, or a closed port in the tests
PARTS = {
    # name: (url, published md5, approximate size in GiB, what must exist when unpacked)
    "annotations": (f"{BASE}/annotations/annotations_trainval2017.zip", "f4bbac642086de4f52a3fdda2de5fa2c", 0.25,
                    "annotations/instances_val2017.json"),
    "val": (f"{BASE}/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", 0.8, "val2017"),
    "train": (f"{BASE}/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", 18.0, "train2017"),
}


def _download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part``."""
    from tqdm import tqdm

    part = dest.with_suffix(dest.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:
            have = 0  # the server ignored the range: start again
        total = have + int(response.headers.get("Content-Length", 0))
        with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    part.rename(dest)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(root: Path, name: str, check_md5: bool = True) -> None:
    url, md5, gib, marker = PARTS[name]
    if (root / marker).exists():
        print(f"{name}: already unpacked ({root / marker}), skipping")
        return
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free / 2**30
    if free < gib * 2.2:
        sys.exit(f"{name}: needs about {gib * 2.2:.0f} GiB free in {root} (archive + unpacked), only {free:.0f} GiB; free space or pick another folder.")
    archive = root / url.rsplit("/", 1)[1]
    if not archive.exists():
        print(f"{name}: downloading {url} (about {gib} GiB)")
        try:
            _download(url, archive)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            partial = archive.with_suffix(archive.suffix + ".part")
            if created and not (partial.exists() and partial.stat().st_size):  # nothing fetched: leave no empty folder behind
                shutil.rmtree(root, ignore_errors=True)
            reason = getattr(e, "reason", e)
            sys.exit(f"{name}: cannot reach {url.split('/')[2]} ({reason}); this script needs the internet. "
                     + (f"The part already fetched ({partial}) is kept and a rerun resumes it." if partial.exists() else "Nothing was written."))
    if check_md5:
        got = _md5(archive)
        if got != md5:
            archive.unlink()
            sys.exit(f"{archive}: MD5 {got} differs from the published {md5}; the file was deleted, run again to re-download.")
    print(f"{name}: unpacking {archive.name}")
    with zipfile.ZipFile(archive) as z:
        z.extractall(root)
    archive.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="Folder to hold the COCO 2017 layout.")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--skip-md5", action="store_true", help="Do not check archives (faster, not recommended).")
    args = parser.parse_args()
    for name in args.parts:
        fetch(args.root, name, check_md5=not args.skip_md5)
    print(f"done: python dataset_scripts/build_coco.py {args.root} --out {args.root}_built")


if __name__ == "__main__":
    main()
