"""What runs inside the trainer: the mixture's sampler, detection scores at each evaluation, self-describing checkpoints.

:func:`sft_trainer` returns TRL's ``SFTTrainer`` with three additions, each through the
trainer's own hooks: epochs drawn by a :class:`~qwen_instruct_det.train.mixture.Mixture`
(``_get_train_sampler``, the trainer's sample counts), a :class:`DetectionScores` run at every
evaluation whose F1@50, precision, recall and AP50 are logged next to the loss (``report_to``
and ``trainer_state.json``) and returned, so ``metric_for_best_model: f1`` can choose the best
checkpoint, and :class:`CheckpointFiles`, which puts ``qid_config.json``, the processor and
``training_args.json`` in every ``checkpoint-N`` so that predicting, merging, pushing or
continuing a checkpoint reads it as the final folder.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

SCORES = ("f1", "precision", "recall", "AP50")


class DetectionScores:
    """Generates on a fixed set of held-out rows and scores the answers (det_iou50 and COCO AP50), sharded over ranks."""

    def __init__(self, rows: list[dict], processor, box_format: str, categories: list[str] | None, max_new_tokens: int,
                 batch_size: int = 16, crowd: dict | None = None):
        self.rows, self.processor, self.box_format = rows, processor, box_format
        self.categories, self.max_new_tokens, self.batch_size, self.crowd = categories, max_new_tokens, batch_size, crowd
        self.seconds = 0.0  # time spent scoring, so a caller can leave it out of its training time
        self.history: list[dict] = []

    def __call__(self, model, step: int | None = None, train_seconds: float | None = None) -> dict[str, float]:
        """The scores of ``model`` on the rows (its training mode restored after); every rank returns the same numbers."""
        from accelerate import PartialState
        from accelerate.utils import gather_object

        from ..eval.report import evaluate_records
        from ..models.inference import predict

        start = time.perf_counter()
        state = PartialState()
        mine = self.rows[state.process_index::state.num_processes]
        was_training = model.training
        model.eval()
        try:
            records = list(predict(model, self.processor, mine, self.box_format, self.batch_size, self.max_new_tokens, self.categories,
                                   self.crowd))
        finally:
            model.train(was_training)
        if state.num_processes > 1:
            records = gather_object(records)
        report = evaluate_records(records)
        scores = {"f1": report["det_iou50"]["f1"], "precision": report["det_iou50"]["precision"], "recall": report["det_iou50"]["recall"],
                  "AP50": report["coco_map"]["AP50"]}
        self.seconds += time.perf_counter() - start
        self.history.append({"step": step, "train_seconds": train_seconds, **scores})
        return scores


class CheckpointFiles:
    """Writes what a ``qid train`` folder holds beside the weights into every ``checkpoint-N`` (rank 0)."""

    def __init__(self, processor, qid_config, recipe):
        self.processor, self.qid_config, self.recipe = processor, qid_config, recipe  # recipe: () -> dict, the run's record

    def __call__(self, args, state) -> Path | None:
        if not state.is_world_process_zero:
            return None
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return None
        self.processor.save_pretrained(str(folder))
        self.qid_config.save(folder)
        (folder / "training_args.json").write_text(json.dumps(self.recipe(), indent=2, default=str))
        return folder


@functools.cache
def _callback_class():
    from transformers import TrainerCallback

    class QidCallback(TrainerCallback):
        """Calls :class:`CheckpointFiles` after each save."""

        def __init__(self, files: CheckpointFiles):
            self.files = files

        def on_save(self, args, state, control, **kwargs):
            self.files(args, state)

    return QidCallback


@functools.cache
def evaluate_at():
    """A trainer callback class, ``EvaluateAt(steps)``: evaluate at exactly these steps (any spacing, the last one included)."""
    from transformers import TrainerCallback

    class EvaluateAt(TrainerCallback):
        def __init__(self, steps):
            self.steps = set(steps)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in self.steps:
                control.should_evaluate = True

    return EvaluateAt


def load_full_weights(model, folder: str) -> None:
    """Load a full fine-tuning checkpoint into ``model`` as ``from_pretrained`` reads it, or raise naming the folder.

    transformers 5 saves Qwen-VL weights under the published checkpoints' key names (``model.layers.*``, ``visual.*``),
    not the in-memory ones (``model.language_model.layers.*``, ``model.visual.*``); the trainer's own resume loads the
    file as it is, matches no key, warns, and trains on from fresh weights.
    """
    import torch

    try:  # read into this model's own architecture: a checkpoint of another shape is an error, not a fresh start
        fresh, info = type(model).from_pretrained(folder, config=model.config, output_loading_info=True,
                                                  dtype=next(model.parameters()).dtype)
        wrong = [f"{k}: {sorted(map(str, v))[:5]}" for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")]
        if not wrong:
            with torch.no_grad():
                model.load_state_dict(fresh.state_dict(), strict=True)
    except (RuntimeError, ValueError, OSError) as e:
        wrong = [" ".join(str(e).split())[:300]]
    if wrong:
        raise ValueError(f"{folder}: the checkpoint's weights do not fit the model ({'; '.join(wrong)}); resume from a checkpoint of "
                         "this same run (same model and parts).")


def unsafe_checkpoint_error(folder, output_dir: str | None = None) -> ValueError:
    """The error for a checkpoint that holds a pickle torch refuses (weights_only): which file, and what to do instead.

    ``folder`` is ``resume_from_checkpoint``: a path, or True for the last checkpoint of ``output_dir``.
    """
    import pickle

    import torch
    from transformers.trainer_utils import get_last_checkpoint

    if not isinstance(folder, str):
        folder = get_last_checkpoint(output_dir) if output_dir and Path(output_dir).is_dir() else None
    culprit = None
    for path in sorted(Path(folder or ".").glob("*")) if folder else []:
        if path.suffix in (".pt", ".pth", ".bin") and path.is_file():
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                culprit = path
                break
    what = f"{culprit}" if culprit else f"a file of {folder}"
    return ValueError(f"{what}: refused to load: it holds Python objects that are not tensors, and loading such a pickle can run "
                      "any code. Resume from a checkpoint you made yourself; if this one is yours and only this file is damaged, "
                      "move it away to resume without it (optimizer, scheduler or random state start afresh).")


def _resumes_full_weights(base):
    """``base`` (a TRL trainer) whose resume and best-model reload read full fine-tuning checkpoints right (LoRA as before)."""

    class Trainer(base):
        def _full_weights(self, folder: str, model) -> bool:
            from peft import PeftModel

            model = model if model is not None else self.model
            plain = any((Path(folder) / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json"))
            if not plain or isinstance(model, PeftModel) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
                return False
            load_full_weights(model, folder)
            return True

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            if not self._full_weights(resume_from_checkpoint, model):
                super()._load_from_checkpoint(resume_from_checkpoint, model)

        def _load_best_model(self):
            if not self._full_weights(self.state.best_model_checkpoint, None):
                super()._load_best_model()

    return Trainer


@functools.cache
def grpo_trainer():
    """TRL's ``GRPOTrainer`` whose resume reads full fine-tuning checkpoints right."""
    from trl import GRPOTrainer

    return _resumes_full_weights(GRPOTrainer)


