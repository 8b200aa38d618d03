import csv

import numpy as np
import pyarrow.parquet as pq
import pytest

from vadclip.model.config import LabelError, VadConfig
from vadclip.io.features import (FeatureError, check_features, import_release, process_train,
                              read_feature_rows, row_features, split_chunks, uniform_extract)
from vadclip.io.gt import convert_ucf_annotations, convert_xd_annotations, read_gt, write_gt


def test_labels_presets():
    ucf = VadConfig.from_preset("ucf")
    assert ucf.num_classes == 14 and ucf.attn_window == 8 and ucf.visual_layers == 2
    assert ucf.label_vector("Abuse").tolist() == [0, 1] + [0] * 12
    xd = VadConfig.from_preset("xd")
    assert xd.num_classes == 7 and xd.attn_window == 64 and xd.lr == 1e-5
    v = xd.label_vector("B2-B1-0")
    assert v.tolist() == [0, 1, 1, 0, 0, 0, 0]
    assert xd.is_normal("A") and not xd.is_normal("B4-0-0")
    custom = VadConfig.from_preset("custom", classes=["normal", "fire", "fall"])
    assert custom.label_vector("fire-fall").tolist() == [0, 1, 1]
    with pytest.raises(LabelError, match="unknown label 'Jaywalking'"):
        ucf.label_vector("Jaywalking")
    with pytest.raises(LabelError, match="'B9'"):
        xd.label_vector("B9-0-0")
    roundtrip = VadConfig.from_dict(xd.to_dict())
    assert roundtrip == xd


def test_bare_config_is_the_ucf_preset():
    # the dataclass field ``preset`` is a plain string (no classmethod shadows it)
    bare = VadConfig()
    assert bare.preset == "ucf" and isinstance(bare.to_json(), str)
    assert bare == VadConfig.from_preset("ucf")
    assert VadConfig.from_dict(bare.to_dict()) == bare


def test_uniform_extract_matches_official_definition():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(300, 4)).astype(np.float32)
    out = uniform_extract(feat, 256)
    r = np.linspace(0, 300, 257, dtype=np.int32)
    for i in range(256):
        exp = feat[r[i]:r[i + 1]].mean(0) if r[i] != r[i + 1] else feat[r[i]]
        np.testing.assert_allclose(out[i], exp, rtol=1e-5, atol=1e-6)
    f, n = process_train(feat[:100], 256)
    assert f.shape == (256, 4) and n == 100 and np.all(f[100:] == 0)


def test_split_chunks():
    feat = np.arange(600, dtype=np.float32).reshape(300, 2)
    chunks, lengths = split_chunks(feat, 128)
    assert chunks.shape == (3, 128, 2) and lengths.tolist() == [128, 128, 44]
    np.testing.assert_array_equal(chunks.reshape(-1, 2)[:300], feat)


def test_bad_features_are_clear_errors():
    with pytest.raises(FeatureError, match="clip.npy: wrong feature dim 256, expected 512"):
        check_features(np.zeros((5, 256)), "clip.npy", 512)
    with pytest.raises(FeatureError, match="v.npy: empty video features"):
        check_features(np.zeros((0, 512)), "v.npy", 512)
    with pytest.raises(FeatureError, match="NaN"):
        check_features(np.full((2, 2), np.nan), "n.npy")


def test_official_import_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "feats"
    d.mkdir()
    arrays = {}
    rows = []
    for name, label in [("Abuse001_x264", "Abuse"), ("Normal_Videos_003_x264", "Normal")]:
        for k in range(2):
            a = rng.normal(size=(rng.integers(5, 30), 512)).astype(np.float32)
            p = d / f"{name}__{k}.npy"
            np.save(p, a)
            arrays[(name, k)] = a
            rows.append({"path": f"/original/machine/{p.name}", "label": label})
    # bad rows: wrong dim, unknown label, missing file
    np.save(d / "Bad001_x264__0.npy", np.zeros((4, 256), np.float32))
    rows.append({"path": "Bad001_x264__0.npy", "label": "Abuse"})
    np.save(d / "Odd001_x264__0.npy", np.zeros((4, 512), np.float32))
    rows.append({"path": "Odd001_x264__0.npy", "label": "Jaywalking"})
    rows.append({"path": "Gone001_x264__0.npy", "label": "Abuse"})
    csv_path = tmp_path / "list.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "label"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "features.parquet"
    counts = import_release(str(csv_path), str(out), VadConfig.from_preset("ucf"), roots=[str(d)])
    assert counts == {"rows": 4, "errors": 3}
    back = read_feature_rows(str(out))
    assert len(back) == 4
    for r in back:
        np.testing.assert_array_equal(row_features(r), arrays[(r["video_id"], r["crop"])])
        assert r["snippet_count"] == arrays[(r["video_id"], r["crop"])].shape[0]
    errs = pq.read_table(str(out) + ".errors.parquet").to_pylist()
    msgs = " | ".join(e["error"] for e in errs)
    assert "wrong feature dim 256" in msgs and "Jaywalking" in msgs and "not found" in msgs


def test_ground_truth_converters(tmp_path):
    ucf = tmp_path / "Temporal_Anomaly_Annotation.txt"
    ucf.write_text("Abuse028_x264.mp4  Abuse  165  240  -1  -1\n"
                   "Arson011_x264.mp4  Arson  150  420  680  1267\n"
                   "Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1\n")
    rows = convert_ucf_annotations(str(ucf))
    assert [(r["video_id"], r["start_frame"], r["end_frame"]) for r in rows] == [
        ("Abuse028_x264", 165, 240), ("Arson011_x264", 150, 420), ("Arson011_x264", 680, 1267)]
    xd = tmp_path / "annotations.txt"
    xd.write_text("A.Beautiful.Mind.2001__#00-25-20_00-29-20_label_B2-0-0 1 66 800 900\n")
    xrows = convert_xd_annotations(str(xd))
    assert [(r["start_frame"], r["end_frame"], r["label"]) for r in xrows] == [(1, 66, "B2-0-0"), (800, 900, "B2-0-0")]
    p = tmp_path / "gt.parquet"
    write_gt(rows, str(p))
    gt = read_gt(str(p))
    assert gt["Arson011_x264"] == [(150, 420, "Arson"), (680, 1267, "Arson")]
    c = tmp_path / "gt.csv"
    write_gt(rows, str(c))
    assert read_gt(str(c)) == gt
