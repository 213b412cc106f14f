"""The AVSD signal core against the float64 golden file, a slow reference and its properties."""

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import avsd_batch_reference

from verl_avsd.signals import (
    arithmetic_advantage,
    avsd_signals,
    consensus_advantage,
    opsd_advantage,
    rlsd_advantage,
)

GOLDEN = json.loads((Path(__file__).parent / "data" / "avsd_golden.json").read_text())
FIELDS = ["consensus", "residual", "alignment", "magnitude", "gate", "advantage", "arithmetic"]


def _inputs(case, dtype):
    i = case["inputs"]
    return (
        torch.tensor(i["student_logp"], dtype=dtype),
        torch.tensor(i["view_logq"], dtype=dtype),
        torch.tensor(i["view_mask"], dtype=torch.bool),
        torch.tensor(i["response_mask"], dtype=torch.bool),
    )


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
@pytest.mark.parametrize("case_id", range(len(GOLDEN["cases"])))
def test_golden(case_id, dtype, tol):
    case = GOLDEN["cases"][case_id]
    s = avsd_signals(*_inputs(case, dtype))
    for name in FIELDS:
        got = getattr(s, name)
        want = torch.tensor(case["expected"][name], dtype=torch.float64)
        assert got.dtype == dtype
        assert torch.allclose(got.double(), want, atol=tol, rtol=0), (name, (got.double() - want).abs().max())


def test_bf16_inputs_are_upcast_to_float32():
    case = GOLDEN["cases"][0]
    lp, lq, vm, rm = _inputs(case, torch.bfloat16)
    s = avsd_signals(lp, lq, vm, rm)
    assert s.advantage.dtype == torch.float32
    ref = avsd_signals(lp.float(), lq.float(), vm, rm)  # same bf16-rounded values, float32 math
    assert torch.equal(s.advantage, ref.advantage)


# ---- random batches against the slow reference, and the properties the spec requires ----


@st.composite
def batches(draw, max_b=4, max_m=4, max_t=7):
    B = draw(st.integers(1, max_b))
    M = draw(st.integers(1, max_m))
    T = draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 6
    logq = -torch.rand(B, M, T, generator=g, dtype=torch.float64) * 6
    view_mask = torch.rand(B, M, generator=g) < 0.8
    resp = torch.rand(B, T, generator=g) < 0.85
    return logp, logq, view_mask, resp


def _lists(*ts):
    return [t.tolist() for t in ts]


@settings(max_examples=150, deadline=None)
@given(batches())
def test_matches_slow_reference(batch):
    logp, logq, vm, rm = batch
    s = avsd_signals(logp, logq, vm, rm)
    ref = avsd_batch_reference(*_lists(logp, logq, vm, rm))
    for name in FIELDS:
        assert torch.allclose(getattr(s, name), torch.tensor(ref[name], dtype=torch.float64), atol=1e-12), name


@settings(max_examples=200, deadline=None)
@given(batches())
def test_properties(batch):
    logp, logq, vm, rm = batch
    s = avsd_signals(logp, logq, vm, rm)
    keep = s.token_mask
    # the residual never flips the consensus: |gate * J| < |A_G| + 1e-6 and sign(adv) = sign(A_G)
    assert ((s.gate * s.residual).abs() < s.consensus.abs() + 1e-6).all()
    assert torch.equal(torch.sign(s.advantage)[keep], torch.sign(s.consensus)[keep])
    assert ((s.gate >= 0) & (s.gate <= 1)).all()
    assert (s.residual >= 0).all()
    # masked positions are exactly zero
    outside = ~rm.bool()
    for name in FIELDS:
        assert (getattr(s, name)[outside] == 0).all(), name


@settings(max_examples=100, deadline=None)
@given(batches(), st.integers(0, 10_000))
def test_permuting_views_changes_nothing(batch, seed):
    logp, logq, vm, rm = batch
    perm = torch.randperm(logq.shape[1], generator=torch.Generator().manual_seed(seed))
    a = avsd_signals(logp, logq, vm, rm)
    b = avsd_signals(logp, logq[:, perm], vm[:, perm], rm)
    for name in FIELDS:
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-12), name


@settings(max_examples=100, deadline=None)
@given(batches(max_m=1))
def test_one_view_is_exactly_opsd(batch):
    logp, logq, _, rm = batch
    vm = torch.ones(logq.shape[0], 1, dtype=torch.bool)
    s = avsd_signals(logp, logq, vm, rm)
    opsd = opsd_advantage(logp, logq[:, 0], rm)
    assert torch.equal(s.advantage, opsd)
    assert torch.equal(s.consensus, opsd)
    assert (s.residual == 0).all()


