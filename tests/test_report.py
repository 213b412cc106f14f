"""`verl-avsd report`: plots, the side-by-side summary, the token-credit view and the error messages,
on run directories written here with known values (both metrics file formats)."""

import json
import math
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image
from reference import avsd_batch_reference

from verl_avsd.plots import moving_average
from verl_avsd.report import main, summarize_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_PLOTS = ["reward.png", "gate.png", "signals.png", "credit.png", "teacher_share.png", "grpo_signal.png"]
VAL_KEY = "val-core/toy/arith/reward/mean@1"


def _assert_png(path: Path):
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        assert image.width > 0 and image.height > 0, path


def _write_jsonl(path: Path, records: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _config(path: Path, estimator: str, model: str = "/nowhere/model", avsd: str = "") -> None:
    path.write_text(f"algorithm:\n  adv_estimator: {estimator}\n{avsd}actor_rollout_ref:\n  model:\n    path: {model}\n")


# ---------------------------------------------------------------------------------------------
# Three runs with known curves


AVSD_REWARD = [0.125, 0.25, 0.5, 0.375, 0.75, 0.625]
AVSD_GATE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
AVSD_STEP_S = [10.0, 11.0, 12.0, 14.0, 16.0, 20.0]
AVSD_TEACHER_S = [2.0, 2.5, 3.0, 3.5, 4.0, 5.0]
GRPO_REWARD = [0.2, 0.4, 0.3, 0.6]
GRPO_DEAD = [0.5, 0.25, 0.75, 0.5]


@pytest.fixture
def three_runs(tmp_path):
    # demo format (metrics.jsonl): an AVSD run with teacher timings
    avsd = tmp_path / "runs" / "avsd_run"
    avsd.mkdir(parents=True)
    _write_jsonl(
        avsd / "metrics.jsonl",
        [
            {
                "step": s + 1,
                "critic/score/mean": AVSD_REWARD[s],
                "avsd/gate_mean": AVSD_GATE[s],
                "avsd/gate_open_rate": 0.1,
                "avsd/residual_mean": 0.02 * s,
                "avsd/alignment_mean": 0.9,
                "credit/wrong_rollout_positive_top20": 0.05,
                "timing_s/step": AVSD_STEP_S[s],
                "timing_s/teacher_views": AVSD_TEACHER_S[s],
            }
            for s in range(6)
        ],
    )
    _config(avsd / "config.yaml", "avsd")
    # verl's file logger format: GRPO with validation before training (its own line at step 0) and at the end
    grpo = tmp_path / "runs" / "grpo_run"
    grpo.mkdir()
    lines = [{"step": 0, "data": {VAL_KEY: 0.1}}]
    lines += [
        {
            "step": s + 1,
            "data": {
                "critic/score/mean": GRPO_REWARD[s],
                "grpo/groups_without_signal": GRPO_DEAD[s],
                "timing_s/step": 5.0 + s,
                "actor/pg_loss": None,
            },
        }
        for s in range(4)
    ]
    lines[-1]["data"][VAL_KEY] = 0.35
    # a run resumed from its step-2 checkpoint validates before training again, at step 2: a second line
    lines.insert(3, {"step": 2, "data": {VAL_KEY: 0.5}})
    _write_jsonl(grpo / "verl_metrics.jsonl", lines)
    _config(grpo / "config.yaml", "grpo")
    # verl format, no config.yaml, no reward metric at all
    bare = tmp_path / "runs" / "bare_run"
    bare.mkdir()
    _write_jsonl(bare / "verl_metrics.jsonl", [{"step": s, "data": {"timing_s/step": 1.0}} for s in (1, 2)])
    return avsd, grpo, bare


def test_summary_numbers_plots_and_absent_metrics(three_runs, tmp_path):
    avsd, grpo, bare = three_runs
    out = tmp_path / "out"
    options = "--last 3 --label AVSD --label GRPO --label bare".split()
    rc = main([str(avsd), str(grpo), str(bare), "--output", str(out), *options])
    assert rc == 0
    for name in REPORT_PLOTS:
        _assert_png(out / name)

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["runs"]) == ["AVSD", "GRPO", "bare"]
    assert summary["plots"] == REPORT_PLOTS
    a, g, b = (summary["runs"][k] for k in ("AVSD", "GRPO", "bare"))
    assert (a["estimator"], g["estimator"], b["estimator"]) == ("avsd", "grpo", None)
    assert (a["steps"], g["steps"], b["steps"]) == (6, 4, 2)
    assert a["metrics_file"] == "metrics.jsonl" and g["metrics_file"] == "verl_metrics.jsonl"
    assert (a["reward_final"], a["reward_final_step"]) == (AVSD_REWARD[-1], 6)
    assert (a["reward_best"], a["reward_best_step"]) == (max(AVSD_REWARD), 5)
    assert (g["reward_final"], g["reward_best"], g["reward_best_step"]) == (GRPO_REWARD[-1], 0.6, 4)
    assert a["last_n_mean"]["critic/score/mean"] == pytest.approx(statistics.fmean(AVSD_REWARD[-3:]), abs=1e-12)
    assert a["last_n_mean"]["avsd/gate_mean"] == pytest.approx(statistics.fmean(AVSD_GATE[-3:]), abs=1e-12)
    assert a["last_n_mean"]["timing_s/step"] == pytest.approx(statistics.fmean(AVSD_STEP_S[-3:]), abs=1e-12)
    share = statistics.fmean(t / s for t, s in zip(AVSD_TEACHER_S[-3:], AVSD_STEP_S[-3:]))
    assert a["last_n_mean"]["report/teacher_share"] == pytest.approx(share, abs=1e-12)
    assert g["last_n_mean"]["grpo/groups_without_signal"] == pytest.approx(statistics.fmean(GRPO_DEAD[-3:]), abs=1e-12)
    # validation lines of their own (steps 0 and 2) merge with the step's training metrics
    assert g["validation"][VAL_KEY] == {"final": 0.35, "final_step": 4, "best": 0.5, "best_step": 2}
    assert g["last_n_mean"]["critic/score/mean"] == pytest.approx(statistics.fmean(GRPO_REWARD[-3:]), abs=1e-12)
    # absent is absent, never 0
    assert g["last_n_mean"]["avsd/gate_mean"] is None and g["last_n_mean"]["report/teacher_share"] is None
    assert a["last_n_mean"]["grpo/groups_without_signal"] is None and a["validation"] == {}
    assert b["reward_final"] is None and b["last_n_mean"]["critic/score/mean"] is None

    cells = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in (out / "summary.md").read_text().splitlines()
        if line.startswith("| ")
    ]
    table = {row[0]: row[1:] for row in cells}
    assert table[""] == ["AVSD", "GRPO", "bare"]
    assert table["final reward"] == ["0.625 (step 6)", "0.6 (step 4)", "n/a"]
    assert table["best reward"] == ["0.75 (step 5)", "0.6 (step 4)", "n/a"]
    assert table["gate mean, last 3"] == [f"{statistics.fmean(AVSD_GATE[-3:]):.4g}", "n/a", "n/a"]
    assert table["teacher share of step, last 3"] == [f"{share:.4g}", "n/a", "n/a"]
    assert table["final val toy/arith/reward/mean@1"] == ["n/a", "0.35 (step 4)", "n/a"]
    assert table["best val toy/arith/reward/mean@1"] == ["n/a", "0.5 (step 2)", "n/a"]
    assert table["estimator"] == ["avsd", "grpo", "n/a"]
    assert "[grpo_signal.png](grpo_signal.png)" in (out / "summary.md").read_text()

    # the importable summary (the toy-scale study aggregates runs with it) gives the same numbers
    again = summarize_runs([avsd, grpo, bare], ["AVSD", "GRPO", "bare"], last=3)
    assert again["runs"] == summary["runs"] and again["last_n"] == 3


