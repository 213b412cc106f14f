"""Teacher contexts: the student's prompt with one privileged view in its user turn.

For every rollout b and configured view m the teacher reads

    chat_template(prompt messages with the last user turn = view_template(prompt, view_m),
                  add_generation_prompt=True, the student's chat-template kwargs)
    + the student's response token ids, unchanged

so the teacher scores exactly the tokens the student sampled. Two options reproduce the AVSD
authors' code where it departs from this (both off by default): `teacher_chat_template_kwargs`
gives the teacher its own template arguments (theirs: thinking on for the teacher, off for the
student), and `view_template: privileged_reference` (verl_avsd/view_presets.py) writes the user
turn in their words from the row's `extra_info.problem`. Views come from the row's
`extra_info["views"]`, an ordered list of {"name": str, "text": str}; `algorithm.avsd.views`
picks and orders the ones a run uses (this fixes M). A view a row lacks, or whose text is
empty, is masked out for that row (never passed off as a view). On the first batch the trainer
checks the configured names against the rows (`check_view_coverage`): a view no row has is an
error (a misspelt name would otherwise train with that view masked everywhere), a view most rows
lack is a warning. Two views are built by the trainer per rollout instead (`ROLLOUT_VIEW_FIELDS`):
`feedback` (its program run on the row's public tests) and `sibling` (a correct response of another
rollout of its prompt, verl_avsd/sibling_view.py); the rows need no column for them.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from verl_avsd.data_prep.errors import row_name  # how errors name a row (also the trainer's)
from verl_avsd.view_presets import view_template_preset

logger = logging.getLogger(__name__)

# The rollout-dependent view: built by the trainer from the rollout's program run on the row's
# extra_info.public_tests, so a row "has" it when it has public tests.
FEEDBACK_VIEW = "feedback"
# The other rollout-dependent view: a correct response from another rollout of the same prompt,
# built by the trainer after the rewards; no data column, so no row lacks it up front.
SIBLING_VIEW = "sibling"
# rollout-built view -> the per-sample field the trainer writes its text to ("" = no view)
ROLLOUT_VIEW_FIELDS = {FEEDBACK_VIEW: "avsd_feedback", SIBLING_VIEW: "avsd_sibling"}


class ViewDataError(ValueError):
    """A row's views are malformed; the message names the row and the field."""


@dataclass
class TeacherContexts:
    context_ids: list[list[torch.Tensor | None]]  # [B][M] prompt+view token ids, None = no view
    view_mask: torch.Tensor  # [B, M] bool
    truncated: torch.Tensor  # [B, M] bool: the view text was cut to max_view_tokens


def views_of_row(extra_info, names: list[str], b: int) -> list[str | None]:
    """The text of each configured view for one row (None where the row lacks it)."""
    where = row_name(extra_info, b)
    if not isinstance(extra_info, dict) or "views" not in extra_info:
        raise ViewDataError(
            f"{where}: field extra_info.views is missing; AVSD rows carry their privileged views as "
            "extra_info.views = [{name, text}, ...] (see `verl-avsd prep` and the README's data format)"
        )
    views = extra_info["views"]
    if views is None or isinstance(views, (str, bytes, dict)) or not hasattr(views, "__iter__"):
        raise ViewDataError(f"{where}: field extra_info.views must be a list of {{name, text}}, got {type(views).__name__}")
    by_name: dict[str, str] = {}
    for j, view in enumerate(views):
        if not isinstance(view, dict) or "name" not in view or "text" not in view:
            raise ViewDataError(f"{where}: field extra_info.views[{j}] must be a dict with keys name and text, got {view!r:.120}")
        if not isinstance(view["name"], str) or not (view["text"] is None or isinstance(view["text"], str)):
            raise ViewDataError(f"{where}: field extra_info.views[{j}] needs a str name and a str text")
        if view["name"] in by_name:
            raise ViewDataError(f"{where}: field extra_info.views has the view {view['name']!r} twice")
        by_name[view["name"]] = view["text"]
    return [by_name[n] if (by_name.get(n) or "").strip() else None for n in names]


