"""The `sibling` view: for each rollout, a correct response of another rollout of its prompt group
(never itself, masked when there is none), built by the trainer after the rewards."""

import math
import random

import pytest
import torch
from fake_tq import FakeTQ, WordTokenizer, rollout_row
from omegaconf import OmegaConf

import verl_avsd.trainer as trainer_module
from verl_avsd.config import avsd_config
from verl_avsd.estimators import token_advantages
from verl_avsd.sibling_view import choose_siblings, sampling_order, sibling_views
from verl_avsd.toy.tiny_model import build_tokenizer
from verl_avsd.trainer import AvsdTrainer
from verl_avsd.workers.teacher_context import build_teacher_contexts, check_view_coverage, with_rollout_view

# ---- which sibling ----

#         g0: all wrong   g1: one correct   g2: two correct   g3: n=1   padding (a copy of g3's uid, "correct")
UIDS = ["g0", "g0", "g0", "g1", "g1", "g1", "g2", "g2", "g2", "g3", "g3"]
CORRECT = [False, False, False, False, True, False, True, False, True, True, True]
REAL = [True] * 10 + [False]


def test_group_logic_on_a_hand_made_batch():
    assert choose_siblings(UIDS, CORRECT, REAL) == [
        None, None, None,  # no correct rollout in the group
        4, None, 4,  # the only correct one has no other; the wrong ones get it
        8, 6, 6,  # two correct: each gets the other, the wrong one the first
        None,  # a group of one: never itself
        None,  # padding gets no view, and is never a sibling (g3's rollout got none above)
    ]  # fmt: skip


def slow_choice(uids, correct, real, order):
    """Reference: for each rollout, scan every other rollout; keep the correct real one of the same
    uid with the smallest order."""
    out = []
    for b in range(len(uids)):
        best = None
        for c in range(len(uids)):
            if c != b and real[b] and real[c] and correct[c] and uids[c] == uids[b]:
                if best is None or order[c] < order[best]:
                    best = c
        out.append(best)
    return out


def test_matches_the_slow_reference_on_random_batches():
    rng = random.Random(0)
    for _ in range(300):
        B = rng.randint(0, 12)
        uids = [rng.choice("abcd") for _ in range(B)]
        correct = [rng.random() < 0.4 for _ in range(B)]
        real = [rng.random() < 0.9 for _ in range(B)]
        order = rng.sample(range(B), B)
        got = choose_siblings(uids, correct, real, order)
        assert got == slow_choice(uids, correct, real, order)
        assert all(c is None or (c != b and uids[c] == uids[b] and correct[c]) for b, c in enumerate(got))


def test_sampling_order_comes_from_verl_keys_not_batch_order():
    uids = ["g2", "g2", "g2", "a_b", "x"]
    keys = ["g2_2_0", "g2_1_0", "g2_0_0", "a_b_3_1", "weird"]
    order = sampling_order(keys, uids)
    assert order[:4] == [(2, 0, 0), (1, 0, 1), (0, 0, 2), (3, 1, 3)]
    assert order[4] == (math.inf, math.inf, 4)  # another key shape: batch order, after the parsed ones
    # verl's balancing put session 2 first in the batch; the first *sampled* correct one is picked
    assert choose_siblings(uids[:3], [True, True, True], order=order[:3]) == [2, 2, 1]


def test_view_texts_and_metrics():
    texts = ["x", "so 7", "the answer is 42", "   ", "42"]
    uids = ["p", "p", "p", "q", "q"]
    rewards = [0.0, 0.0, 1.0, 1.0, 0.0]  # q's correct rollout is blank: nothing to show
    views, metrics = sibling_views(texts, uids, rewards, wrong_below=1.0)
    assert views == ["the answer is 42", "the answer is 42", "", "", ""]
    assert metrics == {"sibling/view_rate": 2 / 5, "sibling/wrong_view_rate": 2 / 3}
    # correct is the config's: reward >= wrong_below
    views, _ = sibling_views(texts, uids, rewards, wrong_below=0.0)
    assert views == ["so 7", "x", "x", "42", ""]


