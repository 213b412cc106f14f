r"""Named `algorithm.avsd.view_template` presets: a teacher wording given by name instead of a
python format string.

`view_template` is either a format string (it must hold `{prompt}` and `{view}`, so it always has
a brace) or a preset name (a bare identifier: letters, digits, `_` or `-`, no brace and no space).
An identifier that is not a preset is an error naming the key and listing the presets; a typo
never falls through to be shown to the teacher as literal text.

A preset writes the teacher's whole user turn itself from the row's raw problem
(`extra_info.problem`, which `verl-avsd prep` stores), the view's name and its text; the
student's own user turn is not reused, since the wording it reproduces is built that way.

Presets:
- `privileged_reference`: the AVSD authors' math teacher message (duykhuongnguyen/AVSD@3233099,
  src/avsd/math/privileged_views.py, build_teacher_user_message and get_view_payload): the
  problem, then the view between `=== Privileged Reference (<type>) Begin/End ===` lines with
  their view types (full_solution, partial_solution, answer_only), the answer view written
  `Verified final answer: <answer>`, then their instructions. Their student prompt is
  `Problem: {problem}\n\nPlease reason step by step, and put your final answer within \boxed{}.`
  (`verl-avsd prep math --prompt-template` sets ours to match).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

KEY = "algorithm.avsd.view_template"
_PRESET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ViewTemplatePreset:
    """A teacher user turn written from the problem and one view.

    template: str.format text with {problem}, {view_label} and {view_text};
    view_labels: view name -> the label shown for it (other views: their name);
    view_texts: view name -> str.format text with {view} for how the view's text is shown
    (other views: the text as it is). The view's text is stripped first."""

    template: str
    view_labels: dict[str, str] = field(default_factory=dict)
    view_texts: dict[str, str] = field(default_factory=dict)

    def render(self, *, problem: str, view_name: str, view_text: str) -> str:
        text = self.view_texts.get(view_name, "{view}").format(view=view_text.strip())
        label = self.view_labels.get(view_name, view_name)
        return self.template.format(problem=problem, view_label=label, view_text=text.strip())


# The authors' wording, quoted from the source named in the module docstring.
PRIVILEGED_REFERENCE = ViewTemplatePreset(
    template=(
        "Problem: {problem}\n\n"
        "Here is training-time reference information for this problem. It may contain a final answer, "
        "a hint, a partial solution, or a full solution to the problem.\n"
        "=== Privileged Reference ({view_label}) Begin ===\n"
        "{view_text}\n"
        "=== Privileged Reference ({view_label}) End ===\n\n"
        "Use the reference only as hidden guidance. Use it only to understand, verify, or correct your solution.\n"
        "Do not mention, quote, copy, cite, or refer to the privileged reference or its existence.\n"
        "Now solve the original problem independently using your own reasoning.\n"
        "Please reason step by step, and put your final answer within \\boxed{{}}."
    ),
    view_labels={"full": "full_solution", "partial": "partial_solution", "answer": "answer_only"},
    view_texts={"answer": "Verified final answer: {view}"},
)

VIEW_TEMPLATE_PRESETS: dict[str, ViewTemplatePreset] = {"privileged_reference": PRIVILEGED_REFERENCE}


def is_preset_name(value) -> bool:
    """Whether a view_template value is meant as a preset name (a bare identifier)."""
    return isinstance(value, str) and _PRESET_NAME.fullmatch(value) is not None


def view_template_preset(value) -> ViewTemplatePreset | None:
    """The preset `value` names, None for a format string; a ValueError naming the key for an
    identifier that is no preset."""
    if not is_preset_name(value):
        return None
    if value in VIEW_TEMPLATE_PRESETS:
        return VIEW_TEMPLATE_PRESETS[value]
    hint = difflib.get_close_matches(value, list(VIEW_TEMPLATE_PRESETS), n=1)
    raise ValueError(
        f"{KEY}={value!r} is not a preset (presets: {', '.join(VIEW_TEMPLATE_PRESETS)})"
        + (f"; did you mean {hint[0]!r}?" if hint else "")
        + "; a template of your own is python str.format text with {prompt} and {view}"
    )
