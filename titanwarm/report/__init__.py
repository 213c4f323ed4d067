"""The run's picture: ``report.png`` (curves) and ``summary.json`` (numbers) from ``metrics.jsonl``.

Written by the trainer at the end of a run (rank 0) and on demand with
``python -m titanwarm.report DUMP_FOLDER [DUMP_FOLDER ...]`` (several folders overlay their curves).
``summary.py`` reads the records and sums a run up (no plotting dependency); ``plots.py`` draws the
panels with matplotlib, which plain training does not need.
"""

from titanwarm.report.summary import RunRecords, format_summary, read_run, summarize, write_report

__all__ = ["RunRecords", "format_summary", "read_run", "summarize", "write_report"]
