"""`verl-avsd`: the project's command line.

verl-avsd demo      a real AVSD training run of a tiny local model on a toy task (CPU)
verl-avsd signals   the per-token signal table (no model)
verl-avsd prep ...  datasets -> verl parquet with privileged views
verl-avsd eval ...  Avg@k / pass@k (math) and pass@1 (code) of a model or checkpoint
verl-avsd report RUN_DIR [RUN_DIR ...]   plots and a markdown summary of runs
verl-avsd prep-model smollm2 --out DIR   a real pretrained chat model as an HF folder (offline)
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> module whose `main(argv) -> int` runs it (imported only when chosen)
COMMANDS = {
    "demo": "verl_avsd.demo",
    "signals": "verl_avsd.signal_demo",
    "prep": "verl_avsd.data_prep.cli",
    "eval": "verl_avsd.evaluate",
    "report": "verl_avsd.report",
    "prep-model": "verl_avsd.real_model",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="verl-avsd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS))
    args = parser.parse_args(argv[:1])
    rest = argv[1:]  # the sub-command parses its own options
    return importlib.import_module(COMMANDS[args.command]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