# ---- what the teacher reads ----


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(["Compute 12 + 30.", "12 + 30 = 42\nAnswer: 42", "Reference (sibling):"] * 20)


PROMPT = [{"role": "user", "content": "Compute 12 + 30."}]
ROW = {"index": 3, "views": [{"name": "full", "text": "12 + 30 = 42"}]}


def _cfg(views):
    return avsd_config(
        {"avsd": {"views": views, "opsd_view": views[0], "view_template": "{prompt}\\n\\nReference ({view_name}):\\n{view}"}}
    )


def test_teacher_context_is_the_prompt_with_the_siblings_response(tokenizer):
    sibling = "12 + 30 = 42\nAnswer: 42"
    stale = {**ROW, "views": ROW["views"] + [{"name": "sibling", "text": "a stale column"}]}
    rows = [
        with_rollout_view(ROW, "sibling", sibling),
        with_rollout_view(ROW, "sibling", ""),
        with_rollout_view(stale, "sibling", ""),
    ]
    ctx = build_teacher_contexts(tokenizer, [PROMPT] * 3, rows, _cfg(["full", "sibling"]))
    assert ctx.view_mask.tolist() == [[True, True], [True, False], [True, False]]  # none: masked, never the stale text
    want = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Compute 12 + 30.\n\nReference (sibling):\n{sibling}"}],
        add_generation_prompt=True,
        tokenize=True,
    )
    assert ctx.context_ids[0][1].tolist() == list(want["input_ids"] if hasattr(want, "keys") else want)
    assert ctx.context_ids[1][1] is None and ctx.context_ids[0][0].tolist() == ctx.context_ids[1][0].tolist()
    assert ROW["views"] == [{"name": "full", "text": "12 + 30 = 42"}]  # the shared row is not modified


def test_sibling_alone_without_any_correct_rollout_is_a_step_without_views(tokenizer):
    ctx = build_teacher_contexts(tokenizer, [PROMPT] * 2, [ROW, ROW], _cfg(["sibling"]))
    assert not ctx.view_mask.any()


def test_first_batch_check_needs_no_sibling_column():
    assert check_view_coverage([ROW, ROW], ["full", "sibling"]) == {"full": 1.0, "sibling": 1.0}


# ---- the estimator, with the sibling view masked in some rows ----


