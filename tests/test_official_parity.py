"""``padding="paper"`` (formerly "official") against an independent re-implementation of the official
VadCLIP code (vadclip.testing.reference.official_*): forward outputs on padded batches, the
loss, every parameter's gradient, and per-snippet scores of the official test
procedure, for both presets (issue #11)."""
import numpy as np
import pytest
import torch

from vadclip import VadCLIP, tiny_config
from vadclip.model.config import ClipSpec
from vadclip.model.losses import vadclip_loss
from vadclip.model.network import score_video
from vadclip.testing.reference import official_forward, official_test_scores, reference_loss

LENGTHS = [1, 5, 37, 200, 256]
LABELS = {"ucf": ["Normal", "Abuse", "Normal", "Vandalism", "Fighting"],
          "xd": ["A", "B2-B1-0", "A", "G-0-0", "B6-0-0"]}


@pytest.fixture(scope="module", params=["ucf", "xd"])
def official_model(request, tiny_clip):
    torch.manual_seed(11)
    cfg = tiny_config(request.param)                 # the presets default to official padding
    assert cfg.padding == "paper" and cfg.visual_length == 256
    model = VadCLIP(cfg, tiny_clip)
    with torch.no_grad():   # weights far from init, so padded positions really move the outputs
        for name, p in model.named_parameters():
            if not name.startswith("prompt."):
                p.add_(0.05 * torch.randn_like(p))
    return model


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(LENGTHS), 256, model.embed_dim)
    for i, n in enumerate(LENGTHS):
        x[i, :n] = torch.randn(n, model.embed_dim, generator=g)
    labels = torch.stack([torch.from_numpy(model.cfg.label_vector(s)) for s in LABELS[model.cfg.preset]])
    return x, torch.tensor(LENGTHS), labels


def test_forward_equals_the_official_forward_on_padded_batches(official_model):
    x, lengths, _ = _batch(official_model)
    official_model.eval()
    with torch.no_grad():
        mine, ref = official_model(x, lengths), official_forward(official_model, x, lengths)
    # every position, padded ones included: official mode computes them as the official code
    torch.testing.assert_close(mine.logits_c, ref.logits_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.logits_a, ref.logits_a, atol=1e-5, rtol=1e-5)
    # and the padding really matters in this mode: a short video alone, unpadded, differs
    with torch.no_grad():
        alone = official_model.cfg.replace(padding="masked")
        masked = VadCLIP(alone, official_model.clip)
        masked.load_state_dict(official_model.state_dict())
        diff = (masked(x, lengths).logits_c - mine.logits_c)[1, :5].abs().max()
    assert diff > 1e-3


def test_loss_and_every_gradient_equal_the_official_recipe(official_model):
    x, lengths, labels = _batch(official_model, seed=1)
    official_model.train()
    params = [p for p in official_model.parameters() if p.requires_grad]

    def grads(loss):
        return torch.autograd.grad(loss, params)

    mine, _ = vadclip_loss(official_model(x, lengths), labels, lengths, official_model.cfg.contrast_weight)
    ref = reference_loss(official_forward(official_model, x, lengths), labels, lengths,
                         official_model.cfg.contrast_weight)
    assert mine.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for p, g1, g2 in zip(params, grads(mine), grads(ref)):
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("t", [1, 5, 37, 200, 256, 700])
def test_scores_equal_the_official_test_procedure(official_model, t):
    feat = np.random.default_rng(t).normal(size=(t, official_model.embed_dim)).astype(np.float32)
    a_ref, p_ref = official_test_scores(official_model, feat)
    a, p = score_video(official_model, feat)
    np.testing.assert_allclose(a, a_ref, atol=1e-5)
    np.testing.assert_allclose(p, p_ref, atol=1e-5)
    # a video's scores never depend on the other videos of a batch: score_video batches
    # its own chunks only, and each chunk's forward is independent of the others
    a2, _ = score_video(official_model, feat, chunk_batch=1)
    np.testing.assert_allclose(a2, a, atol=1e-6)


def test_old_checkpoints_without_the_option_load_as_masked(official_model):
    d = official_model.cfg.to_dict()
    d.pop("padding")
    assert type(official_model.cfg).from_dict(d).padding == "masked"
    assert tiny_config("custom", classes=["n", "a"]).padding == "masked"


