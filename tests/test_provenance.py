"""Provenance (issue #24): feature sets and models that know where they came from, and
refuse what does not fit."""
import json

import pyarrow.parquet as pq
import pytest

from cli_output import one_error_line, result_json
from vadclip.io import provenance
from vadclip import tiny_config
from vadclip.model.checkpoint import save_checkpoint
from vadclip.cli import main
from vadclip.model.config import ClipSpec
from vadclip.jobs.extract import ExtractOptions, feature_provenance, run_extract
from vadclip.model.network import build_model

CLASSES = ["Normal", "Explosion", "Fighting", "RoadAccidents"]


@pytest.fixture(scope="module")
def extracted(ray_local, sample_videos, tmp_path_factory):
    """Three real videos extracted twice with the tiny CLIP: 16-frame snippets in fp32, and
    8-frame snippets in bf16."""
    d = tmp_path_factory.mktemp("prov")
    man = d / "m.csv"
    good = sample_videos["good"][1:4]      # two normal videos, one abnormal
    man.write_text("path,label\n" + "".join(f"{v['path']},{v['label']}\n" for v in good))
    for name, kw in (("s16", {"precision": "fp32"}), ("s8", {"snippet_len": 8, "precision": "bf16"})):
        run_extract(str(man), str(d / name), ExtractOptions(clip=ClipSpec.tiny(), batch_size=16, **kw),
                    log=lambda *_: None)
    return d, man


def test_every_part_records_its_provenance_and_a_folder_never_mixes_them(extracted, capsys):
    d, man = extracted
    parts = sorted((d / "s16" / "features").glob("part-*.parquet"))
    assert parts
    for p in parts:   # read with pyarrow itself, not through vadclip
        prov = json.loads(pq.read_schema(p).metadata[b"vadclip.io.provenance"])
        assert prov["clip_model"] == "vadclip-tiny" and prov["clip_pretrained"] is None
        assert prov["weights"] == "random-init (seeded)" and prov["image_size"] == 224   # vadclip-tiny.json
        assert prov["snippet_len"] == 16 and prov["frame_rule"].startswith("middle frame")
        assert prov["crops"] == 1 and prov["crop_rule"].startswith("short side resized")
        assert prov["precision"] == "fp32" and prov["decoder"] == "auto" and prov["vadclip_version"]
        assert len(prov["mean"]) == 3 and len(prov["std"]) == 3
    # the same folder, other settings: one line, exit 2, nothing written
    rc = main(["extract", str(man), "--out", str(d / "s16"), "--tiny-clip", "--snippet-len", "8"])
    assert rc == 2
    one_error_line(capsys.readouterr().err, "holds features of other settings", "snippet_len 16 vs 8",
                    "give another --out")
    assert sorted((d / "s16" / "features").glob("part-*.parquet")) == parts


def test_features_that_do_not_fit_the_model_are_refused_unless_allowed(extracted, tmp_path, capsys):
    """An 8-frame-snippet feature set scored with a model trained on 16-frame snippets:
    one line naming both sides, exit 2; --allow-feature-mismatch scores and records it."""
    d, _ = extracted
    cfg = tiny_config("custom", classes=CLASSES, visual_length=32, visual_layers=1,
                      feature_provenance=feature_provenance(ExtractOptions(clip=ClipSpec.tiny(), precision="fp32")))
    save_checkpoint(build_model(cfg), str(tmp_path / "m16.pt"))
    args = ["score", "--model", str(tmp_path / "m16.pt"), "--features", str(d / "s8" / "features"),
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--flush-seconds", "0"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    one_error_line(capsys.readouterr().err, str(d / "s8" / "features"), str(tmp_path / "m16.pt"),
                    "snippet_len 8 vs 16", "--allow-feature-mismatch")
    assert not (tmp_path / "refused" / "scores").exists()
    # the 16-frame set fits
    assert main([*args[:4], str(d / "s16" / "features"), *args[5:], "--out", str(tmp_path / "fits")]) == 0
    assert result_json(capsys.readouterr().out)["feature_mismatch"] is None
    # allowed: scored, and recorded in the summary, MLflow and the report
    assert main([*args, "--out", str(tmp_path / "allowed"), "--allow-feature-mismatch"]) == 0
    s = result_json(capsys.readouterr().out)
    assert "snippet_len 8 vs 16" in s["feature_mismatch"] and s["videos_scored"] == 3
    import mlflow

    run = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/m.db").get_run(s["mlflow_run_id"])
    assert "snippet_len 8 vs 16" in run.data.tags["vadclip.feature_mismatch"]
    assert "FEATURES DO NOT FIT THE MODEL" in (tmp_path / "allowed" / "report" / "index.html").read_text()
    # evaluate refuses alike
    from vadclip.io.gt import write_gt

    write_gt([{"video_id": "clip003", "start_frame": 0, "end_frame": 16, "label": "Explosion"}],
             str(tmp_path / "gt.parquet"))
    assert main(["evaluate", "--model", str(tmp_path / "m16.pt"), "--features", str(d / "s8" / "features"),
                 "--gt", str(tmp_path / "gt.parquet")]) == 2
    one_error_line(capsys.readouterr().err, "snippet_len 8 vs 16")


