"""What a job's output folder holds, named in this one place.

``vadclip extract --out OUT``: ``OUT/features/`` (one row per video and crop),
``OUT/errors/`` (one row per video that could not be processed), ``OUT/summary.json``.
``vadclip score --out OUT``: ``OUT/scores/``, ``OUT/score_errors/``,
``OUT/score_summary.json``, ``OUT/report/`` — and, with ``--videos``, the features it
extracted in ``OUT/features/`` and ``OUT/errors/`` as ``extract`` writes them.  Each table
is a folder of committed Parquet parts (:mod:`vadclip.io.parts`)."""
from __future__ import annotations

from vadclip.io import storage

FEATURES, EXTRACT_ERRORS, EXTRACT_SUMMARY = "features", "errors", "summary.json"
SCORES, SCORE_ERRORS, SCORE_SUMMARY, REPORT = "scores", "score_errors", "score_summary.json", "report"


def features_dir(out_dir: str) -> str:
    return storage.join(out_dir, FEATURES)


def extract_errors_dir(out_dir: str) -> str:
    return storage.join(out_dir, EXTRACT_ERRORS)


def scores_dir(out_dir: str) -> str:
    return storage.join(out_dir, SCORES)


def score_errors_dir(out_dir: str) -> str:
    return storage.join(out_dir, SCORE_ERRORS)


def report_dir(out_dir: str) -> str:
    return storage.join(out_dir, REPORT)
