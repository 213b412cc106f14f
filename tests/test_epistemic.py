"""Epistemic markers: counted as whole words/phrases, case-insensitive, the longest of overlapping
markers once; rates per 1k response tokens over all, correct and wrong rollouts."""

import math
import random
import re

import pytest
import torch
from fake_tq import FakeTQ, WordTokenizer, rollout_row
from omegaconf import OmegaConf

import verl_avsd.trainer as trainer_module
from verl_avsd.config import avsd_config, default_config
from verl_avsd.epistemic import EpistemicMarkers, epistemic_metrics
from verl_avsd.report import main as report_main
from verl_avsd.trainer import AvsdTrainer


def slow_count(text: str, markers: list[str]) -> int:
    """Reference: every occurrence of every marker (one regex per marker, overlapping allowed,
    boundaries checked by hand), then greedily the leftmost, and at one start the longest,
    occurrence that does not overlap the ones taken."""
    text = text.replace("\u2019", "'")
    spans = []
    for marker in markers:
        words = marker.replace("\u2019", "'").split()
        pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
        for start in range(len(text)):
            m = pattern.match(text, start)
            if m is None:
                continue
            before = text[start - 1] if start else " "
            after = text[m.end()] if m.end() < len(text) else " "
            if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
                spans.append((start, m.end()))
    count, taken_until = 0, 0
    for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
        if start >= taken_until:
            count, taken_until = count + 1, end
    return count


MARKERS = ["wait", "hmm", "let me check", "let me", "check", "double-check", "let me double-check", "not sure", "it's", "perhaps"]

CASES = [
    ("Wait, WAIT. wait!", 3),  # case
    ("await waiting waited wait_for wait2 2wait", 0),  # inside words: never
    ("(wait) 'wait' \"wait\" wait's", 4),  # punctuation is a boundary
    ("let me check", 1),  # the phrase, not "let me" + "check"
    ("Let me\n\tcheck this", 1),  # any whitespace inside a phrase
    ("let me double-check", 1),  # longest of three overlapping markers
    ("double-check, then check", 2),
    ("let me think", 1),  # "let me" alone
    ("letme check", 1),  # no space: only "check"
    ("hmmm hmm", 1),  # "hmmm" is another word
    ("I'm not sure it\u2019s right", 2),  # typographic apostrophe
    ("perhapsperhaps perhaps", 1),
    ("", 0),
    ("Ça, hmm, était peut-être wait", 2),  # non-ASCII letters around
    ("éwait waité", 0),  # a non-ASCII letter is part of the word
]


@pytest.mark.parametrize("text,want", CASES)
def test_hand_made_texts(text, want):
    assert slow_count(text, MARKERS) == want  # the reference itself, on cases checked by hand
    assert EpistemicMarkers(MARKERS).count(text) == want


def test_matches_the_slow_reference_on_random_texts():
    rng = random.Random(0)
    pieces = [
        "wait",
        "Wait",
        "hmm",
        "let",
        "me",
        "check",
        "double-check",
        "double",
        "-",
        "not",
        "sure",
        "it's",
        "perhaps",
        "x",
        "await",
        "checking",
        ",",
        ".",
        "\n",
        " ",
        "  ",
        "_",
        "'",
        "é",
    ]
    counter = EpistemicMarkers(MARKERS)
    for _ in range(400):
        text = "".join(rng.choice(pieces) + rng.choice(["", " ", " ", "\n"]) for _ in range(rng.randint(0, 30)))
        assert counter.count(text) == slow_count(text, MARKERS), text


def test_order_of_the_list_does_not_matter():
    text = "let me double-check... hmm, let me check. wait, double-check"
    reversed_list = EpistemicMarkers(MARKERS[::-1])
    assert EpistemicMarkers(MARKERS).count(text) == reversed_list.count(text) == 5


def test_counts_name_the_marker_as_listed():
    counts = EpistemicMarkers(MARKERS).counts("WAIT, let me\ncheck. Wait. It\u2019s hmm")
    assert counts == {"wait": 2, "let me check": 1, "it's": 1, "hmm": 1}


def test_default_markers_compile_and_count():
    counter = EpistemicMarkers(list(default_config().epistemic_markers))
    text = "Hmm, wait. Let me double-check: perhaps 3. Actually, on second thought it seems fine."
    assert counter.count(text) == slow_count(text, list(default_config().epistemic_markers)) == 7


# ---- the per-step metrics ----


