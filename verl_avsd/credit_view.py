"""The token-credit view of one dumped rollout: each token coloured by the advantage the estimators
(the credit methods of verl_avsd.estimator_facts: avsd, opsd, avsd_consensus, avsd_arithmetic)
give it, recomputed from the dump, and AVSD's gate; written as credit_STEP_INDEX.html (every
token) and .png (an overview).
"""

from __future__ import annotations

import html
import math
import re
import warnings
from pathlib import Path

import torch

from verl_avsd.config import avsd_config, default_config
from verl_avsd.estimator_facts import credit_methods
from verl_avsd.plots import plt
from verl_avsd.rollout_dumps import check_dump_row, dump_dir, dump_tensors, dumped_steps, read_dump
from verl_avsd.run_files import ReportError, Run, config_value

POSITIVE_RGB = (33, 102, 172)  # blue: the method raises this token's probability
NEGATIVE_RGB = (178, 24, 43)  # red: it lowers it
GATE_RGB = (27, 120, 55)  # green, intensity = gate in [0, 1]
PNG_TOKENS_PER_LINE = 24
PNG_MAX_TOKENS = 480  # the PNG is an overview; the HTML shows every token


def pick_rollout(directory: Path, spec: str | None, wrong_below: float) -> tuple[int, int, dict, str]:
    """(step, index, row, why this one) for --rollout STEP:INDEX, or the default rollout."""
    files = dumped_steps(directory)
    if spec is None:
        step = max(files)
        rows = read_dump(files[step])
        real = [i for i, r in enumerate(rows) if not r.get("is_padding", False)]
        if not real:
            raise ReportError(f"{files[step]}: no rollouts (every row is padding)")
        wrong = [i for i in real if rows[i].get("reward", math.inf) < wrong_below]
        if wrong:
            why = f"the first wrong rollout (reward < {wrong_below:g}) of the last dumped step"
            return step, wrong[0], rows[wrong[0]], why
        why = f"no wrong rollout (reward < {wrong_below:g}) at the last dumped step: its first rollout"
        return step, real[0], rows[real[0]], why
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
    if not match:
        raise ReportError(f"--rollout must be STEP:INDEX (e.g. {max(files)}:0), got {spec!r}")
    step, index = int(match.group(1)), int(match.group(2))
    if step not in files:
        raise ReportError(f"--rollout {spec}: no dump of step {step} in {directory}; dumped steps: {', '.join(map(str, files))}")
    rows = read_dump(files[step])
    if index >= len(rows):
        raise ReportError(f"--rollout {spec}: {files[step]} has {len(rows)} rollouts, indices 0..{len(rows) - 1}")
    return step, index, rows[index], "chosen with --rollout"


