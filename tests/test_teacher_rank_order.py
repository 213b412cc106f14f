"""The teacher step's row order over data-parallel ranks: whole prompt groups per rank, balanced.

verl's dispatch gives rank r the r-th of dp equal contiguous chunks of the batch, and verl's
balance_batch has already scattered each prompt's rollouts over the ranks by sequence length. For
the teacher, a prompt's rollouts share their contexts under every view, which the packed prefill
feeds once, but only for rollouts on the same rank.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict

import verl_avsd.verl_trainer_seam as seam
from verl_avsd.config import default_config
from verl_avsd.trainer import AvsdTrainer, teacher_rank_order


def shuffled_groups(rng: random.Random, prompts: int, n: int):
    """uids and sequence lengths of prompts x n rollouts, in a scattered (balance_batch-like) order."""
    rows = [(f"p{p}", rng.randint(50, 4000)) for p in range(prompts) for _ in range(n)]
    rng.shuffle(rows)
    return [u for u, _ in rows], [length for _, length in rows]


@pytest.mark.parametrize("prompts, n, dp", [(16, 4, 2), (32, 8, 4), (24, 2, 8), (64, 1, 8)])
def test_every_rank_gets_whole_groups_and_similar_work(prompts, n, dp):
    rng = random.Random(prompts * n * dp)
    uids, lengths = shuffled_groups(rng, prompts, n)
    order = teacher_rank_order(lengths, uids, dp)
    assert sorted(order) == list(range(len(uids)))  # a permutation: nothing lost or repeated
    chunk = len(uids) // dp
    ranks = [order[r * chunk : (r + 1) * chunk] for r in range(dp)]
    for r, rows in enumerate(ranks):
        for i in rows:  # all of a group's rows sit in its rank's chunk
            assert all(j in rows for j in range(len(uids)) if uids[j] == uids[i]), (r, uids[i])
    # Balanced by verl's workload estimate (linear + quadratic in the length): far better than the
    # worst a group split could be, within 25% of the mean for these sizes.
    work = [sum(24576 * lengths[i] + lengths[i] ** 2 for i in rows) for rows in ranks]
    assert max(work) <= 1.25 * np.mean(work), work


def test_no_reorder_when_groups_cannot_split_evenly():
    uids, lengths = shuffled_groups(random.Random(0), prompts=6, n=4)
    assert teacher_rank_order(lengths, uids, 1) is None  # one rank: nothing to balance
    assert teacher_rank_order(lengths, uids, 4) is None  # 6 groups over 4 ranks
    assert teacher_rank_order(lengths + [10], uids + ["p0"], 2) is None  # a group of 5 among groups of 4
    assert teacher_rank_order(lengths, uids, 2) is not None


class RecordingWorkerGroup:
    """The actor worker group as the trainer sees it: its dp layout and the teacher call."""

    def __init__(self, dp_size: int):
        self._dispatch_info = {"actor": list(range(dp_size))}
        self.keys_seen = None

    def compute_view_log_probs(self, batch):
        self.keys_seen = list(batch.keys)
        return list(batch.keys)


class FakeBatch:
    """The parts of a TransferQueue KVBatchMeta the teacher step uses."""

    def __init__(self, keys, seq_lens):
        self.keys, self.tags, self.partition_id, self.extra_info = list(keys), [{"seq_len": n} for n in seq_lens], "train", {}

    def reorder(self, indices):
        self.keys = [self.keys[i] for i in indices]
        self.tags = [self.tags[i] for i in indices]

    def __len__(self):
        return len(self.keys)


def test_trainer_scores_in_group_order_and_restores_verls_order(monkeypatch):
    rng = random.Random(5)
    uids, lengths = shuffled_groups(rng, prompts=8, n=4)
    keys = [f"k{i}" for i in range(len(uids))]
    uid_of = dict(zip(keys, uids))

    def kv_batch_get(keys, partition_id, select_fields):
        if select_fields == ["uid"]:
            return {"uid": [uid_of[k] for k in keys]}
        fields = {"avsd_view_tokens": torch.ones(len(keys), 3, dtype=torch.int64),
                  "avsd_view_truncated": torch.zeros(len(keys), 3, dtype=torch.bool),
                  "avsd_view_fed_tokens": torch.ones(len(keys))}  # fmt: skip
        return TensorDict({f: fields[f] for f in select_fields}, batch_size=len(keys))

    monkeypatch.setattr(seam.tq, "kv_batch_get", kv_batch_get)
    trainer = object.__new__(AvsdTrainer)  # the step only: no Ray, no workers
    trainer.avsd = default_config()
    trainer.config = OmegaConf.create({"data": {}, "actor_rollout_ref": {"rollout": {"temperature": 1.0}}})

    for dp_size, grouped in ((4, True), (1, False)):
        trainer.actor_rollout_wg = RecordingWorkerGroup(dp_size)
        batch, metrics = FakeBatch(keys, lengths), {}
        assert trainer._compute_view_log_probs(batch, metrics) is batch
        assert batch.keys == keys  # verl's order again for the update
        seen = trainer.actor_rollout_wg.keys_seen
        assert sorted(seen) == sorted(keys)
        chunk = len(keys) // dp_size
        rank_of = {k: r // chunk for r, k in enumerate(seen)}
        whole = all(len({rank_of[k] for k in keys if uid_of[k] == u}) == 1 for u in set(uids))
        assert (seen != keys) == grouped and whole  # (with one rank every group is trivially whole)
        assert metrics.get("avsd/teacher_grouped_by_prompt") == (1.0 if grouped else None)

    trainer.avsd = dataclasses.replace(
        trainer.avsd, teacher_group_by_prompt=False
    )  # the switch: verl's order for the teacher too
    trainer.actor_rollout_wg = RecordingWorkerGroup(4)
    trainer._compute_view_log_probs(FakeBatch(keys, lengths), {})
    assert trainer.actor_rollout_wg.keys_seen == keys
