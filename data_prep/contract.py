"""The parquet row contract that verl's data loader, the rewards and the teacher worker read.

One arrow schema for every file data prep writes (math and code, train, validation and
eval), so files can be mixed in one run. Columns:

- `data_source` (str): `math/<dataset>` or `code/<dataset>`; verl groups validation metrics by it
  and the reward function routes on the `math/` / `code/` prefix.
- `prompt` (list of {role, content}): the student's chat messages. Never contains view text.
- `ability` (str): `math` or `code`.
- `reward_model` ({style, ground_truth}): style `rule`; ground_truth is the final answer (math)
  or a JSON string `{"inputs": [...], "outputs": [...]}` of the hidden tests (code; plus
  `"fn_name"` for call-based LiveCodeBench problems).
- `extra_info` (struct):
  - `index` (int): position of the row in its file; `split`: train | validation | eval.
  - `problem_id`, `problem` (the raw problem text, no instructions), `source` (input dataset).
  - `views` (list of {name, text}): the privileged views in contract order
    (math: full, partial, answer; code: reference, hint). A view a row lacks is absent; the
    run config's `algorithm.avsd.views` fixes which names are used and in which order.
  - code only: `public_tests` (JSON like the hidden tests: the statement's examples, the only
    tests the per-rollout `feedback` view may run), `time_limit_s`, `memory_mb`, `language`.
    The `feedback` view is not stored: the trainer builds it per rollout from `public_tests`.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

MATH_ABILITY = "math"
CODE_ABILITY = "code"
KNOWN_VIEW_NAMES = {"math": ("full", "partial", "answer"), "code": ("reference", "hint", "feedback")}
SPLITS = ("train", "validation", "eval")

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
VIEW = pa.struct([("name", pa.string()), ("text", pa.string())])
REWARD_MODEL = pa.struct([("style", pa.string()), ("ground_truth", pa.string())])
EXTRA_INFO = pa.struct(
    [
        ("index", pa.int64()),
        ("split", pa.string()),
        ("problem_id", pa.string()),
        ("problem", pa.string()),
        ("source", pa.string()),
        ("views", pa.list_(VIEW)),
        ("public_tests", pa.string()),
        ("time_limit_s", pa.float64()),
        ("memory_mb", pa.float64()),
        ("language", pa.string()),
    ]
)
ROW_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("ability", pa.string()),
        ("reward_model", REWARD_MODEL),
        ("extra_info", EXTRA_INFO),
    ]
)

# A view shorter than this may match prompt text by chance (an answer "2"), so it is not checked.
MIN_CHECKED_VIEW_CHARS = 16


def text_id(text: str) -> str:
    """The problem_id of a row whose dataset gives none: the first 16 hex digits of the problem's sha1."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def chat_prompt(user_text: str, system_prompt: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user_text})
    return messages


def make_row(
    *,
    data_source: str,
    ability: str,
    prompt: list[dict],
    ground_truth: str,
    problem: str,
    problem_id: str,
    source: str,
    views: list[dict],
    public_tests: str | None = None,
    time_limit_s: float | None = None,
    memory_mb: float | None = None,
    language: str | None = None,
) -> dict:
    """A row in the contract; `index` and `split` are set when the output files are laid out."""
    return {
        "data_source": data_source,
        "prompt": prompt,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "index": None,
            "split": None,
            "problem_id": problem_id,
            "problem": problem,
            "source": source,
            "views": views,
            "public_tests": public_tests,
            "time_limit_s": time_limit_s,
            "memory_mb": memory_mb,
            "language": language,
        },
    }


def tests_json(inputs: list[str], outputs: list[str], fn_name: str | None = None) -> str:
    """The JSON string format of a test set (hidden tests and public tests alike)."""
    tests: dict = {"inputs": list(inputs), "outputs": list(outputs)}
    if fn_name:
        tests["fn_name"] = fn_name
    return json.dumps(tests, ensure_ascii=False)


def views_in_prompt(prompt: list[dict], views: list[dict]) -> list[str]:
    """Names of the views whose text (16+ characters) the student's messages already contain.

    Such a row is useless for self-distillation (the "privileged" view is in the prompt) and
    breaks the contract; the pipelines drop it as `view_in_prompt` (e.g. a proof problem whose
    boxed answer is the statement itself).
    """
    prompt_text = "\n".join(str(message.get("content", "")) for message in prompt if isinstance(message, dict))
    names = []
    for view in views:
        text = view.get("text") if isinstance(view, dict) else None
        if isinstance(text, str) and len(text.strip()) >= MIN_CHECKED_VIEW_CHARS and text.strip() in prompt_text:
            names.append(view.get("name"))
    return names


def contract_problems(row) -> list[str]:
    """What is wrong with a row, as readable sentences; [] for a row that follows the contract.

    Any value is accepted (`prep inspect` runs this on files written by other tools): a field of
    the wrong type is reported, never raised on.
    """
    if not isinstance(row, dict):
        return [f"the row is a {type(row).__name__}, not a struct"]
    problems = []
    ability = row.get("ability")
    if not isinstance(ability, str) or ability not in KNOWN_VIEW_NAMES:
        problems.append(f"ability {ability!r} is not one of {sorted(KNOWN_VIEW_NAMES)}")
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt or any(not isinstance(m, dict) for m in prompt):
        problems.append("prompt is not a non-empty list of chat messages")
        prompt = []
    extra_info = row.get("extra_info")
    if extra_info is not None and not isinstance(extra_info, dict):
        problems.append(f"extra_info is a {type(extra_info).__name__}, not a struct")
    extra_info = extra_info if isinstance(extra_info, dict) else {}
    views = extra_info.get("views") or []
    if not isinstance(views, list) or any(not isinstance(view, dict) for view in views):
        problems.append("extra_info.views is not a list of {name, text} structs")
        views = [view for view in views if isinstance(view, dict)] if isinstance(views, list) else []
    names = [view.get("name") for view in views]
    if len(set(map(str, names))) != len(names):
        problems.append(f"view names repeat: {names}")
    allowed = KNOWN_VIEW_NAMES.get(ability, ()) if isinstance(ability, str) else ()
    for view in views:
        name, text = view.get("name"), view.get("text")
        if name not in allowed:
            problems.append(f"view {name!r} is not a {ability} view ({', '.join(allowed)})")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"view {name!r} is empty")
    for name in views_in_prompt(prompt, views):
        problems.append(f"the student prompt contains the text of view {name!r}")
    if extra_info.get("split") not in SPLITS:
        problems.append(f"extra_info.split {extra_info.get('split')!r} is not one of {SPLITS}")
    reward_model = row.get("reward_model")
    ground_truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        problems.append("reward_model.ground_truth is empty")
    return problems
