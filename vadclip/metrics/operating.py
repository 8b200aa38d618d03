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
curve it scanned.  An :class:`OperatingPoint` is the chosen rule with how it was chosen
and what it gave on the validation footage, as the small JSON document stored on a
registered model version (or in a file beside a model file).  No framework: numpy only.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vadclip.errors import InputError


def snippet_times_for(times, n: int) -> Optional[np.ndarray]:
    """``times`` as the boundaries of ``n`` snippets (``n + 1`` seconds), or None where
    there are none or they do not fit (then the frame rate gives the seconds)."""
    if times is None or len(times) != n + 1:
        return None
    return np.asarray(times, np.float64)


@dataclass(frozen=True)
class EventRule:
    threshold: float = 0.5
    low: Optional[float] = None          # hysteresis: an open event closes at or below this (default: threshold)
    min_duration_s: float = 0.0
    merge_gap_s: float = 0.0

    def events(self, scores: np.ndarray, snippet_s: float, times: Optional[np.ndarray] = None) -> List[Tuple[int, int]]:
        """[start, end) snippet runs of ``scores`` that are events under this rule; gaps and
        durations in seconds from ``times`` (where each snippet starts, and the last ends:
        a variable-frame-rate video's) when given, else ``snippet_s`` per snippet."""
        t = snippet_times_for(times, len(scores))
        if t is not None:
            span = lambda a, b: float(t[b] - t[a])          # noqa: E731
        else:
            span = lambda a, b: (b - a) * snippet_s          # noqa: E731
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
            if merged and span(merged[-1][1], r[0]) <= self.merge_gap_s:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        return [(a, b) for a, b in merged if span(a, b) >= self.min_duration_s]


    @property
    def hysteresis(self) -> float:
        """How far below the threshold an open event closes (0: no hysteresis)."""
        return 0.0 if self.low is None else max(0.0, self.threshold - self.low)

    def at(self, threshold: float) -> "EventRule":
        """This rule at another threshold, keeping its hysteresis gap."""
        return replace(self, threshold=float(threshold),
                       low=None if self.low is None else float(threshold) - self.hysteresis)

    def describe(self) -> str:
        out = f"score > {self.threshold:.4g}"
        if self.low is not None:
            out += f" (an event stays open down to {self.low:.4g})"
        return out + (f"; events merged across gaps ≤ {self.merge_gap_s:g} s, at least "
                      f"{self.min_duration_s:g} s long")


# without an operating point: the fixed threshold of earlier versions, one-second gaps merged
DEFAULT_RULE = EventRule(threshold=0.5, low=None, min_duration_s=0.0, merge_gap_s=1.0)


@dataclass
class OperatingPoint:
    """An :class:`EventRule` chosen for a model, how it was chosen (``chosen_by``: the
    target, e.g. ``{"target_fa_per_hour": 1.0}``), what it gave on the validation footage
    (``on_validation``: :func:`operating_stats`) and on which footage (``features``)."""
    rule: EventRule
    chosen_by: Dict[str, Any] = field(default_factory=dict)
    on_validation: Dict[str, float] = field(default_factory=dict)
    features: Optional[str] = None
    model: Optional[str] = None
    created: Optional[str] = None
    # ``calibrate --by COLUMN``: one rule per value of that manifest column (e.g. each
    # camera), ``groups[value] = {"rule": {...}, "on_validation": {...}, "videos": n}``;
    # ``rule`` is then the fallback for any other value (calibrated on all the footage)
    by: Optional[str] = None
    groups: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["on_validation"] = _finite(self.on_validation)
        d["groups"] = {k: dict(g, on_validation=_finite(g.get("on_validation") or {})) for k, g in self.groups.items()}
        if self.by is None:        # the JSON of an operating point without groups is as before
            del d["by"], d["groups"]
        return d

    def group_rules(self) -> Dict[str, EventRule]:
        """{value: its rule} of an operating point calibrated ``--by`` a column (else {})."""
        return {k: _rule_of(g["rule"]) for k, g in self.groups.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "operating point") -> "OperatingPoint":
        try:
            rule = _rule_of(d["rule"])
            groups = {str(k): dict(g) for k, g in (d.get("groups") or {}).items()}
            for g in groups.values():
                _rule_of(g["rule"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"{where}: not a vadclip operating point ({type(e).__name__}: {e}); "
                             "expected the JSON written by `vadclip calibrate`") from None
        return cls(rule, dict(d.get("chosen_by") or {}), dict(d.get("on_validation") or {}), d.get("features"),
                   d.get("model"), d.get("created"), d.get("by"), groups)

    @classmethod
    def from_json(cls, text: str, where: str = "operating point") -> "OperatingPoint":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise InputError(f"{where}: not JSON ({e})") from None
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, where)


