"""``qid predict``, ``qid merge`` and ``qid push``: their arguments and the library calls behind them.

Each command is a dataclass of arguments and one function over ``models`` and ``hub``; ``cli.py`` parses flags into the dataclass and prints what the function returns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..data.builder import with_options
from ..models.config import OWN_FIELDS

logger = logging.getLogger(__name__)


@dataclass
class _Predict:
    model: str = field(metadata={"help": "A folder written by qid train (adapter or model) or qid merge, or a Hub model id.", "positional": True})
    out: str = field(default="predictions.jsonl", metadata={"help": "JSONL to write (appended to and resumed if it exists and was made the "
                                                                    "same way: same model, data, box format, budget and options)."})
    data_dir: str | None = field(default=None, metadata={"help": "COCO-layout folder: predict on a split, with truth, rebuilt with the "
                                                                 "builder options the model was trained with (flags below override them). "
                                                                 "Default: the data the model was trained on."})
    split: str = field(default="validation", metadata={"help": "Split of data_dir to predict on."})
    images: str | None = field(default=None, metadata={"help": "Or a folder of images (no truth), asked with the trained prompt."})
    base_model: str | None = field(default=None, metadata={"help": "Base model for an adapter (default: the one it names)."})
    box_format: str | None = field(default=None, metadata={"help": "Override the box format (default: the one saved with the model, else "
                                                                   "the model family's; a different one warns)."})
    batch_size: int = field(default=8, metadata={"help": "Images per generate call (batched by image size)."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Answer budget (default: from the longest training answer)."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N images."})
    dtype: str | None = field(default=None, metadata={"help": "torch dtype to load in (e.g. bfloat16 on a GPU)."})
    workers: int = field(default=2, metadata={"help": "Processes that decode images ahead of the model (0: in the main process)."})
    device_map: str | None = field(default=None, metadata={"help": "Spread one model over several GPUs (e.g. 'auto'; only for a model too "
                                                                   "large for one). Default: each process uses one device; launch with "
                                                                   "accelerate launch or torchrun to split the images over GPUs."})
    confidence: str = field(default="decisive", metadata={"help": "How a box is scored from its tokens' probabilities: 'decisive' (their "
                                                                  "product) or 'mean' (see the README)."})
    engine: str = field(default="transformers", metadata={"help": "What generates: 'transformers' (generate) or 'vllm' (vLLM's offline "
                                                                 "LLM.generate: same prompts, budget, parsing and records; install it with "
                                                                 "pip install -e \".[vllm]\")."})


PredictArguments = with_options("PredictArguments", _Predict, exclude=OWN_FIELDS,
                                unset="(Default: the model's, from its qid_config.json; a different value warns.)")


def predict(args) -> dict:
    """Batched generation over a split or a folder, written as JSONL records after a header saying what made them.

    A model trained by ``qid train`` is asked as it was trained: the split rebuilt with its builder options (a flag overrides
    one, with a warning; no ``--data_dir``: the data it was trained on), an image folder asked with its trained prompt;
    answers parsed with its saved format, budget and categories. A plain checkpoint is asked with its family's zero-shot
    prompt and parsed in its family's format.
    """
    from ..models.inference import default_max_new_tokens, done_ids, predict_to_file

    if args.data_dir and args.images:
        raise ValueError("give one of --data_dir (a COCO-layout folder) or --images (a folder of images), not both.")
    done_ids(args.out)  # refuses a file that is not a predictions file before any model loads
    model, processor, qc = _load(args)
    options = qc.row_options(**_overrides(args, qc))
    dataset, categories, crowd, data = _rows(args, qc, options)
    if args.limit:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    header = {"model": _where(args.model), "base_model": qc.base_model, "data": data, "split": None if args.images else args.split,
              "box_format": qc.box_format, "budget": qc.budget.as_options(), "categories": categories, "confidence": args.confidence,
              "options": {k: v for k, v in options.items() if k not in OWN_FIELDS + _LOCATION}}
    budget = args.max_new_tokens or default_max_new_tokens(qc.max_answer_tokens)
    counts = predict_to_file(model, processor, dataset, args.out, box_format=qc.box_format, batch_size=args.batch_size,
                             max_new_tokens=budget, categories=categories or None, crowd=crowd, header=header, workers=args.workers,
                             confidence=args.confidence)
    served = f"vllm, serving {model.plan.describe()}" if args.engine == "vllm" else "transformers"
    return {**counts, "max_new_tokens": budget, "out": args.out, "box_format": qc.box_format, "engine": served}


ENGINES = ("transformers", "vllm")
"""What ``qid predict --engine`` generates with."""
_LOCATION = ("annotation_files", "image_dirs")
"""Builder options that say where the data is (with ``data_dir``): given on the command line, the saved ones are not used."""


def _load(args):
    """The model on this process's device (or spread by ``--device_map``), or a vLLM engine, its processor and
    :class:`QidModelConfig`."""
    from ..models.inference import process_state
    from ..models.loading import load_for_inference

    if args.engine not in ENGINES:
        raise ValueError(f"--engine must be one of {ENGINES}, got {args.engine!r}.")
    if args.engine == "vllm":
        from ..models.vllm_engine import load_vllm

        if args.device_map is not None:
            raise ValueError("--device_map spreads a transformers model over GPUs; with --engine vllm leave it out.")
        return load_vllm(args.model, base_model=args.base_model, box_format=args.box_format, dtype=args.dtype, max_num_seqs=args.batch_size)
    model, processor, qc = load_for_inference(args.model, base_model=args.base_model, dtype=args.dtype, device_map=args.device_map,
                                              box_format=args.box_format)
    if args.device_map is None:
        model.to(process_state().device)
    return model, processor, qc


def _overrides(args, qc) -> dict:
    """The builder options given as flags; each that differs from the model's is named in a warning."""
    from ..data.builder import option_fields

    given = {f.name: getattr(args, f.name) for f in option_fields() if f.name not in OWN_FIELDS and getattr(args, f.name, None) is not None}
    if qc.builder_options:
        for name, value in given.items():
            if name not in _LOCATION and qc.builder_options.get(name) != value:
                logger.warning("--%s %r overrides %r, the value %s was trained with: these rows and their truth are not the ones it "
                               "was trained for", name, value, qc.builder_options.get(name), args.model)
    return given