def test_one_run_defaults_smoothing_and_plots_only_for_logged_metrics(three_runs):
    avsd, _, _ = three_runs
    assert main([str(avsd), "--smooth", "3"]) == 0
    out = avsd / "report"  # default output of a single run
    for name in ["reward.png", "gate.png", "signals.png", "credit.png", "teacher_share.png"]:
        _assert_png(out / name)
    assert not (out / "grpo_signal.png").exists()  # this run never logged grpo/groups_without_signal
    assert not list(out.glob("credit_*"))  # no rollout dumps, no credit view
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["runs"]) == ["avsd_run"]  # label: the directory name
    assert summary["runs"]["avsd_run"]["last_n_mean"]["critic/score/mean"] == statistics.fmean(AVSD_REWARD[-5:])
    assert moving_average([1.0, 2.0, 6.0, 3.0], 3) == [1.0, 1.5, 3.0, 11 / 3]
    assert moving_average([1.0, 2.0], 1) == [1.0, 2.0]


# ---------------------------------------------------------------------------------------------
# Token-credit view


class _Spans(HTMLParser):
    """The token spans of a credit view: (method, position, value, class, style, text)."""

    def __init__(self):
        super().__init__()
        self.spans, self._open = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and "tok" in a.get("class", "").split():
            self._open = {
                "method": a["data-method"],
                "pos": int(a["data-pos"]),
                "value": float(a["data-value"]),
                "class": a["class"].split(),
                "style": a["style"],
                "title": a["title"],
                "text": "",
            }

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None


