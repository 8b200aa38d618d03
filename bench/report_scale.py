"""The review report over a scores folder of N videos: what building it costs the driver.

    python bench/report_scale.py [--sizes 10000,100000,1000000] [--workdir /tmp/vadclip_report_scale]

The folder: a Delta table of score rows as `vadclip score` writes them (SCORE_SCHEMA), parts
of 256 videos, 100 cameras in their manifest columns, one video in ten flagged with one to
three events.  Its rows are 256 random ones replicated under N distinct video ids (writing N
real scores would take hours and is not what is measured).

Each measurement runs in a process of its own (its peak RSS is its ``VmHWM``):
* ``report``: ``vadclip report OUT`` as a user runs it (pages for the top 50 videos, the 1,000
  strongest events, the per-camera table, every count over the whole folder);
* ``scan``: the report's pass over the parts alone (``vadclip.report.html._scan``: each part
  ranked and counted with Arrow compute);
* ``rows``: the same pass reading every row as a Python dict (how the report read them before
  2026-12-07), side by side; its results are checked equal to ``scan``'s.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, ROOT)

PER_PART = 256
CAMERAS = 100


def _template(rng):
    """256 score rows: 16 snippets each, 4 classes, one in ten flagged."""
    from vadclip.jobs.score import SCORE_SCHEMA

    rows = []
    for i in range(PER_PART):
        flagged = rng.random() < 0.1
        evs = [{"start_s": float(k * 4), "end_s": float(k * 4 + 2), "start_frame": k * 100, "end_frame": k * 100 + 50,
                "class_name": "Fighting", "score": float(rng.random())} for k in range(rng.integers(1, 4) if flagged else 0)]
        rows.append({"video_id": "", "path": f"/archive/cam/{i}.mp4", "label": None, "fps": 25.0, "num_frames": 256,
                     "snippet_count": 16, "classes": ["Normal", "Fighting", "Explosion", "Shooting"],
                     "anomaly": rng.random(16).astype("float32"), "class_probs": rng.random(64).astype("float32"),
                     "video_score": float(rng.random()), "predicted_class": "Fighting" if flagged else "Normal",
                     "flagged": bool(flagged), "events": evs, "meta": "", "model_version": "models:/vad/3"})
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=SCORE_SCHEMA)


def build(n: int, out: str) -> None:
    import numpy as np
    import pyarrow as pa

    from vadclip.io import delta, layout, storage
    from vadclip.io.parts import new_run_id, write_part

    scores = layout.scores_dir(out)
    t0 = _template(np.random.default_rng(0))
    run, adds = new_run_id(), []
    for p, lo in enumerate(range(0, n, PER_PART)):
        k = min(PER_PART, n - lo)
        t = t0.slice(0, k)
        ids = [f"v{lo + i:08d}" for i in range(k)]
        meta = [json.dumps({"camera": f"cam{(lo + i) % CAMERAS:03d}", "start_time": "2026-11-01T08:00:00+00:00"})
                for i in range(k)]
        t = t.set_column(t.schema.get_field_index("video_id"), "video_id", pa.array(ids))
        t = t.set_column(t.schema.get_field_index("meta"), "meta", pa.array(meta))
        name = f"part-{run}-w000-bench-{p:06d}.parquet"
        write_part(scores, name, t, commit=False)
        adds.append((name, storage.info(storage.join(scores, name)).size, t.num_rows))
    delta.commit(scores, adds, t0.schema, what="bench scores")
    with open(os.path.join(out, layout.SCORE_SUMMARY), "w") as fh:
        json.dump({"threshold": 0.5, "model_uri": "models:/vad@champion"}, fh)


def _rows_scan(scores_dir: str, top_n: int):
    """Every row as a Python dict (the report's reading before 2026-12-07)."""
    import heapq
    from datetime import datetime, timedelta

    from vadclip.io.features import meta_of
    from vadclip.io.parts import part_files, read_file
    from vadclip.report.html import MAX_EVENTS_SHOWN, SUMMARY_COLUMNS

    top, events, cameras, n = [], [], {}, 0
    for f in part_files(scores_dir):
        for r in read_file(f, SUMMARY_COLUMNS + ["meta"]).to_pylist():
            n += 1
            evs = r["events"] or []
            meta = meta_of(r.get("meta"))
            r["camera"], r["start_time"] = meta.get("camera"), meta.get("start_time")
            if r["camera"] is not None:
                c = cameras.setdefault(r["camera"], {"videos": 0, "flagged": 0, "events": 0})
                c["videos"] += 1
                c["flagged"] += bool(r["flagged"])
                c["events"] += len(evs) if r["flagged"] else 0
            item = ((bool(r["flagged"]), float(r["video_score"]), n), r)
            if len(top) < top_n:
                heapq.heappush(top, item)
            elif item[0] > top[0][0]:
                heapq.heapreplace(top, item)
            if not r["flagged"]:
                continue
            t0 = datetime.fromisoformat(r["start_time"]) if r["start_time"] else None
            for k, e in enumerate(evs):
                wall = (t0 + timedelta(seconds=e["start_s"])).strftime("%Y-%m-%d %H:%M:%S UTC") if t0 else None
                ev = ((float(e["score"]), n, k), dict(e, video_id=r["video_id"], camera=r["camera"], wall=wall))
                if len(events) < MAX_EVENTS_SHOWN:
                    heapq.heappush(events, ev)
                elif ev[0] > events[0][0]:
                    heapq.heapreplace(events, ev)
    return ([r for _, r in sorted(top, key=lambda kr: kr[0], reverse=True)],
            [e for _, e in sorted(events, key=lambda kr: kr[0], reverse=True)], cameras)


def child(what: str, out: str) -> None:
    t, c = time.time(), time.process_time()
    if what == "report":
        from vadclip.cli import main

        rc = main(["report", out])
        got = {"rc": rc}
    else:
        from vadclip.io import layout
        from vadclip.report.html import _scan

        top, events, cameras = (_scan if what == "scan" else _rows_scan)(layout.scores_dir(out), 50)
        got = {"top": [r["video_id"] for r in top], "events": [(e["video_id"], e["start_frame"]) for e in events],
               "cameras": cameras}
    print(json.dumps({"wall_s": time.time() - t, "cpu_s": time.process_time() - c,
                      "rss_mb": _peak_mb(), **got}))


def _peak_mb() -> float:
    """This process's own peak RSS since its exec (VmHWM): ``ru_maxrss`` would start from the
    parent's RSS at the fork (Linux keeps it across exec), and the parent built the table."""
    hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    return (hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _run(what: str, out: str):
    p = subprocess.run([sys.executable, __file__, "--child", what, out], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{what} at {out}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--workdir", default="/tmp/vadclip_report_scale")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    print(f"# {time.strftime('%Y-%m-%d')} python bench/report_scale.py --sizes {a.sizes}")
    print("| videos | parts | report: wall s | CPU s | peak RSS MB | its scan (Arrow): wall s | peak RSS MB "
          "| the scan row by row: wall s | peak RSS MB | row by row / Arrow | same results |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in a.sizes.split(",") if x]:
        out = os.path.join(a.workdir, f"n{n}")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        build(n, out)
        rep, scan, rows = _run("report", out), _run("scan", out), _run("rows", out)
        same = all(scan[k] == rows[k] for k in ("top", "events", "cameras"))
        print(f"| {n:,} | {-(-n // PER_PART):,} | {rep['wall_s']:.1f} | {rep['cpu_s']:.1f} | {rep['rss_mb']:.0f} "
              f"| {scan['wall_s']:.1f} | {scan['rss_mb']:.0f} | {rows['wall_s']:.1f} | {rows['rss_mb']:.0f} "
              f"| {rows['wall_s'] / max(scan['wall_s'], 1e-9):.1f}x | {'yes' if same else 'NO'} |", flush=True)
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