def with_rollout_view(extra_info, name: str, text: str | None):
    """The row's extra_info with the view built for this rollout (e.g. `feedback`) in place of any
    the row carries by that name (no text: the view is absent, not the row's stale one); the row
    itself is shared by the prompt's other rollouts, so it is copied, never changed."""
    views = extra_info.get("views") if isinstance(extra_info, dict) else None
    malformed = views is not None and (isinstance(views, (str, bytes, dict)) or not hasattr(views, "__iter__"))
    if not isinstance(extra_info, dict) or malformed or (views is None and not text):
        return extra_info  # views_of_row names a malformed row
    kept = [v for v in (views if views is not None else []) if not (isinstance(v, dict) and v.get("name") == name)]
    return {**extra_info, "views": kept + ([{"name": name, "text": text}] if text else [])}


def _option(cfg, key: str):
    """An `algorithm.avsd` option from a DictConfig, a dict or an attribute object (None if absent)."""
    return cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)


def teacher_chat_template_kwargs(cfg, student_kwargs: dict | None) -> dict:
    """The chat-template arguments of the teacher's contexts: `algorithm.avsd.teacher_chat_template_kwargs`
    when set (in place of the student's, e.g. {enable_thinking: true}), else the student's
    `data.apply_chat_template_kwargs` (the spec: same template, same thinking mode)."""
    own = _option(cfg, "teacher_chat_template_kwargs")
    if own is None:
        return dict(student_kwargs or {})
    return dict(OmegaConf.to_container(own, resolve=True) if OmegaConf.is_config(own) else own)


def teacher_messages(messages: list[dict], view_name: str, view_text: str, cfg, *, problem: str | None = None) -> list[dict]:
    """The student's chat messages with the view put into the last user turn (a view_template
    preset writes that turn from `problem`, the row's extra_info.problem, instead)."""
    messages = [dict(m) for m in messages]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise ViewDataError("field raw_prompt: the prompt has no user message to put the view into")
    preset = view_template_preset(cfg.view_template)
    if preset is not None:
        if not isinstance(problem, str) or not problem.strip():
            raise ViewDataError(
                f"field extra_info.problem is missing or empty; algorithm.avsd.view_template={cfg.view_template} "
                "writes the teacher's turn from the raw problem (rows from `verl-avsd prep` carry it)"
            )
        messages[last_user]["content"] = preset.render(problem=problem, view_name=view_name, view_text=view_text)
        return messages
    titles = _option(cfg, "view_titles") or {}
    title = titles.get(view_name, view_name)
    messages[last_user]["content"] = cfg.view_template.format(
        prompt=messages[last_user]["content"], view=view_text, view_name=view_name, view_title=title
    )
    return messages


def build_teacher_contexts(
    tokenizer,
    raw_prompts: list[list[dict]],  # [B] the student's chat messages
    extra_infos: list[dict],  # [B] each row's extra_info
    cfg,  # resolved algorithm.avsd
    chat_template_kwargs: dict | None = None,  # the student's; teacher_chat_template_kwargs picks the teacher's
) -> TeacherContexts:
    names = list(cfg.views)
    chat_template_kwargs = teacher_chat_template_kwargs(cfg, chat_template_kwargs)
    B, M = len(raw_prompts), len(names)
    context_ids: list[list[torch.Tensor | None]] = [[None] * M for _ in range(B)]
    view_mask = torch.zeros(B, M, dtype=torch.bool)
    truncated = torch.zeros(B, M, dtype=torch.bool)
    max_view = int(cfg.max_view_tokens)
    for b in range(B):
        texts = views_of_row(extra_infos[b], names, b)
        messages = list(raw_prompts[b])
        for m, text in enumerate(texts):
            if text is None:
                continue
            view_ids = tokenizer.encode(text, add_special_tokens=False)
            if len(view_ids) > max_view:  # keep the beginning: the end of a long view is cut
                text = tokenizer.decode(view_ids[:max_view])
                truncated[b, m] = True
            problem = extra_infos[b].get("problem")  # a dict: views_of_row checked it
            try:
                msgs = teacher_messages(messages, names[m], text, cfg, problem=problem)
            except ViewDataError as e:
                raise ViewDataError(f"{row_name(extra_infos[b], b)}: {e}") from None
            ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, **chat_template_kwargs)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in transformers 5
                ids = ids["input_ids"]
            context_ids[b][m] = torch.tensor(ids, dtype=torch.long)
            view_mask[b, m] = True
    # No view at all is a data or naming problem, except where the feedback view is configured and
    # the rows have public tests: then no rollout of the batch wrote a program, a step without signal;
    # and with the sibling view: no prompt of the batch had a correct rollout (common early on).
    feedback_possible = FEEDBACK_VIEW in names and any(
        isinstance(e, dict) and e.get("public_tests") is not None for e in extra_infos
    )
    if B and not view_mask.any() and not feedback_possible and SIBLING_VIEW not in names:
        raise ViewDataError(_no_view_message(extra_infos, names, "this batch"))
    return TeacherContexts(context_ids=context_ids, view_mask=view_mask, truncated=truncated)


