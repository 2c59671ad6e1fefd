"""Packed training for Qwen-VL: whole rows packed into sequences of at most ``max_length`` tokens, each row as if alone.

TRL refuses packing for image data; this module does it on TRL's own collator and trainer. An
epoch's rows (the :class:`~qwen_instruct_det.train.mixture.Mixture`'s draw, so the epoch holds
the same samples as unpacked) are packed by best-fit decreasing on their measured token lengths
(:mod:`~qwen_instruct_det.train.lengths`), never cut; a device batch is ``per_device_train_batch_size``
packed sequences. Inside a sequence each row keeps its images (``pixel_values`` and
``image_grid_thw`` stay in row order, so Qwen3-VL's deepstack features land on their own tokens),
its loss mask, and its positions: the text positions restart at 0 in every row, and the
multimodal RoPE rows (temporal, height, width) are the model's own ``get_rope_index`` shifted back
to 0 at the row's first token, which is what the row alone gets, since every position of a row is
offset by the same amount. transformers reads text positions that restart, with no attention
mask, as packed sequences: a block-diagonal causal mask for sdpa, eager and flex attention,
varlen kernels for flash attention (which wants the sequences of a batch flattened into one row).
Not for GRPO or prediction, which generate one row at a time.
"""

from __future__ import annotations

import bisect
import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

