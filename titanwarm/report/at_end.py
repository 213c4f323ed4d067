"""The trainer's end-of-run report (rank 0): summary.json, report.png and the console summary.

A report that cannot be made (matplotlib missing, a metrics file edited by hand) prints one line and
never fails a run that has trained.
"""

from __future__ import annotations

import sys


def write_run_report(dump_folder: str) -> None:
    """Write the report of the run in ``dump_folder`` and print its summary and file paths."""
    from titanwarm.report.summary import format_summary, write_report

    try:
        (summary,) = write_report([dump_folder])
    except Exception as e:  # noqa: BLE001 - the run itself is done; the report is a courtesy
        print(f"warning: run report not written: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return
    print(f"run summary ({dump_folder}):\n{format_summary(summary)}", flush=True)
