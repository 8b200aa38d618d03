"""The review report (issue #15): built from a scores folder by `vadclip report`,
checked as files (every image referenced exists and decodes) and in a real
browser — headless Chromium loads index.html from disk, its script runs, the events
table holds the expected rows and no image is broken — and one screenshot is left
for a person to look at (its path is printed)."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from vadclip.cli import main
from vadclip.io.gt import write_gt
from vadclip.io.parts import PartWriter
from vadclip.jobs.score import SCORE_SCHEMA, ScoreOptions, find_events

CLASSES = ["Normal", "Explosion", "Fighting", "RoadAccidents"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SCREENSHOT_DIR = os.environ.get("VADCLIP_TEST_ARTIFACTS", "/tmp/vadclip-test-artifacts")


def _score_rows(videos, gt, n_snip_of):
    """Scores as a scorer would write them: high inside each planted event."""
    rng = np.random.default_rng(0)
    rows = []
    for v in videos:
        fps, nf = 25.0, n_snip_of(v) * 16
        t = nf // 16
        a = rng.uniform(0.02, 0.2, t).astype(np.float32)
        p = np.tile(np.array([0.85, 0.05, 0.05, 0.05], np.float32), (t, 1))
        for g in gt.get(v["video_id"], []):
            a[g["start_frame"] // 16: -(-g["end_frame"] // 16)] = 0.9
            c = CLASSES.index(g["label"])
            p[g["start_frame"] // 16: -(-g["end_frame"] // 16)] = np.eye(4, dtype=np.float32)[c] * 0.8 + 0.05
        ev = find_events(a, p, CLASSES, fps, nf, ScoreOptions().rule())
        rows.append({"video_id": v["video_id"], "path": v["path"], "label": v["label"], "fps": fps,
                     "num_frames": nf, "snippet_count": t, "classes": CLASSES, "anomaly": a,
                     "class_probs": p.reshape(-1), "video_score": float(np.sort(a)[-2:].mean()),
                     "predicted_class": max(ev, key=lambda e: e["score"])["class_name"] if ev else "Normal",
                     "flagged": bool(ev), "events": ev})
    return rows


@pytest.fixture(scope="module")
def scored(sample_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored")
    gt = {}
    for g in sample_videos["gt"]:
        gt.setdefault(g["video_id"], []).append(g)
    rows = _score_rows(sample_videos["good"], gt, lambda v: 12)
    w = PartWriter(str(out / "scores"), SCORE_SCHEMA, rows_per_file=4, run_id="t", flush_seconds=None)
    w.add(rows)
    w.flush()
    (out / "score_summary.json").write_text(json.dumps({
        "threshold": 0.5, "hysteresis": 0.0, "min_duration_s": 0.0, "merge_gap_s": 1.0, "videos_failed": 1, "snippets_per_s": 123.4,
        "elapsed_s": 2.5, "model_uri": "models:/vad@champion", "model_name": "vad", "model_version": "3",
        "model_alias": "champion", "output": str(out / "scores")}))
    write_gt(sample_videos["gt"], str(out / "gt.parquet"))
    return out, rows


def test_report_cli_writes_a_page_with_existing_decodable_images(scored, capsys):
    out, rows = scored
    assert main(["report", str(out), "--gt", str(out / "gt.parquet")]) == 0
    res = json.loads(capsys.readouterr().out)
    page = (out / "report" / "index.html").read_text()
    flagged = [r for r in rows if r["flagged"]]
    n_events = sum(len(r["events"]) for r in rows)
    # every video gets a page here (max_plots 50): the 3 flagged first, then the others
    assert res["videos_shown"] == len(rows) == 6 and len(flagged) == 3 and res["events_total"] == n_events
    assert page.index("<h3>clip003</h3>") < page.index("<h3>clip000</h3>")
    srcs = re.findall(r"<img src='([^']+)'", page)
    # timelines + start/peak/end of each event + the operating curve (ground truth given)
    assert len(srcs) == len(rows) + 3 * len(flagged) + 1 and "img/operating_curve.png" in srcs
    # the scores are high exactly over each planted event: every incident caught, no false alarm
    at = res["at_operating_point"]
    assert at["event_recall"] == 1.0 and at["false_alarms"] == 0 and at["event_precision"] == 1.0
    hours = sum(r["num_frames"] / r["fps"] for r in rows) / 3600
    assert at["hours_scanned"] == pytest.approx(hours) and at["alerts_per_hour"] == pytest.approx(n_events / hours)
    assert "0 false alarms per hour of normal footage" in page and "event recall 1" in page
    for src in srcs:
        with Image.open(out / "report" / src) as im:               # exists and decodes
            im.load()
            assert im.width > 10 and im.height > 10
    assert "name vad · version 3 · alias @champion" in page
    assert "http://" not in page and "https://" not in page      # nothing outside the report folder


def test_report_is_bounded_but_counts_everything(tmp_path):
    videos = [{"video_id": f"v{i:04d}", "path": str(tmp_path / f"gone{i}.mp4"), "label": None} for i in range(400)]
    gt = {v["video_id"]: [{"start_frame": 32, "end_frame": 96, "label": "Fighting"}] for v in videos[::2]}
    rows = _score_rows(videos, gt, lambda v: 10)
    w = PartWriter(str(tmp_path / "scores"), SCORE_SCHEMA, rows_per_file=64, run_id="t", flush_seconds=None)
    w.add(rows)
    w.flush()
    assert main(["report", str(tmp_path), "--max-plots", "4"]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("class='video'") == 4 and "Flagged videos (top 4 of 200 by score)</h2>" in page
    assert "key frames unavailable" in page                       # the videos are gone; the report still builds
    assert main(["report", str(tmp_path / "nothing")]) == 2         # no scores: a one-line error


def test_the_reports_rankings_and_camera_counts_are_those_of_every_row_read_one_by_one(tmp_path, monkeypatch):
    """The report ranks and counts each part in Arrow (issue #45); here against reading every
    row in Python: 300 videos in parts of 16, scores with ties, cameras (and rows without
    one), flagged videos with several events, fewer event rows shown than there are events."""
    from datetime import datetime, timedelta

    import vadclip.report.html as html
    from vadclip.io.parts import part_files, read_file

    monkeypatch.setattr(html, "MAX_EVENTS_SHOWN", 25)
    rng = np.random.default_rng(7)
    rows = []
    for i in range(300):
        flagged = bool(rng.random() < 0.4)
        evs = [{"start_s": float(k * 5), "end_s": float(k * 5 + 2), "start_frame": k * 125, "end_frame": k * 125 + 50,
                "class_name": "Fighting", "score": float(np.round(rng.random(), 1))}
               for k in range(int(rng.integers(1, 4)) if flagged else 0)]
        cam = [None, "gate", "lobby", "yard"][i % 4]
        meta = json.dumps({"camera": cam, "start_time": "2026-11-01T08:00:00+00:00"}) if cam else None
        rows.append({"video_id": f"v{i:03d}", "path": f"/a/v{i}.mp4", "label": None, "fps": 25.0, "num_frames": 160,
                     "snippet_count": 10, "classes": CLASSES, "anomaly": np.zeros(10, np.float32),
                     "class_probs": np.zeros(40, np.float32), "video_score": float(np.round(rng.random(), 1)),
                     "predicted_class": "Fighting" if flagged else "Normal", "flagged": flagged, "events": evs,
                     "meta": meta})
    w = PartWriter(str(tmp_path / "scores"), SCORE_SCHEMA, rows_per_file=16, run_id="t", flush_seconds=None)
    w.add(rows)
    w.flush()

    # every row, in the order the parts are read
    seen = [r for f in part_files(str(tmp_path / "scores")) for r in read_file(f).to_pylist()]
    assert len(seen) == 300
    want_top = [r["video_id"] for _, r in sorted(((bool(r["flagged"]), r["video_score"], n), r)
                                                 for n, r in enumerate(seen, 1))[::-1][:12]]
    all_events = sorted(((e["score"], n, k), dict(e, video_id=r["video_id"], camera=json.loads(r["meta"])["camera"]
                                                  if r["meta"] else None))
                        for n, r in enumerate(seen, 1) if r["flagged"] for k, e in enumerate(r["events"]))[::-1]
    want_cams = {}
    for r in seen:
        if r["meta"]:
            c = want_cams.setdefault(json.loads(r["meta"])["camera"], {"videos": 0, "flagged": 0, "events": 0})
            c["videos"] += 1
            c["flagged"] += r["flagged"]
            c["events"] += len(r["events"]) if r["flagged"] else 0

    top, events, cameras = html._scan(str(tmp_path / "scores"), 12)
    assert [r["video_id"] for r in top] == want_top
    assert [(e["video_id"], e["start_frame"], e["score"], e["camera"]) for e in events] == \
        [(e["video_id"], e["start_frame"], e["score"], e["camera"]) for _, e in all_events[:25]]
    assert len(all_events) > 25 and cameras == want_cams
    first = next(e for e in events if e["camera"])
    assert first["wall"] == (datetime(2026, 11, 1, 8) + timedelta(seconds=first["start_s"])).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    full = html._full_rows(top)        # the shown videos' whole rows, from the parts they are in
    assert sorted(full) == sorted(want_top) and all(len(full[v]["anomaly"]) == 10 for v in full)


def test_a_rebuilt_report_reads_labels_as_the_model_that_scored_them(tmp_path):
    """The false alarms of `vadclip report --gt` count a video as normal footage exactly when
    the model's config says its label is normal (one LabelRule, recorded in the summary);
    before, the report had a string test of its own."""
    from vadclip import tiny_config
    from vadclip.report.html import operating_footage

    cfg = tiny_config("xd")
    labels = ["A", "A-0-0", "B1-0-0", "B2-G-0", "normal", "Normal", None]
    videos = [{"video_id": f"v{i}", "path": f"/a/v{i}.mp4", "label": lab} for i, lab in enumerate(labels)]
    rows = [dict(r, classes=list(cfg.class_keys), label=v["label"]) for r, v in zip(_score_rows(videos, {}, lambda v: 4),
                                                                                 videos)]
    w = PartWriter(str(tmp_path / "scores"), SCORE_SCHEMA, rows_per_file=4, run_id="t", flush_seconds=None)
    w.add(rows)
    w.flush()

    def model_says(lab):
        if not lab:
            return True
        try:
            return cfg.is_normal(lab)
        except Exception:      # a label the model cannot read is not normal footage
            return False

    got = [f.normal for f in operating_footage(str(tmp_path / "scores"), {}, 16, cfg.label_rule.to_dict())]
    assert got == [model_says(lab) for lab in labels] == [True, True, False, False, False, False, True]
    # a summary from before the rule was recorded: the rows' classes, read without a separator
    assert [f.normal for f in operating_footage(str(tmp_path / "scores"), {}, 16)] == \
        [True, False, False, False, False, False, True]


def _chromium(*args, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--user-data-dir=" + os.path.join(SCREENSHOT_DIR, "profile"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_report_in_headless_chromium(scored):
    if CHROMIUM is None:
        if os.environ.get("VADCLIP_REQUIRE_CHROMIUM") == "1":
            pytest.fail("Chromium is required here (VADCLIP_REQUIRE_CHROMIUM=1) and not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    out, rows = scored
    if not (out / "report" / "index.html").exists():
        assert main(["report", str(out), "--gt", str(out / "gt.parquet")]) == 0
    os.makedirs(SCREENSHOT_DIR, exist_ok=True)
    url = (out / "report" / "index.html").as_uri()
    r = _chromium("--virtual-time-budget=5000", "--dump-dom", url)
    dom = r.stdout
    assert "<h1>Anomaly review</h1>" in dom, r.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom).group(0)
    n_img = len(re.findall(r"<img ", dom))
    assert f'data-images-total="{n_img}"' in body                # the page's script ran after every image loaded
    assert 'data-images-broken="0"' in body                       # and the browser decoded all of them
    table = dom[dom.index('id="events"'):]
    table = table[:table.index("</table>")]
    expected = sorted((e["class_name"], r_["video_id"]) for r_ in rows for e in r_["events"])
    got = sorted(re.findall(r'<td class="cls">([^<]+)</td>', table))
    assert got == sorted(c for c, _ in expected) and len(re.findall(r"<tr>", table)) == len(expected) + 1
    shot = os.path.join(SCREENSHOT_DIR, "report.png")
    r = _chromium("--virtual-time-budget=5000", "--hide-scrollbars", "--window-size=1280,1600",
                  f"--screenshot={shot}", url)
    assert os.path.getsize(shot) > 10_000, r.stderr[-2000:]
    print(f"\nreport screenshot: {shot}")


def test_every_value_on_the_page_is_escaped_by_its_template():
    """The page comes from a Jinja2 template with autoescape: a video id, a path, a camera,
    a class name and an error message written by someone else stay text, never markup."""
    from vadclip.report.html import render_html

    evil = "<script>alert('x')</script>"
    video = {"video_id": evil, "path": f"/cams/{evil}.mp4", "label": evil, "fps": 25.0, "num_frames": 250,
             "video_score": 0.9, "predicted_class": evil, "flagged": True, "camera": evil, "start_time": None,
             "timeline": "img/t.png", "events": [{"class_name": evil}],
             "frames": [{"src": "img/f.jpg", "what": "start", "time": "00:00:01", "event": 0}]}
    event = {"video_id": evil, "start_s": 1.0, "end_s": 2.5, "class_name": evil, "score": 0.93, "camera": evil,
             "wall": None}
    page = render_html({"output": evil, "failed_videos": [{"video_id": evil, "stage": "decode", "error": evil}],
                        "videos_failed_total": 3},
                       {"videos": 1, "flagged": 1, "events": 1, "hours": 0.01}, [event], [video],
                       cameras={evil: {"videos": 1, "flagged": 1, "events": 1}})
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1                      # the page's own sorting script, nothing else
    assert "Failed videos (the first 1 of 3)" in page and "By camera (1)" in page and "00:00:01" in page
    assert "<td data-v='1.000'>0:00:01.0</td>" in page and "Events (all 1)" in page
