"""Careless options and output folders: errors that name the option or `--out`, and inputs never overwritten.

Found by an attack run over every CLI option (issue 13): before the fixes these raised
KeyError/NotADirectoryError/OverflowError tracebacks, overwrote the input file, left a
truncated manifest ("surrogates not allowed"), or ran and wrote surprising files.
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_avsd.data_prep.cli import main

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "prep")
OPENTHOUGHTS_FILE = os.path.join(FIXTURES, "openthoughts_metadata.jsonl")
CODEFORCES_FILE = os.path.join(FIXTURES, "codeforces_problems.jsonl")
SUBMISSIONS_FILE = os.path.join(FIXTURES, "codeforces_submissions.jsonl")
AIME_FILE = os.path.join(FIXTURES, "aime2024.jsonl")


def openthoughts_rows():
    with open(OPENTHOUGHTS_FILE) as handle:
        return [json.loads(line) for line in handle]


def run(argv, capsys):
    """(exit status, stderr) of `prep ARGV --quiet`."""
    capsys.readouterr()
    code = main([*argv, "--quiet"] if argv[0] in ("math", "code") else argv)
    return code, capsys.readouterr().err


def manifest_of(out):
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as handle:
        return json.load(handle)


# --- the output folder ------------------------------------------------------------------------


def test_out_that_cannot_be_a_folder(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out, message in (
        (str(a_file), f"--out {a_file}: is a file, not a folder"),
        (str(a_file / "sub"), f"--out {a_file}/sub: {a_file} is a file, so it cannot hold a folder"),
        ("", "--out: the output folder is an empty path"),
        ("/proc/1/no_such_folder", "--out /proc/1/no_such_folder: cannot write there"),
    ):
        for command in (["math", OPENTHOUGHTS_FILE], ["toy", "--n-train", "2", "--n-val", "1"]):
            code, error = run([*command, "--out", out], capsys)
            assert code == 2 and message in error, error
    assert a_file.read_text() == "mine"


def input_in_its_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "train.parquet"
    pq.write_table(pa.Table.from_pylist(openthoughts_rows()), path)
    return str(path)


def setups(tmp_path):
    """(input file, --out) pairs where an output would land on the input."""
    same_folder = input_in_its_folder(tmp_path)
    yield same_folder, os.path.dirname(same_folder), "train.parquet"
    linked_out = tmp_path / "linked_out"
    linked_out.mkdir()
    os.symlink(same_folder, linked_out / "train.parquet")  # an output name that is a symlink to the input
    yield same_folder, str(linked_out), "train.parquet"
    os.link(same_folder, tmp_path / "hard.parquet")
    hard_out = tmp_path / "hard_out"
    hard_out.mkdir()
    os.link(same_folder, hard_out / "validation.parquet")  # a hard link
    yield str(tmp_path / "hard.parquet"), str(hard_out), "validation.parquet"
    os.symlink(os.path.dirname(same_folder), tmp_path / "folder_link")  # --out a symlink to the input's folder
    yield same_folder, str(tmp_path / "folder_link"), "train.parquet"


def test_outputs_never_overwrite_an_input(tmp_path, capsys):
    for path, out, name in setups(tmp_path):
        before = open(path, "rb").read()
        code, error = run(["math", path, "--out", out], capsys)
        assert code == 2 and f"writing {name} would overwrite the input file {path}" in error, error
        assert open(path, "rb").read() == before
    manifest_input = tmp_path / "m" / "manifest.json"
    manifest_input.parent.mkdir()
    manifest_input.write_text(json.dumps(openthoughts_rows()))
    code, error = run(["math", str(manifest_input), "--out", str(manifest_input.parent)], capsys)
    assert code == 2 and "writing manifest.json would overwrite the input file" in error
    eval_out = tmp_path / "e"
    eval_out.mkdir()
    eval_file = eval_out / "eval_aime.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "1+1?", "answer": "2"}]), eval_file)
    code, error = run(["math", OPENTHOUGHTS_FILE, "--eval", f"aime={eval_file}", "--out", str(eval_out)], capsys)
    assert code == 2 and "writing eval_aime.parquet would overwrite the input file" in error


def test_manifest_survives_text_that_is_not_utf8(tmp_path, capsys):
    """A non-UTF-8 file name and a non-UTF-8 key in a bad row used to crash the manifest half-written."""
    folder = tmp_path / os.fsdecode(b"in\xff")
    folder.mkdir()
    rows = openthoughts_rows()
    bad_key = json.dumps(rows[1]).encode().replace(b'"ground_truth_solution"', b'"ground_truth_solution\xff"')
    path = os.path.join(str(folder), "rows.jsonl")
    with open(path, "wb") as handle:
        handle.write(json.dumps(rows[0]).encode() + b"\n" + bad_key + b"\n")
    out = str(tmp_path / "o")
    code, _ = run(["math", path, "--out", out, "--skip-bad-rows"], capsys)
    assert code == 0
    manifest = manifest_of(out)  # valid JSON, written whole
    assert manifest["summary"]["train"]["dropped"] == {"bad_row": 1}
    assert "in\\udcff" in manifest["summary"]["train"]["bad_rows_first"][0]
    assert "ground_truth_solution\\udcff" in manifest["summary"]["train"]["bad_rows_first"][0]
    assert manifest["inputs"][0]["path"] == os.path.abspath(path)  # the JSON escape reads back as the name
    assert sorted(os.listdir(out)) == ["manifest.json", "train.parquet"]  # no temporary files left


def test_outputs_of_an_earlier_run_are_removed(tmp_path, capsys):
    out = tmp_path / "o"
    code, _ = run(["math", OPENTHOUGHTS_FILE, "--eval", f"aime={AIME_FILE}", "--out", str(out)], capsys)
    assert code == 0 and {"validation.parquet", "eval_aime.parquet"} <= set(os.listdir(out))
    (out / "notes.txt").write_text("mine")
    code, _ = run(["math", OPENTHOUGHTS_FILE, "--val-size", "0", "--out", str(out)], capsys)
    assert code == 0
    assert sorted(os.listdir(out)) == ["manifest.json", "notes.txt", "train.parquet"]
    assert [entry["path"] for entry in manifest_of(out)["outputs"]] == ["train.parquet"]
    # a manifest naming files outside the folder (or not ours) never makes prep delete them
    (tmp_path / "victim.parquet").write_text("x")
    (out / "manifest.json").write_text(json.dumps({"outputs": [{"path": "../victim.parquet"}, {"path": "notes.txt"}]}))
    code, _ = run(["math", OPENTHOUGHTS_FILE, "--out", str(out)], capsys)
    assert code == 0 and (tmp_path / "victim.parquet").exists() and (out / "notes.txt").exists()
    # the toy task into a math folder: the math run's eval set goes with its manifest
    code, _ = run(["math", OPENTHOUGHTS_FILE, "--eval", f"aime={AIME_FILE}", "--out", str(out)], capsys)
    assert code == 0 and (out / "eval_aime.parquet").exists()
    code, _ = run(["toy", "--n-train", "4", "--n-val", "2", "--out", str(out)], capsys)
    assert code == 0
    assert sorted(os.listdir(out)) == ["manifest.json", "notes.txt", "train.parquet", "validation.parquet"]

    # an earlier eval output read back as an input under another name is an input, not stale
    code, _ = run(["math", OPENTHOUGHTS_FILE, "--eval", f"aime={AIME_FILE}", "--out", str(out)], capsys)
    eval_output = str(out / "eval_aime.parquet")
    code, _ = run(["math", OPENTHOUGHTS_FILE, "--eval", f"again={eval_output}", "--out", str(out)], capsys)
    assert code == 0 and os.path.exists(eval_output) and os.path.exists(out / "eval_again.parquet")


def test_an_output_name_taken_by_a_folder(tmp_path, capsys):
    (tmp_path / "o" / "validation.parquet").mkdir(parents=True)
    code, error = run(["math", OPENTHOUGHTS_FILE, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "validation.parquet is a folder; data prep writes a file there" in error


# --- options ---------------------------------------------------------------------------------

MATH = ["math", OPENTHOUGHTS_FILE]
CODE = ["code", CODEFORCES_FILE, "--solutions", SUBMISSIONS_FILE]
TOY = ["toy", "--n-train", "4", "--n-val", "2"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*MATH, "--val-size", "inf"], "--val-size must be a finite number >= 0, got inf"),
        ([*MATH, "--val-size", "nan"], "--val-size must be a finite number >= 0, got nan"),
        ([*MATH, "--prompt-template", "{problem} {x}"], "--prompt-template: unknown placeholder {x} (known:"),
        ([*MATH, "--prompt-template", "{problem} {0}"], "--prompt-template: unknown placeholder {0}"),
        ([*MATH, "--prompt-template", "{problem.__class__}"], "unknown placeholder {problem.__class__}"),
        ([*MATH, "--prompt-template", "{problem} {"], "--prompt-template: Single '{' encountered"),
        ([*MATH, "--prompt-template", "{problem:d}"], "--prompt-template: cannot be filled in"),
        ([*CODE, "--prompt-template", "{problem} {starter}"], "known: {problem}, {language}, {language_name}"),
        ([*MATH, "--limit", "-1"], "--limit must be at least 1, got -1"),
        ([*MATH, "--limit", "0"], "--limit must be at least 1, got 0"),
        ([*MATH, "--max-view-tokens", "0"], "--max-view-tokens must be at least 1, got 0"),
        ([*MATH, "--eval", f"a={AIME_FILE}", "--eval", f"a={AIME_FILE}"], "--eval a is given twice"),
        ([*MATH, "--tokenizer", FIXTURES, "--max-problem-tokens", "9"], f"--tokenizer {FIXTURES}: cannot load"),
        ([*CODE, "--language", "brainfuck"], "argument --language: invalid choice: 'brainfuck'"),
        ([*CODE, "--max-hidden-tests", "0"], "--max-hidden-tests must be at least 1, got 0"),
        ([*CODE, "--max-hidden-tests", "-1"], "--max-hidden-tests must be at least 1, got -1"),
        ([*CODE, "--default-time-limit", "1e30"], "--default-time-limit: time limit must be in (0, 600] seconds"),
        ([*CODE, "--default-time-limit", "nan"], "--default-time-limit: time limit must be in (0, 600] seconds"),
        ([*CODE, "--default-memory-mb", "1"], "--default-memory-mb: memory limit must be in [16, 65536] MB, got 1"),
        ([*CODE, "--format", "generic", "--public-tests-key", "tests"], "--tests-key 'tests' is also --public-tests"),
        ([*CODE, "--format", "generic", "--reference-key", "problem"], "--reference-key 'problem' is also --problem"),
        ([*MATH, "--format", "generic", "--answer-key", "problem"], "--answer-key 'problem' is also --problem-key"),
        ([*MATH, "--name", os.fsdecode(b"x\xff")], "--name: not valid UTF-8 text"),
        ([*MATH, "--name", " "], "--name is empty"),
        ([*MATH, "--prompt-template", ""], "--prompt-template must contain {problem}"),
        ([*MATH, "--system-prompt", os.fsdecode(b"x\xff")], "--system-prompt: not valid UTF-8 text"),
        ([*MATH, "--eval", f"a={FIXTURES}"], f"{FIXTURES}: is a folder, not a file"),
        ([*TOY, "--n-train", "-5"], "--n-train must be at least 1, got -5"),
        ([*TOY, "--n-val", "0"], "--n-val must be at least 1, got 0"),
        ([*TOY, "--num-steps", "0"], "--num-steps must be at least 2, got 0"),
        ([*TOY, "--n-train", str(10**12)], "--n-train must be at most 10000000"),
        ([*TOY, "--max-operand", "-3"], "--max-operand must be at least 2, got -3"),
    ],
)
def test_bad_option_values_exit_2_naming_the_option_before_writing(tmp_path, capsys, argv, message):
    out = str(tmp_path / "o")
    code, error = run([*argv, "--out", out], capsys)
    assert code == 2 and message in error, error
    assert not os.path.exists(os.path.join(out, "manifest.json"))


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_reports_rows_of_any_shape(tmp_path, capsys):
    path = str(tmp_path / "other_tool.parquet")
    rows = [{"prompt": ["hi"], "extra_info": {"views": ["a"]}, "reward_model": "x"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    code, _ = run(["inspect", path], capsys)
    assert code == 0
    path = str(tmp_path / "string_extra_info.parquet")
    pq.write_table(pa.Table.from_pylist([{"data_source": "a", "prompt": "hi", "extra_info": "{}"}]), path)
    capsys.readouterr()
    assert main(["inspect", path]) == 0
    printed = capsys.readouterr().out
    assert "rows breaking the row contract: 1" in printed and "extra_info is a str, not a struct" in printed


def test_inspect_bad_files_and_options(tmp_path, capsys):
    out = str(tmp_path / "toy")
    assert main(["toy", "--out", out, "--n-train", "60", "--n-val", "2"]) == 0
    path = os.path.join(out, "train.parquet")
    for option in (["--rows", "-1"], ["--max-chars", "0"]):
        code, error = run(["inspect", path, *option], capsys)
        assert code == 2 and f"{option[0]} must be at least" in error
    code, error = run(["inspect", out], capsys)
    assert code == 2 and f"{out}: is a folder, not a file" in error
    data = bytearray(open(path, "rb").read())
    data[8 : len(data) // 2] = b"\x55" * (len(data) // 2 - 8)  # pages destroyed, footer intact
    open(path, "wb").write(bytes(data))
    code, error = run(["inspect", path], capsys)
    assert code == 2 and f"{path}: cannot read rows from row 0 on (corrupt file?)" in error


def test_a_planted_temporary_symlink_is_never_written_through(tmp_path, capsys, monkeypatch):
    from verl_avsd.data_prep import output

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "o"
    out.mkdir()
    os.symlink(victim, out / "train.parquet")  # an output name linked to a file that is not an input
    code, _ = run(["math", OPENTHOUGHTS_FILE, "--out", str(out)], capsys)
    assert code == 0 and victim.read_text() == "precious" and not os.path.islink(out / "train.parquet")
    monkeypatch.setattr(output.secrets, "token_hex", lambda _: "guessed")
    os.symlink(victim, out / ".train.parquet.guessed.tmp")
    code, error = run(["math", OPENTHOUGHTS_FILE, "--out", str(out)], capsys)
    assert code == 2 and "File exists" in error and victim.read_text() == "precious"


def test_an_input_that_is_not_a_regular_file(tmp_path, capsys):
    fifo = str(tmp_path / "rows.jsonl")
    os.mkfifo(fifo)
    code, error = run(["math", fifo, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and f"{fifo}: is not a regular file" in error
