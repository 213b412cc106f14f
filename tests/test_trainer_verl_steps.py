"""The teacher path replaces verl's advantage step (PPOTrainer._compute_advantage), so it does each
of verl's steps there or refuses the setting by name (issue 15 item 2):

- rollout correction (`algorithm.rollout_correction`): verl's own importance weights and rejection
  sampling, on the teacher path too;
- several outputs per rollout session (a multi-output agent loop): refused, naming the key;
- the credit metrics: one helper for the teacher path and verl's own step.

The trainer's own step runs on FakeTQ (no Ray); the teacher's log-probs are given as fields."""

from __future__ import annotations

import math

import pytest
import torch
from fake_tq import FakeTQ, WordTokenizer, rollout_row
from omegaconf import OmegaConf

import verl_avsd.trainer as trainer_module
from verl_avsd.config import avsd_config
from verl_avsd.trainer import AvsdTrainer

TEXTS = ["so the answer is 42", "hmm 7", "let me check x", "the answer is 42"]
REWARDS = [1.0, 0.0, 0.0, 1.0]
UIDS = ["p", "p", "q", "q"]
OLD = [[-0.5, -1.0, -0.2, -2.0, -0.1, -0.3], [-1.5, -0.4, -0.9], [-0.3, -1.8, -0.6, -1.2, -0.8], [-0.7, -0.1, -0.2, -0.9, -0.4]]
# the rollout engine's log-probs: row 0 token 3 is far off (ratio pi_old / pi_rollout = e^1.6: weight
# truncated at 2, and rejected); row 2 token 1 has ratio e^-1.5 (rejected); the rest near 1
ROLLOUT = [
    [-0.5, -1.1, -0.2, -3.6, -0.1, -0.2],
    [-1.5, -0.5, -0.8],
    [-0.3, -0.3, -0.6, -1.0, -0.8],
    [-0.7, -0.1, -0.3, -0.9, -0.4],
]
CORRECTION = {"rollout_is": "token", "rollout_is_threshold": 2.0, "rollout_rs": "token_k1", "rollout_rs_threshold": "0.5_4.0",
              "bypass_mode": False, "rollout_is_batch_normalize": False}  # fmt: skip


def _rows(with_rollout_log_probs: bool):
    rows = []
    for b, (text, reward, uid) in enumerate(zip(TEXTS, REWARDS, UIDS)):
        T = len(text.split()) + 1
        logq = torch.stack([torch.tensor(OLD[b]) + 0.3 * (b % 2) - 0.1, torch.tensor(OLD[b]) * 0.5], dim=-1)  # [T, M=2]
        fields = {"old_log_probs": torch.tensor(OLD[b]), "avsd_view_logq": logq, "avsd_view_mask": torch.tensor([True, True])}
        if with_rollout_log_probs:
            fields["rollout_log_probs"] = torch.tensor(ROLLOUT[b])
        assert len(OLD[b]) == T
        rows.append(rollout_row(uid, text, reward, {"index": b, "views": []}, **fields))
    return rows


def _trainer(estimator="avsd", correction=None):
    t = object.__new__(AvsdTrainer)  # no Ray, no workers: the advantage step only
    t.avsd = avsd_config({"avsd": {"views": ["full", "partial"]}})
    t.estimator, t.needs_teacher, t.timing_raw, t.global_steps = estimator, estimator != "grpo", {}, 1
    t.tokenizer = WordTokenizer()
    t._views_checked = True  # the rows carry no view texts; the teacher's log-probs are given
    t._compute_view_log_probs = lambda batch, metrics: batch
    algorithm = {"norm_adv_by_std_in_grpo": True, **({"rollout_correction": correction} if correction is not None else {})}
    t.config = OmegaConf.create({"algorithm": algorithm, "actor_rollout_ref": {"rollout": {"n": 2}}})
    return t


def _padded(nested_values: torch.Tensor) -> list[list[float]]:
    return [row.tolist() for row in nested_values.unbind(0)]


def _step(monkeypatch, correction, with_rollout_log_probs=True, keys=None):
    tq = FakeTQ(_rows(with_rollout_log_probs), keys=keys).install(monkeypatch)
    metrics = {}
    _trainer(correction=correction)._compute_advantage(tq.batch(), metrics)
    return tq.puts[-1], metrics


