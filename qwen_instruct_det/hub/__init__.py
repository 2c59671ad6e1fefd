"""Publishing to the Hub: every folder that would be uploaded is built locally first, whole or not at all.

- :func:`dataset_folder`: every configuration as Parquet shards of about 500 MB
  (``CONFIG/SPLIT-0000K-of-0000N.parquet``) with the image bytes embedded, written batch by batch
  so memory does not grow with the data, and a card whose YAML globs the shards, so
  ``load_dataset("user/repo", "count")`` works with no library at all.
- :func:`model_folder`: the files an adapter or model repo holds (weights, configs, processor,
  ``qid_config.json``, ``training_args.json``; never ``training_args.bin``, checkpoints or optimizer
  state unless asked), linked into a staging folder beside the library's card.
- :func:`upload`: the one function that talks to the Hub; :func:`upload_plan` lists what it would send.
"""

from __future__ import annotations

from ..models.card import model_card
from .cards import dataset_card
from .folders import MODEL_KINDS, check_model_folder, dataset_folder, folder_summary, model_files, model_folder
from .upload import upload, upload_plan

__all__ = ["MODEL_KINDS", "check_model_folder", "dataset_card", "dataset_folder", "folder_summary", "model_card", "model_files",
           "model_folder", "upload", "upload_plan"]