@settings(max_examples=100, deadline=None)
@given(batches(max_m=1), st.integers(2, 5))
def test_identical_views_have_no_residual(batch, M):
    logp, logq, _, rm = batch
    views = logq.expand(-1, M, -1).clone()
    vm = torch.ones(logq.shape[0], M, dtype=torch.bool)
    s = avsd_signals(logp, views, vm, rm)
    assert torch.allclose(s.residual, torch.zeros_like(s.residual), atol=1e-12)
    assert torch.allclose(s.advantage, s.consensus, atol=1e-12)


def test_ablations_are_consensus_and_arithmetic():
    g = torch.Generator().manual_seed(0)
    logp, logq = -torch.rand(3, 5, generator=g), -torch.rand(3, 3, 5, generator=g) * 3
    vm, rm = torch.ones(3, 3, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool)
    expected_arith = torch.logsumexp(logq, dim=1) - math.log(3) - logp
    assert torch.allclose(arithmetic_advantage(logp, logq, vm, rm), expected_arith, atol=1e-6)
    assert torch.allclose(consensus_advantage(logp, logq, vm, rm), (logq - logp[:, None]).mean(1), atol=1e-6)


def test_different_view_counts_per_sample():
    # sample 0 has views {0, 1, 2}; sample 1 only {2}: its signals are OPSD on view 2
    logp = torch.tensor([[-1.0, -2.0], [-1.5, -0.5]], dtype=torch.float64)
    logq = torch.tensor([[[-0.5, -1.0], [-2.0, -3.0], [-0.1, -2.5]], [[9.0, 9.0], [9.0, 9.0], [-1.0, -0.2]]], dtype=torch.float64)
    vm = torch.tensor([[True, True, True], [False, False, True]])
    rm = torch.ones(2, 2, dtype=torch.bool)
    s = avsd_signals(logp, logq, vm, rm)
    assert torch.allclose(s.advantage[1], logq[1, 2] - logp[1])
    assert s.views_valid.tolist() == [[3.0, 3.0], [1.0, 1.0]]


def test_non_finite_view_is_dropped_and_counted_never_nan():
    logp = torch.tensor([[-1.0, -1.0, -1.0]])
    logq = torch.tensor([[[-0.5, float("nan"), float("-inf")], [-0.7, -0.2, float("inf")]]])
    vm = torch.ones(1, 2, dtype=torch.bool)
    rm = torch.ones(1, 3, dtype=torch.bool)
    s = avsd_signals(logp, logq, vm, rm)
    for name in FIELDS:
        assert torch.isfinite(getattr(s, name)).all(), name
    assert s.views_dropped == 3  # nan, -inf, +inf
    assert s.tokens_without_view == 1  # position 2 lost both views
    assert s.advantage[0, 2] == 0
    assert torch.isclose(s.advantage[0, 1], torch.tensor(-0.2 + 1.0))  # only view 1 is left
    assert s.views_valid.tolist() == [[2.0, 1.0, 0.0]]


def test_views_outside_the_response_are_not_counted_as_dropped():
    logp = torch.zeros(1, 2)
    logq = torch.full((1, 1, 2), float("nan"))
    s = avsd_signals(logp, logq, torch.ones(1, 1, dtype=torch.bool), torch.tensor([[1, 0]]))
    assert s.views_dropped == 1


def test_non_finite_student_logprob_is_an_error_naming_the_position():
    logp = torch.tensor([[-1.0, float("nan")]])
    with pytest.raises(ValueError, match=r"sample 0, position 1"):
        avsd_signals(logp, torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2))


def test_non_finite_student_logprob_outside_the_response_is_fine():
    logp = torch.tensor([[-1.0, float("nan")]])
    s = avsd_signals(logp, torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool), torch.tensor([[1, 0]]))
    assert torch.isfinite(s.advantage).all()


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((2, 3), (2, 1, 4), (2, 1), (2, 3)), "view_logq"),
        (((2, 3), (2, 2, 3), (2, 1), (2, 3)), "view_mask"),
        (((2, 3), (2, 2, 3), (2, 2), (2, 4)), "response_mask"),
    ],
)
def test_shape_errors_name_the_argument(shapes, match):
    a, b, c, d = shapes
    with pytest.raises(ValueError, match=match):
        avsd_signals(torch.zeros(a), torch.zeros(b), torch.ones(c, dtype=torch.bool), torch.ones(d))


# ---- RLSD ----


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0), st.floats(0.0, 0.9))
def test_rlsd_reward_sets_direction_teacher_sets_magnitude(seed, lam, eps_w):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(4, generator=g, dtype=torch.float64)
    gap = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2
    rm = torch.rand(4, 6, generator=g) < 0.8
    adv = rlsd_advantage(A, gap, rm, lam=lam, eps_w=eps_w)
    for b in range(4):
        for t in range(6):
            if not rm[b, t]:
                assert adv[b, t] == 0
                continue
            w = min(max(math.exp(math.copysign(1.0, A[b].item()) * gap[b, t].item()), 1 - eps_w), 1 + eps_w)
            assert math.isclose(adv[b, t].item(), A[b].item() * ((1 - lam) + lam * w), rel_tol=1e-12, abs_tol=1e-12)
            assert adv[b, t].item() == 0 or math.copysign(1, adv[b, t].item()) == math.copysign(1, A[b].item())


