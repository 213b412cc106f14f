"""A TransferQueue, a batch and a tokenizer small enough to run AvsdTrainer's advantage step
without Ray: the trainer's own code runs, reading and writing per-sample fields as verl's do."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

import verl_avsd.verl_trainer_seam as seam

VOCAB = ["<eos>", "wait", "hmm", "so", "the", "answer", "is", "42", "7", "let", "me", "check", "perhaps", "x"]
EOS = 0


def ids(text: str) -> torch.Tensor:
    return torch.tensor([VOCAB.index(w) for w in text.split()] + [EOS])


class WordTokenizer:
    """One token per word of VOCAB, then <eos> (a special token, skipped when decoding)."""

    def batch_decode(self, sequences, skip_special_tokens=True):
        return [" ".join(VOCAB[i] for i in seq.tolist() if not (skip_special_tokens and i == EOS)) for seq in sequences]


@dataclass
class Batch:
    """The batch meta verl passes between steps (KVBatchMeta's fields the trainer reads)."""

    keys: list
    partition_id: str
    tags: list

    def __len__(self):
        return len(self.keys)


class FakeTQ:
    """kv_batch_get / kv_batch_put over the fields of one batch (rows in batch order)."""

    def __init__(self, rows: list[dict], keys: list[str] | None = None, tags: list[dict] | None = None):
        self.data = list_of_dict_to_tensordict(rows)
        self.keys = keys or [f"key{b}" for b in range(len(rows))]
        self.tags = tags or [{} for _ in rows]
        self.gets: list[list[str]] = []
        self.puts: list[dict] = []

    def batch(self):
        return Batch(self.keys, "train", self.tags)

    def kv_batch_get(self, keys, partition_id, select_fields):
        self.gets.append(list(select_fields))
        # as TransferQueue (BatchMeta.select_fields): a field no sample has is left out, not an error
        return self.data.select(*[f for f in select_fields if f in self.data.keys()])

    def kv_batch_put(self, keys, partition_id, fields):
        self.puts.append({k: fields[k] for k in fields.keys()})
        return Batch(list(keys), partition_id, self.tags)

    def install(self, monkeypatch):
        monkeypatch.setattr(seam.tq, "kv_batch_get", self.kv_batch_get)  # the trainer's only way to TransferQueue
        monkeypatch.setattr(seam.tq, "kv_batch_put", self.kv_batch_put)
        return self


def rollout_row(uid: str, text: str, reward: float, extra_info: dict | None = None, **fields) -> dict:
    """One rollout's per-sample fields: response ids, response_mask, token-level rm_scores (the
    reward on the last token, as verl's reward loop writes it)."""
    response = ids(text)
    scores = torch.zeros(len(response))
    scores[-1] = reward
    row = {"uid": uid, "responses": response, "response_mask": torch.ones(len(response), dtype=torch.int64), "rm_scores": scores}
    if extra_info is not None:
        row["extra_info"] = extra_info
    return {**row, **fields}
