"""Output folders: no command deletes a folder it did not make (issue 13: `verl-avsd demo --output .`
deleted the current directory). Each case plants a user's file and checks it survives, byte for byte."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from verl_avsd import demo, report
from verl_avsd.eval_checkpoint import MERGED_FOLDER, ModelPathError, merged_hf_folder
from verl_avsd.output_dir import MARKER, OutputDirError, claim_output_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_training(monkeypatch):
    """The demo must stop before any training; if a guard broke, fail fast instead of training."""

    def refuse(*args, **kwargs):
        raise AssertionError("the demo went on to write data / train")

    monkeypatch.setattr(demo, "toy_data", refuse)
    monkeypatch.setattr(demo, "run_main_ppo", refuse)


def _user_folder(path: Path) -> dict[str, bytes]:
    """A folder a user owns: a file, and a `data/` folder (a name the demo also writes)."""
    (path / "data").mkdir(parents=True)
    (path / "notes.txt").write_bytes(b"my notes\n")
    (path / "data" / "mine.csv").write_bytes(b"a,b\n1,2\n")
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_demo_refuses_the_current_directory_and_deletes_nothing(tmp_path, monkeypatch, capsys, no_training):
    before = _user_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--output", "."]) == 2
    err = capsys.readouterr().err
    assert "is not empty and was not made by verl-avsd demo" in err and "notes.txt" in err and "--overwrite" in err
    assert _files(tmp_path) == before


def test_demo_overwrite_into_a_foreign_folder_deletes_nothing(tmp_path, no_training):
    before = _user_folder(tmp_path)
    with pytest.raises(AssertionError, match="went on to write data"):  # it proceeds to the run ...
        demo.main(["--output", str(tmp_path), "--overwrite"])
    assert _files(tmp_path) == before  # ... with every file of the user still there
    assert not (tmp_path / MARKER).exists()  # and does not claim the folder as its own


def test_demo_overwrite_replaces_only_its_own_previous_run(tmp_path, capsys, no_training):
    out = claim_output_dir(tmp_path / "run", "verl-avsd demo", demo.DEMO_OUTPUTS)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "checkpoints" / "global_step_1").mkdir(parents=True)
    (out / "notes.txt").write_text("kept")  # a user's file in a demo folder
    assert demo.main(["--output", str(out)]) == 2  # a previous run is not replaced without --overwrite
    assert "holds a previous output of verl-avsd demo" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="went on to write data"):
        demo.main(["--output", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "notes.txt"]


def test_demo_output_that_is_a_file(tmp_path, capsys, no_training):
    (tmp_path / "f").write_text("x")
    assert demo.main(["--output", str(tmp_path / "f")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "x"


def _toy_study():
    spec = importlib.util.spec_from_file_location("toy_study_under_test", ROOT / "bench" / "toy_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toy_study_refuses_a_foreign_out_and_a_foreign_run_folder(tmp_path):
    study = _toy_study()
    before = _user_folder(tmp_path / "mine")
    with pytest.raises(SystemExit, match="not made by toy study"):
        study.main(["--out", str(tmp_path / "mine"), "--methods", "avsd", "--seeds", "0", "--steps", "1", "--no-sweep"])
    assert _files(tmp_path / "mine") == before

    # an interrupted run folder is started over only if the study made it
    run_dir = tmp_path / "study" / "runs" / "avsd_s0"
    _user_folder(run_dir)
    with pytest.raises(SystemExit, match="toy_study: error: .*avsd_s0 holds files the toy study did not write"):
        study.main(["--out", str(tmp_path / "study"), "--methods", "avsd", "--seeds", "0", "--steps", "1", "--no-sweep"])
    assert (run_dir / "notes.txt").read_bytes() == b"my notes\n"
    args = study.parse_args(["--out", str(tmp_path / "study")])
    with pytest.raises(OutputDirError, match="did not write"):
        study.run_one("avsd_s0", "avsd", 0, ("full",), args, {"train": "x", "val": "y"})
    assert (run_dir / "notes.txt").read_bytes() == b"my notes\n"


def test_toy_study_starts_its_own_interrupted_run_over(tmp_path, monkeypatch):
    study = _toy_study()
    run_dir = claim_output_dir(tmp_path / "runs" / "avsd_s0", study.RUN_COMMAND, study.RUN_OUTPUTS)
    (run_dir / "verl_metrics.jsonl").write_text('{"step": 1, "data": {}}\n')
    (run_dir / "rollouts").mkdir()

    def stop(overrides, run_dir, timeout_s):
        raise RuntimeError("stop before training")

    monkeypatch.setattr(study, "run_main_ppo", stop)
    with pytest.raises(RuntimeError, match="stop before training"):
        study.run_one("avsd_s0", "avsd", 0, ("full",), study.parse_args(["--out", str(tmp_path)]), {"train": "x", "val": "y"})
    assert [p.name for p in run_dir.iterdir()] == [MARKER]  # the old run's files are gone, the folder kept


def _run_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "critic/score/mean": 0.1 * s}) + "\n" for s in (1, 2)))
    return path


def test_report_refuses_a_foreign_output_folder(tmp_path, capsys):
    run = _run_dir(tmp_path / "run")
    before = _user_folder(tmp_path / "mine")
    (tmp_path / "mine" / "summary.md").write_bytes(b"my own summary\n")
    before["summary.md"] = b"my own summary\n"
    assert report.main([str(run), "--output", str(tmp_path / "mine")]) == 2
    assert "not made by verl-avsd report" in capsys.readouterr().err
    assert _files(tmp_path / "mine") == before
    # a previous report folder is written over, as a re-run expects
    assert report.main([str(run)]) == 0 and report.main([str(run)]) == 0
    # with --overwrite the report writes into the foreign folder, deleting nothing
    assert report.main([str(run), "--output", str(tmp_path / "mine"), "--overwrite"]) == 0
    after = _files(tmp_path / "mine")
    assert all(after[name] == data for name, data in before.items() if name != "summary.md")


def test_eval_never_deletes_a_merged_folder_it_did_not_write(tmp_path):
    actor = tmp_path / "global_step_1" / "actor"
    actor.mkdir(parents=True)
    mine = actor.parent / MERGED_FOLDER
    before = _user_folder(mine)
    with pytest.raises(ModelPathError, match="was not written by verl-avsd eval"):
        merged_hf_folder(actor)
    assert _files(mine) == before