@functools.cache
def sft_trainer():
    """TRL's ``SFTTrainer`` that reads epochs from a mixture, scores detection at each evaluation and saves self-describing
    checkpoints (``mixture=``, ``detection_scores=``, ``checkpoint_files=`` keywords; each optional)."""
    from trl import SFTTrainer

    from .mixture import MixtureSampler
    from .packing import PackedBatchSampler, PackingCollator, check_attention, packed_positions, rope_index_of

    class QidSFTTrainer(_resumes_full_weights(SFTTrainer)):
        def __init__(self, *args, mixture=None, packer=None, detection_scores: DetectionScores | None = None,
                     checkpoint_files: CheckpointFiles | None = None, **kwargs):
            self.mixture, self.packer, self.detection_scores = mixture, packer, detection_scores
            super().__init__(*args, **kwargs)
            if packer is not None:  # TRL's collator makes the rows; ours joins them into packed sequences
                pad = self.processing_class.tokenizer.pad_token_id
                self.packing_collator = PackingCollator(self.data_collator, packer.capacity, pad, one_row=check_attention(self.model))
                self.rope_index = rope_index_of(self.model)
            if checkpoint_files is not None:
                self.add_callback(_callback_class()(checkpoint_files))

        def train(self, *args, **kwargs):
            self.train_started, self.evaluation_seconds = time.perf_counter(), 0.0
            return super().train(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            if self.mixture is not None:
                grouped = self.args.train_sampling_strategy == "group_by_length"
                return MixtureSampler(self.mixture, self.args.per_device_train_batch_size * self.args.world_size if grouped else None)
            return super()._get_train_sampler(train_dataset)

        def get_train_dataloader(self):
            if self.packer is None:
                return super().get_train_dataloader()
            from functools import partial

            from torch.utils.data import DataLoader
            from transformers.trainer_utils import seed_worker

            args = self.args
            params = {"batch_sampler": PackedBatchSampler(self.packer, self._train_batch_size), "collate_fn": self.packing_collator,
                      "num_workers": args.dataloader_num_workers, "pin_memory": args.dataloader_pin_memory,
                      "persistent_workers": args.dataloader_persistent_workers,
                      "worker_init_fn": partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index)}
            if args.dataloader_num_workers:
                params["prefetch_factor"] = args.dataloader_prefetch_factor
            return self.accelerator.prepare(DataLoader(self._remove_unused_columns(self.train_dataset, "training"), **params))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            packed = self.packer is not None and inputs.get("position_ids") is not None and inputs["position_ids"].ndim == 2
            if not packed:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = {**inputs, "position_ids": packed_positions(self.rope_index, inputs)}
            before = self._total_train_tokens
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:  # TRL counts a packed batch's sequences as its tokens; count the rows' tokens instead
                real = (inputs["input_ids"] != self.packing_collator.pad_token_id).sum()
                self._total_train_tokens = before + int(self.accelerator.gather_for_metrics(real.reshape(1)).sum())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

        def set_initial_training_values(self, args, dataloader):
            values = list(super().set_initial_training_values(args, dataloader))
            if self.packer is not None and args.max_steps > 0:  # a packed step holds rows, not total_train_batch_size samples
                values[3] = round(self.mixture.samples_per_epoch * values[6] / values[1])
            return tuple(values)

        def num_examples(self, dataloader) -> int:
            batches = getattr(dataloader, "batch_sampler", None)
            for _ in range(3):  # accelerate wraps the batch sampler once per process split
                if isinstance(batches, PackedBatchSampler) or isinstance(getattr(batches, "sampler", None), MixtureSampler):
                    return self.mixture.samples_per_epoch  # an epoch's samples, not the rows the configurations hold side by side
                batches = getattr(batches, "batch_sampler", None)
            return super().num_examples(dataloader)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
            start = time.perf_counter()
            trained = start - self.train_started - self.evaluation_seconds if hasattr(self, "train_started") else None
            metrics = {}
            if eval_dataset is not None or self.eval_dataset is not None:
                metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            if self.detection_scores is not None:
                model = self.accelerator.unwrap_model(self.model)
                scores = self.detection_scores(model, self.state.global_step, trained)
                scores = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
                self.log(scores)  # to report_to's integrations and trainer_state.json's log history
                metrics.update(scores)
            if hasattr(self, "train_started"):
                self.evaluation_seconds += time.perf_counter() - start  # kept out of the training time the next point reports
            return metrics

    return QidSFTTrainer