def _names_found(extra_infos) -> list[str]:
    """Every view name the rows carry (sorted), for messages."""
    return sorted(
        {
            v["name"]
            for e in extra_infos
            if isinstance(e, dict)
            for v in (e.get("views") or [])
            if isinstance(v, dict) and isinstance(v.get("name"), str)
        }
    )


def _first_empty(extra_infos, name: str) -> str | None:
    """The first row that names the view but leaves its text empty, as an error names it."""
    for b, e in enumerate(extra_infos):
        if isinstance(e, dict) and any(isinstance(v, dict) and v.get("name") == name for v in (e.get("views") or [])):
            return row_name(e, b)
    return None


def _no_view_message(extra_infos, names: list[str], where: str) -> str:
    """Why no row of `where` has any configured view: the views are there with empty text (a data
    problem, naming a row and view), or absent (a naming problem, listing the views found)."""
    empty = [(n, row) for n in names if (row := _first_empty(extra_infos, n)) is not None]
    if empty:
        shown = "; ".join(f"{row}: view {n!r}" for n, row in empty)
        absent = [n for n in names if n not in dict(empty)]
        return (
            f"every view of algorithm.avsd.views={names} that the rows of {where} have is there with empty "
            f"text (field extra_info.views[].text), e.g. {shown}"
            + (f" (and no row has {absent})" if absent else "")
            + "; the views exist but hold nothing to show the teacher: check the data prep that wrote them"
        )
    return (
        f"no row of {where} has any of the views algorithm.avsd.views={names} "
        f"(views found in the rows: {_names_found(extra_infos)}); set algorithm.avsd.views to the names your data uses"
    )


def check_view_coverage(extra_infos: list, names: list[str], warn_below: float = 0.5) -> dict[str, float]:
    """The first batch against `algorithm.avsd.views`: the share of rows with each configured view
    (with non-empty text; `feedback`: rows with public tests; `sibling`: every row, as it is built
    from the rollouts, not read from the rows). A view no row has is a
    ViewDataError (a misspelt name, naming the views found, or views whose text is empty, naming a
    row); a view fewer than `warn_below` of the rows have is logged as a warning."""
    B = len(extra_infos)
    if not B:
        return {}
    have = dict.fromkeys(names, 0)
    for b, info in enumerate(extra_infos):
        texts = views_of_row(info, names, b)  # also a clear error for a malformed row
        for n, text in zip(names, texts):
            if n == FEEDBACK_VIEW:
                have[n] += info.get("public_tests") is not None
            elif n == SIBLING_VIEW:
                have[n] += 1
            else:
                have[n] += text is not None
    for n in names:
        if have[n]:
            continue
        if n == FEEDBACK_VIEW:
            raise ViewDataError(
                f"algorithm.avsd.views has {n!r}, but no row of the first batch has field extra_info.public_tests "
                "to run a rollout's program on (the feedback view is built from them); code rows from "
                "`verl-avsd prep code` carry them"
            )
        empty_row = _first_empty(extra_infos, n)
        if empty_row is not None:
            raise ViewDataError(
                f"algorithm.avsd.views has {n!r}: the rows of the first batch that have it leave its text empty "
                f"(field extra_info.views[].text), e.g. {empty_row}; check the data prep that wrote them"
            )
        found = _names_found(extra_infos)
        hint = difflib.get_close_matches(n, found, n=1)
        raise ViewDataError(
            f"algorithm.avsd.views has {n!r}, which no row of the first batch has "
            f"(views found in the rows: {found}{f'; did you mean {hint[0]!r}?' if hint else ''}); without it every row "
            "would train with that view masked: set algorithm.avsd.views to the names your data uses"
        )
    for n in names:
        if have[n] < warn_below * B:
            logger.warning(
                "algorithm.avsd.views: %r is missing (absent or empty) in %d of the %d rows of the first batch; "
                "those rows train without it (views found in the rows: %s)",
                n,
                B - have[n],
                B,
                _names_found(extra_infos),
            )
    return {n: have[n] / B for n in names}
