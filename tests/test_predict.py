"""``qid predict`` at scale: the trained rows and prompt, files that know their model, confidences, batches, processes.

A model folder made by the real ``make_trainer`` / ``save_trained`` (no steps: what is saved is
under test, not what is learnt) is predicted with through ``model_cli.predict``; where the
answers do not matter, ``generate`` is stood in for by one that answers every image the same way.
The confidence and memory tests run the real tiny model's generation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")

from qwen_instruct_det.commands import models as model_cli  # noqa: E402
from qwen_instruct_det.data.splits import load_split  # noqa: E402
from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco  # noqa: E402
from qwen_instruct_det.eval import report as eval_report  # noqa: E402
from qwen_instruct_det.models import generate as generation  # noqa: E402
from qwen_instruct_det.models import inference  # noqa: E402
from qwen_instruct_det.models import tiny as tiny_model  # noqa: E402
from qwen_instruct_det.train import config as train_config  # noqa: E402
from qwen_instruct_det.train import sft as training  # noqa: E402

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "vision_depth": 1, "vision_embed_dim": 32}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def other_layout(tmp_path_factory):
    """A synthetic data set in a layout of its own (not COCO 2017's): ``ann/{train,val}.json`` and ``pictures/{train,val}``."""
    root = tmp_path_factory.mktemp("layout")
    coco = make_synthetic_coco(root / "coco", train=12, val=8, seed=21,
                               options=SynthOptions(min_size=56, max_size=96, empty_fraction=0.25, crowd_fraction=0))
    (root / "ann").mkdir()
    files, dirs = {}, {}
    for split, stem in (("train", "train2017"), ("validation", "val2017")):
        shutil.copy(coco / "annotations" / f"instances_{stem}.json", root / "ann" / f"{split}.json")
        shutil.copytree(coco / stem, root / "pictures" / split)
        files[split], dirs[split] = str(root / "ann" / f"{split}.json"), str(root / "pictures" / split)
    shutil.rmtree(coco)
    return files, dirs


def _base(folder: Path, family: str = "qwen2_vl") -> Path:
    cfg = tiny_model.TinyModelConfig(family=family, min_pixels=28 * 28, max_pixels=112 * 112, **TINY)
    processor = tiny_model.build_processor(["circle square triangle", "[]"], cfg)
    tiny_model.build_model(processor, cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _trained(tmp_path: Path, base: Path, **options) -> Path:
    """A qid model folder saved by the real trainer set-up with these data options (no training step)."""
    from trl import ModelConfig, SFTConfig

    sft = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", max_length=None)
    trainer, qc, stats = training.make_trainer(train_config.DataArguments(**options), train_config.PartsArguments(),
                                               ModelConfig(model_name_or_path=str(base), use_peft=False), sft,
                                               cache_dir=str(tmp_path / "cache"))
    return training.save_trained(trainer, trainer.processing_class, qc, stats)


def _answer_every_image(monkeypatch, text: str, seen: list | None = None):
    """Stand in for ``inference.generate``: every image answered ``text``; ``seen`` collects (image sizes, prompt texts) per batch."""

    def generate(model, processor, images, prompts, max_new_tokens=512, **kwargs):
        if seen is not None:
            seen.append(([batch[0].size for batch in images], [p[0]["content"][1]["text"] for p in prompts]))
        return [inference.Generation(text, np.ones(1), np.array([len(text)]), True) for _ in images]

    monkeypatch.setattr(inference, "generate", generate)


# ---------------------------------------------------------------- parity: the rows, truth and prompt the model was trained for


def test_a_split_is_predicted_on_the_rows_and_truth_the_model_was_trained_for(other_layout, tmp_path, monkeypatch, caplog):
    files, dirs = other_layout
    options = {"annotation_files": files, "image_dirs": dirs, "categories": ["circle", "square"], "list_categories": True,
               "keep_empty": False, "display_name": "Shapes"}
    model = _trained(tmp_path, _base(tmp_path / "base"), **options)
    saved = json.loads((model / "qid_config.json").read_text())
    assert saved["categories"] == ["circle", "square"]
    assert {k: saved["builder_options"][k] for k in ("annotation_files", "image_dirs", "categories", "list_categories", "keep_empty")} == \
        {k: v for k, v in options.items() if k != "display_name"}

    seen: list = []
    _answer_every_image(monkeypatch, "There are none.", seen)
    out = tmp_path / "p.jsonl"
    model_cli.predict(model_cli.PredictArguments(model=str(model), out=str(out), split="validation"))  # no --data_dir: the model's data
    records = eval_report.read_predictions(out)
    trained_rows = load_split("detection", "validation", cache_dir=str(tmp_path / "c"), box_format="qwen2", min_pixels=28 * 28,
                              max_pixels=112 * 112, **options)
    assert sorted(r["image_id"] for r in records) == sorted(trained_rows["image_id"])  # keep_empty false: empty images left out
    assert all(r["truth"]["boxes"] for r in records)
    assert {label for r in records for label in r["truth"]["labels"]} <= {"circle", "square"}
    assert {text for _, texts in seen for text in texts} == {"Draw the bounding box of objects Categories: circle, square."}
    header = json.loads(out.read_text().splitlines()[0])["qid_predictions"]
    assert header["options"]["categories"] == ["circle", "square"] and header["split"] == "validation"

    # a flag overrides one option, and says so
    with caplog.at_level(logging.WARNING, logger="qwen_instruct_det.commands.models"):
        model_cli.predict(model_cli.PredictArguments(model=str(model), out=str(tmp_path / "all.jsonl"), keep_empty=True))
    assert "--keep_empty True overrides False" in caplog.text
    assert len(eval_report.read_predictions(tmp_path / "all.jsonl")) > len(records)


@pytest.mark.parametrize("family", tiny_model.FAMILIES)
def test_an_image_folder_is_asked_with_the_trained_prompt(family, other_layout, tmp_path, monkeypatch):
    files, dirs = other_layout
    model = _trained(tmp_path, _base(tmp_path / "base", family), annotation_files=files, image_dirs=dirs, categories=["square"],
                     list_categories=True)
    seen: list = []
    _answer_every_image(monkeypatch, "[]", seen)
    model_cli.predict(model_cli.PredictArguments(model=str(model), out=str(tmp_path / "split.jsonl"), split="train"))
    from_split = {text for _, texts in seen for text in texts}
    seen.clear()
    model_cli.predict(model_cli.PredictArguments(model=str(model), out=str(tmp_path / "images.jsonl"), images=dirs["train"]))
    assert {text for _, texts in seen for text in texts} == from_split
    assert len(from_split) == 1 and "square" in from_split.pop()

    monkeypatch.undo()  # the real model: each image reaches it as the same token ids and pixels from the folder as from the split
    real_generate_ids, asked = generation.generate_ids, []

    def recording(model, inputs, *args, **kwargs):
        keep = inputs["attention_mask"][0].bool()
        asked.append((inputs["input_ids"][0][keep].tolist(), inputs["pixel_values"].float().numpy().tobytes()))
        return real_generate_ids(model, inputs, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_ids", recording)
    inputs = {}
    for name, source in (("split", {"split": "train"}), ("images", {"images": dirs["train"]})):
        out, asked[:] = tmp_path / f"real-{name}.jsonl", []
        model_cli.predict(model_cli.PredictArguments(model=str(model), out=str(out), max_new_tokens=4, batch_size=1, **source))
        records = eval_report.read_predictions(out, need_truth=False)
        inputs[name] = {Path(r["image"]).name: (seen, r["text"]) for r, seen in zip(records, asked, strict=True)}
    assert len(inputs["split"]) == 12 and len({ids_pixels[1] for ids_pixels, _ in inputs["split"].values()}) >= 10  # two empty images may look alike
    assert inputs["images"] == inputs["split"]


# ---------------------------------------------------------------- a predictions file knows its model


def test_a_file_made_by_another_model_or_split_is_not_resumed_into(other_layout, tmp_path, monkeypatch):
    files, dirs = other_layout
    a = _trained(tmp_path / "a", _base(tmp_path / "base"), annotation_files=files, image_dirs=dirs)
    b = _trained(tmp_path / "b", tmp_path / "base", annotation_files=files, image_dirs=dirs, categories=["circle"])
    _answer_every_image(monkeypatch, "[]")
    out = tmp_path / "p.jsonl"
    first = model_cli.predict(model_cli.PredictArguments(model=str(a), out=str(out)))
    again = model_cli.predict(model_cli.PredictArguments(model=str(a), out=str(out)))
    assert (first["written"], again["skipped_done"], again["written"]) == (8, 8, 0)
    with pytest.raises(ValueError, match=f"made by {a.resolve()} with other settings.*model: '{a.resolve()}' there, '{b.resolve()}' now"):
        model_cli.predict(model_cli.PredictArguments(model=str(b), out=str(out)))
    with pytest.raises(ValueError, match="split: 'validation' there, 'train' now"):
        model_cli.predict(model_cli.PredictArguments(model=str(a), out=str(out), split="train"))
    headless = tmp_path / "old.jsonl"
    headless.write_text("".join(line + "\n" for line in out.read_text().splitlines()[1:]))  # a file from before headers
    with pytest.raises(ValueError, match="do not say what made them"):
        model_cli.predict(model_cli.PredictArguments(model=str(a), out=str(headless)))
    assert len(eval_report.read_predictions(out)) == 8  # the header is not a record


# ---------------------------------------------------------------- batches by image size, images decoded by workers


def test_batches_hold_images_of_one_size_and_workers_change_nothing(tmp_path, monkeypatch):
    data = make_synthetic_coco(tmp_path / "data", train=2, val=24, seed=4, options=SynthOptions(min_size=40, max_size=300))
    model = _trained(tmp_path, _base(tmp_path / "base"), data_dir=str(data))
    seen: list = []
    _answer_every_image(monkeypatch, "[]", seen)
    records = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}.jsonl"
        model_cli.predict(model_cli.PredictArguments(model=str(model), out=str(out), batch_size=4, workers=workers))
        records[workers] = sorted(json.dumps(r, sort_keys=True) for r in eval_report.read_predictions(out))
    assert records[0] == records[2] and len(records[0]) == 24
    from qwen_instruct_det.budget import ImageBudget

    budget = ImageBudget(28 * 28, 112 * 112, 28)
    tokens = [[int(t) for t in budget.image_tokens(*np.array(sizes).T)] for sizes, _ in seen[:6]]
    ordered = [t for batch in tokens for t in batch]
    assert ordered == sorted(ordered) and len(set(ordered)) > 1  # smallest images first, batches never straddle out of order


# ---------------------------------------------------------------- many processes


def test_two_processes_split_the_images_and_merge_into_what_one_writes(tmp_path):
    data = make_synthetic_coco(tmp_path / "data", train=2, val=7, seed=8, options=SynthOptions(min_size=40, max_size=90))
    model = _base(tmp_path / "base")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    flags = [str(model), "--data_dir", str(data), "--batch_size", "1", "--max_new_tokens", "12", "--workers", "0"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    subprocess.run([sys.executable, "-m", "qwen_instruct_det", "predict", *flags, "--out", str(one)], env=env, check=True, cwd=ROOT)
    # process 1 (the split's rows 1, 3, 5) had done row 1 before it was stopped: it resumes after it (its record kept as it was)
    header = json.loads(one.read_text().splitlines()[0])
    second = load_split("detection", "validation", cache_dir=str(tmp_path / "c"), data_dir=str(data), min_pixels=28 * 28,
                        max_pixels=112 * 112)["image_id"][1]
    done = next(r for r in eval_report.read_predictions(one) if r["image_id"] == second)
    part = tmp_path / "two.jsonl.part-00001-of-00002"
    part.write_text(json.dumps(header) + "\n" + json.dumps({**done, "text": "from before"}) + "\n")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "qwen_instruct_det"]
    subprocess.run([*launch, "predict", *flags, "--out", str(two)], env=env, check=True, cwd=ROOT, capture_output=True)
    ones = {r["image_id"]: r for r in eval_report.read_predictions(one)}
    twos = {r["image_id"]: r for r in eval_report.read_predictions(two)}
    assert twos.pop(done["image_id"])["text"] == "from before"
    del ones[done["image_id"]]
    assert twos == ones and len(ones) == 6
    assert json.loads(two.read_text().splitlines()[0]) == header
    assert not list(tmp_path.glob("two.jsonl.part-*"))


# ---------------------------------------------------------------- confidences and memory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from qwen_instruct_det.models.loading import load_trained

    folder = _base(tmp_path_factory.mktemp("tiny") / "model")
    model, processor, _ = load_trained(str(folder))
    return model.eval(), processor


def test_the_recorded_probabilities_are_the_ones_generate_scores(tiny):
    """The logits processor keeps one step at a time, and gets what ``output_scores`` + ``compute_transition_scores`` got."""
    import torch
    from PIL import Image

    model, processor = tiny
    images = [[Image.new("RGB", (56, 84), "red")], [Image.new("RGB", (112, 56), "blue")]]
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Draw the bounding box of objects"}]}]
    texts = [processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)] * 2
    inputs = generation._processor_call(processor, images, texts, model.device)
    new, logprobs = generation.generate_ids(model, inputs, 20, min_new_tokens=20)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=20, min_new_tokens=20, do_sample=False, output_scores=True, return_dict_in_generate=True)
    expected = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    assert torch.equal(new, out.sequences[:, inputs["input_ids"].shape[1]:])
    assert logprobs.shape == (2, 20) and torch.allclose(logprobs, expected, atol=1e-5)


def test_a_box_scores_the_tokens_that_decided_it():
    # "<s>" "(1" "0,2)" "," "(3" ",4)": box one is "(10,2)", box two "(3,4)", written after a doubtful ","
    gen = generation.Generation("<s>(10,2),(3,4)", np.array([1.0, 0.9, 1.0, 0.2, 0.5, 1.0]), np.array([3, 5, 9, 10, 12, 15]), True)
    spans = [(3, 9), (10, 15)]
    assert generation.box_confidences(gen, spans) == pytest.approx([0.9, 0.2 * 0.5])
    assert generation.box_confidences(gen, spans, "mean") == pytest.approx([0.95, 0.75])
    with pytest.raises(ValueError, match="decisive"):
        generation.box_confidences(gen, spans, "max")
