"""One video-id rule for manifests, ground truth, evaluation and the report (issue #22)."""
import logging

import pytest

from vadclip import tiny_config
from vadclip.model.checkpoint import save_checkpoint
from vadclip.cli import main
from vadclip.metrics.evaluate import video_gt
from vadclip.jobs.extract import load_manifest
from vadclip.io.features import parse_official_name, write_feature_table
from vadclip.io.gt import GroundTruthError, check_matches, read_gt, write_gt
from vadclip.io.ids import VIDEO_EXTENSIONS, video_id
from vadclip.model.network import build_model
from vadclip.testing.synthetic import make_feature_set


def test_every_extension_the_project_reads_gives_the_same_id():
    for ext in VIDEO_EXTENSIONS:
        assert video_id(f"s3://b/cams/cam1{ext}") == "cam1"
        assert video_id(f"C:\\cams\\cam1{ext.upper()}") == "cam1"
    assert video_id("Abuse001_x264__5.npy") == "Abuse001_x264"
    assert parse_official_name("/f/Abuse001_x264__5.npy") == ("Abuse001_x264", 5)
    # the official XD-Violence names carry dots and no extension
    xd = "A.Beautiful.Mind.2001__#00-25-20_00-29-20_label_A"
    assert video_id(xd) == xd and video_id(xd + "__0.npy") == xd
    assert video_id("notes.v2") == "notes.v2"     # not an extension the project reads


def test_ground_truth_named_with_m4v_ts_mpg_matches_the_manifest(tmp_path):
    cfg = tiny_config("custom", classes=["Normal", "Fighting"])
    man = tmp_path / "m.csv"
    man.write_text("path,label\ncams/cam1.m4v,Fighting\ncams/cam2.ts,Fighting\ncams/x.mpg,Normal\n")
    ids = [r["video_id"] for r in load_manifest(str(man))]
    assert ids == ["cam1", "cam2", "x"]
    write_gt([{"video_id": "cam1.m4v", "start_frame": 16, "end_frame": 48, "label": "Fighting"},
              {"video_id": "/data/cam2.ts", "start_frame": 0, "end_frame": 16, "label": "Fighting"}],
             str(tmp_path / "gt.csv"))
    gt = read_gt(str(tmp_path / "gt.csv"))
    assert check_matches(gt, str(tmp_path / "gt.csv"), ids) == 2
    frames, segs, _ = video_gt({"video_id": "cam1", "num_frames": 64, "snippet_count": 4, "label": "Fighting"}, gt, cfg)
    assert frames[16:48].all() and not frames[:16].any() and segs == [(16, 48)]


def test_ground_truth_that_matches_no_video_is_an_error_and_a_partial_match_a_warning():
    gt = {"a": [(0, 16, None)], "b": [(0, 16, None)], "c": [(0, 16, None)], "d": [(0, 16, None)]}
    with pytest.raises(GroundTruthError, match=r"gt.parquet: none of its 4 videos is among the scored videos "
                                               r"\(2\); it names a, b, c, … while the videos are x, y"):
        check_matches(gt, "gt.parquet", ["x", "y"])
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("vadclip.io.gt").addHandler(handler)
    try:
        assert check_matches(gt, "gt.parquet", ["a", "x"]) == 1
    finally:
        logging.getLogger("vadclip.io.gt").removeHandler(handler)
    assert seen == ["gt.parquet: 3 of its 4 videos are not among the scored videos; they are not evaluated"]


def test_evaluate_with_ground_truth_for_other_videos_is_one_line(tmp_path, capsys):
    cfg = tiny_config("custom", classes=["Normal", "Fighting"], visual_length=32, visual_layers=1)
    save_checkpoint(build_model(cfg), str(tmp_path / "model.pt"))
    rows, _ = make_feature_set(cfg, 2, 2, 32, seed=1)
    write_feature_table(rows, str(tmp_path / "f" / "part-0.parquet"))
    write_gt([{"video_id": "cam9.m4v", "start_frame": 0, "end_frame": 16, "label": "Fighting"}],
             str(tmp_path / "gt.parquet"))
    rc = main(["evaluate", "--model", str(tmp_path / "model.pt"), "--features", str(tmp_path / "f"),
               "--gt", str(tmp_path / "gt.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("vadclip ")]
    assert len(line) == 1 and "gt.parquet: none of its 1 videos" in line[0] and "cam9" in line[0]