def _spans(path: Path) -> dict[str, list[dict]]:
    parser = _Spans()
    parser.feed(path.read_text())
    by_method = {}
    for s in parser.spans:
        by_method.setdefault(s["method"], []).append(s)
    return by_method


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory):
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from verl_avsd.toy_run import random_toy_model

    model_dir = random_toy_model(str(tmp_path_factory.mktemp("tiny_model")))
    return model_dir, AutoTokenizer.from_pretrained(model_dir)


VIEWS = ["full", "partial", "answer"]


def _dump_row(ids: list[int], seed: int, reward: float, padding: bool = False, view_mask=(1, 1, 1)) -> dict:
    """A rollout as AvsdTrainer._dump_rollouts writes it: T = len(ids) + 2 positions (2 padding), and
    the advantage the run trained on (its estimator is avsd)."""
    g = torch.Generator().manual_seed(seed)
    T = len(ids) + 2
    logp = (-3 * torch.rand(T, generator=g, dtype=torch.float64) - 0.05).tolist()
    logq = (-3 * torch.rand(3, T, generator=g, dtype=torch.float64) - 0.05).tolist()
    logq[2][1] = None  # a non-finite teacher value, dropped like a missing view
    row = {
        "step": 0,
        "key": "k",
        "is_padding": padding,
        "index": 0,
        "estimator": "avsd",
        "views": VIEWS,
        "reward": reward,
        "response_ids": ids,
        "response_mask": [1] * len(ids) + [0, 0],
        "student_logp": logp,
        "view_logq": logq,
        "view_mask": list(view_mask),
    }
    want = _reference(row)
    return {**row, "advantage": want["avsd"], "gate": want["gate"]}


def _reference(row: dict) -> dict[str, list[float]]:
    """float64 per-method advantages and the gate of one row, from tests/reference.py and OPSD's formula."""
    logq = [[math.nan if x is None else x for x in v] for v in row["view_logq"]]
    ref = avsd_batch_reference([row["student_logp"]], [logq], [row["view_mask"]], [row["response_mask"]])
    partial = VIEWS.index("partial")  # the run's opsd_view (config.yaml below)
    opsd = [q - p if m and math.isfinite(q) else 0.0 for q, p, m in zip(logq[partial], row["student_logp"], row["response_mask"])]
    return {
        "avsd": ref["advantage"][0],
        "opsd": opsd,
        "avsd_consensus": ref["consensus"][0],
        "avsd_arithmetic": ref["arithmetic"][0],
        "gate": ref["gate"][0],
    }


@pytest.fixture
def dumped_run(tmp_path, toy_tokenizer):
    model_dir, tokenizer = toy_tokenizer
    run = tmp_path / "dumped"
    (run / "rollouts").mkdir(parents=True)
    _write_jsonl(run / "metrics.jsonl", [{"step": 1, "critic/score/mean": 0.5}, {"step": 2, "critic/score/mean": 0.25}])
    _config(
        run / "config.yaml",
        "avsd",
        model_dir,
        avsd="  avsd:\n    views: [full, partial, answer]\n    opsd_view: partial\n",
    )
    ids = tokenizer.encode("17 + 25 = 42\nAnswer: 42")
    step1 = [_dump_row(ids, seed=1, reward=0.0, view_mask=(1, 1, 0))]  # this rollout lacks the answer view
    step2 = [
        _dump_row(ids, seed=2, reward=1.0),
        _dump_row(ids, seed=3, reward=0.0, padding=True),
        _dump_row(ids, seed=4, reward=0.0),
    ]
    _write_jsonl(run / "rollouts" / "rollouts_step1.jsonl", step1)
    _write_jsonl(run / "rollouts" / "rollouts_step2.jsonl", step2)
    return run, ids, tokenizer, {1: step1, 2: step2}