# ------------------------------------------------------------- mAP ground truth
XD_MULTI = """\
Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6 B2 157 180 G 185 244 B2 250 282 G 282 355 G 582 810 B6 338 360
Bullet.in.the.Head.1990__#00-41-30_00-44-16_label_B4-G-0 B4 388 3425 G 3626 3668
v=U6MC8JJJZSY__#1_label_G-0-0.mp4 G 150 779
Desperado.1995__#00-16-48_00-18-52_label_B1-0-0 B1 40 110 B1 2190  2310
"""
UCF_TEMPORAL = """\
Arrest001_x264.mp4  Arrest  1185  1485  -1  -1
Burglary005_x264.mp4  Burglary  4710  5040  -1  -1
Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1
"""


def _row(vid, label, frames):
    return {"video_id": vid, "label": label, "num_frames": frames, "snippet_count": frames // 16}


def test_xd_map_ground_truth_is_the_official_class_split_one(tmp_path):
    from vadclip.io.gt import convert_xd_annotations, read_gt, write_gt
    from vadclip.metrics.evaluate import video_gt

    (tmp_path / "annotations_multiclasses.txt").write_text(XD_MULTI)
    write_gt(convert_xd_annotations(str(tmp_path / "annotations_multiclasses.txt")), str(tmp_path / "gt.parquet"))
    gt = read_gt(str(tmp_path / "gt.parquet"))
    cfg = tiny_config("xd")
    frames, segs, classes = video_gt(_row("Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6", "G-B2-B6", 1200),
                                     gt, cfg)
    # six segments in file order, each with its own class (B2=2, B6=5, G=6), as make_gt_mAP_xd
    assert segs == [(157, 180), (185, 244), (250, 282), (282, 355), (582, 810), (338, 360)]
    assert classes == [2, 6, 2, 6, 6, 5]
    assert frames[250:360].all() and not frames[244:250].any()
    _, segs, classes = video_gt(_row("Bullet.in.the.Head.1990__#00-41-30_00-44-16_label_B4-G-0", "B4-G-0", 4000),
                                gt, cfg)
    assert classes == [3, 6]
    assert video_gt(_row("v=U6MC8JJJZSY__#1_label_G-0-0", "G-0-0", 800), gt, cfg)[1] == [(150, 779)]
    assert video_gt(_row("Desperado.1995__#00-16-48_00-18-52_label_B1-0-0", "B1-0-0", 2400), gt, cfg)[1] == \
        [(40, 110), (2190, 2310)]
    # a normal XD video is one class-0 ("A") segment over its snippets × 16 frames
    assert video_gt(_row("x__#1_label_A", "A", 320), gt, cfg)[1:] == ([(0, 320)], [0])


def test_ucf_map_ground_truth_never_counts_normal(tmp_path):
    from vadclip.io.gt import convert_ucf_annotations, read_gt, write_gt
    from vadclip.metrics.evaluate import video_gt

    (tmp_path / "Temporal_Anomaly_Annotation.txt").write_text(UCF_TEMPORAL)
    write_gt(convert_ucf_annotations(str(tmp_path / "Temporal_Anomaly_Annotation.txt")), str(tmp_path / "gt.csv"))
    gt = read_gt(str(tmp_path / "gt.csv"))
    cfg = tiny_config("ucf")
    assert video_gt(_row("Arrest001_x264", "Arrest", 2000), gt, cfg)[1:] == ([(1185, 1485)], [2])
    frames, segs, classes = video_gt(_row("Normal_Videos_003_x264", "Normal", 640), gt, cfg)
    assert segs == [] and classes == [] and not frames.any()


# ---------------------------------------------------- official checkpoints, end to end
@pytest.fixture(scope="module")
def official_pth(tmp_path_factory):
    """An official-format ``model_xd.pth``: the state dict of the official CLIPVAD
    (ViT-B-16 CLIP weights as ``clipmodel.*``, fp16 like the released files)."""
    from vadclip.clip.backbone import FrozenCLIP
    from vadclip.model.config import VadConfig

    d = tmp_path_factory.mktemp("official")
    clip = FrozenCLIP(ClipSpec("ViT-B-16", None, {"force_quick_gelu": True}))
    torch.manual_seed(5)
    from vadclip.model.checkpoint import official_state_dict

    model = VadCLIP(VadConfig.from_preset("xd"), clip)
    torch.save(official_state_dict(model, torch.float16), str(d / "model_xd.pth"))
    return d


def test_official_checkpoint_through_the_cli_and_the_registry(ray_local, official_pth, tmp_path, capsys):
    import json

    from vadclip.model.checkpoint import load_model_file
    from vadclip.cli import main
    from vadclip.io.features import read_feature_rows
    from vadclip.io.gt import write_gt

    pth = str(official_pth / "model_xd.pth")
    model = load_model_file(pth)
    assert model.cfg.preset == "xd" and model.cfg.padding == "paper" and model.embed_dim == 512
    db = f"sqlite:///{tmp_path}/m.db"

    def run(*argv):
        assert main(list(argv)) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        return json.loads(out[out.rindex("\n{\n") + 1:] if not out.startswith("{\n") else out)

    # an official-style test list: the authors' absolute paths, one crop per video (__5, as
    # the UCF list), features under <root>/<class folder>/; imported, then evaluated and
    # scored with no crop option
    rng = np.random.default_rng(0)
    names = [f"v{i}__#1_label_{'A' if i < 2 else 'B1-0-0'}" for i in range(4)]
    labels = ["A", "A", "B1-0-0", "B1-0-0"]
    lines = ["path,label"]
    for name, label, t in zip(names, labels, [40, 300, 90, 600]):
        (tmp_path / "feats" / "Fighting").mkdir(parents=True, exist_ok=True)
        np.save(str(tmp_path / "feats" / "Fighting" / f"{name}__5.npy"), rng.normal(size=(t, 512)).astype(np.float32))
        lines.append(f"/home/someone/XDTestClipFeatures/Fighting/{name}__5.npy,{label}")
    (tmp_path / "test_list.csv").write_text("\n".join(lines) + "\n")
    imp = run("import-release", "--csv", str(tmp_path / "test_list.csv"), "--root", str(tmp_path / "feats"),
              "--preset", "xd", "--out", str(tmp_path / "test.parquet"))
    assert imp == {"rows": 4, "errors": 0}
    rows = sorted(read_feature_rows(str(tmp_path / "test.parquet")), key=lambda r: r["video_id"])
    assert [r["crop"] for r in rows] == [5, 5, 5, 5]
    write_gt([{"video_id": names[2], "start_frame": 160, "end_frame": 640, "label": "B1"},
              {"video_id": names[3], "start_frame": 3200, "end_frame": 6400, "label": "B1"}],
             str(tmp_path / "gt.csv"))

    ev = run("evaluate", "--model", pth, "--features", str(tmp_path / "test.parquet"), "--gt", str(tmp_path / "gt.csv"))
    assert 0.0 <= ev["auc"] <= 1.0 and ev["videos"] == 4 and ev["crop"] == 5
    reg = run("register-model", pth, "--name", "vadclip-xd-official", "--tracking-uri", db)
    assert reg["registered_version"] == 1 and reg["preset"] == "xd" and reg["padding"] == "paper"
    again = run("register-model", pth, "--name", "vadclip-xd-official", "--tracking-uri", db)
    assert again["registered_version"] == 2 and again["promoted"]      # the alias follows the new file
    for uri, out in ((pth, "a"), ("models:/vadclip-xd-official@champion", "b")):
        run("score", "--model", uri, "--features", str(tmp_path / "test.parquet"), "--out", str(tmp_path / out),
            "--tracking-uri", db, "--flush-seconds", "0")
    import pyarrow.parquet as pq

    a = {r["video_id"]: r["anomaly"] for r in pq.read_table(str(tmp_path / "a" / "scores")).to_pylist()}
    b = {r["video_id"]: r["anomaly"] for r in pq.read_table(str(tmp_path / "b" / "scores")).to_pylist()}
    for r in rows:   # the same scores from the file and from the registry, and the official test's
        ref, _ = official_test_scores(model, np.asarray(r["features"]).reshape(-1, 512))
        np.testing.assert_allclose(a[r["video_id"]], ref, atol=1e-5)
        np.testing.assert_allclose(b[r["video_id"]], ref, atol=1e-5)