def _rows(args, qc, options: dict):
    """The rows to predict on, the category names answers are parsed (and a zero-shot model asked) with, the crowd regions
    and where the rows came from (for the file's header)."""
    from ..data.splits import category_names, crowd_regions, load_split
    from ..data.tasks import detection_prompt
    from ..models.inference import with_prompt

    if args.images:
        categories = options.get("categories") or qc.categories
        dataset = _folder_rows(args.images, detection_prompt(qc.box_format, categories, bool(options.get("list_categories"))))
        crowd, data = None, {"images": _where(args.images)}
    else:
        location = qc.data_location(args.data_dir, args.annotation_files, args.image_dirs)  # none given: the model's data
        options = {**options, **location}
        dataset = load_split("detection", args.split, **options)
        categories = options.get("categories") or qc.categories or category_names(args.split, **options)
        crowd = crowd_regions(args.split, **options)  # scored as COCOeval does
        data = {k: _where(v) if k == "data_dir" and v else v for k, v in location.items()}
    if qc.detection_prompt:  # a base model: its family's zero-shot prompt, naming the categories
        dataset = with_prompt(dataset, qc.detection_prompt, categories)
    return dataset, categories, crowd, data


def _where(path: str) -> str:
    """A local path made absolute (a predictions file names what it was made from); a Hub id as it is."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def _folder_rows(folder: str, prompt_text: str):
    """Rows for a folder of images (no truth): the builder's columns, sizes as decoded (EXIF orientation applied)."""
    import datasets

    from .. import boxes as B
    from ..data.builder import FEATURES
    from ..data.images import read_headers

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no images (.jpg, .png, .webp, .bmp) found.")
    stored_w, stored_h, orientation = read_headers(paths, progress=False)
    widths, heights = B.oriented_size(stored_w, stored_h, orientation)
    prompt = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": prompt_text}]}]
    features = datasets.Features({name: FEATURES[name] for name in ("images", "prompt", "width", "height")})
    features["image_id"] = datasets.Value("string")  # the file name: images in a folder have no COCO id
    return datasets.Dataset.from_dict({"images": [[str(p)] for p in paths], "prompt": [prompt] * len(paths), "width": widths.tolist(),
                                       "height": heights.tolist(), "image_id": [p.name for p in paths]}, features=features)


