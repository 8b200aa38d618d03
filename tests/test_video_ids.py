"""One video-id rule for manifests, ground truth, evaluation and the report (issue #22)."""
import logging

import pytest

from vadclip import tiny_config
from vadclip.model.checkpoint import save_checkpoint
from vadclip.cli import main
from vadclip.metrics.evaluate import video_gt
from vadclip.jobs.manifest import load_manifest
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


def test_camera_folders_get_stable_readable_unique_ids(tmp_path):
    """An archive laid out camN/DATE/HH.mp4: the id of a video depends on its path alone
    (the same when one camera is listed or the whole archive, in any order), names made
    of digits take their folders, and two videos never share one."""
    from vadclip.io.ids import distinct_ids, named_id, path_video_id

    for cam in ("cam0", "cam1"):
        for day in ("2026-11-01", "2026-11-02"):
            for hh in ("00", "01"):
                (tmp_path / cam / day).mkdir(parents=True, exist_ok=True)
                (tmp_path / cam / day / f"{hh}.mp4").write_bytes(b"x")
    (tmp_path / "cam1" / "0001.mp4").write_bytes(b"x")
    one = {r["path"]: r["video_id"] for r in load_manifest(str(tmp_path / "cam1"))}
    every = {r["path"]: r["video_id"] for r in load_manifest(str(tmp_path))}
    assert all(every[p] == v for p, v in one.items())               # listing more changes nothing
    assert every[str(tmp_path / "cam1" / "2026-11-01" / "00.mp4")] == "cam1/2026-11-01/00"
    assert every[str(tmp_path / "cam1" / "0001.mp4")] == "cam1/0001"
    assert len(set(every.values())) == len(every) == 9
    (tmp_path / "cam0" / "0001.mp4").write_bytes(b"x")               # the archive grows
    grown = {r["path"]: r["video_id"] for r in load_manifest(str(tmp_path))}
    assert all(grown[p] == v for p, v in every.items()) and grown[str(tmp_path / "cam0" / "0001.mp4")] == "cam0/0001"
    # names with letters keep the basename rule: the official datasets' names
    assert path_video_id("/d/UCF/Arrest/Arrest001_x264.mp4") == "Arrest001_x264"
    # two lettered names in different folders: both take folders, whichever comes first
    a, b = "/s/siteA/cam1/clip.mp4", "/s/siteB/cam1/clip.mp4"
    assert distinct_ids([a, b]) == distinct_ids([b, a]) == {a: "siteA/cam1/clip", b: "siteB/cam1/clip"}
    # a folder's earlier id stays; the newcomer takes more folders
    assert distinct_ids([b], taken={"clip": a}) == {b: "cam1/clip"}
    # ground truth may name a video by its id or by its file
    assert named_id("cam1/2026-11-01/00") == "cam1/2026-11-01/00"
    assert named_id("/x/cam1/2026-11-01/00.mp4") == "cam1/2026-11-01/00"
    # a manifest's own ids win, and one id given to two videos is refused
    man = tmp_path / "m.csv"
    man.write_text(f"path,video_id\n{a},same\n{b},same\n")
    with pytest.raises(Exception, match="video_id 'same' is given to two videos"):
        load_manifest(str(man))


def test_a_folder_names_only_its_new_videos_and_they_get_what_the_whole_rule_gives():
    """A nightly plan names videos as Arrow columns (issue #45): the ids the output folder
    holds are kept, a manifest's own id stays unless the folder gives it to another path,
    and only the new paths go through the id rule, against just the held ids they could
    clash with.  That gives exactly what the rule gives with every held id in hand."""
    import random

    import pyarrow as pa

    from vadclip.io.ids import distinct_ids
    from vadclip.jobs.manifest import MANIFEST, with_ids

    rng = random.Random(7)
    folders = ["/a/cam1", "/a/cam2", "/b/cam1", "/b/cam1/2026-11-01", "/c/x/cam1/2026-11-01", "/s3/bucket"]
    names = ["00.mp4", "01.mp4", "clip.mp4", "0001.mp4", "gate.ts", "clip.mkv"]
    for trial in range(30):
        paths = sorted({f"{rng.choice(folders)}/{rng.choice(names)}" for _ in range(25)})
        held = rng.sample(paths, len(paths) // 2)
        named = distinct_ids(held)                        # what an earlier run gave them
        gone = {"/z/old/clip.mp4": "clip"} if "clip" not in named.values() else {}   # held, not listed now
        given = {p: f"given{i}" for i, p in enumerate(rng.sample(paths, 2))}
        if trial % 3 == 0 and held:                       # a given id the folder gives another path
            other = next(p for p in paths if p != held[0])
            given[other] = named[held[0]]
        rows = [{"path": p, "video_id": given.get(p), "label": None, "meta": "", "listed": ""} for p in paths]
        folder = pa.table({"path": list(named) + list(gone), "video_id": list(named.values()) + list(gone.values())})
        got = dict(zip(*(with_ids(pa.Table.from_pylist(rows, schema=MANIFEST), folder)[c].to_pylist()
                         for c in ("path", "video_id"))))
        assert all(got[p] == v for p, v in named.items())            # the folder's ids are kept
        taken = {v: p for p, v in {**gone, **named}.items()}
        kept = {p: v for p, v in given.items() if p not in named and taken.get(v, p) == p}
        assert all(got[p] == v for p, v in kept.items())             # a free given id stays
        free = [p for p in paths if p not in named and p not in kept]
        want = distinct_ids(free, {**taken, **{v: p for p, v in kept.items()}})
        assert {p: got[p] for p in free} == want                      # the rule with every held id in hand
        assert len(set(got.values())) == len(got)
        assert not set(got.values()) & set(gone.values())               # nor one a path no longer listed holds