def test_rates_pool_over_tokens_and_split_by_reward():
    texts = ["wait wait hmm", "perhaps", "nothing here", "hmm"]
    tokens = [100, 50, 250, 100]
    rewards = [1.0, 0.0, 1.0, 0.5]
    m = epistemic_metrics(texts, tokens, rewards, ["wait", "hmm", "perhaps"], wrong_below=1.0)
    assert m["epistemic/markers_per_1k_tokens"] == pytest.approx(1000 * 5 / 500)
    assert m["epistemic/markers_per_1k_tokens_correct"] == pytest.approx(1000 * 3 / 350)  # rows 0, 2
    assert m["epistemic/markers_per_1k_tokens_wrong"] == pytest.approx(1000 * 2 / 150)  # rows 1, 3
    assert m["epistemic/response_length_mean"] == pytest.approx(125.0)
    # the threshold is the config's: with 0.5 row 3 is correct
    m = epistemic_metrics(texts, tokens, rewards, ["wait", "hmm", "perhaps"], wrong_below=0.5)
    assert m["epistemic/markers_per_1k_tokens_correct"] == pytest.approx(1000 * 4 / 450)


def test_a_group_without_rollouts_is_nan_not_zero():
    m = epistemic_metrics(["wait"], [10], [1.0], ["wait"], wrong_below=1.0)
    assert m["epistemic/markers_per_1k_tokens_correct"] == 100.0
    assert math.isnan(m["epistemic/markers_per_1k_tokens_wrong"])
    empty = epistemic_metrics([], [], [], ["wait"], wrong_below=1.0)
    assert all(math.isnan(v) for v in empty.values())


def test_mismatched_lengths_and_empty_markers_are_errors():
    with pytest.raises(ValueError, match="2 texts, 1 lengths"):
        epistemic_metrics(["a", "b"], [1], [0.0, 1.0], ["wait"], 1.0)
    with pytest.raises(ValueError, match="non-empty list"):
        EpistemicMarkers([])


# ---- the trainer logs them every step, for estimators without a teacher too ----


def test_grpo_step_logs_epistemic_metrics_of_the_real_rollouts(monkeypatch):
    texts = ["wait so the answer is 42", "hmm let me check x", "x", "wait wait"]
    rewards = [1.0, 0.0, 0.0, 1.0]
    rows = [rollout_row("p", t, r, advantages=torch.zeros(len(t.split()) + 1)) for t, r in zip(texts, rewards)]
    tq = FakeTQ(rows, tags=[{}, {}, {}, {"is_padding": True}]).install(monkeypatch)
    verl_steps = []
    monkeypatch.setattr(
        trainer_module.PPOTrainerSync, "_compute_advantage", lambda self, batch, metrics: verl_steps.append(1) or batch
    )
    t = object.__new__(AvsdTrainer)  # no Ray, no workers
    t.avsd = avsd_config({"avsd": {"epistemic_markers": ["wait", "hmm", "let me check"]}})
    t.estimator, t.needs_teacher, t.tokenizer = "grpo", False, WordTokenizer()
    t.config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"n": 4}}})
    metrics = {}
    t._compute_advantage(tq.batch(), metrics)
    assert verl_steps == [1]  # verl's own GRPO advantage ran
    # real rollouts: 7, 6 and 2 tokens (with <eos>); markers 1 (correct), 2 (wrong), 0 (wrong); padding left out
    assert metrics["epistemic/markers_per_1k_tokens"] == pytest.approx(1000 * 3 / 15)
    assert metrics["epistemic/markers_per_1k_tokens_correct"] == pytest.approx(1000 * 1 / 7)
    assert metrics["epistemic/markers_per_1k_tokens_wrong"] == pytest.approx(1000 * 2 / 8)
    assert metrics["epistemic/response_length_mean"] == pytest.approx(5.0)
    assert "credit/wrong_rollout_rate" in metrics  # next to the comparison metrics


# ---- `verl-avsd report` plots the rate per run and shows it next to epistemic_tau ----


def test_report_plots_the_rate_and_shows_it_next_to_epistemic_tau(tmp_path):
    rates = {"tau": [30.0, 20.0, 12.0, 10.0], "grpo": [31.0, 33.0, 35.0, 34.0]}
    configs = {
        "tau": "algorithm:\n  adv_estimator: avsd\n  avsd:\n    epistemic_tau: 0.05\n",
        "grpo": "algorithm:\n  adv_estimator: grpo\n",  # no algorithm.avsd: the default tau ran
    }
    for name, values in rates.items():
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text(
            "".join(f'{{"step": {s + 1}, "epistemic/markers_per_1k_tokens": {v}}}\n' for s, v in enumerate(values))
        )
        (run / "config.yaml").write_text(configs[name])
    out = tmp_path / "report"
    assert report_main([str(tmp_path / "tau"), str(tmp_path / "grpo"), "--output", str(out), "--last", "2"]) == 0
    assert (out / "epistemic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in (out / "summary.md").read_text().splitlines()
        if line.startswith("| ")
    ]
    names = [r[0] for r in rows]
    table = {r[0]: r[1:] for r in rows}
    assert table["epistemic markers per 1k tokens, last 2"] == ["11", "34.5"]
    assert table["epistemic_tau"] == ["0.05", "0"]
    assert names.index("epistemic_tau") == names.index("epistemic markers per 1k tokens, last 2") + 1
