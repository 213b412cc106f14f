"""`verl-avsd`: the project's command line.

    verl-avsd demo      a real AVSD training run of a tiny local model on a toy task (CPU)
    verl-avsd signals   the per-token signal table (no model)
    verl-avsd prep ...  datasets -> verl parquet with privileged views
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="verl-avsd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["demo", "signals", "prep"])
    args = parser.parse_args(argv[:1])
    rest = argv[1:]  # the sub-command parses its own options
    if args.command == "demo":
        from verl_avsd.demo import main as run

        return run(rest)
    if args.command == "signals":
        from verl_avsd.signal_demo import main as run

        return run()
    from verl_avsd.data_prep.cli import main as run

    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
