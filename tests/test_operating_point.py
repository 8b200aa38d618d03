"""Operating points on hand-made score curves whose right answer is known."""
import numpy as np
import pytest

from vadclip.errors import InputError
from vadclip.metrics.operating import EventRule, Footage, calibrate, operating_stats


def _hour_with_peaks(peaks, at=(600, 1800, 3000)):
    """One hour of 1-second snippets at 0.1, with a 10-second peak of each height."""
    s = np.full(3600, 0.1)
    for h, t in zip(peaks, at):
        s[t:t + 10] = h
    return s


def test_hysteresis_merge_gap_and_minimum_duration_in_seconds():
    s = np.array([0.2, 0.9, 0.5, 0.45, 0.9, 0.1, 0.95, 0.1])
    assert EventRule(0.8).events(s, 0.5) == [(1, 2), (4, 5), (6, 7)]
    assert EventRule(0.8, low=0.4).events(s, 0.5) == [(1, 5), (6, 7)]         # stays open above 0.4
    assert EventRule(0.8, merge_gap_s=1.0).events(s, 0.5) == [(1, 7)]          # gaps of 2 and 1 snippets = 1 s, 0.5 s
    assert EventRule(0.8, low=0.4, min_duration_s=1.0).events(s, 0.5) == [(1, 5)]   # 0.5 s event dropped
    assert EventRule(0.8).events(np.array([0.9, 0.9]), 1.0) == [(0, 2)]        # open at the end


def test_target_false_alarms_per_hour_without_ground_truth():
    # two hours of a camera's ordinary footage: peaks 0.9, 0.7, 0.5 in one hour, 0.8 in the other
    videos = [Footage(_hour_with_peaks([0.9, 0.7, 0.5]), 1.0), Footage(_hour_with_peaks([0.8]), 1.0)]
    rule, stats, curve = calibrate(videos, target_fa_per_hour=1.0)
    # at most 2 alarms in 2 hours: only the 0.9 and 0.8 peaks may fire, so the lowest such threshold is 0.7
    assert rule.threshold == pytest.approx(0.7)
    assert stats["false_alarms"] == 2 and stats["false_alarms_per_hour"] == pytest.approx(1.0)
    assert stats["normal_hours"] == pytest.approx(2.0)
    fa = [c["false_alarms_per_hour"] for c in curve]
    assert fa == sorted(fa, reverse=True)           # fewer alarms as the threshold rises
    rule0, stats0, _ = calibrate(videos, target_fa_per_hour=0.0)
    assert stats0["false_alarms"] == 0 and rule0.threshold == pytest.approx(0.9)


def test_target_recall_and_max_f1_with_ground_truth():
    normal = Footage(_hour_with_peaks([0.9]), 1.0)
    # two anomalous videos, each one incident: peaks 0.6 and 0.8 inside their intervals
    a = Footage(_hour_with_peaks([0.6]), 1.0, normal=False, gt=[(600.0, 610.0)])
    b = Footage(_hour_with_peaks([0.8]), 1.0, normal=False, gt=[(600.0, 610.0)])
    rule, stats, _ = calibrate([normal, a, b], target_recall=0.5)
    assert rule.threshold == pytest.approx(0.6)      # the highest threshold that still catches one incident
    assert stats["event_recall"] == 0.5 and stats["false_alarms_per_hour"] == pytest.approx(1.0)
    assert stats["event_precision"] == 0.5           # the normal hour's alarm matches no incident
    rule, stats, _ = calibrate([normal, a, b], target_recall=1.0)
    assert rule.threshold == pytest.approx(0.1) and stats["event_recall"] == 1.0
    # best event F1: at 0.1 both incidents and the one false alarm (recall 1, precision 2/3: F1 0.8);
    # at 0.6 one of each (0.5); above 0.8 only the false alarm (0)
    rule, stats, _ = calibrate([normal, a, b], max_f1=True)
    assert rule.threshold == pytest.approx(0.1) and stats["event_f1"] == pytest.approx(0.8)
    st = operating_stats([a], EventRule(0.5))
    assert st["frame_precision"] == 1.0 and st["frame_recall"] == 1.0


def test_calibrate_needs_one_target_and_ground_truth_for_recall():
    v = [Footage(_hour_with_peaks([0.9]), 1.0)]
    with pytest.raises(InputError, match="exactly one"):
        calibrate(v)
    with pytest.raises(InputError, match="ground truth"):
        calibrate(v, target_recall=0.5)


def test_calibrate_by_camera_gives_each_camera_its_threshold_and_a_fallback():
    """Issue #35: a noisy camera (normal peaks at 0.8) and a quiet one (0.4): at zero false
    alarms per hour each gets the threshold of its own highest normal peak, the fallback
    (all footage) the highest of both; a camera with too few videos keeps the fallback;
    stats judge each video by its camera's rule; the JSON keeps the groups."""
    from dataclasses import asdict

    from vadclip.metrics.operating import OperatingPoint, calibrate_by

    noisy = [Footage(_hour_with_peaks([0.8, 0.6]), 1.0, group="cam-street") for _ in range(2)]
    quiet = [Footage(_hour_with_peaks([0.4, 0.3]), 1.0, group="cam-hall") for _ in range(2)]
    lone = [Footage(_hour_with_peaks([0.2]), 1.0, group="cam-new")]
    base = EventRule(0.5, merge_gap_s=0.0)
    rule, stats, _, groups = calibrate_by(noisy + quiet + lone, base, min_videos=2, target_fa_per_hour=0.0)
    assert rule.threshold == pytest.approx(0.8) and stats["false_alarms"] == 0
    assert groups["cam-street"]["rule"]["threshold"] == pytest.approx(0.8)
    assert groups["cam-hall"]["rule"]["threshold"] == pytest.approx(0.4)
    assert groups["cam-new"] == {"videos": 1, "hours": 1.0, "fallback": "1 videos (fewer than 2)"}
    op = OperatingPoint(rule, by="camera", groups={g: x for g, x in groups.items() if "rule" in x})
    back = OperatingPoint.from_json(op.to_json())
    assert back.by == "camera" and back.group_rules()["cam-hall"] == EventRule(**groups["cam-hall"]["rule"])
    assert back.group_rules()["cam-hall"] != rule
    # the quiet camera at the fallback threshold would miss a 0.6 event its own rule finds
    event = Footage(_hour_with_peaks([0.6]), 1.0, normal=False, gt=[(600.0, 610.0)], group="cam-hall")
    assert operating_stats([event], rule)["event_recall"] == 0.0
    assert operating_stats([event], rule, back.group_rules())["event_recall"] == 1.0
    # an operating point without groups writes the JSON it always wrote
    assert "groups" not in OperatingPoint(rule).to_dict() and asdict(rule) == OperatingPoint(rule).to_dict()["rule"]
