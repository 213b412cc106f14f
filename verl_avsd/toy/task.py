"""The toy task: multi-step addition/subtraction with three privileged views.

A problem is a chain of operations on numbers up to 19 (the default), e.g. the prompt

    Compute 17+08-11+19.

whose worked solution (the target the model learns to write) is one line per step and a final
answer line:

    17+08=25
    25-11=14
    14+19=33
    Answer: 33

Numbers are zero-padded to a fixed width (see `random_problem`), and there are no spaces inside
expressions (the tokenizer gives a space its own token before a digit; short sequences keep
the CPU warm-up fast).

The three views (AVSD.md, "Views"), in the contract format `[{"name", "text"}, ...]`:
  full    = the whole worked solution,
  partial = the first half of the step lines (at least one), never the final answer,
  answer  = only the final answer as the solution writes it ("33").

Everything is seeded and deterministic. Problems are assigned to a split by a hash of their
prompt, so the `val` problems (used for held-out measurement) can never appear in `train`
(used for the warm-up and for RL), whatever seeds the two sides use.

This module also holds verl's custom reward function (`compute_score`), `write_parquet` (the
toy files through data prep's row-contract writer) and `teacher_user_message`, the single place
that formats "prompt + view" for the teacher.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import zlib
from dataclasses import dataclass

DATA_SOURCE = "avsd_toy/arith"
VIEW_NAMES = ("full", "partial", "answer")
SPLITS = ("train", "val")

# Difficulty defaults, tuned with the warm-up so that the tiny model's view-free sampled
# accuracy starts between 10% and 60% (see verl_avsd/assets/toy_model/warmup_metrics.json).
DEFAULT_NUM_STEPS = 3  # operations per problem (operands = steps + 1)
# operands are drawn from [1, max_operand]. Measured with the default warm-up (600 steps): 99
# left the model at 4% view-free (it never learned two-digit carries), 9 at 99.6%, 19 at 60%
# greedy / 41% sampled at temperature 1 (verl_avsd/assets/toy_model/warmup_metrics.json).
DEFAULT_MAX_OPERAND = 19

ANSWER_PREFIX = "Answer: "
# A well-formed response ends with an "Answer: <integer>" line (trailing whitespace allowed).
_ANSWER_LINE = re.compile(r"(?:^|\n)Answer: (-?\d+)\s*$")
_NUMBER = re.compile(r"\d+")  # totals are never negative, so "85-19" holds 85 and 19

# How the teacher sees a view, all inside the one user turn: a header naming the view, the view
# text, a blank line, then the student's prompt. The view comes first so that the prompt sits
# right before the assistant turn exactly as in the student's context: a tiny model finds the
# operands by their distance back from the answer, and a view placed between prompt and answer
# moved them (measured: with the view after the prompt, the answer view lowered greedy accuracy
# from 52% to 1% and the full view gave no gain at all).
TEACHER_TEMPLATE = "Reference ({view_name}):\n{view_text}\n\n{prompt}"


@dataclass(frozen=True)
class Problem:
    """One toy problem: its prompt, worked solution and answer."""

    prompt: str  # "Compute 17+08-11+19."
    steps: tuple[str, ...]  # ("17+08=25", "25-11=14", "14+19=33")
    answer: int  # 33
    answer_text: str  # "33": the answer as the solution writes it (fixed width)

    @property
    def solution(self) -> str:
        """The worked solution: step lines then the answer line (what the model must write)."""
        return "\n".join(self.steps) + "\n" + ANSWER_PREFIX + self.answer_text

    def views(self) -> list[dict[str, str]]:
        """The three views in the contract order (full, partial, answer)."""
        return [
            {"name": "full", "text": self.solution},
            {"name": "partial", "text": partial_view_text(self.steps)},
            {"name": "answer", "text": self.answer_text},
        ]


def partial_view_text(steps: tuple[str, ...]) -> str:
    """The first half of the step lines (rounded down, at least one); no answer line."""
    return "\n".join(steps[: max(1, len(steps) // 2)])


def split_of_prompt(prompt: str) -> str:
    """Deterministic split of a problem: one prompt in ten (by CRC32) is `val`, the rest `train`."""
    return "val" if zlib.crc32(prompt.encode("utf-8")) % 10 == 0 else "train"


def random_problem(rng: random.Random, num_steps: int = DEFAULT_NUM_STEPS, max_operand: int = DEFAULT_MAX_OPERAND) -> Problem:
    """Draw one problem: operands uniform in [1, max_operand], each op '+' or '-'.

    Numbers are written zero-padded to a fixed width (operands to the width of `max_operand`,
    running totals to the width of the largest possible total), so every problem of a given
    size has the same token layout. That is what lets a tiny model learn in minutes to line a
    view up with its own answer and the digits of two numbers with each other.
    Running totals never go negative (a '-' that would is turned into '+'), and a problem is
    redrawn if its answer appears as a number in the partial view, so the partial view never
    gives the answer away.
    """
    # One step has no "first half" without the answer, so a problem needs at least two.
    if num_steps < 2 or max_operand < 2:
        raise ValueError(f"need num_steps >= 2 and max_operand >= 2, got {num_steps=} {max_operand=}")
    operand_width = len(str(max_operand))
    total_width = len(str(max_operand * (num_steps + 1)))
    for _ in range(10_000):
        total = rng.randint(1, max_operand)
        prompt_parts = [f"{total:0{operand_width}d}"]
        steps = []
        for _ in range(num_steps):
            operand = rng.randint(1, max_operand)
            op = rng.choice("+-")
            if op == "-" and operand > total:
                op = "+"
            new_total = total + operand if op == "+" else total - operand
            prompt_parts.append(f"{op}{operand:0{operand_width}d}")
            steps.append(f"{total:0{total_width}d}{op}{operand:0{operand_width}d}={new_total:0{total_width}d}")
            total = new_total
        problem = Problem(
            prompt="Compute " + "".join(prompt_parts) + ".",
            steps=tuple(steps),
            answer=total,
            answer_text=f"{total:0{total_width}d}",
        )
        if total not in [int(number) for number in _NUMBER.findall(partial_view_text(problem.steps))]:
            return problem
    raise ValueError(f"no problem with {num_steps=} {max_operand=} keeps the answer out of its partial view")


def generate_problems(
    n: int, seed: int, split: str, num_steps: int = DEFAULT_NUM_STEPS, max_operand: int = DEFAULT_MAX_OPERAND
) -> list[Problem]:
    """`n` distinct problems of `split` ('train' or 'val'), deterministic in `seed`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{seed}/{split}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"could not draw {n} distinct {split} problems with {num_steps=} {max_operand=}")
        problem = random_problem(rng, num_steps, max_operand)
        if split_of_prompt(problem.prompt) == split and problem.prompt not in seen:
            seen.add(problem.prompt)
            problems.append(problem)
    return problems


