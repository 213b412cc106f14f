import torch

from verl_avsd.metrics import credit_metrics, signal_metrics, wrong_rollout_positive_topk
from verl_avsd.signals import avsd_signals


def _slow_topk_share(adv, mask, reward, wrong_below, k):
    pos = cnt = 0
    for b in range(adv.shape[0]):
        if reward[b] >= wrong_below:
            continue
        toks = sorted((abs(adv[b, t].item()), adv[b, t].item()) for t in range(adv.shape[1]) if mask[b, t])[::-1][:k]
        cnt += len(toks)
        pos += sum(1 for _, a in toks if a > 0)
    return (pos / cnt if cnt else 0.0), cnt


def test_wrong_rollout_topk_matches_slow_reference():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        B, T, k = 6, 30, 5
        adv = torch.randn(B, T, generator=g)
        mask = torch.rand(B, T, generator=g) < 0.5
        reward = (torch.rand(B, generator=g) < 0.5).float()
        got = wrong_rollout_positive_topk(adv, mask, reward, 1.0, k)
        want = _slow_topk_share(adv, mask, reward, 1.0, k)
        assert abs(got[0] - want[0]) < 1e-12 and got[1] == want[1]


def test_credit_metric_only_counts_wrong_rollouts():
    adv = torch.tensor([[5.0, 4.0, -1.0], [-3.0, 2.0, 0.5]])
    mask = torch.ones(2, 3)
    # rollout 0 is right (ignored); rollout 1 wrong with top-2 |adv| = -3, 2 -> one positive of two
    m = credit_metrics(adv, mask, torch.tensor([1.0, 0.0]), wrong_below=1.0, k=2)
    assert m["credit/wrong_rollout_positive_top2"] == 0.5 and m["credit/wrong_rollout_rate"] == 0.5


def test_signal_metrics_values():
    logp = torch.tensor([[-1.0, -1.0]])
    # token 0: both views above the student (agree); token 1: one above, one below (conflict)
    logq = torch.tensor([[[-0.5, -0.5], [-0.2, -2.0]]])
    s = avsd_signals(logp, logq, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2))
    m = signal_metrics(s)
    assert m["avsd/sign_conflict_rate"] == 0.5
    assert m["avsd/views_valid_mean"] == 2.0 and m["avsd/views_dropped"] == 0.0
    assert abs(m["avsd/gate_mean"] - s.gate.mean().item()) < 1e-7
    assert 0.0 <= m["avsd/gate_open_rate"] <= 1.0


def test_sign_conflict_needs_opposite_signs_not_a_small_gap():
    logp = torch.tensor([[-1.0, -1.0, -1.0]])
    # token 0: two views a hair above the student (agree, |delta| 1e-4 << 1e-2); token 1: one view
    # a hair above, one a hair below (conflict); token 2: the second view is missing (-inf)
    logq = torch.tensor([[[-0.9999, -0.9999, -0.5], [-0.9999, -1.0001, float("-inf")]]])
    s = avsd_signals(logp, logq, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 3))
    assert s.sign_conflict.tolist() == [[False, True, False]]
    assert abs(signal_metrics(s)["avsd/sign_conflict_rate"] - 1 / 3) < 1e-6
    one_view = avsd_signals(logp, logq[:, :1], torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 3))
    assert not one_view.sign_conflict.any()  # M = 1 never conflicts, however small delta is
