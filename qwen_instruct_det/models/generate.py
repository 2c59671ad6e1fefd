"""Batched generation with the probability of each chosen token, and a confidence for each box of the answer.

``generate`` runs greedy (by default) batched generation with left padding and returns, per
sample, the answer text, the probability of each generated token and whether the answer ended
with the end-of-turn token (``generate_ids``: the same on processor outputs, ids and log-probabilities). The probabilities are collected as generation runs
(:func:`chosen_token_logprobs`): one step's log-softmax is kept until the next step shows which
token was chosen, so memory holds one ``(batch, vocabulary)`` array, never every step's logits
(``output_scores`` kept ``steps x batch x vocabulary``: about 5 GB at Qwen's 151,936 tokens,
batch 16 and 1,000 new tokens). :func:`box_confidences` turns them into one score per box.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

CONFIDENCES = ("decisive", "mean")


@dataclass
class Generation:
    text: str
    token_probs: np.ndarray
    token_ends: np.ndarray  # character offset where each generated token ends in ``text``
    ended: bool  # the model closed its turn (not cut off by max_new_tokens)


@functools.cache
def _chosen_token_logprobs_class():
    import torch
    from transformers import LogitsProcessor

    class ChosenTokenLogprobs(LogitsProcessor):
        """Records the log-probability of each chosen token as generation runs (the logits processor that runs last).

        At step t it keeps the log-softmax of the scores; at step t + 1 the last input id is the token chosen at t,
        so its log-probability is read and the array replaced: memory holds one step, whatever the answer's length.
        """

        def __init__(self):
            self.previous = None
            self.chosen: list = []

        def __call__(self, input_ids, scores):
            if self.previous is not None:
                self.chosen.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
            self.previous = torch.log_softmax(scores.float(), dim=-1)
            return scores

        def finish(self, sequences):
            """``(batch, new tokens)`` log-probabilities, the last step's read from the final sequences."""
            if self.previous is not None:
                self.chosen.append(self.previous.gather(1, sequences[:, -1:]).squeeze(1))
                self.previous = None
            return torch.stack(self.chosen, dim=1) if self.chosen else torch.zeros((sequences.shape[0], 0))

    return ChosenTokenLogprobs


def chosen_token_logprobs():
    """A fresh logits processor that records the chosen tokens' log-probabilities (``.finish(sequences)`` returns them)."""
    return _chosen_token_logprobs_class()()


def _processor_call(processor, images, texts, device):
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = processor(images=images, text=texts, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = side
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in enc.items()}


def generate_ids(model, inputs: dict, max_new_tokens: int, **generate_kwargs):
    """``model.generate`` on processor outputs: the new token ids ``(batch, steps)`` and each one's log-probability, recorded as
    generation runs (greedy unless ``generate_kwargs`` say otherwise)."""
    import torch
    from transformers import LogitsProcessorList

    recorder = chosen_token_logprobs()
    kwargs = {"do_sample": False, **generate_kwargs}
    kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []), recorder])
    with torch.inference_mode():
        sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
    return sequences[:, inputs["input_ids"].shape[1]:], recorder.finish(sequences)


def generate(model, processor, images: list, prompts: list[list[dict]], max_new_tokens: int = 512, **generate_kwargs) -> list[Generation]:
    """Batched generation (greedy, left-padded) for one batch of (images, prompt messages): the answers with their tokens'
    probabilities."""
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    new, logprobs = generate_ids(model, _processor_call(processor, images, texts, model.device), max_new_tokens, **generate_kwargs)
    logprobs = logprobs.float().cpu().numpy()
    return [answer_generation(processor.tokenizer, row, lp) for row, lp in zip(new.tolist(), logprobs)]


def answer_generation(tok, ids: list[int], logprobs) -> Generation:
    """One answer's generated token ids and their log-probabilities as a :class:`Generation`: cut at the end of turn (or the
    padding after it), decoded, each token's probability and where it ends in the text (every engine answers through this)."""
    end_of_turn = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id}
    kept, ended = [], False
    for tid in ids:
        if tid in end_of_turn or tid == tok.pad_token_id:
            ended = tid in end_of_turn
            break
        kept.append(tid)
    text, ends = _text_and_token_ends(tok, kept)
    return Generation(text, np.exp(np.asarray(logprobs, dtype=np.float32)[: len(kept)]), ends, ended)


def _text_and_token_ends(tok, ids: list[int]) -> tuple[str, np.ndarray]:
    """The decoded answer and the character offset where each token ends in it."""
    text = tok.decode(ids, skip_special_tokens=False)
    pieces = [tok.convert_tokens_to_string([t]) for t in tok.convert_ids_to_tokens(ids)]
    if "".join(pieces) != text:  # a character split over several byte-level tokens: decode prefixes instead
        return text, np.array([len(tok.decode(ids[: k + 1], skip_special_tokens=False)) for k in range(len(ids))], dtype=np.int64)
    return text, np.cumsum([len(piece) for piece in pieces]).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)


def box_confidences(gen: Generation, spans: list[tuple[int, int]], method: str = "decisive") -> list[float]:
    """One score per box (character spans of the answer, in order) from the probabilities of the tokens that wrote it.

    ``decisive`` (the default): the probability that the model wrote this box as it stands, given the answer before it: the
    product of the probabilities of every token from the end of the previous box (the answer's start for the first) to the
    end of this one. Those tokens decide whether another box comes at all (the separator or the box-start token after the
    previous box), its label and where it lies (its digits); the tokens the format makes certain (brackets, JSON keys)
    multiply by about 1 and cost nothing. ``mean``: the mean probability of the box's own tokens (qid predict's earlier score:
    diluted by those certain tokens, it bunches and barely ranks). A box with no token scores 1.0.
    """
    if method not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {method!r}.")
    ends = gen.token_ends
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    logp = np.log(np.clip(gen.token_probs, 1e-30, 1.0))
    scores, previous_end = [], 0
    for s, e in spans:
        own = (starts < e) & (ends > s)
        if method == "mean":
            scores.append(float(gen.token_probs[own].mean()) if own.any() else 1.0)
        else:
            written = (starts < e) & (ends > previous_end)
            scores.append(float(np.exp(logp[written].sum())) if written.any() else 1.0)
        previous_end = e
    return scores
