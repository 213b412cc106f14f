"""The two teacher-side options that reproduce the AVSD authors' code (off by default):
`algorithm.avsd.teacher_chat_template_kwargs` (their teacher thinks, their student does not) and
`algorithm.avsd.view_template: privileged_reference` (their teacher message, word for word)."""

import pytest

from verl_avsd.config import AvsdConfigError, avsd_config
from verl_avsd.toy.tiny_model import build_tokenizer
from verl_avsd.view_presets import VIEW_TEMPLATE_PRESETS
from verl_avsd.workers.teacher_context import ViewDataError, build_teacher_contexts, teacher_messages


def their_teacher_message(problem: str, payload: str, view_type: str) -> str:
    """The authors' math teacher message, quoted from duykhuongnguyen/AVSD@3233099
    src/avsd/math/privileged_views.py (build_teacher_user_message); what the preset must give."""
    return (
        f"Problem: {problem}\n\n"
        "Here is training-time reference information for this problem. It may contain a final answer, a hint, a partial solution, or a full solution to the problem.\n"
        f"=== Privileged Reference ({view_type}) Begin ===\n"
        f"{payload}\n"
        f"=== Privileged Reference ({view_type}) End ===\n\n"
        "Use the reference only as hidden guidance. Use it only to understand, verify, or correct your solution.\n"
        "Do not mention, quote, copy, cite, or refer to the privileged reference or its existence.\n"
        "Now solve the original problem independently using your own reasoning.\n"
        "Please reason step by step, and put your final answer within \\boxed{}."
    )


PROBLEM = "Compute {x} when 12 + 30 = x."  # braces in the problem are text, not placeholders
SOLUTION = "12 + 30 = 42.\n\nSo \\boxed{42}."
PARTIAL = "12 + 30 = 42.\n\n[The reference above is incomplete and may omit later steps or the final answer.]"
STUDENT = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": f"Problem: {PROBLEM}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    },
]
ROW = {
    "index": 3,
    "split": "train",
    "problem": PROBLEM,
    "views": [{"name": "full", "text": SOLUTION}, {"name": "partial", "text": PARTIAL}, {"name": "answer", "text": "42"}],
}


@pytest.mark.parametrize(
    "view,text,their_view_type,their_payload",
    [
        ("full", SOLUTION, "full_solution", SOLUTION),
        ("partial", PARTIAL, "partial_solution", PARTIAL),
        ("answer", "42", "answer_only", "Verified final answer: 42"),  # their get_view_payload
    ],
)
def test_preset_renders_the_authors_wording_exactly(view, text, their_view_type, their_payload):
    cfg = avsd_config({"avsd": {"view_template": "privileged_reference"}})
    messages = teacher_messages(STUDENT, view, text + "\n", cfg, problem=PROBLEM)
    assert messages[0] == STUDENT[0]  # the system turn is the student's
    assert messages[1] == {"role": "user", "content": their_teacher_message(PROBLEM, their_payload, their_view_type)}
    assert STUDENT[1]["content"].startswith("Problem: ")  # the student's own turn was not changed


def test_preset_other_views_show_their_own_name():
    cfg = avsd_config({"avsd": {"views": ["full", "sibling"], "view_template": "privileged_reference"}})
    content = teacher_messages(STUDENT, "sibling", "x = 42", cfg, problem=PROBLEM)[-1]["content"]
    assert content == their_teacher_message(PROBLEM, "x = 42", "sibling")


def test_preset_without_the_raw_problem_names_row_and_field():
    tokenizer = build_tokenizer(["Compute 12 + 30."] * 5)
    cfg = avsd_config({"avsd": {"view_template": "privileged_reference"}})
    row = {k: v for k, v in ROW.items() if k != "problem"}
    with pytest.raises(ViewDataError, match=r"train row 3 \[batch position 0\]: field extra_info\.problem is missing"):
        build_teacher_contexts(tokenizer, [STUDENT], [row], cfg)


@pytest.mark.parametrize("name", ["privileged_referense", "authors", "Privileged-Reference"])
def test_unknown_preset_name_is_an_error_naming_the_key_and_the_presets(name):
    with pytest.raises(AvsdConfigError) as e:
        avsd_config({"avsd": {"view_template": name}})
    msg = str(e.value)
    assert f"algorithm.avsd.view_template={name!r} is not a preset" in msg
    assert "presets: privileged_reference" in msg and "{prompt}" in msg


