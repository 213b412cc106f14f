"""A real pretrained checkpoint on the CPU: the teacher signal where it matters, and memory.

    python bench/real_checkpoint.py --model models/smollm2       # after `verl-avsd prep-model smollm2`

1. Teacher signal at the first wrong digit. SmolLM2-135M-Instruct answers simple two-number
   arithmetic ("What is 47 + 38?") and is often wrong. For each wrong answer, the token that
   holds the first digit that differs from the correct answer is where credit assignment must
   say "this was the mistake". There the full-view teacher (the same model, shown the worked
   solution through the project's default view template) should give the token a lower
   log-prob than the student, and the AVSD advantage (all three views, verl_avsd.signals)
   should be negative. Reported: the fraction of wrong rollouts where each holds, medians,
   and the same quantities over the other response tokens for contrast.
2. Memory of the rollout's log-probs at 32 x 256 tokens: peak RSS growth (above the model's
   own footprint) of one `generate` call with the previous computation (output_scores, a float32
   [B, T, V] log-softmax) and with the step-by-step one (verl_avsd/cpu/sampled_logprobs.py), each in
   a fresh process, responses forced to full length.
3. With --step-ratio: AVSD vs OPSD step time through verl's trainer at a small size (median
   over the steps after the first).

Writes bench/results/real_checkpoint_cpu.json. Runs a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "real_checkpoint_cpu.json"
QUESTION = "What is {a} {op} {b}? Answer with just the number."
VIEWS = ("full", "partial", "answer")


def problems(n: int, seed: int) -> list[dict]:
    """Two-number additions/subtractions with their three views (full / partial / answer)."""
    rng = random.Random(seed)
    out = []
    for index in range(n):
        a, b, op = rng.randint(12, 89), rng.randint(12, 89), rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        answer = a + b if op == "+" else a - b
        tens, ones = (a // 10 * 10, b // 10 * 10), (a % 10, b % 10)
        partial = f"{tens[0]} {op} {tens[1]} = {tens[0] + tens[1] if op == '+' else tens[0] - tens[1]}"
        out.append(
            {
                "prompt": [{"role": "user", "content": QUESTION.format(a=a, op=op, b=b)}],
                "answer": answer,
                "operands": (a, b),
                "extra_info": {
                    "index": index,
                    "views": [
                        {"name": "full", "text": f"{a} {op} {b} = {answer}"},
                        {"name": "partial", "text": f"{partial}, then the ones: {ones[0]} {op} {ones[1]}"},
                        {"name": "answer", "text": str(answer)},
                    ],
                },
            }
        )
    return out


def token_logprobs(model, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """[T] float64 log p(response_t | context, response_<t), one unpadded sequence."""
    with torch.no_grad():
        logits = model(torch.cat([context, response])[None]).logits[0, len(context) - 1 : -1].double()
    return logits.log_softmax(-1).gather(-1, response[:, None])[:, 0]


def stated_answer(text: str, operands: tuple[int, int]) -> re.Match | None:
    """The answer a response states: its first integer that is not one of the question's
    operands ("47 + 38 = 75" -> 75; "the total is 47 + 38." -> none)."""
    return next((m for m in re.finditer(r"-?\d+", text) if int(m.group()) not in operands), None)


def first_wrong_digit_token(tokenizer, response_ids: list[int], answer: int, operands: tuple[int, int]) -> int | None:
    """Index of the response token holding the first digit of the stated answer that differs
    from the correct one; None when the answer is right, absent, or only too short (the
    missing digit has no token to blame)."""
    text = tokenizer.decode(response_ids, skip_special_tokens=True)
    stated = stated_answer(text, operands)
    if stated is None or stated.group() == str(answer):
        return None
    correct = str(answer)
    wrong_at = next((i for i, (s, c) in enumerate(zip(stated.group(), correct)) if s != c), len(correct))
    if wrong_at >= len(stated.group()):
        return None
    char = stated.start() + wrong_at
    for k in range(len(response_ids)):  # the first token whose decoded prefix covers the character
        if len(tokenizer.decode(response_ids[: k + 1], skip_special_tokens=True)) > char:
            return k
    return None


def teacher_signal(model_dir: str, n_problems: int, seed: int, temperature: float) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_avsd.config import avsd_config
    from verl_avsd.signals import avsd_signals
    from verl_avsd.workers.teacher_context import build_teacher_contexts

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = avsd_config({"avsd": {"views": list(VIEWS)}})  # the project's default view template
    rows = problems(n_problems, seed)
    torch.manual_seed(seed)
    at_wrong, elsewhere, n_correct, n_unscored, n_tokens = [], {"delta_full": [], "advantage": []}, 0, 0, 0
    start = time.monotonic()
    for row in rows:
        prompt = torch.tensor(
            tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
        )
        with torch.no_grad():
            out = model.generate(
                prompt[None],
                attention_mask=torch.ones_like(prompt)[None],
                max_new_tokens=24,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
        response = out[0, len(prompt) :]
        n_tokens += len(response)
        position = first_wrong_digit_token(tokenizer, response.tolist(), row["answer"], row["operands"])
        if position is None:
            stated = stated_answer(tokenizer.decode(response, skip_special_tokens=True), row["operands"])
            right = stated is not None and stated.group() == str(row["answer"])
            n_correct += right
            n_unscored += not right  # no answer stated, or only a digit short
            continue
        contexts = build_teacher_contexts(tokenizer, [row["prompt"]], [row["extra_info"]], cfg)
        student = token_logprobs(model, prompt, response)  # [T]
        views = torch.stack([token_logprobs(model, contexts.context_ids[0][m], response) for m in range(len(VIEWS))])  # [M, T]
        signals = avsd_signals(student[None], views[None], contexts.view_mask, torch.ones(1, len(response), dtype=torch.bool))
        advantage = signals.advantage[0]
        at_wrong.append(
            {
                "token": tokenizer.decode(response[position]),
                "position": position,
                "student": student[position].item(),
                "teacher_full": views[0, position].item(),
                "advantage": advantage[position].item(),
                "response": tokenizer.decode(response, skip_special_tokens=True),
                "answer": row["answer"],
            }
        )
        others = [t for t in range(len(response)) if t != position]
        elsewhere["delta_full"] += (views[0, others] - student[others]).tolist()
        elsewhere["advantage"] += advantage[others].tolist()
    n = len(at_wrong)
    return {
        "problems": n_problems,
        "temperature": temperature,
        "seed": seed,
        "correct": n_correct,
        "wrong_scored": n,
        "wrong_unscored": n_unscored,
        "seconds": round(time.monotonic() - start, 1),
        "generated_tokens": n_tokens,
        "at_first_wrong_digit": {
            "teacher_full_below_student": sum(r["teacher_full"] < r["student"] for r in at_wrong) / max(n, 1),
            "avsd_advantage_negative": sum(r["advantage"] < 0 for r in at_wrong) / max(n, 1),
            "median_teacher_full_minus_student": statistics.median([r["teacher_full"] - r["student"] for r in at_wrong])
            if n
            else None,
            "median_advantage": statistics.median([r["advantage"] for r in at_wrong]) if n else None,
        },
        "other_tokens_of_wrong_rollouts": {
            "teacher_full_below_student": sum(d < 0 for d in elsewhere["delta_full"]) / max(len(elsewhere["delta_full"]), 1),
            "avsd_advantage_negative": sum(a < 0 for a in elsewhere["advantage"]) / max(len(elsewhere["advantage"]), 1),
            "median_teacher_full_minus_student": statistics.median(elsewhere["delta_full"]) if elsewhere["delta_full"] else None,
            "median_advantage": statistics.median(elsewhere["advantage"]) if elsewhere["advantage"] else None,
        },
        "examples": at_wrong[:8],
    }


# One generate call of `batch` x `tokens` in a fresh process; prints the peak RSS growth above
# the loaded model while it runs. "before" is the previous hf rollout computation.
_ROLLOUT_MEMORY = textwrap.dedent("""
    import sys, time, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList
    from verl_avsd.cpu.sampled_logprobs import SampledTokenLogProbs
    model_dir, variant, batch, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me a long story about numbers."}],
                                           add_generation_prompt=True, tokenize=True)["input_ids"]
    ids = torch.tensor([prompt] * batch)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, top_k=0,
                  pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True)
    def run():
        torch.manual_seed(0)
        with torch.no_grad():
            if variant == "before":
                out = model.generate(ids, output_scores=True, **kwargs)
                new = out.sequences[:, ids.shape[1]:]
                log_probs = torch.stack(out.scores, dim=1).float().log_softmax(dim=-1)  # [B, T, V]
                return log_probs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            recorder = SampledTokenLogProbs(batch, tokens)
            out = model.generate(ids, logits_processor=LogitsProcessorList([recorder]), **kwargs)
            return recorder.finish(out.sequences)
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current RSS
    status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    before, start = status("VmRSS"), time.monotonic()
    log_probs = run()
    print(status("VmHWM") - before, time.monotonic() - start, tuple(log_probs.shape))
