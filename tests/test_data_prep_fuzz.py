"""Any value in any field of any schema: `prep` exits 0 or 2 (never a traceback); what it writes follows the contract.

Each example replaces, removes or adds a few fields of the fixture rows with values from a list of
troublemakers (wrong types, NaN/inf, lone surrogates, nested junk, JSON-looking text, ...).
A mutation run like this found the "surrogates not allowed" manifest crash and NaN/inf ground truths.
"""

import contextlib
import io
import itertools
import json
import math
import os

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verl_avsd.data_prep.cli import main
from verl_avsd.data_prep.contract import contract_problems

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "prep")
TROUBLE = [
    None, "", " ", 0, -1, 1.5, float("nan"), float("inf"), True, [], {}, [1], {"a": 1}, "\ud800", "\\boxed{",
    "{problem}", [{"input": "1", "output": None}], {"inputs": ["1"], "outputs": [2]}, "```", 10**30, "NaN",
    [{"role": "user"}], {"ground_truth": float("nan")}, {"language": ["x"], "solution": [1]}, "[[[[", "eJw=", "0",
]  # fmt: skip
SCHEMAS = {
    "openthoughts": ("openthoughts_metadata.jsonl", ["math"]),
    "dapo": ("dapo_math.jsonl", ["math", "--format", "dapo"]),
    "codeforces": ("codeforces_problems.jsonl", ["code", "--solutions", f"{FIXTURES}/codeforces_submissions.jsonl"]),
    "livecodebench": ("livecodebench.jsonl", None),  # as the --eval set of a code run
}
RUNS = itertools.count()


def fixture_rows(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return [json.loads(line) for line in handle]


mutation = st.tuples(
    st.integers(min_value=0, max_value=50),  # which row
    st.integers(min_value=0, max_value=50),  # which field
    st.sampled_from(["set", "remove", "add"]),
    st.sampled_from(TROUBLE),
)


def mutated(rows, mutations):
    rows = [dict(row) for row in rows]
    for row_index, field_index, action, value in mutations:
        row = rows[row_index % len(rows)]
        key = sorted(row)[field_index % len(row)] if row else "x"
        if action == "set":
            row[key] = value
        elif action == "remove":
            row.pop(key, None)
        else:
            row[key + "\udcff"] = value  # a key holding a byte that is not UTF-8
    return rows


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    schema=st.sampled_from(sorted(SCHEMAS)),
    mutations=st.lists(mutation, min_size=1, max_size=4),
    skip_bad_rows=st.booleans(),
)
def test_any_field_value_gives_a_clear_error_or_contract_rows(tmp_path, schema, mutations, skip_bad_rows):
    folder = tmp_path / f"run{next(RUNS)}"
    folder.mkdir()
    name, argv = SCHEMAS[schema]
    path = str(folder / "rows.jsonl")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as handle:
        for row in mutated(fixture_rows(name), mutations):
            handle.write(json.dumps(row) + "\n")
    if argv is None:  # the mutated rows are a LiveCodeBench eval set of a clean code run
        argv = [*SCHEMAS["codeforces"][1][:1], f"{FIXTURES}/codeforces_problems.jsonl", *SCHEMAS["codeforces"][1][1:]]
        argv += ["--eval", f"lcb={path}"]
    else:
        argv = [argv[0], path, *argv[1:]]
    out = str(folder / "out")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv, "--out", out, "--quiet", *(["--skip-bad-rows"] if skip_bad_rows else [])])
    assert code in (0, 2)
    if code == 2:
        assert f"error: {FIXTURES}" in stderr.getvalue() or f"error: {path}" in stderr.getvalue(), stderr.getvalue()
        return
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    for entry in manifest["outputs"]:
        for row in pq.read_table(os.path.join(out, entry["path"])).to_pylist():
            assert contract_problems(row) == []
            assert row["reward_model"]["ground_truth"].lower() not in ("nan", "inf", "-inf", "none")
            extra_info = row["extra_info"]
            if extra_info["time_limit_s"] is not None:
                assert 0 < extra_info["time_limit_s"] <= 600 and 16 <= extra_info["memory_mb"] <= 65536
                assert math.isfinite(extra_info["time_limit_s"])
