"""`verl-avsd prep {math,code,toy,inspect}`: local dataset files to verl parquet with privileged views.

    verl-avsd prep math INPUT... --out DIR [--format openthoughts|dapo|generic] [--eval NAME=FILE ...]
    verl-avsd prep code PROBLEMS... --solutions FILE... --out DIR [--eval NAME=FILE ...]
    verl-avsd prep toy --out DIR [--n-train N --n-val N --seed S]
    verl-avsd prep inspect FILE [--rows N]

Exit status: 0 on success, 2 for bad input or bad options (the message names the file, row
and field, or the option), 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import sys

from verl_avsd.data_prep.errors import BadInputError, printable
from verl_avsd.data_prep.option_checks import CODE_LANGUAGES, EVAL_NAME


def _eval_pair(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {printable(repr(text))}")
    if not EVAL_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"eval set name {printable(repr(name))} must be letters, digits, '-' or '_'")
    return name, path


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options every dataset command shares: output, split, filters, prompt and error handling."""
    parser.add_argument("--out", required=True, help="output folder (train/validation/eval_*.parquet, manifest.json)")
    parser.add_argument("--name", help="dataset name in data_source (<task>/<name>); defaults to the format")
    parser.add_argument(
        "--eval",
        action="append",
        default=[],
        type=_eval_pair,
        metavar="NAME=FILE",
        help="an evaluation set: written to eval_NAME.parquet and removed from training (repeatable)",
    )
    parser.add_argument(
        "--val-size",
        type=float,
        default=0.05,
        help="validation rows held out of the prepared rows: a fraction (<1) or a count (default 0.05)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    parser.add_argument("--limit", type=int, help="read at most this many rows of each input file")
    parser.add_argument("--tokenizer", help="local Hugging Face tokenizer folder for the token-length filters")
    parser.add_argument("--max-problem-tokens", type=int, help="drop rows whose student prompt is longer")
    parser.add_argument("--max-view-tokens", type=int, help="drop rows with a view longer than this")
    parser.add_argument("--no-dedupe", dest="dedupe", action="store_false", help="keep repeated problems")
    parser.add_argument(
        "--no-decontaminate",
        dest="decontaminate",
        action="store_false",
        help="keep training problems that appear in an --eval set",
    )
    parser.add_argument("--prompt-template", help="student prompt; {problem} is replaced by the problem text")
    parser.add_argument("--system-prompt", help="a system message before the student prompt")
    parser.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="count malformed rows as dropped (bad_row) instead of stopping at the first",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _common_options(args: argparse.Namespace, default_prompt: str) -> dict:
    """The options dataclass fields of the options `_add_common` adds."""
    return {
        "out_dir": args.out,
        "name": args.name,
        "evals": args.eval,
        "tokenizer": args.tokenizer,
        "max_problem_tokens": args.max_problem_tokens,
        "max_view_tokens": args.max_view_tokens,
        "dedupe": args.dedupe,
        "decontaminate": args.decontaminate,
        "val_size": args.val_size,
        "seed": args.seed,
        "limit": args.limit,
        "prompt_template": default_prompt if args.prompt_template is None else args.prompt_template,
        "system_prompt": args.system_prompt,
        "skip_bad_rows": args.skip_bad_rows,
        "progress": not args.quiet,
    }


def _math_parser(subparsers) -> None:
    parser = subparsers.add_parser("math", help="math problems with worked solutions -> full/partial/answer views")
    parser.add_argument("inputs", nargs="+", help="local parquet/JSONL/JSON files")
    parser.add_argument("--format", choices=["openthoughts", "dapo", "generic"], default="openthoughts")
    parser.add_argument("--problem-key", default="problem", help="generic: the problem column")
    parser.add_argument("--solution-key", help="generic: the worked-solution column")
    parser.add_argument("--answer-key", help="generic: the final-answer column (else the solution's last \\boxed{})")
    parser.add_argument("--source-key", help="generic: a column to filter with --source")
    parser.add_argument("--domain-key", help="generic: a column to filter with --domain")
    parser.add_argument("--id-key", help="generic: a problem id column")
    parser.add_argument(
        "--solution-source",
        choices=["ground_truth", "deepseek"],
        default="ground_truth",
        help="openthoughts: build views from ground_truth_solution or deepseek_solution",
    )
    parser.add_argument(
        "--partial-view",
        choices=["ours", "authors"],
        default="ours",
        help="how the partial view is built: ours (first half of the reasoning steps before the answer; "
        "no partial view when there are fewer than 2) or authors (the AVSD authors' code: ceil(n/2) segments "
        "or a character prefix, plus a notice; every row with a solution keeps it)",
    )
    parser.add_argument(
        "--domain",
        action="append",
        dest="domains",
        help="keep only these domains (openthoughts default: math; repeatable)",
    )
    parser.add_argument("--source", action="append", dest="sources", help="keep only these sources (repeatable)")
    parser.add_argument("--eval-problem-key", help="problem column of the --eval files (default: problem/question)")
    parser.add_argument("--eval-answer-key", help="answer column of the --eval files (default: answer)")
    _add_common(parser)


def _code_parser(subparsers) -> None:
    parser = subparsers.add_parser("code", help="code problems + reference solutions -> reference/hint views")
    parser.add_argument("problems", nargs="+", help="local parquet/JSONL/JSON problem files")
    parser.add_argument("--format", choices=["codeforces", "generic"], default="codeforces")
    parser.add_argument("--solutions", action="append", default=[], help="reference solutions file (repeatable)")
    parser.add_argument("--solutions-format", choices=["auto", "cots", "submissions", "code_contests", "generic"], default="auto")
    parser.add_argument("--solution-id-key", default="problem_id", help="generic solutions: problem id column")
    parser.add_argument("--solution-code-key", default="code", help="generic solutions: program column")
    parser.add_argument("--solution-language-key", help="generic solutions: language column")
    parser.add_argument("--solution-accepted-key", help="generic solutions: verdict column (true/OK/accepted)")
    parser.add_argument("--problem-key", default="problem", help="generic problems: statement column")
    parser.add_argument("--tests-key", default="tests", help="generic problems: hidden tests column")
    parser.add_argument("--public-tests-key", help="generic problems: public tests column")
    parser.add_argument("--id-key", help="generic problems: problem id column")
    parser.add_argument("--reference-key", help="generic problems: an inline reference program column")
    parser.add_argument("--time-limit-key", help="generic problems: time limit (seconds) column")
    parser.add_argument("--memory-key", help="generic problems: memory limit (MB) column")
    parser.add_argument(
        "--language", choices=CODE_LANGUAGES, default="python", help="language the student writes (default python)"
    )
    parser.add_argument(
        "--keep-without-reference",
        action="store_true",
        help="keep problems with no reference solution (their only view is feedback)",
    )
    parser.add_argument("--max-hidden-tests", type=int, help="keep at most this many hidden tests per problem")
    parser.add_argument("--default-time-limit", type=float, default=2.0, help="seconds, when a problem has none")
    parser.add_argument("--default-memory-mb", type=float, default=256.0, help="MB, when a problem has none")
    _add_common(parser)


def _run_math(args: argparse.Namespace, argv: list[str]) -> dict:
    from verl_avsd.data_prep.math_prep import DEFAULT_MATH_PROMPT, MathOptions, prepare_math

    options = MathOptions(
        inputs=args.inputs,
        format=args.format,
        problem_key=args.problem_key,
        solution_key=args.solution_key,
        answer_key=args.answer_key,
        source_key=args.source_key,
        domain_key=args.domain_key,
        id_key=args.id_key,
        solution_source=args.solution_source,
        partial_view=args.partial_view,
        domains=args.domains,
        sources=args.sources,
        eval_problem_key=args.eval_problem_key,
        eval_answer_key=args.eval_answer_key,
        **_common_options(args, DEFAULT_MATH_PROMPT),
    )
    return prepare_math(options, argv)


def _run_code(args: argparse.Namespace, argv: list[str]) -> dict:
    from verl_avsd.data_prep.code_prep import DEFAULT_CODE_PROMPT, CodeOptions, prepare_code

    options = CodeOptions(
        problems=args.problems,
        format=args.format,
        solutions=args.solutions,
        solutions_format=args.solutions_format,
        solution_id_key=args.solution_id_key,
        solution_code_key=args.solution_code_key,
        solution_language_key=args.solution_language_key,
        solution_accepted_key=args.solution_accepted_key,
        problem_key=args.problem_key,
        tests_key=args.tests_key,
        public_tests_key=args.public_tests_key,
        id_key=args.id_key,
        reference_key=args.reference_key,
        time_limit_key=args.time_limit_key,
        memory_key=args.memory_key,
        language=args.language,
        keep_without_reference=args.keep_without_reference,
        max_hidden_tests=args.max_hidden_tests,
        default_time_limit_s=args.default_time_limit,
        default_memory_mb=args.default_memory_mb,
        **_common_options(args, DEFAULT_CODE_PROMPT),
    )
    return prepare_code(options, argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verl-avsd prep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _math_parser(subparsers)
    _code_parser(subparsers)
    toy = subparsers.add_parser("toy", help="the toy arithmetic task (CPU demo, tests) in the same format")
    toy.add_argument("--out", required=True)
    toy.add_argument("--n-train", type=int, default=2048)
    toy.add_argument("--n-val", type=int, default=256)
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--num-steps", type=int, help="operations per problem (default: the toy task's)")
    toy.add_argument("--max-operand", type=int, help="largest operand (default: the toy task's)")
    inspect = subparsers.add_parser("inspect", help="column summary and a few rows with their views")
    inspect.add_argument("file")
    inspect.add_argument("--rows", type=int, default=3, help="rows to print (default 3)")
    inspect.add_argument("--max-chars", type=int, default=400, help="characters shown per text (default 400)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        return int(exit_request.code or 0)
    try:
        if args.command == "math":
            _run_math(args, argv)
        elif args.command == "code":
            _run_code(args, argv)
        elif args.command == "toy":
            from verl_avsd.data_prep.toy import ToyOptions, prepare_toy

            options = ToyOptions(out_dir=args.out, n_train=args.n_train, n_val=args.n_val, seed=args.seed)
            if args.num_steps is not None:
                options.num_steps = args.num_steps
            if args.max_operand is not None:
                options.max_operand = args.max_operand
            prepare_toy(options, argv)
        else:
            from verl_avsd.data_prep.inspect_file import inspect_file

            print(inspect_file(args.file, args.rows, args.max_chars))
    except (BadInputError, ValueError, OSError) as error:  # OSError: a full disk, a file that vanished, ...
        print(f"verl-avsd prep {args.command}: error: {printable(str(error))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
