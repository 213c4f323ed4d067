"""``python -m titanwarm.report DUMP_FOLDER [DUMP_FOLDER ...] [--output PNG]``: the run report.

Writes ``summary.json`` into each dump folder, one ``report.png`` overlaying the runs (into the dump
folder for one run; ``--output``, default ``./report.png``, for several) and prints each summary.
Exit status 2 when a folder holds no readable metrics.
"""

from __future__ import annotations

import argparse
import sys

from titanwarm.report.summary import ReportError, format_summary, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m titanwarm.report", description=__doc__.split("\n\n")[1])
    parser.add_argument("folders", nargs="+", help="dump folders (job.dump_folder) of finished or running runs")
    parser.add_argument("--output", help="PNG path (default: DUMP/report.png for one run, ./report.png for several)")
    args = parser.parse_args(argv)
    try:
        summaries = write_report(args.folders, args.output)
    except ReportError as e:
        print(f"report error: {e}", file=sys.stderr)
        return 2
    for s in summaries:
        print(f"{s['dump_folder']}:\n{format_summary(s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