def _rule_of(r: Dict[str, Any]) -> EventRule:
    return EventRule(threshold=float(r["threshold"]), low=None if r.get("low") is None else float(r["low"]),
                     min_duration_s=float(r.get("min_duration_s", 0.0)), merge_gap_s=float(r.get("merge_gap_s", 0.0)))


def _finite(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


@dataclass
class Footage:
    """One validation video: its snippet scores, the seconds one snippet spans, whether
    it is normal footage, and its ground-truth intervals in seconds."""
    scores: np.ndarray
    snippet_s: float
    normal: bool = True
    gt: List[Tuple[float, float]] = field(default_factory=list)
    group: Optional[str] = None      # its value of the column calibrated --by (e.g. its camera)
    # a variable-frame-rate video: where each snippet starts and the last ends (s)
    times: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.times = snippet_times_for(self.times, len(self.scores))

    @property
    def hours(self) -> float:
        if self.times is not None:
            return float(self.times[-1] - self.times[0]) / 3600.0
        return len(self.scores) * self.snippet_s / 3600.0

    def seconds(self, a: int, b: int) -> Tuple[float, float]:
        """Where the snippets [a, b) start and end (s)."""
        if self.times is not None:
            return float(self.times[a]), float(self.times[b])
        return a * self.snippet_s, b * self.snippet_s

    @property
    def centres(self) -> np.ndarray:
        if self.times is not None:
            return (self.times[:-1] + self.times[1:]) / 2
        return (np.arange(len(self.scores)) + 0.5) * self.snippet_s


def operating_stats(videos: Sequence[Footage], rule: EventRule,
                    group_rules: Optional[Dict[str, EventRule]] = None) -> Dict[str, float]:
    """What ``rule`` gives on ``videos``: false alarms per hour of normal footage, event
    recall and precision, frame precision and recall.  ``group_rules``: a video whose
    group has a rule of its own is judged by that one (``rule`` for the rest)."""
    group_rules = group_rules or {}
    normal_hours = sum(v.hours for v in videos if v.normal)
    alarms = hit_events = events = 0
    intervals = found = 0
    tp = fp = fn = 0
    for v in videos:
        r = group_rules.get(v.group, rule) if v.group is not None else rule
        ev = [v.seconds(a, b) for a, b in r.events(v.scores, v.snippet_s, v.times)]
        events += len(ev)
        if v.normal:
            alarms += len(ev)
        overlap = [any(s < ge and e > gs for gs, ge in v.gt) for s, e in ev]
        hit_events += sum(overlap)
        intervals += len(v.gt)
        found += sum(any(s < ge and e > gs for s, e in ev) for gs, ge in v.gt)
        t = v.centres
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


def footage_of(row: Dict[str, Any], anomaly: np.ndarray, snippet_len: int, gt=None, normal_label=None) -> Footage:
    """One scored video as validation footage.  ``row``: its fps and frame count (and
    ``video_id``, ``label``); ``gt``: ground-truth intervals {video_id: [(start_frame,
    end_frame, label)]}, or None when there is none (then all footage counts as normal).
    With ground truth a video is normal footage when it has no interval and its label,
    if any, is normal (``normal_label(label) -> bool``, e.g. ``cfg.is_normal``; a label it
    cannot read counts as not normal); an abnormal-labelled video
    without intervals counts for neither side."""
    from vadclip.io.gt import intervals_of

    from vadclip.io.features import times_of

    fps = float(row.get("fps") or 0.0) or 30.0
    times = snippet_times_for(times_of(row), len(anomaly))
    if times is None:
        at = lambda f: f / fps                                             # noqa: E731
    else:   # frames to seconds through the snippets' times (a variable-frame-rate video)
        marks = np.minimum(np.arange(len(times)) * snippet_len, int(row.get("num_frames") or 0) or 1 << 62)
        at = lambda f: float(np.interp(f, marks, times))                   # noqa: E731
    ivs = [] if gt is None else [(at(s), at(e)) for s, e, _ in intervals_of(gt, row["video_id"])]
    normal = True
    if gt is not None:
        normal = not ivs and (not row.get("label") or normal_label is None or _says_normal(normal_label, row["label"]))
    return Footage(np.asarray(anomaly, np.float64), snippet_len / fps, normal, ivs, times=times)


def _says_normal(normal_label, label: str) -> bool:
    """``normal_label(label)``; a label it cannot read (an unknown class) is not normal."""
    try:
        return bool(normal_label(label))
    except InputError:
        return False


def curve(videos: Sequence[Footage], base: EventRule = DEFAULT_RULE) -> List[Dict[str, float]]:
    """:func:`operating_stats` at each candidate threshold (``base``'s other settings)."""
    return [operating_stats(videos, base.at(t)) for t in candidates(videos)]


def candidates(videos: Sequence[Footage], most: int = 400) -> np.ndarray:
    """The thresholds worth trying: the scores' own values (at most ``most`` of them,
    spread over their quantiles), ascending."""
    s = np.unique(np.concatenate([np.asarray(v.scores, np.float64) for v in videos]))
    if len(s) > most:
        s = np.unique(np.quantile(s, np.linspace(0, 1, most)))
    return s


def calibrate(videos: Sequence[Footage], base: EventRule = DEFAULT_RULE, target_fa_per_hour: Optional[float] = None,
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
    if target_fa_per_hour is not None and not any(v.normal for v in videos):
        raise InputError("calibrate: --target-fa-per-hour needs normal footage (videos without ground-truth "
                         "intervals whose label is normal); these videos have none")
    scanned = curve(videos, base)
    if target_fa_per_hour is not None:
        ok = [c for c in scanned if c["false_alarms_per_hour"] <= target_fa_per_hour]
        # the highest candidate (the top score) opens no event, so some threshold always qualifies
        pick = min(ok, key=lambda c: c["threshold"]) if ok else max(scanned, key=lambda c: c["threshold"])
    elif target_recall is not None:
        ok = [c for c in scanned if c["event_recall"] >= target_recall]
        if not ok:
            raise InputError(f"calibrate: no threshold reaches event recall {target_recall} on these videos")
        pick = max(ok, key=lambda c: c["threshold"])
    else:
        pick = max(scanned, key=lambda c: (c["event_f1"], c["threshold"]))
    return base.at(pick["threshold"]), pick, scanned


def calibrate_by(videos: Sequence[Footage], base: EventRule = DEFAULT_RULE, min_videos: int = 1,
                 **target) -> Tuple[EventRule, Dict[str, float], List[Dict[str, float]], Dict[str, Dict[str, Any]]]:
    """:func:`calibrate` once over all ``videos`` (the fallback rule, its statistics and
    curve) and once over each group's (``Footage.group``, e.g. each camera's).  A group
    that cannot be calibrated on its own (fewer than ``min_videos`` videos, or no normal
    footage for a false-alarm target, no ground truth for a recall target) keeps the
    fallback and says why.  Returns (fallback rule, its stats, its curve, groups) where
    ``groups[value]`` = {"rule", "on_validation", "videos", "hours"} or, for one left on
    the fallback, {"fallback": why, "videos", "hours"}."""
    rule, stats, scanned = calibrate(videos, base, **target)
    groups: Dict[str, Dict[str, Any]] = {}
    for g in sorted({v.group for v in videos if v.group is not None}):
        mine = [v for v in videos if v.group == g]
        info = {"videos": len(mine), "hours": sum(v.hours for v in mine)}
        if len(mine) < min_videos:
            groups[g] = dict(info, fallback=f"{len(mine)} videos (fewer than {min_videos})")
            continue
        try:
            r, st, _ = calibrate(mine, base, **target)
        except InputError as e:
            groups[g] = dict(info, fallback=str(e).replace("calibrate: ", ""))
            continue
        groups[g] = dict(info, rule=asdict(r), on_validation=st)
    return rule, stats, scanned, groups