def credit_advantages(row: dict, avsd_options: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-token advantage [T] of each credit method (estimator_facts) on this rollout, and AVSD's gate [T],
    computed by the estimators training uses (so epistemic_tau and opsd_view apply as in the run)."""
    # imported here: it imports verl (several seconds), which only the credit view needs; verl warns
    # at import about optional training engines it does not find, which says nothing about a report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from verl_avsd.estimators import token_advantages

    views = list(row["views"])
    options = {**avsd_options, "views": views}
    if options.get("opsd_view") not in views:
        options["opsd_view"] = views[0]
    cfg = avsd_config({"avsd": options})  # once for every method
    inputs = dump_tensors([row])  # [1, T], [1, M, T], [1, M], [1, T]
    advantages, gate = {}, None
    for method in credit_methods():
        adv, signals = token_advantages(method, cfg, **inputs)
        advantages[method] = adv[0]
        if method == "avsd":
            gate = signals.gate[0]
    return advantages, gate


def token_strings(ids: list[int], tokenizer_path: str | None) -> tuple[list[str], str]:
    """Each id decoded on its own, and a note saying how (ids as text where no tokenizer loads)."""
    as_ids = [str(i) for i in ids]
    if not tokenizer_path:
        return as_ids, "token ids shown: the run's config.yaml has no actor_rollout_ref.model.path (use --tokenizer)"
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)  # a report never downloads
    except Exception as e:  # any failure to load means the same thing here: show ids, and say why
        return (
            as_ids,
            f"token ids shown: the tokenizer at {tokenizer_path} could not be loaded ({type(e).__name__}: {e})",
        )
    return [tokenizer.decode([i]) for i in ids], f"tokens decoded with the tokenizer at {tokenizer_path}"


def _rgba(value: float, scale: float) -> tuple[tuple[int, int, int], float]:
    """Colour of an advantage: blue if positive, red if negative, opacity |value| / scale."""
    rgb = POSITIVE_RGB if value > 0 else NEGATIVE_RGB
    return rgb, (min(abs(value) / scale, 1.0) if scale > 0 else 0.0)


def _visible(token: str) -> str:
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5")


def write_credit_html(
    path: Path,
    title: str,
    notes: list[str],
    tokens: list[str],
    positions: list[int],
    advantages: dict[str, list[float]],
    gate: list[float],
    scale: float,
) -> None:
    """One row per method, a span per response token coloured by its advantage, and a gate row."""

    def span(kind: str, method: str, t: int, token: str, value: float, g: float, rgb, alpha: float) -> str:
        tip = f"position {positions[t]} | {token!r} | {method} {value:+.6f} | gate {g:.4f}"
        return (
            f'<span class="tok {kind}" data-method="{method}" data-pos="{positions[t]}" data-value="{value!r}" '
            f'style="background-color: rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.3f})" title="{html.escape(tip)}">'
            f"{html.escape(_visible(token)) or '&#8203;'}</span>"
        )

    rows = []
    for method, values in advantages.items():
        spans = []
        for t, (token, value) in enumerate(zip(tokens, values)):
            rgb, alpha = _rgba(value, scale)
            spans.append(
                span("pos" if value > 0 else "neg" if value < 0 else "zero", method, t, token, value, gate[t], rgb, alpha)
            )
        rows.append(f'<tr><th>{method}</th><td class="tokens">{"".join(spans)}</td></tr>')
    gate_spans = [
        span("gate", "gate", t, token, g, g, GATE_RGB, min(max(g, 0.0), 1.0)) for t, (token, g) in enumerate(zip(tokens, gate))
    ]
    rows.append(f'<tr><th>gate</th><td class="tokens">{"".join(gate_spans)}</td></tr>')
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th {{ text-align: right; vertical-align: top; padding: 0.3em 0.8em 0.3em 0; font-weight: normal; white-space: nowrap; }}
td.tokens {{ font-family: monospace; line-height: 1.9; padding: 0.3em 0; border-bottom: 1px solid #ddd; }}
span.tok {{ white-space: pre; padding: 0.1em 0; }}
</style></head><body>
<h2>{html.escape(title)}</h2>
{"".join(f"<p>{html.escape(note)}</p>" for note in notes)}
<table>
{chr(10).join(rows)}
</table>
</body></html>
"""
    path.write_text(page)


def write_credit_png(
    path: Path, title: str, tokens: list[str], advantages: dict[str, list[float]], gate: list[float], scale: float
) -> None:
    """The same view as an image: lines of PNG_TOKENS_PER_LINE tokens, a row per method plus the gate."""
    shown = min(len(tokens), PNG_MAX_TOKENS)
    if shown < len(tokens):
        title += f" (first {shown} of {len(tokens)} tokens; the HTML has all)"
    row_names = [*advantages, "gate"]
    width = min(PNG_TOKENS_PER_LINE, max(shown, 1))  # tokens per line of the image
    chunks = [range(start, min(start + width, shown)) for start in range(0, max(shown, 1), width)]
    fig, axes = plt.subplots(len(chunks), 1, figsize=(2.5 + 0.45 * width, 0.6 + 1.9 * len(chunks)), squeeze=False)
    for ax, chunk in zip(axes[:, 0], chunks):
        image = torch.ones(len(row_names), width, 4)  # [rows, tokens, RGBA], white
        for col, t in enumerate(chunk):
            for r, method in enumerate(advantages):
                rgb, alpha = _rgba(advantages[method][t], scale)
                image[r, col] = torch.tensor([*(c / 255 for c in rgb), alpha])
            image[-1, col] = torch.tensor([*(c / 255 for c in GATE_RGB), min(max(gate[t], 0.0), 1.0)])
        ax.imshow(image.numpy(), aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(row_names)), row_names, fontsize=7)
        # "$" would start matplotlib's mathtext; a space token is drawn as an open box
        labels = [_visible(tokens[t]).replace("$", r"\$").replace(" ", "\u2423") for t in chunk]
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.tick_params(length=0)
    axes[0, 0].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_credit_view(run: Run, out_dir: Path, spec: str | None, tokenizer_path: str | None, name_prefix: str) -> dict:
    """credit_{prefix}STEP_INDEX.html and .png for one dumped rollout of this run; returns what was written."""
    avsd_options = config_value(run.config, "algorithm.avsd", {}) or {}
    wrong_below = float(avsd_options.get("wrong_below", default_config().wrong_below))
    directory = dump_dir(run)
    step, index, row, why = pick_rollout(directory, spec, wrong_below)
    where = f"{dumped_steps(directory)[step]}, line {index + 1}"
    check_dump_row(row, where)

    advantages, gate = credit_advantages(row, avsd_options)
    positions = [t for t, on in enumerate(row["response_mask"]) if on]  # response tokens only
    tokens, token_note = token_strings(
        [row["response_ids"][t] for t in positions],
        tokenizer_path or config_value(run.config, "actor_rollout_ref.model.path"),
    )
    shown = {method: [float(adv[t]) for t in positions] for method, adv in advantages.items()}
    gate_shown = [float(gate[t]) for t in positions]
    scale = max((abs(v) for values in shown.values() for v in values), default=0.0)

    estimator = row.get("estimator")
    notes = [
        f"Rollout {index} of step {step} ({why}), reward {row['reward']:g}, {len(positions)} response tokens; "
        f"views {row['views']} present {[bool(v) for v in row['view_mask']]}; the run's estimator: {estimator}.",
        f"Blue: positive advantage, red: negative; opacity |advantage| / {scale:.4g} "
        "(the largest over the methods shown). "
        "Gate row: green opacity = gate. Hover a token for its values.",
        token_note + ".",
    ]
    if estimator in advantages and "advantage" in row and len(row["advantage"]) == len(row["response_mask"]):
        diff = max((abs(float(advantages[estimator][t]) - row["advantage"][t]) for t in positions), default=0.0)
        notes.append(f"Recomputed {estimator} advantage vs the one the run trained on (dumped): max |difference| {diff:.2g}.")

    stem = f"credit_{name_prefix}{step}_{index}"
    title = f"Token credit: {run.label}, step {step}, rollout {index} (reward {row['reward']:g})"
    write_credit_html(out_dir / f"{stem}.html", title, notes, tokens, positions, shown, gate_shown, scale)
    write_credit_png(out_dir / f"{stem}.png", title, tokens, shown, gate_shown, scale)
    return {
        "run": run.label,
        "step": step,
        "index": index,
        "html": f"{stem}.html",
        "png": f"{stem}.png",
        "about": f"{run.label}, step {step}, rollout {index} ({why}); {token_note}",
    }