@dataclass
class MergeArguments:
    adapter: str = field(metadata={"help": "Adapter folder written by qid train.", "positional": True})
    out: str = field(metadata={"help": "Folder for the merged model."})
    base_model: str | None = field(default=None, metadata={"help": "Base model (default: the one the adapter names)."})


def merge(args: MergeArguments) -> Path:
    from ..models.card import model_card
    from ..models.loading import merge as merge_adapter

    out = merge_adapter(args.adapter, args.out, base_model=args.base_model)
    report = Path(args.adapter) / "report.json"
    record = Path(args.adapter) / "training_args.json"
    recipe = json.loads(record.read_text()) if record.is_file() else None
    if recipe is not None:
        (out / "training_args.json").write_text(record.read_text())  # the merged model keeps the record of its run
    model_card(out, "model", recipe=recipe, report=json.loads(report.read_text()) if report.is_file() else None)
    return out


@dataclass
class PushArguments:
    kind: str = field(metadata={"help": "'dataset', 'adapter' or 'model'.", "positional": True})
    source: str = field(metadata={"help": "dataset: a COCO-layout folder; adapter/model: the folder to publish.", "positional": True})
    repo_id: str | None = field(default=None, metadata={"help": "user/name on the Hub (omit with --dry_run)."})
    folder: str | None = field(default=None, metadata={"help": "Where to build the folder that is uploaded: the dataset's Parquet and card, or "
                                                               "the model's files (linked) and card (default: a temporary folder). Replaced whole."})
    report: str | None = field(default=None, metadata={"help": "report.json from qid evaluate, for the model card."})
    private: bool = field(default=True, metadata={"help": "Create the repo private."})
    dry_run: bool = field(default=False, metadata={"help": "Build the folder and cards, print what would be sent, upload nothing."})
    include_checkpoints: bool = field(default=False, metadata={"help": "adapter/model: also send the checkpoint-* folders (for resuming "
                                                                         "elsewhere); never training_args.bin."})
    max_shard_mb: int = field(default=500, metadata={"help": "dataset: Parquet shard size in MB (the Hub recommends about 500)."})


def push(args: PushArguments) -> dict:
    """Build the exact folder that would be uploaded (cards included), report what it holds, then upload it unless --dry_run.

    For an adapter or a model the folder links the source's files (never changed) beside the library's card.
    """
    import tempfile

    from .. import hub

    if args.kind not in ("dataset", "adapter", "model"):
        raise ValueError(f"kind must be 'dataset', 'adapter' or 'model', got {args.kind!r}.")
    if not args.dry_run and not args.repo_id:
        raise ValueError("--repo_id is required to upload (or pass --dry_run to only build the folder).")
    staging = Path(args.folder or tempfile.mkdtemp(prefix=f"qid_{args.kind}_"))
    result: dict = {"kind": args.kind}
    if args.kind == "dataset":
        folder = hub.dataset_folder(staging, data_dir=args.source, repo_id=args.repo_id, max_shard_bytes=args.max_shard_mb * 2**20)
        result["sizes"] = hub.folder_summary(folder)
        repo_type = "dataset"
    else:
        if args.report and not Path(args.report).is_file():
            raise FileNotFoundError(f"--report {args.report}: no such file; qid evaluate writes PREDICTIONS.report.json beside the predictions.")
        report = json.loads(Path(args.report).read_text()) if args.report else None
        folder = hub.model_folder(args.source, args.kind, staging, report=report, include_checkpoints=args.include_checkpoints)
        repo_type = "model"
    result.update(folder=str(folder), card=str(Path(folder) / "README.md"), files=hub.upload_plan(folder))
    if "sizes" in result:  # before anything is sent
        print(sizes_table(result["sizes"]), flush=True)
    if not args.dry_run:
        result["url"] = hub.upload(folder, args.repo_id, repo_type=repo_type, private=args.private)
    return result


def sizes_table(sizes: dict) -> str:
    """Rows, bytes and shards of each configuration of a dataset folder, and the total."""
    lines = [f"{'configuration':<16}{'rows':>12}{'size':>13}{'shards':>8}"]
    for name, info in sizes["configs"].items():
        lines.append(f"{name:<16}{sum(info['rows'].values()):>12,}{sum(info['bytes'].values()) / 1e6:>10.1f} MB{sum(info['shards'].values()):>8}")
    lines.append(f"{'total':<16}{'':>12}{sizes['total_bytes'] / 1e6:>10.1f} MB")
    return "\n".join(lines)