def test_credit_view_advantages_colours_and_tokens(dumped_run, tmp_path):
    run, ids, tokenizer, rows = dumped_run
    out = tmp_path / "out"
    assert main([str(run), "--output", str(out)]) == 0
    # default: the first wrong, non-padding rollout of the last dumped step = step 2, line 2
    html_file = out / "credit_2_2.html"
    _assert_png(out / "credit_2_2.png")
    spans = _spans(html_file)
    assert list(spans) == ["avsd", "opsd", "avsd_consensus", "avsd_arithmetic", "gate"]
    want = _reference(rows[2][2])
    positions = list(range(len(ids)))  # the two padding positions are not shown
    signs = set()
    for method, method_spans in spans.items():
        assert [s["pos"] for s in method_spans] == positions, method
        got = [s["value"] for s in method_spans]
        assert got == pytest.approx([want[method][t] for t in positions], abs=2e-6), method
        if method == "gate":
            continue
        for s in method_spans:
            if s["value"] > 0:
                assert "pos" in s["class"] and s["style"].startswith("background-color: rgba(33, 102, 172,"), s
            elif s["value"] < 0:
                assert "neg" in s["class"] and s["style"].startswith("background-color: rgba(178, 24, 43,"), s
            signs.add(math.copysign(1, s["value"]) if s["value"] else 0)
            assert f"gate {want['gate'][s['pos']]:.4f}" in s["title"]
    assert {1, -1} <= signs  # the row exercises both colours
    # intensity: |advantage| over the largest |advantage| of all methods
    scale = max(abs(want[m][t]) for m in ("avsd", "opsd", "avsd_consensus", "avsd_arithmetic") for t in positions)
    for s in spans["avsd_arithmetic"]:
        alpha = float(s["style"].rsplit(",", 1)[1].rstrip(")"))
        assert alpha == pytest.approx(abs(want["avsd_arithmetic"][s["pos"]]) / scale, abs=1e-3)
    # the token with a dropped (None) answer view is averaged over the two others
    assert want["avsd_consensus"][1] == pytest.approx(
        statistics.fmean(rows[2][2]["view_logq"][m][1] - rows[2][2]["student_logp"][1] for m in (0, 1))
    )
    # tokens decoded with the run's tokenizer (config.yaml model path), one span per token
    texts = [s["text"] for s in spans["avsd"]]
    assert texts == [tokenizer.decode([i]).replace("\n", "\u21b5") for i in ids]
    assert "".join(texts).replace("\u21b5", "\n") == "17 + 25 = 42\nAnswer: 42"
    assert "tokens decoded with the tokenizer at" in html_file.read_text()
    # the recomputation is checked against the advantage the run trained on (the dump's)
    difference = re.search(r"max \|difference\| (\d(?:[0-9.e+-]*\d)?)", html_file.read_text())
    assert difference and float(difference.group(1)) < 1e-5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["credit_views"][0]["html"] == "credit_2_2.html" and summary["credit_views"][0]["step"] == 2