def test_default_template_is_still_a_format_string_and_presets_are_listed():
    assert "{prompt}" in avsd_config({}).view_template
    assert list(VIEW_TEMPLATE_PRESETS) == ["privileged_reference"]


# ---- the teacher's own chat-template arguments ----

# Qwen3's rule in small: thinking off writes an empty think block after the assistant header.
THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def thinking_tokenizer():
    tokenizer = build_tokenizer(["Compute 12 + 30.", "<think>\n\n</think>\n\n", SOLUTION] * 20)
    tokenizer.chat_template = THINKING_TEMPLATE
    return tokenizer


def _ids(tokenizer, messages, **kwargs):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_teacher_kwargs_reach_the_teacher_template_only(thinking_tokenizer):
    tok = thinking_tokenizer
    student_kwargs = {"enable_thinking": False}
    default = avsd_config({"avsd": {"views": ["full"], "opsd_view": "full"}})
    theirs = avsd_config(
        {"avsd": {"views": ["full"], "opsd_view": "full", "teacher_chat_template_kwargs": {"enable_thinking": True}}}
    )
    same = build_teacher_contexts(tok, [STUDENT], [ROW], default, student_kwargs).context_ids[0][0].tolist()
    thinks = build_teacher_contexts(tok, [STUDENT], [ROW], theirs, student_kwargs).context_ids[0][0].tolist()
    assert student_kwargs == {"enable_thinking": False}  # the student's arguments are not changed

    view_turn = teacher_messages(STUDENT, "full", SOLUTION, default)
    assert same == _ids(tok, view_turn, enable_thinking=False)  # null: the student's arguments (today)
    assert thinks == _ids(tok, view_turn, enable_thinking=True)  # theirs: the teacher thinks
    assert same != thinks and tok.decode(same).endswith("<think>\n\n</think>\n\n")
    assert not tok.decode(thinks).endswith("</think>\n\n")
    # the student's prompt (verl renders it from data.apply_chat_template_kwargs) keeps thinking off
    assert tok.decode(_ids(tok, STUDENT, **student_kwargs)).endswith("<think>\n\n</think>\n\n")


@pytest.mark.parametrize(
    "value,match",
    [
        ("enable_thinking=true", "must be a mapping"),
        ([True], "must be a mapping"),
        ({"tokenize": True}, "tokenize"),
        ({"add_generation_prompt": False}, "add_generation_prompt"),
    ],
)
def test_bad_teacher_kwargs_are_errors_naming_the_key(value, match):
    with pytest.raises(AvsdConfigError, match=r"algorithm\.avsd\.teacher_chat_template_kwargs.*" + match):
        avsd_config({"avsd": {"teacher_chat_template_kwargs": value}})


def test_teacher_kwargs_default_is_null():
    assert avsd_config({}).teacher_chat_template_kwargs is None


def test_options_survive_the_worker_transport(thinking_tokenizer):
    """The trainer hands the worker `to_dict()` (plain data); the worker's AvsdConfig.from_dict
    builds the same contexts (in the e2e run by hand: teacher log-probs equal to 7e-7)."""
    from verl_avsd.config import AvsdConfig

    cfg = avsd_config(
        {"avsd": {"view_template": "privileged_reference", "teacher_chat_template_kwargs": {"enable_thinking": True}}}
    )
    moved = AvsdConfig.from_dict(cfg.to_dict())
    assert moved.to_dict()["teacher_chat_template_kwargs"] == {"enable_thinking": True}
    here = build_teacher_contexts(thinking_tokenizer, [STUDENT], [ROW], cfg, {"enable_thinking": False})
    there = build_teacher_contexts(thinking_tokenizer, [STUDENT], [ROW], moved, {"enable_thinking": False})
    assert [[c.tolist() for c in row] for row in here.context_ids] == [[c.tolist() for c in row] for row in there.context_ids]
    assert thinking_tokenizer.decode(there.context_ids[0][2]) == (  # thinking on: no empty think block
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        + their_teacher_message(PROBLEM, "Verified final answer: 42", "answer_only")
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