""")


def rollout_memory(model_dir: str, batch: int, tokens: int) -> dict:
    out = {"batch": batch, "tokens": tokens}
    for variant in ("after", "before"):
        proc = subprocess.run(
            [sys.executable, "-c", _ROLLOUT_MEMORY, model_dir, variant, str(batch), str(tokens)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rollout memory ({variant}) failed:\n{proc.stderr[-3000:]}")
        growth, seconds, shape = proc.stdout.split(maxsplit=2)
        out[variant] = {
            "peak_rss_growth_gb": round(int(growth) / 2**30, 3),
            "seconds": round(float(seconds), 1),
            "log_probs_shape": shape.strip(),
        }
    return out


def step_ratio(model_dir: str, prompts: int, response_tokens: int, steps: int, work_dir: str) -> dict:
    """AVSD vs OPSD step time through verl's trainer (verl_avsd.toy_run), median over the steps
    after the first (the first one also warms up); toy arithmetic prompts told the answer format."""
    import pandas as pd

    from verl_avsd.toy_run import ToyRun, run_main_ppo, toy_data

    data = toy_data(str(Path(work_dir) / "data"), n_train=64, n_val=4)
    for path in data.values():
        df = pd.read_parquet(path)
        df["prompt"] = [
            [{**p[0], "content": p[0]["content"] + " End your reply with the line 'Answer: <number>'."}] for p in df["prompt"]
        ]
        df.to_parquet(path, index=False)
    out = {"prompts": prompts, "response_tokens": response_tokens, "steps": steps}
    for estimator in ("opsd", "avsd"):
        run = ToyRun(
            model_dir=model_dir,
            train_file=data["train"],
            val_file=data["val"],
            run_dir=str(Path(work_dir) / estimator),
            estimator=estimator,
            steps=steps,
            prompts_per_step=prompts,
            max_response_length=response_tokens,
        )
        result = run_main_ppo(run.overrides(), run.run_dir, timeout_s=3600)
        if result.returncode != 0:
            raise RuntimeError(f"{estimator} run failed:\n{result.log_tail()}")
        later = [result.metrics[s] for s in sorted(result.metrics)[1:]]
        out[estimator] = {
            key: round(statistics.median(m[key] for m in later), 2)
            for key in (
                "timing_s/step",
                "timing_s/gen",
                "timing_s/teacher_views",
                "timing_s/update_actor",
                "response_length/mean",
            )
        }
    out["avsd_over_opsd_step"] = round(out["avsd"]["timing_s/step"] / out["opsd"]["timing_s/step"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder written by `verl-avsd prep-model smollm2`")
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-batch", type=int, default=32)
    parser.add_argument("--memory-tokens", type=int, default=256)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-signal", action="store_true")
    parser.add_argument("--step-ratio", action="store_true", help="also time AVSD vs OPSD steps through verl's trainer")
    parser.add_argument("--ratio-prompts", type=int, default=4)
    parser.add_argument("--ratio-tokens", type=int, default=64)
    parser.add_argument("--ratio-steps", type=int, default=4)
    parser.add_argument("--work-dir", default=None, help="where the --step-ratio runs go (default: a temp folder)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json; prepare it with `verl-avsd prep-model smollm2 --out {args.model}`")
    results = {
        "model": json.loads((Path(args.model) / "verl_avsd_model.json").read_text()).get("model", args.model)
        if (Path(args.model) / "verl_avsd_model.json").is_file()
        else args.model
    }
    if Path(args.out).is_file():  # a partial rerun (--skip-...) keeps the other sections
        results = {**json.loads(Path(args.out).read_text()), **results}
    if not args.skip_signal:
        results["teacher_signal"] = teacher_signal(args.model, args.problems, args.seed, args.temperature)
        print(json.dumps({k: v for k, v in results["teacher_signal"].items() if k != "examples"}, indent=2))
    if not args.skip_memory:
        results["rollout_logprob_memory"] = rollout_memory(args.model, args.memory_batch, args.memory_tokens)
        print(json.dumps(results["rollout_logprob_memory"], indent=2))
    if args.step_ratio:
        import tempfile

        work_dir = args.work_dir or tempfile.mkdtemp(prefix="real_checkpoint_")
        results["step_ratio"] = step_ratio(args.model, args.ratio_prompts, args.ratio_tokens, args.ratio_steps, work_dir)
        print(json.dumps(results["step_ratio"], indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
