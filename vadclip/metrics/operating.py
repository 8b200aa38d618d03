"""Operating points: which alerts a control room gets from a model's snippet scores.

An :class:`EventRule` turns a video's anomaly scores into events: an event opens when
the score rises above ``threshold`` and closes when it falls to ``low`` or below (hysteresis;
``low`` = ``threshold`` when not given); events closer than ``merge_gap_s`` merge, and
events shorter than ``min_duration_s`` are dropped — durations in seconds, not snippets.

:func:`operating_stats` measures a rule on validation footage: false alarms per hour of
normal footage (videos labelled normal; all of it when no ground truth is given),
event recall (ground-truth intervals overlapped by at least one event), event
precision (events overlapping at least one ground-truth interval) and snippet-level
precision and recall.  An event and an interval match when they overlap by any time.
:func:`calibrate` picks the threshold: the lowest whose false alarms per hour stay at or
below a target, the highest whose event recall reaches a target, or the one with the
best event F1, over the candidate thresholds (the scores' own values), and returns the
curve it scanned.  No framework: numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from vadclip.errors import InputError


@dataclass(frozen=True)
class EventRule:
    threshold: float = 0.5
    low: Optional[float] = None          # hysteresis: an open event closes at or below this (default: threshold)
    min_duration_s: float = 0.0
    merge_gap_s: float = 0.0

    def events(self, scores: np.ndarray, snippet_s: float) -> List[Tuple[int, int]]:
        """[start, end) snippet runs of ``scores`` that are events under this rule."""
        low = self.threshold if self.low is None else min(self.low, self.threshold)
        runs, start = [], None
        for i, s in enumerate(np.asarray(scores, dtype=np.float64).tolist()):
            if start is None and s > self.threshold:
                start = i
            elif start is not None and s <= low:
                runs.append([start, i])
                start = None
        if start is not None:
            runs.append([start, len(scores)])
        merged: List[List[int]] = []
        for r in runs:
            if merged and (r[0] - merged[-1][1]) * snippet_s <= self.merge_gap_s:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        return [(a, b) for a, b in merged if (b - a) * snippet_s >= self.min_duration_s]


@dataclass
class Footage:
    """One validation video: its snippet scores, the seconds one snippet spans, whether
    it is normal footage, and its ground-truth intervals in seconds."""
    scores: np.ndarray
    snippet_s: float
    normal: bool = True
    gt: List[Tuple[float, float]] = field(default_factory=list)

    @property
    def hours(self) -> float:
        return len(self.scores) * self.snippet_s / 3600.0


def operating_stats(videos: Sequence[Footage], rule: EventRule) -> Dict[str, float]:
    normal_hours = sum(v.hours for v in videos if v.normal)
    alarms = hit_events = events = 0
    intervals = found = 0
    tp = fp = fn = 0
    for v in videos:
        ev = [(a * v.snippet_s, b * v.snippet_s) for a, b in rule.events(v.scores, v.snippet_s)]
        events += len(ev)
        if v.normal:
            alarms += len(ev)
        overlap = [any(s < ge and e > gs for gs, ge in v.gt) for s, e in ev]
        hit_events += sum(overlap)
        intervals += len(v.gt)
        found += sum(any(s < ge and e > gs for s, e in ev) for gs, ge in v.gt)
        t = (np.arange(len(v.scores)) + 0.5) * v.snippet_s           # snippet centres
        pred = np.zeros(len(v.scores), bool)
        for s, e in ev:
            pred |= (t >= s) & (t < e)
        truth = np.zeros(len(v.scores), bool)
        for gs, ge in v.gt:
            truth |= (t >= gs) & (t < ge)
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
    recall = found / intervals if intervals else float("nan")
    precision = hit_events / events if events else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if intervals and events and precision + recall > 0 else 0.0
    return {"threshold": rule.threshold, "false_alarms_per_hour": alarms / normal_hours if normal_hours else float("nan"),
            "false_alarms": alarms, "normal_hours": normal_hours, "events": events,
            "event_recall": recall, "event_precision": precision, "event_f1": f1,
            "frame_precision": tp / (tp + fp) if tp + fp else float("nan"),
            "frame_recall": tp / (tp + fn) if tp + fn else float("nan")}


def candidates(videos: Sequence[Footage], most: int = 400) -> np.ndarray:
    """The thresholds worth trying: the scores' own values (at most ``most`` of them,
    spread over their quantiles), ascending."""
    s = np.unique(np.concatenate([np.asarray(v.scores, np.float64) for v in videos]))
    if len(s) > most:
        s = np.unique(np.quantile(s, np.linspace(0, 1, most)))
    return s


def calibrate(videos: Sequence[Footage], base: EventRule = EventRule(), target_fa_per_hour: Optional[float] = None,
              target_recall: Optional[float] = None, max_f1: bool = False) -> Tuple[EventRule, Dict[str, float],
                                                                                   List[Dict[str, float]]]:
    """(the chosen rule, its statistics, the curve over the candidate thresholds).
    Hysteresis keeps ``base``'s gap below the threshold (``threshold - low``)."""
    if sum(x is not None and x is not False for x in (target_fa_per_hour, target_recall, max_f1 or None)) != 1:
        raise InputError("calibrate: give exactly one of --target-fa-per-hour, --target-recall, --max-f1")
    if not videos:
        raise InputError("calibrate: no validation videos")
    if (target_recall is not None or max_f1) and not any(v.gt for v in videos):
        raise InputError("calibrate: --target-recall and --max-f1 need ground truth with anomalous intervals")
    gap = 0.0 if base.low is None else base.threshold - base.low

    def rule_at(t: float) -> EventRule:
        return replace(base, threshold=float(t), low=None if base.low is None else float(t - gap))

    curve = [operating_stats(videos, rule_at(t)) for t in candidates(videos)]
    if target_fa_per_hour is not None:
        ok = [c for c in curve if c["false_alarms_per_hour"] <= target_fa_per_hour]
        pick = min(ok, key=lambda c: c["threshold"]) if ok else max(curve, key=lambda c: c["threshold"])
    elif target_recall is not None:
        ok = [c for c in curve if c["event_recall"] >= target_recall]
        if not ok:
            raise InputError(f"calibrate: no threshold reaches event recall {target_recall} on these videos")
        pick = max(ok, key=lambda c: c["threshold"])
    else:
        pick = max(curve, key=lambda c: (c["event_f1"], c["threshold"]))
    return rule_at(pick["threshold"]), pick, curve
