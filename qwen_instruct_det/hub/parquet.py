"""A built split as Parquet shards with the image bytes embedded: written batch by batch, every file checked first.

Memory holds one batch (``BATCH_ROWS`` rows), whatever the split's size; a shard is closed once
its file passes ``max_shard_bytes`` (the Hub recommends about 500 MB). Rows of one image follow each
other (a region configuration has a row per object), and Parquet's dictionary encoding stores an
image repeated within a batch once, so a file holds far fewer bytes than its rows' images add up to and the shards are named
``SPLIT-0000K-of-0000N.parquet`` once their number is known. Before its bytes are read, each image
must lie inside its split's image folder (after symlinks; unless the build allowed otherwise) and
start as an image file does: a row can never carry another file of the machine into a published data set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

DEFAULT_SHARD_BYTES = 500 * 2**20
BATCH_ROWS = 256  # rows read, embedded and written at a time: what memory holds
# how image files start: JPEG, PNG, GIF, WebP (RIFF....WEBP), BMP, TIFF (both byte orders)
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def write_split(dataset, folder: str | os.PathLike, split: str, image_dir: str | os.PathLike, allow_outside_image_dir: bool = False,
                max_shard_bytes: int = DEFAULT_SHARD_BYTES, batch_rows: int = BATCH_ROWS) -> list[Path]:
    """Write ``dataset`` (a built split, images as paths) to ``folder/SPLIT-*.parquet`` with its images embedded; the shards."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(image_dir)
    schema = dataset.features.arrow_schema  # with datasets' feature metadata: load_dataset reads the Image columns back
    parts: list[Path] = []
    writer, written = None, 0
    try:
        for batch in dataset.with_format("arrow").iter(batch_size=batch_rows):
            table = _embedded(batch, root, allow_outside_image_dir).cast(schema)
            if writer is None or written >= max_shard_bytes:
                if writer is not None:
                    writer.close()
                parts.append(folder / f"{split}-part{len(parts):05d}.parquet")
                writer, written = pq.ParquetWriter(parts[-1], schema), 0
            writer.write_table(table)
            written = os.path.getsize(parts[-1])  # bytes on disk: an image repeated in nearby rows is stored once (dictionary pages)
        if writer is None:  # an empty split is one empty shard, so the card's pattern still finds the split
            parts.append(folder / f"{split}-part00000.parquet")
            pq.write_table(schema.empty_table(), parts[-1])
    finally:
        if writer is not None:
            writer.close()
    shards = [folder / f"{split}-{k:05d}-of-{len(parts):05d}.parquet" for k in range(len(parts))]
    for part, shard in zip(parts, shards):
        part.rename(shard)
    return shards


def _embedded(batch: pa.Table, root: str, allow_outside: bool) -> pa.Table:
    """The batch with each image's bytes read in (path kept as the file's name only: no local folders are published)."""
    import pyarrow.compute as pc

    column = batch.column("images").combine_chunks()
    paths = pc.struct_field(column.flatten(), "path").to_pylist()
    data = [_read_image(path, root, allow_outside) for path in paths]
    names = [os.path.basename(path) if path else None for path in paths]
    images = pa.StructArray.from_arrays([pa.array(data, pa.binary()), pa.array(names, pa.string())], names=["bytes", "path"])
    offsets = pa.array(column.offsets.to_numpy() - column.offsets[0].as_py())  # from 0, as the flattened items are
    embedded = pa.ListArray.from_arrays(offsets, images)
    return batch.set_column(batch.schema.get_field_index("images"), "images", embedded)


def _read_image(path: str | None, root: str, allow_outside: bool) -> bytes | None:
    if path is None:
        return None
    real = os.path.realpath(path)
    if not allow_outside and not (real == root or real.startswith(root.rstrip(os.sep) + os.sep)):
        raise ValueError(f"{path}: resolves to {real}, outside the image folder {root}; it is not embedded. Fix the record, or build "
                         "with allow_outside_image_dir=true if the file is meant to be published.")
    with open(real, "rb") as f:
        data = f.read()
    if not (data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")):
        raise ValueError(f"{path}: is not an image file (it starts {data[:8]!r}); it is not embedded. Replace it with the image, or "
                         "remove its record.")
    return data