# attention implementations that keep packed rows apart when given restarting positions and no mask
SEGMENTED_ATTENTION = ("sdpa", "eager", "flex_attention")
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def pack_rows(lengths: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Positions of ``lengths`` grouped into sequences of at most ``capacity`` tokens (best-fit decreasing: each row, longest
    first, into the fullest sequence it still fits); rows keep their given order inside a sequence. Each length must fit."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > capacity:
        raise ValueError(f"a row of {int(lengths.max())} tokens cannot be packed into sequences of {capacity}; leave out rows "
                         "longer than max_length first.")
    free: list[tuple[int, int]] = []  # (tokens left, sequence), sorted
    members: list[list[int]] = []
    for row in np.argsort(-lengths, kind="stable"):
        size = int(lengths[row])
        at = bisect.bisect_left(free, (size, -1))
        if at == len(free):
            members.append([])
            left, sequence = capacity, len(members) - 1
        else:
            left, sequence = free.pop(at)
        members[sequence].append(int(row))
        bisect.insort(free, (left - size, sequence))
    return [np.sort(np.array(m, dtype=np.int64)) for m in members]


def split_to(packs: list[np.ndarray], count: int) -> list[np.ndarray]:
    """``packs`` cut until there are ``count`` (the pack with most rows halved each time): an epoch with fewer sequences than
    the schedule's keeps its step count. Stops early when every pack holds a single row."""
    packs = list(packs)
    while len(packs) < count:
        most = max(range(len(packs)), key=lambda i: len(packs[i]))
        if len(packs[most]) < 2:
            break
        pack = packs.pop(most)
        packs += [pack[:len(pack) // 2], pack[len(pack) // 2:]]
    return packs


class Packer:
    """Each epoch of a mixture as packed sequences of dataset rows, planned ahead so every epoch has as many sequences.

    The trainer counts an epoch's steps once, from the loader's length; epochs draw different rows of the configurations
    other than the anchor, so their packings differ by a few sequences. The packer plans the epochs the run will read
    and gives each the largest count (an epoch with fewer cuts a sequence in two; no row is dropped or repeated).
    """

    def __init__(self, mixture, capacity: int):
        if mixture.lengths is None:
            raise ValueError("measure the mixture's token lengths before packing it.")
        self.mixture, self.capacity = mixture, int(capacity)
        self._plans: dict[int, list[np.ndarray]] = {}
        self.sequences = 0

    def _plan(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._plans:
            rows = self.mixture.epoch_indices(epoch)
            packs = [rows[p] for p in pack_rows(self.mixture.lengths[0, rows], self.capacity)]
            order = np.random.default_rng([self.mixture.seed, epoch, 1]).permutation(len(packs))
            self._plans[epoch] = [packs[i] for i in order]
        return self._plans[epoch]

    def plan_epochs(self, epochs: int) -> int:
        """Plan epochs ``0 .. epochs-1``; returns the sequences every epoch will have."""
        self.sequences = max([self.sequences] + [len(self._plan(e)) for e in range(max(int(epochs), 1))])
        return self.sequences

    def plan_schedule(self, batch_size: int, accumulation: int, processes: int, epochs: float, max_steps: int) -> int:
        """Plan the epochs a run of these settings reads (``max_steps`` > 0 decides them from the steps per epoch)."""
        count = self.plan_epochs(math.ceil(epochs) if max_steps <= 0 else 1)
        while max_steps > 0:
            steps_per_epoch = max(math.ceil(math.ceil(math.ceil(count / batch_size) / processes) / accumulation), 1)
            if self.plan_epochs(math.ceil(max_steps / steps_per_epoch)) == count:
                break
            count = self.sequences
        return self.sequences

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """Epoch ``epoch``'s sequences (rows of the mixture's dataset), as many as every other epoch's."""
        if not self.sequences:
            self.plan_epochs(epoch + 1)
        packs = self._plan(epoch)
        if len(packs) > self.sequences:  # an epoch the schedule did not plan (the trainer reads only its step count)
            logger.warning("epoch %d packs into %d sequences, more than the %d planned per epoch: the last %d are not read; "
                           "start the run with num_train_epochs or max_steps covering every epoch it trains", epoch, len(packs),
                           self.sequences, len(packs) - self.sequences)
        return split_to(packs, self.sequences)

    def fill(self, epoch: int = 0) -> float:
        """The fraction of the sequences' capacity that rows fill in epoch ``epoch``."""
        packs = self.epoch(epoch)
        return float(sum(self.mixture.lengths[0, p].sum() for p in packs) / (len(packs) * self.capacity)) if packs else 0.0

    def summary(self) -> dict:
        rows = self.mixture.samples_per_epoch
        return {"max_length": self.capacity, "sequences_per_epoch": self.sequences, "rows_per_sequence": round(rows / max(self.sequences, 1), 2),
                "fill": round(self.fill(0), 4)}


class PackedBatchSampler:
    """The trainer's batch sampler when packing: each batch the rows of ``batch_size`` packed sequences, one after another."""

    def __init__(self, packer: Packer, batch_size: int):
        self.packer, self.batch_size, self.epoch = packer, batch_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.packer.sequences / self.batch_size)

    def __iter__(self):
        packs = self.packer.epoch(self.epoch)
        for start in range(0, len(packs), self.batch_size):
            yield np.concatenate(packs[start:start + self.batch_size]).tolist()


def next_fit(lengths, capacity: int) -> list[list[int]]:
    """Consecutive rows grouped while they fit ``capacity``: cuts a batch of packed sequences (rows given sequence after
    sequence) into at most as many sequences as it holds, each within capacity."""
    groups: list[list[int]] = []
    used = capacity + 1
    for i, n in enumerate(int(x) for x in lengths):
        if used + n > capacity:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


class PackingCollator:
    """TRL's vision collator, then its rows joined into packed sequences: ``input_ids``, ``labels``, ``mm_token_type_ids``
    and restarting text ``position_ids`` per sequence (padded to the longest, or all in one row for varlen attention),
    ``pixel_values`` and ``image_grid_thw`` as the collator made them (row order is kept), and no attention mask."""

    def __init__(self, collator, capacity: int, pad_token_id: int, one_row: bool = False):
        self.collator, self.capacity, self.pad_token_id, self.one_row = collator, capacity, pad_token_id, one_row

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        batch = self.collator(rows)
        mask = batch.pop("attention_mask").bool()
        lengths = mask.sum(1)
        if int(lengths.max()) > self.capacity:
            raise ValueError(f"a row of {int(lengths.max())} tokens reached the packing collator (max_length {self.capacity}); "
                             "its measured length was shorter: delete the qid-token-lengths-*.npy files beside the built data to measure again.")
        groups = [list(range(len(rows)))] if self.one_row else next_fit(lengths.tolist(), self.capacity)
        keys = [k for k in ("input_ids", "labels", "mm_token_type_ids") if k in batch]
        fill = {"input_ids": self.pad_token_id, "labels": -100, "mm_token_type_ids": 0}
        packed = {k: [] for k in keys + ["position_ids"]}
        for group in groups:
            for k in keys:
                packed[k].append(torch.cat([batch[k][r][mask[r]] for r in group]))
            packed["position_ids"].append(torch.cat([torch.arange(int(lengths[r])) for r in group]))
        longest = max(len(x) for x in packed["input_ids"])
        out = {k: v for k, v in batch.items() if k not in packed}
        for k, values in packed.items():
            if k == "position_ids":  # padding is a sequence of its own: positions restart there too
                out[k] = torch.stack([torch.cat([x, torch.arange(longest - len(x))]) for x in values])
            else:
                out[k] = torch.stack([torch.cat([x, x.new_full((longest - len(x),), fill[k])]) for x in values])
        return out


def packed_positions(rope_index, inputs: dict):
    """``(4, sequences, tokens)`` positions for a packed batch: the text positions of the collator, then the model's
    multimodal RoPE rows (``rope_index``: its ``get_rope_index``) brought back to 0 at each row's first token."""
    import torch

    text = inputs["position_ids"]
    mrope, _ = rope_index(input_ids=inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                          image_grid_thw=inputs.get("image_grid_thw"), attention_mask=None)
    mrope = mrope.to(text.device)
    starts = (text == 0).long()
    first = torch.cummax(starts * torch.arange(text.shape[1], device=text.device), dim=1).values  # each token's row's first token
    offset = torch.gather(mrope, 2, first.unsqueeze(0).expand(3, -1, -1))
    return torch.cat([text.unsqueeze(0), mrope - offset], dim=0)


def rope_index_of(model):
    """The model's ``get_rope_index`` (the multimodal RoPE of a Qwen-VL model, under any PEFT or accelerate wrapper)."""
    for module in model.modules():
        if hasattr(module, "get_rope_index") and hasattr(module, "visual"):
            return module.get_rope_index
    raise ValueError(f"{type(model).__name__} has no get_rope_index: packing keeps multimodal RoPE positions per row for "
                     "Qwen-VL models only; train this model with --packing false.")


def check_attention(model) -> bool:
    """Whether the model's attention wants packed sequences in one row (varlen kernels); raise if it cannot keep them apart."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config  # the language model's
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation in VARLEN_ATTENTION:
        return True
    if implementation in SEGMENTED_ATTENTION:
        return False
    raise ValueError(f"--packing true needs attention that keeps packed rows apart; {implementation!r} does not (transformers builds "
                     "a block-diagonal mask only for sdpa, eager and flex_attention, and varlen kernels for flash_attention_2/3/4). "
                     "Pass --attn_implementation sdpa (or flash_attention_2 on a GPU with flash-attn), or --packing false.")