def teacher_user_message(prompt_text: str, view_name: str, view_text: str) -> str:
    """The teacher's user turn: one view, then the student's prompt.

    `teacher_user_message("Compute 1+2.", "answer", "3")` ==
    "Reference (answer):\\n3\\n\\nCompute 1+2.". The warm-up trains view-conditioned examples
    with exactly this text, so the teacher worker must build its context with this function (or
    with `TEACHER_TEMPLATE`, which it formats).
    """
    for field, value in (("prompt_text", prompt_text), ("view_name", view_name), ("view_text", view_text)):
        if not isinstance(value, str):
            raise TypeError(f"teacher_user_message: {field} must be a str, got {type(value).__name__}")
    if not view_name:
        raise ValueError("teacher_user_message: view_name is empty")
    return TEACHER_TEMPLATE.format(prompt=prompt_text, view_name=view_name, view_text=view_text)


def extract_answer(solution_str: str) -> int | None:
    """The integer on the response's final `Answer: N` line, or None if the response is malformed."""
    match = _ANSWER_LINE.search(solution_str)
    return int(match.group(1)) if match else None


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl custom reward (`reward.custom_reward_function.name=compute_score`).

    1.0 if the response ends with `Answer: N` and N equals the ground truth, else 0.0
    (wrong number, missing or malformed answer line). Extra keyword arguments that verl's
    reward loop passes are ignored.
    """
    if data_source != DATA_SOURCE:
        raise ValueError(f"toy compute_score only scores data_source={DATA_SOURCE!r}, got {data_source!r}")
    try:
        expected = int(str(ground_truth).strip())
    except ValueError:
        raise ValueError(f"toy compute_score: reward_model.ground_truth must be an integer, got {ground_truth!r}") from None
    return 1.0 if extract_answer(solution_str) == expected else 0.0


def write_parquet(
    out_dir: str,
    n_train: int = 2048,
    n_val: int = 256,
    seed: int = 0,
    num_steps: int = DEFAULT_NUM_STEPS,
    max_operand: int = DEFAULT_MAX_OPERAND,
) -> dict[str, str]:
    """Write `train.parquet` and `val.parquet` into `out_dir`; returns {split: path}.

    The rows are `verl-avsd prep toy`'s (`data_prep.toy.toy_rows`), written and checked by the
    one writer of the row contract (`data_prep.output.write_rows`); the prompt holds only the
    question, the views (the worked solution is the `full` one) live in extra_info. The
    held-out file keeps its name `val.parquet`; its rows' extra_info.split is the contract's
    "validation".
    """
    from verl_avsd.data_prep.output import write_rows  # data_prep.toy imports this module
    from verl_avsd.data_prep.toy import toy_rows

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n, contract_split in (("train", n_train, "train"), ("val", n_val, "validation")):
        paths[split] = os.path.join(out_dir, f"{split}.parquet")
        write_rows(toy_rows(n, seed, split, num_steps, max_operand), paths[split], contract_split)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the toy arithmetic task as verl parquet (train/val).")
    parser.add_argument("--out", required=True, help="output folder for train.parquet and val.parquet")
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-val", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-steps", type=int, default=DEFAULT_NUM_STEPS)
    parser.add_argument("--max-operand", type=int, default=DEFAULT_MAX_OPERAND)
    args = parser.parse_args(argv)
    paths = write_parquet(args.out, args.n_train, args.n_val, args.seed, args.num_steps, args.max_operand)
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