def test_credit_view_of_a_chosen_rollout_and_the_tokenizer_fallback(dumped_run, tmp_path, capsys):
    run, ids, _, rows = dumped_run
    out = tmp_path / "out"
    assert main([str(run), "--output", str(out), "--rollout", "1:0", "--tokenizer", str(tmp_path / "no_tokenizer")]) == 0
    spans = _spans(out / "credit_1_0.html")
    want = _reference(rows[1][0])
    for method in ("avsd", "opsd", "avsd_consensus", "avsd_arithmetic", "gate"):
        assert [s["value"] for s in spans[method]] == pytest.approx(want[method][: len(ids)], abs=2e-6), method
    assert [s["text"] for s in spans["avsd"]] == [str(i) for i in ids]  # ids, since no tokenizer loads
    assert "could not be loaded" in (out / "credit_1_0.html").read_text()
    assert "could not be loaded" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Errors name the file, line, field or what exists


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_errors_for_missing_and_malformed_metrics(tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    err = _error(capsys, [str(empty)])
    assert str(empty) in err and "metrics.jsonl" in err and "verl_metrics.jsonl" in err
    err = _error(capsys, [str(tmp_path / "missing")])
    assert "missing" in err and "does not exist" in err

    bad = tmp_path / "bad_run"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "critic/score/mean": 0.5}\n{"step": 2, "critic/sc\n{"step": 3}\n')
    err = _error(capsys, [str(bad)])
    assert f"{bad / 'metrics.jsonl'}, line 2" in err and "not valid JSON" in err
    # a run still writing: its half-written last line (no newline yet) is skipped, and said so
    (bad / "metrics.jsonl").write_text('{"step": 1, "critic/score/mean": 0.5}\n{"step": 2, "critic/sc')
    assert main([str(bad), "--output", str(tmp_path / "live")]) == 0
    assert "line 2: skipping the incomplete last line" in capsys.readouterr().err
    assert json.loads((tmp_path / "live" / "summary.json").read_text())["runs"]["bad_run"]["steps"] == 1
    (bad / "metrics.jsonl").write_text('{"step": 1}\n{"step": "two", "critic/score/mean": 0.5}\n')
    err = _error(capsys, [str(bad)])
    assert "line 2" in err and "'step'" in err
    (bad / "metrics.jsonl").write_text('{"step": 1, "data": [1, 2]}\n')
    err = _error(capsys, [str(bad)])
    assert "line 1" in err and "'data'" in err

    twin = tmp_path / "other" / "bad_run"  # same directory name as bad_run
    twin.mkdir(parents=True)
    _write_jsonl(twin / "metrics.jsonl", [{"step": 1}])
    (bad / "metrics.jsonl").write_text('{"step": 1}\n')
    assert "--label" in _error(capsys, [str(bad), str(twin)])
    assert "--label" in _error(capsys, [str(bad), str(twin), "--label", "only_one"])


def test_errors_for_bad_rollout_choice_and_dump_rows(dumped_run, tmp_path, capsys):
    run, _, _, rows = dumped_run
    err = _error(capsys, [str(run), "--rollout", "9:0"])
    assert "no dump of step 9" in err and "dumped steps: 1, 2" in err
    err = _error(capsys, [str(run), "--rollout", "2:3"])
    assert "rollouts_step2.jsonl has 3 rollouts, indices 0..2" in err
    err = _error(capsys, [str(run), "--rollout", "last"])
    assert "STEP:INDEX" in err and "'last'" in err

    no_dumps = tmp_path / "no_dumps"
    no_dumps.mkdir()
    _write_jsonl(no_dumps / "metrics.jsonl", [{"step": 1}])
    err = _error(capsys, [str(no_dumps), "--rollout", "1:0"])
    assert str(no_dumps) in err and "dump_rollouts_dir" in err

    broken = dict(rows[1][0])
    del broken["view_logq"]
    _write_jsonl(run / "rollouts" / "rollouts_step1.jsonl", [rows[1][0], broken])
    err = _error(capsys, [str(run), "--rollout", "1:1"])
    assert "rollouts_step1.jsonl, line 2" in err and "view_logq" in err
    short = dict(rows[1][0], student_logp=rows[1][0]["student_logp"][:-1])
    _write_jsonl(run / "rollouts" / "rollouts_step1.jsonl", [short])
    err = _error(capsys, [str(run), "--rollout", "1:0"])
    assert "line 1" in err and "'student_logp'" in err


def test_a_recipe_run_is_read_through_hydras_config_record(tmp_path):
    """Runs started by launch/ recipes have verl's metrics file and hydra's .hydra/config.yaml only."""
    from verl_avsd.run_files import load_run

    run_dir = tmp_path / "math_opsd_qwen3_8b"
    (run_dir / ".hydra").mkdir(parents=True)
    _write_jsonl(run_dir / "verl_metrics.jsonl", [{"step": 1, "data": {"critic/score/mean": 0.25}}])
    _config(run_dir / ".hydra" / "config.yaml", "opsd", model="/models/qwen")
    run = load_run(run_dir)
    assert run.config["algorithm"]["adv_estimator"] == "opsd"
    assert run.config["actor_rollout_ref"]["model"]["path"] == "/models/qwen"
    assert run.metrics[1]["critic/score/mean"] == 0.25
