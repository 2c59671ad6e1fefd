"""Peak memory of ``qid push dataset --dry_run`` against the data's size, on COCO 2017's layout with real-size photos.

For each ``--sizes`` N: a COCO-2017-layout folder with N train2017 images and N/20 val2017 images
(synthetic annotations of COCO's density; the images are real-size noisy JPEGs of COCO's
common sizes and byte sizes, about 130 KB each: a dozen source files, each copy made unique by
its image id written after the JPEG's end marker, so no two images share bytes, as in COCO, and
Parquet's dictionary encoding cannot shrink the folder), then ``qid push dataset DATA --dry_run --folder F`` in its own process with a
cold datasets cache: wall seconds, peak RSS, the folder's size and its largest Parquet file.
All five configurations are written (each row embeds its image). ``--code DIR`` times another
checkout's ``qid`` (a worktree of an earlier commit) the same way, for before and after.

Run: python benchmarks/push_memory.py [--sizes 1000 3000 6000] [--code DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from build_speed import SIZES

ROOT = Path(__file__).resolve().parents[1]


def make_layout(root: Path, n_train: int) -> Path:
    """COCO's layout with ``n_train`` + ``n_train // 20`` images; real-size noisy JPEGs, every file's bytes unique."""
    import numpy as np
    from PIL import Image

    from qwen_instruct_det.data.synthetic import SynthOptions, make_annotations, write_split

    if (root / "annotations" / "instances_val2017.json").is_file() and (root / "unique").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    sources = {}
    rng = np.random.default_rng(0)
    for w, h in SIZES:  # smooth noise at quality 90: JPEGs of 100-200 KB, as COCO's photos are
        base = rng.normal(128, 40, (h // 8 + 1, w // 8 + 1, 3)).clip(0, 255).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        pixels = (pixels + rng.normal(0, 18, pixels.shape)).clip(0, 255).astype(np.uint8)
        sources[(w, h)] = root / f"source_{w}x{h}.jpg"
        root.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(sources[(w, h)], quality=90)
    opts = SynthOptions(min_size=640, max_size=640, min_objects=1, max_objects=14, min_object_fraction=0.03, max_object_fraction=0.45,
                        max_iou=0.3, empty_fraction=0.01, crowd_fraction=0.01)
    for split, n, first in (("train", n_train, 1), ("val", max(n_train // 20, 10), 10_000_000)):
        data = make_annotations(n, seed=first, options=opts, first_id=first)
        scale = {}
        for k, im in enumerate(data["images"]):  # COCO's sizes; boxes were drawn on 640x640 and scale with the image
            w, h = SIZES[(k * 7 + first) % len(SIZES)]
            scale[im["id"]] = (w / im["width"], h / im["height"])
            im["width"], im["height"] = w, h
        for a in data["annotations"]:
            sx, sy = scale[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            a["bbox"] = [x * sx, y * sy, bw * sx, bh * sy]
        write_split(root, split, data, draw=False)
        source_bytes = {size: path.read_bytes() for size, path in sources.items()}
        for im in data["images"]:  # decoders stop at the end marker; the id after it makes the file unique
            payload = source_bytes[(im["width"], im["height"])] + b"qid-image-%d" % im["id"]
            (root / f"{split}2017" / im["file_name"]).write_bytes(payload)
    (root / "unique").touch()
    return root


def stored_against_rows(folder: Path) -> dict[str, list[int]]:
    """Per configuration: rows, the bytes of the images its rows carry, and the bytes its Parquet files hold."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out: dict[str, list[int]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        parquet, carried = pq.ParquetFile(path), 0
        for group in range(parquet.num_row_groups):  # one row group at a time: the dictionary pages decoded, then dropped
            for chunk in parquet.read_row_group(group, columns=["images"]).column("images").chunks:
                carried += pc.sum(pc.binary_length(pc.struct_field(chunk.flatten(), "bytes"))).as_py() or 0
        totals = out.setdefault(path.parent.name, [0, 0, 0])
        totals[0] += parquet.metadata.num_rows
        totals[1] += carried
        totals[2] += path.stat().st_size
    return out


def _qid(code: Path | None) -> list[str]:
    if code is None:
        return [sys.executable, "-m", "qwen_instruct_det"]
    module = "qwen_instruct_det.cli" if (code / "qwen_instruct_det" / "cli.py").is_file() else "qwen_instruct_det.commands.cli"
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(code)!r}); from {module} import main; sys.exit(main())"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 6000], help="train2017 images per run")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qid_push_bench"))
    parser.add_argument("--code", type=Path, default=None, help="another checkout whose qid to time (default: this one)")
    args = parser.parse_args()
    rows, stored = [], {}
    for n in args.sizes:
        data = make_layout(Path(args.workdir) / f"coco{n}", n)
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            folder = Path(tmp) / "repo"
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(Path(tmp) / "cache")}
            start = time.perf_counter()
            proc = subprocess.Popen(_qid(args.code) + ["push", "dataset", str(data), "--dry_run", "--folder", str(folder)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            output = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - start
            if os.waitstatus_to_exitcode(status):
                raise SystemExit(output[-3000:])
            parquet = [p.stat().st_size for p in folder.rglob("*.parquet")]
            rows.append((n, seconds, usage.ru_maxrss / 2**20, sum(parquet) / 2**20, max(parquet) / 2**20, len(parquet)))
            print(f"{n} images: {seconds:.1f} s, peak {rows[-1][2]:.2f} GiB, folder {rows[-1][3]:.0f} MiB in {len(parquet)} Parquet files "
                  f"(largest {rows[-1][4]:.0f} MiB)", flush=True)
            if n == args.sizes[-1] and args.code is None:
                stored = stored_against_rows(folder)
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nqid push dataset --dry_run, all five configurations; qid of {args.code or ROOT}; {os.cpu_count()} cores")
    print(f"{'train images':>12}{'seconds':>10}{'peak GiB':>10}{'folder MiB':>12}{'largest file MiB':>18}{'files':>7}")
    for n, seconds, peak, total, largest, files in rows:
        print(f"{n:>12}{seconds:>10.1f}{peak:>10.2f}{total:>12.0f}{largest:>18.0f}{files:>7}")

    if stored:
        print(f"\nwhat the Parquet files hold against the images their rows carry ({args.sizes[-1]} train images)")
        print(f"{'configuration':<16}{'rows':>8}{'rows carry MiB':>16}{'files MiB':>11}{'stored':>8}")
        for name, (count, carried, held) in stored.items():
            print(f"{name:<16}{count:>8}{carried / 2**20:>16.0f}{held / 2**20:>11.0f}{held / max(carried, 1):>8.2f}")


if __name__ == "__main__":
    main()
