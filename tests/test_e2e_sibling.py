"""The sibling view end to end through verl's real trainer on CPU: views=[full, sibling], two
rollouts per prompt, 2 steps, with a reward that marks about half of the responses correct. Each
rollout's sibling view is present exactly when another rollout of its prompt is correct (and not
blank), and the teacher's log-probs under it equal a one-sequence-at-a-time recomputation with the
plain HF model on the context holding that sibling's decoded response: the right text reached the
right row through verl's balancing, TransferQueue and the packed prefill."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_e2e_avsd import TIMEOUT_S, _dumps, toy  # noqa: F401  (toy: the tiny model and data fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_avsd.config import avsd_config
from verl_avsd.sibling_view import sampling_order
from verl_avsd.toy_run import TOY_VIEW_TEMPLATE, ToyRun, run_main_ppo
from verl_avsd.workers.teacher_context import build_teacher_contexts, with_rollout_view

COIN_REWARD = Path(__file__).with_name("coin_reward.py")


@pytest.mark.slow
def test_sibling_view_reaches_the_teacher_for_the_right_rollouts(toy):  # noqa: F811
    root, model_dir, data = toy
    run = ToyRun(
        model_dir=model_dir,
        train_file=data["train"],
        val_file=data["val"],
        run_dir=str(root / "sibling"),
        estimator="avsd",
        views=("full", "sibling"),
        rollouts_per_prompt=2,
        prompts_per_step=4,
        steps=2,
        max_response_length=24,
        dump_rollouts=True,
    )
    overrides = [o for o in run.overrides() if not o.startswith("reward.custom_reward_function.path=")]
    overrides.append(f"reward.custom_reward_function.path={COIN_REWARD}")
    result = run_main_ppo(overrides, run.run_dir, timeout_s=TIMEOUT_S)
    assert result.returncode == 0, f"main_ppo exited {result.returncode} after {result.seconds:.0f}s:\n{result.log_tail()}"
    assert sorted(result.metrics) == [1, 2]
    for step, m in result.metrics.items():
        assert 1.0 <= m["avsd/views_valid_mean"] <= 2.0 and m["avsd/views_scored"] == 2.0, (step, m["avsd/views_valid_mean"])
        assert 0.0 <= m["sibling/view_rate"] <= 1.0
        assert math.isfinite(m["epistemic/markers_per_1k_tokens"]) and m["epistemic/response_length_mean"] > 0
    assert any(1.0 < m["avsd/views_valid_mean"] < 2.0 for m in result.metrics.values())

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    df = pd.read_parquet(data["train"])
    rows = {e["index"]: r for e, (_, r) in zip(df["extra_info"], df.iterrows())}
    cfg = avsd_config({"avsd": {"views": ["full", "sibling"], "view_template": TOY_VIEW_TEMPLATE}})

    def logp(context, response):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.cat([context, response])[None]).logits[0].double(), -1)
        return lp[len(context) - 1 : -1].gather(1, response[:, None])[:, 0]

    with_sibling = without = 0
    for step in (1, 2):  # step 1: the teacher (frozen ref) and the model agree exactly
        dumps = [d for d in _dumps(run.run_dir, step) if not d["is_padding"]]
        texts = [tokenizer.decode(d["response_ids"], skip_special_tokens=True) for d in dumps]
        order = sampling_order([d["key"] for d in dumps], [d["key"].rsplit("_", 2)[0] for d in dumps])
        for b, d in enumerate(dumps):
            others = [
                c
                for c in range(len(dumps))
                if c != b and dumps[c]["index"] == d["index"] and dumps[c]["reward"] >= 1.0 and texts[c].strip()
            ]
            sibling = texts[min(others, key=lambda c: order[c])] if others else ""
            assert d["view_mask"] == [True, bool(sibling)], (step, b)
            if not sibling:
                without += 1
                continue
            with_sibling += 1
            row = rows[d["index"]]
            info = with_rollout_view(row["extra_info"], "sibling", sibling)
            ctx = build_teacher_contexts(tokenizer, [list(row["prompt"])], [info], cfg)
            response = torch.tensor(d["response_ids"])
            got = torch.tensor(d["view_logq"][1][: len(response)], dtype=torch.float64)
            assert (got - logp(ctx.context_ids[0][1], response)).abs().max().item() < 1e-4, (step, b)
    print(
        f"[sibling e2e] rollouts with a sibling view: {with_sibling}, without: {without}; views_valid_mean:",
        [result.metrics[s]["avsd/views_valid_mean"] for s in (1, 2)],
    )
    assert with_sibling and without, (with_sibling, without)