def test_teacher_path_applies_verls_rollout_correction(monkeypatch):
    plain, plain_metrics = _step(monkeypatch, correction=None)
    corrected, metrics = _step(monkeypatch, correction=CORRECTION)
    assert set(plain) == {"advantages", "returns"} and not any(k.startswith("rollout_corr/") for k in plain_metrics)
    assert set(corrected) == {"advantages", "returns", "response_mask", "rollout_is_weights"}  # as verl writes them
    assert metrics["rollout_corr/rollout_is_max"] == pytest.approx(2.0)  # verl's metrics, through the tracker

    # float64 reference: token weight min(pi_old / pi_rollout, 2); verl's token_k1 "0.5_4.0" bounds
    # pi_rollout / pi_old to [0.5, 4], so a token is rejected where the ratio leaves [1/4, 2]
    for b in range(len(TEXTS)):
        ratio = [math.exp(o - r) for o, r in zip(OLD[b], ROLLOUT[b])]
        assert _padded(corrected["rollout_is_weights"])[b] == pytest.approx([min(x, 2.0) for x in ratio], rel=1e-5)
        kept = [1 if 1 / 4.0 <= x <= 1 / 0.5 else 0 for x in ratio]
        assert _padded(corrected["response_mask"])[b] == kept
        advantage, before = _padded(corrected["advantages"])[b], _padded(plain["advantages"])[b]
        for t, keep in enumerate(kept):
            if not keep:  # a rejected token trains on nothing: no advantage (verl's GRPO path alike)
                assert advantage[t] == 0.0 and before[t] != 0.0, (b, t)
    assert sum(map(sum, _padded(corrected["response_mask"]))) == sum(len(o) for o in OLD) - 2


def test_rollout_correction_is_verls_choice_of_when(monkeypatch):
    # no rollout log-probs (rollout.calculate_log_probs off): verl skips the correction, so does the teacher path
    put, metrics = _step(monkeypatch, correction=CORRECTION, with_rollout_log_probs=False)
    assert set(put) == {"advantages", "returns"} and not any(k.startswith("rollout_corr/") for k in metrics)
    # bypass mode: verl corrects in the actor's loss (old_log_probs := rollout's), not in the advantage step
    put, metrics = _step(monkeypatch, correction={**CORRECTION, "bypass_mode": True})
    assert set(put) == {"advantages", "returns"} and not any(k.startswith("rollout_corr/") for k in metrics)


def test_several_outputs_per_session_are_refused_naming_the_key(monkeypatch):
    keys = ["p_0_0", "p_0_1", "q_0_0", "q_1_0"]  # p's session 0 returned two outputs
    with pytest.raises(ValueError, match=r"adv_estimator=avsd.*'p_0_1'.*actor_rollout_ref\.rollout\.agent\.default_agent_loop"):
        _step(monkeypatch, correction=None, keys=keys)
    _step(monkeypatch, correction=None, keys=["p_0_0", "p_1_0", "q_0_0", "q_1_0"])  # one output per session: runs


def test_estimators_without_a_teacher_keep_verls_step(monkeypatch):
    """grpo runs verl's own advantage step (rollout correction and multi-output grouping included)."""
    rows = [{**row, "advantages": torch.zeros(len(row["responses"]))} for row in _rows(True)]
    tq = FakeTQ(rows, keys=["p_0_0", "p_0_1", "q_0_0", "q_1_0"]).install(monkeypatch)
    verl_steps = []
    monkeypatch.setattr(
        trainer_module.PPOTrainerSync, "_compute_advantage", lambda self, batch, metrics: verl_steps.append(1) or batch
    )
    _trainer("grpo", correction=CORRECTION)._compute_advantage(tq.batch(), {})
    assert verl_steps == [1]


def test_credit_metrics_are_one_helper_for_both_paths(monkeypatch):
    """The same advantages give the same credit/* and grpo/* metrics on the teacher path and after
    verl's step (the comparison runs)."""
    teacher_put, teacher_metrics = _step(monkeypatch, correction=None)
    advantages = teacher_put["advantages"].unbind(0)
    rows = [{**row, "advantages": advantages[b]} for b, row in enumerate(_rows(False))]
    tq = FakeTQ(rows).install(monkeypatch)
    monkeypatch.setattr(trainer_module.PPOTrainerSync, "_compute_advantage", lambda self, batch, metrics: batch)
    grpo_metrics = {}
    _trainer("grpo")._compute_advantage(tq.batch(), grpo_metrics)
    credit = sorted(k for k in teacher_metrics if k.startswith(("credit/", "grpo/")))
    assert credit == sorted(k for k in grpo_metrics if k.startswith(("credit/", "grpo/")))
    assert "grpo/groups_without_signal" in credit and "credit/wrong_rollout_rate" in credit
    assert {k: teacher_metrics[k] for k in credit} == {k: grpo_metrics[k] for k in credit}
    assert teacher_metrics["credit/wrong_rollout_rate"] == 0.5 and teacher_metrics["grpo/groups_without_signal"] == 0.0


def test_kl_in_reward_is_refused_naming_the_key(monkeypatch):
    """verl's step adds the KL penalty to the reward (apply_kl_penalty); the teacher path refuses it."""
    monkeypatch.setattr(trainer_module.PPOTrainerSync, "__init__", lambda self, config: None)
    monkeypatch.setattr(trainer_module, "failure_limit", lambda config: 3)

    def config(estimator):
        return OmegaConf.create({"algorithm": {"adv_estimator": estimator, "use_kl_in_reward": True},
                                 "actor_rollout_ref": {"rollout": {"n": 2}}})  # fmt: skip

    with pytest.raises(ValueError, match=r"algorithm\.use_kl_in_reward is not supported with algorithm\.adv_estimator=avsd"):
        AvsdTrainer(config("avsd"))
    AvsdTrainer(config("grpo"))  # verl's own step applies it
