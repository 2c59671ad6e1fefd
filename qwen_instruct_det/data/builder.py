"""The ``datasets`` builder: five configurations, COCO splits, one feature schema.

``QwenInstructDet`` is an ``ArrowBasedBuilder``: for each split it loads the COCO index
once (cached in-process, so building all five configurations reads the JSON once), runs
the configuration's task generator over whole columns and yields Arrow tables of up to
``_BATCH_ROWS`` rows. Images are stored as paths (a local build copies no bytes; a
Parquet export or a Hub push embeds them). Importing ``qwen_instruct_det`` registers this
module so that ``datasets.load_dataset("qwen_instruct_det", CONFIG, data_dir=...)`` works.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import typing
from collections import OrderedDict
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.builder import Key

from ..formats import BOX_FORMATS
from . import coco, images, registry
from .objects import TASKS, Objects, TaskOptions, TaskRows
from .tasks import TASK_DESCRIPTIONS, generate

logger = logging.getLogger(__name__)

_BATCH_ROWS = 50_000
COCO_SPLITS = {"train": "train2017", "validation": "val2017", "test": "test2017"}
META_FILE = "qid_meta.json"  # beside a build's Arrow files: per split, the category names and what was skipped

_MESSAGES = datasets.List(
    {"role": datasets.Value("string"), "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})}
)
FEATURES = datasets.Features(
    {
        "images": datasets.List(datasets.Image()),
        "prompt": _MESSAGES,
        "completion": _MESSAGES,
        "task": datasets.Value("string"),
        "image_id": datasets.Value("int64"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "objects": datasets.List({"bbox": datasets.List(datasets.Value("float32"), length=4), "category": datasets.Value("string")}),
        "region": datasets.List(datasets.Value("float32"), length=4),
        "visible_fraction": datasets.Value("float32"),
    }
)

@dataclass
class QwenInstructDetConfig(TaskOptions, datasets.BuilderConfig):
    """Options of one configuration; every field can be passed to ``load_dataset`` as a keyword.

    The options are declared once: the text options in :class:`~qwen_instruct_det.data.objects.TaskOptions`,
    which this config inherits, the data options here; ``qid build`` / ``qid export-swift`` flags and
    ``qid train``'s data arguments are generated from these fields (:func:`option_fields`).
    """

    annotation_files: dict | None = field(default=None, metadata={
        "help": "SPLIT=PATH COCO-format json per split, for a non-COCO layout (default: DATA_DIR/annotations/instances_{train,val}2017.json)."})
    image_dirs: dict | None = field(default=None, metadata={"help": "SPLIT=FOLDER image folder per split, with annotation_files (default: DATA_DIR/{train,val}2017)."})
    subset: int | None = field(default=None, metadata={"help": "A seeded random subset of N images per split."})
    categories: list[str] | None = field(default=None, metadata={"help": "Keep only these category names."})
    keep_empty: bool = field(default=True, metadata={"help": "Keep images with no (non-crowd) objects; their targets say there are none."})
    check_files: bool = field(default=True, metadata={
        "help": "Read every image's header (existence, size, EXIF orientation) so rows describe the decoded image; "
                "false trusts the JSON's sizes and reads no image."})
    exif_frame: str = field(default="stored", metadata={
        "help": "Which frame the boxes of EXIF-oriented photos were drawn on when their JSON size cannot tell (mirrors, 180-degree "
                "turns, square images): 'stored' pixels (COCO's convention) or the 'displayed' picture (browser annotation tools)."})
    on_size_mismatch: str = field(default="error", metadata={
        "help": "An image whose JSON size matches neither its stored nor its displayed size: 'error' or 'rescale' its boxes."})
    verify_images: bool = field(default=False, metadata={"help": "Decode every image during the build and name the unreadable ones."})
    allow_outside_image_dir: bool = field(default=False, metadata={
        "help": "Accept file names that leave the image folder (absolute paths, '..', symlinks to elsewhere). Off by default: a build "
                "reads every file a record names and a Hub push embeds its bytes."})
    source_fingerprint: str | None = field(default=None, metadata={"help": "Set by the builder: a hash of the annotation files' content.",
                                                                    "internal": True})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.categories, str):  # one name, not a list of its letters
            self.categories = [self.categories]
        if self.name not in TASKS:
            raise ValueError(f"Unknown configuration {self.name!r}; choose one of {list(TASKS)}.")
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"Unknown box_format {self.box_format!r}; choose one of {sorted(BOX_FORMATS)}.")


def option_fields() -> list:
    """The user options of the builder (its config's fields less datasets' own and internal ones), with resolved types."""
    hints = typing.get_type_hints(QwenInstructDetConfig)
    own = {f.name for f in fields(datasets.BuilderConfig)}
    out = []
    for f in fields(QwenInstructDetConfig):
        if f.name in own or f.metadata.get("internal"):
            continue
        f = copy.copy(f)
        f.type = hints[f.name]
        out.append(f)
    return out


def with_options(name: str, base: type, exclude: tuple[str, ...] = (), unset: str | None = None) -> type:
    """A dataclass ``name``: ``base``'s fields followed by the builder's options (less ``exclude``), for a command's flags.

    With ``unset`` every option defaults to None (not given) instead of the builder's default, ``unset`` appended to its help:
    for a command that takes the options from elsewhere (a model's ``qid_config.json``) and lets a flag override them.
    """
    def _field(f):
        if unset is None:
            return field(default=f.default, metadata=f.metadata)
        return field(default=None, metadata={**f.metadata, "help": f"{f.metadata.get('help', '')} {unset}".strip()})

    extra = [(f.name, f.type if unset is None else f.type | None, _field(f)) for f in option_fields() if f.name not in exclude]
    return make_dataclass(name, extra, bases=(base,))


def builder_kwargs(args) -> dict:
    """The builder keywords (``data_dir`` and every option) an object made by :func:`with_options` carries."""
    names = ["data_dir"] + [f.name for f in option_fields()]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


_DEFAULTS = {f.name: f.default for f in fields(QwenInstructDetConfig) if f.default is not MISSING and f.name not in ("name", "data_dir")}


class QwenInstructDet(datasets.ArrowBasedBuilder):
    """COCO-format detection data as Qwen-VL instruction rows, in five configurations."""

    BUILDER_CONFIG_CLASS = QwenInstructDetConfig
    BUILDER_CONFIGS = [QwenInstructDetConfig(name=task, description=TASK_DESCRIPTIONS[task]) for task in TASKS]
    DEFAULT_CONFIG_NAME = "detection"

    def __init__(self, *args, **kwargs):
        kwargs.pop("data_files", None)  # resolved by datasets from data_dir; this builder reads the layout itself
        if isinstance(kwargs.get("categories"), str):  # one name, not a list of its letters (datasets sets options after __post_init__)
            kwargs["categories"] = [kwargs["categories"]]
        for name, default in _DEFAULTS.items():  # datasets keys the cache on the options as passed: a default passed is a default
            if name in kwargs and kwargs[name] == default:
                del kwargs[name]
        kwargs["source_fingerprint"] = _fingerprint(kwargs.get("data_dir"), kwargs.get("annotation_files"))
        # load_dataset passes the hash of the code that makes the rows; made directly (load_split), the cache needs it too,
        # or a library upgrade that changes the rows would read the old ones back
        kwargs["hash"] = kwargs.get("hash") or registry._source_hash()
        super().__init__(*args, **kwargs)
        self.skipped: dict[str, dict[str, int]] = {}  # per split: what the build left out, counted
        self.categories: dict[str, list[str]] = {}  # per split: the category names of the rows, in id order

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description=TASK_DESCRIPTIONS[self.config.name], features=FEATURES)

    def download_and_prepare(self, *args, **kwargs):
        super().download_and_prepare(*args, **kwargs)
        meta = Path(self._output_dir) / META_FILE
        if not self.skipped and meta.is_file():  # read from the cache: what the build that wrote it counted and named
            saved = json.loads(meta.read_text())
            self.skipped, self.categories = saved["skipped"], saved["categories"]

    def _save_info(self):
        super()._save_info()  # inside datasets' temporary folder, renamed only when the whole build succeeded
        (Path(self._output_dir) / META_FILE).write_text(json.dumps({"categories": self.categories, "skipped": self.skipped}))

    def _split_generators(self, dl_manager):
        files = self.split_files()
        for annotation_file, image_dir in files.values():
            prepare_index(annotation_file, image_dir, self.config)  # bad input stops here, unwrapped by datasets
        return [datasets.SplitGenerator(name=split, gen_kwargs={"split": split, "annotation_file": a, "image_dir": d}) for split, (a, d) in files.items()]

    def split_files(self) -> dict[str, tuple[str, str]]:
        cfg = self.config
        if cfg.annotation_files:
            image_dirs = cfg.image_dirs or {}
            missing = [s for s in cfg.annotation_files if s not in image_dirs]
            if missing:
                raise ValueError(f"annotation_files names splits {missing} with no image folder; pass image_dirs={{split: folder}} for each.")
            return {s: (str(a), str(image_dirs[s])) for s, a in cfg.annotation_files.items()}
        if not cfg.data_dir:
            raise ValueError("Pass data_dir (a COCO-2017-layout folder) or annotation_files and image_dirs.")
        root = Path(cfg.data_dir)
        found = {}
        for split, stem in COCO_SPLITS.items():
            ann = root / "annotations" / f"instances_{stem}.json"
            if ann.is_file():
                found[split] = (str(ann), str(root / stem))
        if not found:
            expected = ", ".join(str(root / "annotations" / f"instances_{s}.json") for s in COCO_SPLITS.values())
            raise FileNotFoundError(
                f"{root}: no COCO annotation file found (looked for {expected}). "
                "Use the COCO 2017 layout, or pass annotation_files and image_dirs for another layout."
            )
        return found

    def _generate_tables(self, split: str, annotation_file: str, image_dir: str):
        index = prepare_index(annotation_file, image_dir, self.config)
        if "objects" not in index.memo:  # one per index, shared by the five configurations
            index.memo["objects"] = Objects.from_index(index)
            index.memo["columns"] = _ImageColumns(index, index.memo["objects"])
        objs = index.memo["objects"]
        rows = generate(self.config.name, objs, self.config)
        skipped = {**index.skipped, **rows.skipped}
        self.skipped[split] = skipped
        self.categories[split] = kept_categories(index, self.config)
        counted = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in skipped.items() if v) or "nothing"
        logger.info("%s/%s: %s rows from %s images; left out or changed: %s", self.config.name, split, f"{len(rows):,}",
                    f"{index.num_images:,}", counted)
        tables = index.memo["columns"]
        for batch, start in enumerate(range(0, len(rows), _BATCH_ROWS)):
            yield Key(0, batch), tables.table(rows, start, min(start + _BATCH_ROWS, len(rows)))


def _fingerprint(data_dir: str | None, annotation_files: dict | None) -> str:
    """A content hash of every annotation file the config can read (part of the cache key)."""
    paths = list((annotation_files or {}).values())
    if data_dir and not annotation_files:
        paths = [Path(data_dir) / "annotations" / f"instances_{stem}.json" for stem in COCO_SPLITS.values()]
    return ";".join(f"{os.path.abspath(p)}:{file_digest(p)}" for p in paths if os.path.isfile(p))


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes, remembered while its size, times and inode stay the same.

    Keying the memo on ``st_ctime_ns`` too means an edit that restores the modification time
    is still noticed: the change time cannot be set back.
    """
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _DIGESTS:
        digest = hashlib.sha1(usedforsecurity=False)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def kept_categories(index: coco.CocoIndex, cfg: QwenInstructDetConfig) -> list[str]:
    """The category names the rows are about: the file's, or those a ``categories`` filter keeps, in id order."""
    return [name for name in index.category_names if not cfg.categories or name in cfg.categories]


def prepare_index(annotation_file: str, image_dir: str, cfg: QwenInstructDetConfig) -> coco.CocoIndex:
    """Load (cached) and filter one split's index as the config asks: categories, empty images, subset."""
    index = _load_cached(annotation_file, image_dir, cfg)
    if cfg.categories:
        index = index.select_categories(list(cfg.categories))
    if not cfg.keep_empty:
        has_objects = np.zeros(index.num_images, dtype=bool)
        has_objects[index.ann_image[~index.ann_crowd]] = True
        dropped = int((~has_objects).sum())
        index = index.select_images(has_objects)
        index.skipped["empty_images"] = dropped
    if cfg.subset:
        index = coco.subset(index, cfg.subset, cfg.seed)
    if index.num_images == 0:
        raise ValueError(f"{annotation_file}: no image is left after filtering (categories={cfg.categories}, keep_empty={cfg.keep_empty}); relax the filter.")
    return index


_CACHE: OrderedDict[tuple, coco.CocoIndex] = OrderedDict()
_CACHE_SIZE = 4  # a build reads train and val (and test); a COCO-train index is a few hundred MB


def _load_cached(annotation_file: str, image_dir: str, cfg: QwenInstructDetConfig) -> coco.CocoIndex:
    """The index of one annotation file, in the decoded images' frame, loaded once per process and content.

    With ``check_files`` every image's header is read (in parallel) so that sizes and boxes describe
    the picture ``datasets`` decodes (EXIF orientation applied); the least recently used entry is dropped first.
    """
    options = (cfg.check_files, cfg.exif_frame, cfg.on_size_mismatch, cfg.verify_images, cfg.allow_outside_image_dir)
    key = (os.path.abspath(annotation_file), file_digest(annotation_file) if os.path.isfile(annotation_file) else None,
           os.path.abspath(image_dir), options)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    index = coco.load_coco(annotation_file, image_dir, check_files=cfg.check_files, allow_outside_image_dir=cfg.allow_outside_image_dir)
    if cfg.check_files:
        index, frames = images.orient_index(index, exif_frame=cfg.exif_frame, on_mismatch=cfg.on_size_mismatch)
        index.skipped.update(frames)
        if cfg.verify_images:
            images.verify_images(index.image_paths())
    _CACHE[key] = index
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return index


def clear_cache() -> None:
    """Forget the annotation indexes this process has loaded."""
    _CACHE.clear()


class _ImageColumns:
    """Per-image Arrow columns (path, size, objects) built once; rows take from them."""

    def __init__(self, index: coco.CocoIndex, objs: Objects):
        self.index = index
        root = os.path.abspath(index.image_dir)
        self.paths = pa.array([os.path.join(root, name) for name in index.file_names], pa.string())
        names = pa.array(index.category_names, pa.string())
        bbox = pa.FixedSizeListArray.from_arrays(pa.array(objs.xyxy.astype(np.float32).ravel()), 4)
        values = pa.StructArray.from_arrays([bbox, names.take(pa.array(objs.category))], names=["bbox", "category"])
        self.objects = pa.ListArray.from_arrays(pa.array(objs.start.astype(np.int32)), values)

    def table(self, rows: TaskRows, start: int, stop: int) -> pa.Table:
        n = stop - start
        image = pa.array(rows.image[start:stop])
        one = pa.array(np.arange(n + 1, dtype=np.int32))
        images = pa.ListArray.from_arrays(one, pa.StructArray.from_arrays([pa.nulls(n, pa.binary()), self.paths.take(image)], names=["bytes", "path"]))
        region = fraction = None
        if rows.region is not None:
            region = pa.FixedSizeListArray.from_arrays(pa.array(rows.region[start:stop].astype(np.float32).ravel()), 4)
            fraction = pa.array(rows.visible_fraction[start:stop].astype(np.float32))
        columns = {
            "images": images,
            "prompt": _messages("user", rows.prompt[start:stop], with_image=True),
            "completion": _messages("assistant", rows.completion[start:stop], with_image=False),
            "task": pa.array([rows.task] * n, pa.string()),
            "image_id": pa.array(self.index.image_ids[rows.image[start:stop]]),
            "width": pa.array(self.index.widths[rows.image[start:stop]]),
            "height": pa.array(self.index.heights[rows.image[start:stop]]),
            "objects": self.objects.take(image),
            "region": region if region is not None else pa.nulls(n, pa.list_(pa.float32(), 4)),
            "visible_fraction": fraction if fraction is not None else pa.nulls(n, pa.float32()),
        }
        return pa.table(columns, schema=FEATURES.arrow_schema)


def _messages(role: str, texts: list[str], with_image: bool) -> pa.Array:
    """``[{"role": role, "content": [{"type": "image"}?, {"type": "text", "text": t}]}]`` per row."""
    n = len(texts)
    if with_image:
        types = pa.array(["image", "text"] * n, pa.string())
        content_text = [None] * (2 * n)
        content_text[1::2] = texts
        per_row = 2
    else:
        types = pa.array(["text"] * n, pa.string())
        content_text = texts
        per_row = 1
    items = pa.StructArray.from_arrays([types, pa.array(content_text, pa.string())], names=["type", "text"])
    content = pa.ListArray.from_arrays(pa.array(np.arange(0, per_row * n + 1, per_row, dtype=np.int32)), items)
    message = pa.StructArray.from_arrays([pa.array([role] * n, pa.string()), content], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), message)