def test_compare_features_on_two_extractions_of_the_same_videos(extracted, sample_videos, tmp_path, capsys):
    d, _ = extracted
    from vadclip.jobs.extract import ExtractOptions as EO

    run_extract(str(d / "m.csv"), str(d / "s16bf16"), EO(clip=ClipSpec.tiny(), batch_size=16, precision="bf16"),
                log=lambda *_: None)
    assert main(["compare-features", str(d / "s16" / "features"), str(d / "s16bf16" / "features")]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["shared"] == 3 and out["only_a"] == 0 and out["only_b"] == 0
    assert 0.99 <= out["cosine"]["min"] <= out["cosine"]["mean"] <= 1.0 + 1e-9
    assert 0 < out["rel_l2"]["max"] < 0.1
    assert out["provenance_differences"] == ["precision fp32 vs bf16"]
    assert "cosine" in cap.err and "rel L2" in cap.err and "provenance differs: precision fp32 vs bf16" in cap.err
    # with a model: its metrics on each set, side by side
    from vadclip.io.gt import write_gt

    save_checkpoint(build_model(tiny_config("custom", classes=CLASSES, visual_length=32, visual_layers=1)),
                    str(tmp_path / "m.pt"))
    write_gt(sample_videos["gt"], str(tmp_path / "gt.parquet"))
    assert main(["compare-features", str(d / "s16" / "features"), str(d / "s16bf16" / "features"),
                 "--model", str(tmp_path / "m.pt"), "--gt", str(tmp_path / "gt.parquet")]) == 0
    cap = capsys.readouterr()
    m = json.loads(cap.out)["metrics"]
    assert m["a"]["videos"] == m["b"]["videos"] == 3 and 0 <= m["a"]["auc"] <= 1 and 0 <= m["b"]["auc"] <= 1
    assert abs(m["a"]["auc"] - m["b"]["auc"]) < 0.05 and "model on A: AUC" in cap.err
    # another snippet length: every video differs in its snippet count
    assert main(["compare-features", str(d / "s16" / "features"), str(d / "s8" / "features")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["snippet_count_differs"] == 3 and any(x.startswith("snippet_len") for x in out["provenance_differences"])


def test_official_release_and_vadclip_extraction_agree_on_tags():
    off = provenance.official(range(10), "0")
    mine = dict(provenance.official(range(10), "0"), weights="a" * 64, source="vadclip extract")
    assert provenance.differences(off, mine) == []          # a digest against the release's tag: the tags decide
    assert provenance.differences(off, dict(mine, snippet_len=8)) == ["snippet_len 16 vs 8"]
    assert provenance.differences(dict(mine, weights="b" * 64), mine) == [
        "weights sha256:bbbbbbbbbbbb vs sha256:aaaaaaaaaaaa"]
    assert provenance.mismatch(None, mine, "m", "f") is None  # unknown: nothing to compare
    # a vadclip extraction of raw videos fits an official checkpoint (scored with --videos)
    from vadclip.model.config import ClipSpec as CS
    from vadclip.clip.weights import Weights

    w = Weights("ViT-B-16", "openai", "c" * 64, 1, "/x", True, {"mean": list(provenance.OPENAI_MEAN),
                                                                  "std": list(provenance.OPENAI_STD)})
    ours = feature_provenance(ExtractOptions(clip=CS("ViT-B-16", "openai"), crops=1), w)
    assert provenance.differences(off, ours) == []
    assert provenance.differences(off, dict(ours, snippet_len=32)) == ["snippet_len 16 vs 32"]


def test_auto_precision_resolves_once_per_folder_and_is_recorded(ray_local, sample_videos, tmp_path, capsys):
    """--precision auto picks a precision in a folder's first run and records it; later
    auto runs use the same one (never a folder of mixed precisions), and a run asking for
    another precision by name is refused in one line."""
    out = tmp_path / "auto"
    first, second = sample_videos["good"][:2]
    man = tmp_path / "one.csv"
    man.write_text(f"path,label\n{first['path']},{first['label']}\n")
    lines = []
    run_extract(str(man), str(out), ExtractOptions(clip=ClipSpec.tiny(), batch_size=16), log=lines.append)
    chosen = provenance.read(str(out / "features"))["precision"]
    assert chosen in ("fp32", "bf16") and any(f"precision auto: {chosen}" in ln for ln in lines)
    man.write_text(man.read_text() + f"{second['path']},{second['label']}\n")
    s = run_extract(str(man), str(out), ExtractOptions(clip=ClipSpec.tiny(), batch_size=16), log=lambda *_: None)
    assert s["videos_ok"] == 1 and s["precisions"] == [chosen]
    assert {json.loads(pq.read_schema(p).metadata[b"vadclip.io.provenance"])["precision"]
            for p in (out / "features").glob("part-*.parquet")} == {chosen}
    other = "bf16" if chosen == "fp32" else "fp32"
    rc = main(["extract", str(man), "--out", str(out), "--tiny-clip", "--precision", other])
    assert rc == 2
    one_error_line(capsys.readouterr().err, "holds features of other settings", f"precision {chosen} vs {other}")
