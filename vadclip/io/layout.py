"""What a job's output folder holds, named in this one place.

``vadclip extract --out OUT``: ``OUT/features/`` (one row per video and crop),
``OUT/errors/`` (one row per video that could not be processed), ``OUT/summary.json``.
``vadclip score --out OUT``: ``OUT/scores/``, ``OUT/score_errors/``,
``OUT/score_summary.json``, ``OUT/report/`` — and, with ``--videos``, the features it
extracted in ``OUT/features/`` and ``OUT/errors/`` as ``extract`` writes them.  Each table
is a Delta Lake table of Parquet parts (:mod:`vadclip.io.parts`).  A score row holds its
video's events; ``OUT/events/``, a table of its own before 2026-12-07, is no longer
written (:func:`vadclip.jobs.score.read_events` flattens them)."""
from __future__ import annotations

from vadclip.io import storage

FEATURES, EXTRACT_ERRORS, EXTRACT_SUMMARY = "features", "errors", "summary.json"
SCORES, SCORE_ERRORS, SCORE_SUMMARY, REPORT = "scores", "score_errors", "score_summary.json", "report"
EVENTS = "events"      # the events table of folders scored before 2026-12-07 (removed by the next scoring run)


def features_dir(out_dir: str) -> str:
    return storage.join(out_dir, FEATURES)


def extract_errors_dir(out_dir: str) -> str:
    return storage.join(out_dir, EXTRACT_ERRORS)


def scores_dir(out_dir: str) -> str:
    return storage.join(out_dir, SCORES)


def score_errors_dir(out_dir: str) -> str:
    return storage.join(out_dir, SCORE_ERRORS)


def events_dir(out_dir: str) -> str:
    return storage.join(out_dir, EVENTS)


def report_dir(out_dir: str) -> str:
    return storage.join(out_dir, REPORT)


FAILED_LISTED = 1000      # failures listed in a summary (all are counted)


def failed_videos(out_dir: str) -> list:
    """Every video the output folder records as failed, over every run: extraction's
    error rows, then scoring's (``[{video_id, path, stage, error}]``, sorted by id)."""
    from vadclip.io.parts import committed_table

    rows = []
    for d in (extract_errors_dir(out_dir), score_errors_dir(out_dir)):
        rows += committed_table(d, ["video_id", "path", "stage", "error"])
    return sorted(rows, key=lambda r: (str(r["video_id"]), str(r["stage"])))