def test_rlsd_lam_zero_is_grpo():
    A = torch.tensor([1.5, -0.5])
    adv = rlsd_advantage(A, torch.randn(2, 3), torch.ones(2, 3), lam=0.0)
    assert torch.equal(adv, A[:, None].expand(2, 3))


# ---- extreme but finite log-probs (a sentinel like float32 finfo.min is not a score) ----

F32 = torch.finfo(torch.float32)
SENTINELS = [F32.min, F32.max, -1e30, 1e30, -1e4 * 1.5, float("nan"), float("-inf"), float("inf")]


def _reference_dropping_sentinels(logp, logq, vm, rm):
    """The slow float64 reference, with every value beyond LOGPROB_LIMIT turned into NaN (which
    the reference drops like a view the teacher could not score)."""
    from verl_avsd.signals import LOGPROB_LIMIT

    q = logq.double().clone()
    q[~(q.abs() <= LOGPROB_LIMIT)] = float("nan")
    return avsd_batch_reference(*_lists(logp.double(), q, vm, rm))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("M", [1, 2, 3])
def test_finfo_min_teacher_logprob_is_dropped_and_counted(dtype, M):
    # one view at finfo.min (the others, if any, ordinary): it gave NaN with 2 views, -5.7e37 with 3
    logp = torch.tensor([[-1.0, -2.0]], dtype=dtype)
    logq = torch.full((1, M, 2), -0.5, dtype=dtype)
    logq[0, 0, 0] = F32.min
    s = avsd_signals(logp, logq, torch.ones(1, M, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))
    for name in FIELDS:
        assert torch.isfinite(getattr(s, name)).all(), name
    assert s.views_dropped == 1
    assert s.tokens_without_view == (1 if M == 1 else 0)
    want = 0.0 if M == 1 else -0.5 - (-1.0)  # the remaining views agree: advantage = their delta
    assert math.isclose(s.advantage[0, 0].item(), want, abs_tol=1e-6)
    assert math.isclose(s.advantage[0, 1].item(), -0.5 + 2.0, abs_tol=1e-6)  # token 1 untouched


@settings(max_examples=150, deadline=None)
@given(batches(), st.integers(0, 2**31 - 1), st.sampled_from([torch.float32, torch.float64]))
def test_sentinel_logprobs_never_give_nan_or_absurd_advantages(batch, seed, dtype):
    logp, logq, vm, rm = batch
    g = torch.Generator().manual_seed(seed)
    logq = logq.clone()
    hit = torch.rand(logq.shape, generator=g) < 0.3
    picks = torch.randint(len(SENTINELS), logq.shape, generator=g)
    logq[hit] = torch.tensor(SENTINELS, dtype=torch.float64)[picks[hit]]
    logq[0, 0, 0] = -9999.0  # inside the limit: a (very unlikely) real score, kept
    s = avsd_signals(logp.to(dtype), logq.to(dtype), vm, rm)
    ref = _reference_dropping_sentinels(logp, logq, vm, rm)
    for name in FIELDS:
        got = getattr(s, name)
        assert torch.isfinite(got).all(), name
        assert got.abs().max() <= 4e4, name  # bounded by the limit, never ~1e38
        # float32 rounds -9999 to 1e-3 resolution; the reference is float64
        tol = 1e-12 if dtype == torch.float64 else 2e-3
        assert torch.allclose(got.double(), torch.tensor(ref[name], dtype=torch.float64), atol=tol, rtol=1e-6), name
    expected_dropped = int((vm[:, :, None] & rm.bool()[:, None, :] & ~(logq.abs() <= 1e4)).sum())
    assert s.views_dropped == expected_dropped


def test_opsd_drops_a_sentinel_like_avsd_with_one_view():
    logp = torch.tensor([[-1.0, -1.0]])
    logq = torch.tensor([[F32.min, -0.25]])
    adv = opsd_advantage(logp, logq, torch.ones(1, 2))
    assert adv.tolist() == [[0.0, 0.75]]
    assert torch.equal(adv, avsd_signals(logp, logq[:, None], torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 2)).advantage)


@pytest.mark.parametrize("value", [F32.min, F32.max, -1e5])
def test_student_logprob_beyond_the_limit_is_an_error_naming_the_position(value):
    logp = torch.tensor([[-1.0, value]])
    with pytest.raises(ValueError, match=r"beyond .*sample 0, position 1"):
        avsd_signals(logp, torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2))
