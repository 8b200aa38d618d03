import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from vadclip.metrics.measures import detection_map, expand_snippets, frame_metrics, intervals_to_frames


def test_expand_snippets():
    s = np.array([0.1, 0.9])
    assert expand_snippets(s).tolist() == [0.1] * 16 + [0.9] * 16
    assert expand_snippets(s, 20).shape == (20,)
    assert expand_snippets(s, 40)[-1] == 0.9
    assert expand_snippets(np.ones((2, 3)), 30).shape == (30, 3)


def test_frame_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    gt = [intervals_to_frames([(10, 30)], 64), np.zeros(48, np.float32), intervals_to_frames([(0, 5)], 32)]
    scores = [rng.random(len(g)) + g * 0.5 for g in gt]
    m = frame_metrics(scores, gt)
    all_s, all_g = np.concatenate(scores), np.concatenate(gt)
    assert m["auc"] == pytest.approx(roc_auc_score(all_g, all_s))
    assert m["ap"] == pytest.approx(average_precision_score(all_g, all_s))
    ab_s = np.concatenate([scores[0], scores[2]])
    ab_g = np.concatenate([gt[0], gt[2]])
    assert m["auc_abnormal"] == pytest.approx(roc_auc_score(ab_g, ab_s))


def test_frame_metrics_perfect_and_mismatch():
    gt = [intervals_to_frames([(16, 32)], 64)]
    assert frame_metrics([gt[0].copy()], gt)["auc"] == 1.0
    with pytest.raises(ValueError, match="video 0: 10 frame scores but 64"):
        frame_metrics([np.zeros(10)], gt)


def _pred(num_frames, c, start, end, num_classes=3):
    p = np.full((num_frames, num_classes), 0.1)
    p[:, 0] = 0.8
    p[start:end, c] = 0.9
    p[start:end, 0] = 0.05
    return p


def test_detection_map_hand_built():
    # video 0: class-1 event exactly predicted; video 1: normal video
    preds = [_pred(100, 1, 20, 40), np.tile([0.9, 0.05, 0.05], (100, 1))]
    segs = [[(20, 40)], [(0, 100)]]
    labels = [[1], [0]]
    maps, avg = detection_map(preds, segs, labels)
    # class 1: one proposal, matches exactly → AP 1.  class 0: the normal curve of
    # video 0 thresholds to its two flanks ([0,20) and [40,100): no IoU ≥ 0.1 with
    # video 1's gt) and video 1 is flat (no proposal over threshold) → AP 0; class 2: 0.
    assert maps == pytest.approx([1 / 3] * 5)
    assert avg == pytest.approx(1 / 3)


def test_detection_map_iou_threshold():
    # predicted [20, 40) vs gt [20, 60): IoU = 0.5 → counted at 0.1..0.5
    preds = [_pred(100, 1, 20, 40, 2)]
    maps, _ = detection_map(preds, [[(20, 60)]], [[1]])
    # class 0 (no gt) → 0, class 1 → 1
    assert maps == pytest.approx([0.5] * 5)
    maps, _ = detection_map(preds, [[(20, 80)]], [[1]])   # IoU 1/3
    assert maps == pytest.approx([0.5, 0.5, 0.5, 0.0, 0.0])