def test_masked_sibling_rows_train_on_the_other_views_only():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 7
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logq = -torch.rand(B, 2, T, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor([[True, True], [True, False], [True, False]])
    response = torch.ones(B, T)
    cfg = {"avsd": _cfg(["full", "sibling"])}
    adv, _ = token_advantages("avsd", cfg, student_logp=logp, view_logq=logq, view_mask=mask, response_mask=response)
    # a row without its sibling is one-view AVSD = OPSD on `full`: log q_full - log p (float64 reference)
    for b in (1, 2):
        assert torch.allclose(adv[b].double(), logq[b, 0] - logp[b], atol=1e-6)
    assert not torch.allclose(adv[0].double(), logq[0, 0] - logp[0], atol=1e-3)  # both views count where both exist
    # whatever sits in a masked view's slot is never read
    garbage = logq.clone()
    garbage[1:, 1] = float("nan")
    adv2, _ = token_advantages("avsd", cfg, student_logp=logp, view_logq=garbage, view_mask=mask, response_mask=response)
    assert torch.equal(adv, adv2)
    # sibling alone: a row without it has no signal (advantage 0), not NaN
    only, signals = token_advantages(
        "avsd",
        {"avsd": _cfg(["sibling"])},
        student_logp=logp,
        view_logq=garbage[:, 1:],
        view_mask=mask[:, 1:],
        response_mask=response,
    )
    assert torch.isfinite(only).all() and (only[1:] == 0).all() and signals.tokens_without_view == 2 * T


# ---- the trainer: built after the rewards, before the teacher step ----


def _trainer(views, n=3):
    t = object.__new__(AvsdTrainer)  # no Ray, no workers
    t.avsd = avsd_config({"avsd": {"views": views, "opsd_view": views[0]}})
    t.estimator, t.needs_teacher, t.timing_raw, t.global_steps = "avsd", True, {}, 1
    t.tokenizer = WordTokenizer()
    t.config = OmegaConf.create({"algorithm": {"norm_adv_by_std_in_grpo": True}, "actor_rollout_ref": {"rollout": {"n": n}}})
    return t


def test_trainer_writes_each_rollouts_sibling_before_the_teacher_step(monkeypatch):
    info = {"index": 0, "views": [{"name": "full", "text": "42"}]}
    texts = ["so 7", "the answer is 42", "hmm wait the answer is 42", "x", "x", "x"]
    rewards = [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    uids = ["p", "p", "p", "q", "q", "pad"]
    rows = []
    for text, reward, uid in zip(texts, rewards, uids):
        T = len(text.split()) + 1
        rows.append(
            rollout_row(
                uid,
                text,
                reward,
                info,
                old_log_probs=-torch.ones(T),
                avsd_view_logq=-0.5 * torch.ones(T, 2),
                avsd_view_mask=torch.tensor([True, False]),
            )
        )
    # verl's keys: batch position 1 is session 2 of p, position 2 is session 0
    keys = ["p_1_0", "p_2_0", "p_0_0", "q_0_0", "q_1_0", "pad_0_0"]
    tq = FakeTQ(rows, keys=keys, tags=[{}] * 5 + [{"is_padding": True}]).install(monkeypatch)
    t = _trainer(["full", "sibling"])
    seen_at_teacher = []
    t._compute_view_log_probs = lambda batch, metrics: seen_at_teacher.append(list(tq.puts)) or batch
    metrics = {}
    t._compute_advantage(tq.batch(), metrics)

    assert len(seen_at_teacher) == 1 and len(seen_at_teacher[0]) == 1  # the sibling view was there first
    assert list(seen_at_teacher[0][0]["avsd_sibling"]) == [
        "hmm wait the answer is 42",  # session 0 of p, the first sampled correct one
        "hmm wait the answer is 42",
        "the answer is 42",  # session 0 itself gets the other
        "", "", "",  # q has no correct rollout; padding none
    ]  # fmt: skip
    assert metrics["sibling/view_rate"] == 3 / 5 and metrics["sibling/wrong_view_rate"] == 1 / 3
    assert "timing_s/sibling_view" not in metrics and "sibling_view" in t.timing_raw
    assert "advantages" in tq.puts[-1]  # and the step went on to the estimator
    assert metrics["epistemic/markers_per_1k_tokens"] == pytest.approx(1000 * 2 / 19)  # "hmm", "wait"; 19 real tokens
    # the responses were decoded once for the sibling view and the epistemic metrics
    assert sum("responses" in fields for fields in tq.gets) == 1


def test_sibling_view_needs_several_rollouts_per_prompt(monkeypatch):
    monkeypatch.setattr(trainer_module.PPOTrainerSync, "__init__", lambda self, config: None)
    monkeypatch.setattr(trainer_module, "failure_limit", lambda config: 3)

    def config(n, estimator="avsd", views=("full", "sibling")):
        return OmegaConf.create(
            {
                "algorithm": {"adv_estimator": estimator, "avsd": {"views": list(views)}},
                "actor_rollout_ref": {"rollout": {"n": n}},
            }
        )

    with pytest.raises(ValueError, match=r"views has 'sibling'.*rollout\.n=1"):
        AvsdTrainer(config(1))
    AvsdTrainer(config(4))
    AvsdTrainer(config(1, estimator="opsd"))  # OPSD reads `full` only
    AvsdTrainer(config(1, estimator="grpo"))  # no teacher, no views
