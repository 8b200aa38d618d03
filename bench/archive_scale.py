"""Archive scale: what a nightly ``vadclip extract ARCHIVE --out OUT`` costs when the archive
holds N recordings that are all done, and when 1% of them are new.

    python bench/archive_scale.py [--sizes 1000,10000,100000] [--s3-sizes 1000,10000] [--new 0.01]
                                  [--workdir /tmp/vadclip_archive_scale]

The archive: N hard links (local disk) or N server-side copies (moto's S3-API server on
127.0.0.1) of four short real videos, 1,000 to a camera folder.  The output folder: the
feature rows of those four, written by a real ``vadclip extract`` of them, replicated under
the N paths as the job writes them (parts of 256 rows with each path's identity as the
archive's listing gives it, the manifest's ids, labels and meta, a commit marker each):
extracting 100,000 videos first would take hours here and is not what is measured.

Then, as separate processes exactly as a cron job runs them:
* the no-op re-run (nothing new): store requests by kind (counted at a proxy in front of
  the S3-API server), requests per archived video, the driver's wall and CPU seconds and
  its peak resident memory (``VmHWM``: its own since its exec, not the bench's at the fork),
  the heavy packages it imported; then, on the S3-API server, the same listing of the archive made alone from this process (what the
  server's pages of 1,000 keys, one after another, take of that wall time);
* the 1%-new re-run: N/100 new recordings (links of the same four) decoded and encoded
  with the tiny random-init CLIP, the same figures.

Targets (issue #45): a no-op re-run makes no request per done video: at most 0.05 store
requests per archived video at 1,500 and 0.01 at 100,000; at most 60 s of driver wall
time and 1 GB of driver peak RSS at 100,000 recordings on a 2-core machine.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))     # the S3-API server and the counting proxy of the tests

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from vadclip.io import storage  # noqa: E402
from vadclip.io import delta  # noqa: E402
from vadclip.io.parts import IDENTITY_COLUMN, IDENTITY_KEY, new_run_id, read_table, write_part  # noqa: E402
from vadclip.jobs.manifest import load_manifest  # noqa: E402
from vadclip.video.samples import write_video  # noqa: E402

SEEDS = 4
PER_CAMERA = 1000
ROWS_PER_PART = 256

# the driver as a cron job starts it (python -m vadclip.cli …), telling its own cost at exit
DRIVER = r"""
import atexit, json, os, resource, runpy, sys, time
t0 = time.time()
def _told():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    # VmHWM: this process's own peak since its exec; ru_maxrss would start from the bench's RSS
    # at the fork (Linux keeps it across exec), which holds the whole archive's manifest
    hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    with open(os.environ["BENCH_RUSAGE"], "w") as f:
        json.dump({"wall_s": time.time() - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
                   "peak_rss_mb": (hwm[0] if hwm else ru.ru_maxrss) / 1024,
                   "imported": [m for m in ("torch", "open_clip", "torchcodec", "decord", "av")
                                if m in sys.modules]}, f)
atexit.register(_told)
sys.argv = ["vadclip"] + sys.argv[1:]
runpy.run_module("vadclip.cli", run_name="__main__", alter_sys=True)
"""


def _cli(args, env_extra, work):
    rusage = os.path.join(work, "rusage.json")
    env = dict(os.environ, VADCLIP_PROGRESS_BARS="0", BENCH_RUSAGE=rusage,
               VADCLIP_SCRATCH=os.path.join(work, "scratch"), **env_extra)
    r = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=env,
                       timeout=6 * 3600)
    if r.returncode != 0:
        raise SystemExit(f"vadclip {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    with open(rusage) as f:
        return json.loads(r.stdout), json.load(f)


def _seed_videos(work):
    d = os.path.join(work, "seed", "cam")
    os.makedirs(d, exist_ok=True)
    for i in range(SEEDS):
        write_video(os.path.join(d, f"seed{i}.mp4"), 32 + 8 * i, width=64, height=48, seed=i)
    return d


def _rec(i):
    return f"cam{i // PER_CAMERA:04d}/rec{i:07d}.mp4"


def _link_local(seed_dir, arch, lo, hi):
    for i in range(lo, hi):
        p = os.path.join(arch, _rec(i))
        os.makedirs(os.path.dirname(p), exist_ok=True)
        os.link(os.path.join(seed_dir, f"seed{i % SEEDS}.mp4"), p)


def _copy_s3(s3, lo, hi):
    def one(i):
        s3.copy_object(Bucket="archive", Key=f"cams/{_rec(i)}",
                       CopySource={"Bucket": "archive", "Key": f"seed/seed{i % SEEDS}.mp4"})
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(lo, hi)))


def _replicate(template: pa.Table, items, out_features, identities="column"):
    """The seed videos' feature rows under each item's path, id, label and meta, in parts
    of 256 rows with each path's identity (as the archive's listing gave it): in the
    ``input_identity`` column as the job writes them since 2026-12-07, or (``identities=
    "metadata"``) as JSON in each part's schema metadata, as before."""
    template = template.drop_columns([c for c in (IDENTITY_COLUMN,) if c in template.column_names])
    by_seed = {os.path.basename(p)[:-4]: i for i, p in enumerate(template.column("path").to_pylist())}
    run = new_run_id()
    adds, schema = [], None
    for n, lo in enumerate(range(0, len(items), ROWS_PER_PART)):
        chunk = items[lo:lo + ROWS_PER_PART]
        idx = [by_seed[f"seed{int(os.path.basename(it['path'])[3:-4]) % SEEDS}"] for it in chunk]
        t = template.take(pa.array(idx))
        for col, key in (("path", "path"), ("video_id", "video_id"), ("label", "label"), ("meta", "meta")):
            vals = [it[key] if key != "meta" else (it[key] or "") for it in chunk]
            t = t.set_column(t.schema.get_field_index(col), t.schema.field(col), pa.array(vals, t.schema.field(col).type))
        if identities == "metadata":
            ids = {it["path"]: it["listed"] or None for it in chunk}
            t = t.replace_schema_metadata({**(template.schema.metadata or {}), IDENTITY_KEY: json.dumps(ids).encode()})
        else:
            t = t.append_column(IDENTITY_COLUMN, pa.array([it["listed"] or None for it in chunk], pa.string()))
        name = f"part-{run}-w000-bench-{n:05d}.parquet"
        write_part(out_features, name, t, commit=False)
        adds.append((name, storage.info(storage.join(out_features, name)).size, t.num_rows))
        schema = t.schema
    delta.commit(out_features, adds, schema, what="replicated parts")


def _template(seed_out):
    t = read_table(storage.join(seed_out, "features"))
    t = t.filter(pc.equal(t.column("crop"), 0))
    return t.sort_by("path")


def _row(where, n, what, s, ru, counts=None):
    reqs = sum(v for k, v in (counts or {}).items() if k.endswith("requests")) if counts is not None else None
    return {"storage": where, "archive": n, "run": what, "videos_ok": s.get("videos_ok", 0),
            "videos_skipped": s.get("videos_skipped", 0), "requests": reqs,
            "by_kind": {k.split()[0]: v for k, v in (counts or {}).items() if k.endswith("requests")},
            "requests_per_video": None if reqs is None else round(reqs / n, 4),
            "driver_wall_s": round(ru["wall_s"], 1), "driver_cpu_s": round(ru["cpu_s"], 1),
            "driver_peak_rss_mb": round(ru["peak_rss_mb"]), "imported": ru.get("imported", []), "listing_s": None,
            "one_listing_s": None}


def _print(r):
    kinds = " ".join(f"{k} {v}" for k, v in sorted(r["by_kind"].items()))
    reqs = "–" if r["requests"] is None else f"{r['requests']:,} ({kinds}); {r['requests_per_video']} a video"
    print(f"| {r['storage']} | {r['archive']:,} | {r['run']} | {r['videos_ok']:,} new, {r['videos_skipped']:,} "
          f"skipped | {reqs} | {r['driver_wall_s']} | {r['driver_cpu_s']} | {r['driver_peak_rss_mb']} | "
          f"{', '.join(r['imported']) or 'none'} | "
          f"{'–' if r['listing_s'] is None else str(r['listing_s']) + ' (one listing: ' + str(r['one_listing_s']) + ')'} |",
          flush=True)


def local(n, new, work, seed_dir, template, args):
    arch, out = os.path.join(work, f"arch{n}"), os.path.join(work, f"out{n}")
    _link_local(seed_dir, arch, 0, n)
    _replicate(template, load_manifest(arch), storage.join(out, "features"))
    rows = []
    cmd = ["extract", arch, "--out", out, *args]
    s, ru = _cli(cmd, {}, work)
    assert s["videos_skipped"] == n and s["videos_ok"] == 0, s
    rows.append(_row("local disk", n, "no-op re-run", s, ru))
    k = max(1, int(n * new))
    _link_local(seed_dir, arch, n, n + k)
    s, ru = _cli(cmd, {}, work)
    assert s["videos_ok"] == k and s["videos_skipped"] == n, s
    rows.append(_row("local disk", n, f"{k:,} new ({new:.0%})", s, ru))
    shutil.rmtree(arch), shutil.rmtree(out)
    return rows


def s3(n, new, work, seed_dir, template, args, args_log=None):
    from faultproxy import fault_proxy
    from s3server import s3_server

    rows = []
    with s3_server("archive", "vad") as client:
        for i in range(SEEDS):
            client.upload_file(os.path.join(seed_dir, f"seed{i}.mp4"), "archive", f"seed/seed{i}.mp4")
        _copy_s3(client, 0, n)
        arch, out = "s3://archive/cams/", "s3://vad/out"
        _replicate(template, load_manifest(arch), storage.join(out, "features"))
        cmd = ["extract", arch, "--out", out, *args]
        with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}) as proxy:
            s, ru = _cli(cmd, {"AWS_ENDPOINT_URL": proxy.url}, work)
            counts = dict(proxy.counts)
            _seen(args_log, f"s3-{n}-noop", proxy.seen)
        assert s["videos_skipped"] == n and s["videos_ok"] == 0, s
        rows.append(_row("S3 API", n, "no-op re-run", s, ru, counts))
        # what the store alone takes to list the archive, from this process, straight to the
        # server: as the driver lists it (its folders side by side), and as one listing
        # whose pages come one after another (how it listed it before 2026-12-07)
        t0 = time.time()
        assert len(storage.listed_files(arch)) == n
        rows[-1]["listing_s"] = round(time.time() - t0, 1)
        fs, p = storage.resolve(arch)
        t0 = time.time()
        assert len([i for i in fs.get_file_info(storage.pafs.FileSelector(p, recursive=True))
                    if i.type == storage.pafs.FileType.File]) == n
        rows[-1]["one_listing_s"] = round(time.time() - t0, 1)
        k = max(1, int(n * new))
        _copy_s3(client, n, n + k)
        with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}) as proxy:
            s, ru = _cli(cmd, {"AWS_ENDPOINT_URL": proxy.url}, work)
            counts = dict(proxy.counts)
            _seen(args_log, f"s3-{n}-new", proxy.seen)
        assert s["videos_ok"] == k and s["videos_skipped"] == n, s
        rows.append(_row("S3 API", n, f"{k:,} new ({new:.0%})", s, ru, counts))
    return rows


def _seen(folder, name, seen):
    """Every request the proxy saw (method and path), one a line, when ``--requests-log`` names a folder."""
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name + ".txt"), "w") as f:
            f.writelines(f"{m} {p}\n" for m, p in seen)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="archive sizes on local disk")
    ap.add_argument("--s3-sizes", default="1000,10000", help="archive sizes on the S3-API server")
    ap.add_argument("--new", type=float, default=0.01, help="the share of new recordings in the second re-run")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--requests-log", default=None, help="a folder: every store request of each S3 run, a line each")
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="vadclip_archive_scale_")
    os.makedirs(work, exist_ok=True)
    args = ["--tiny-clip", "--decoder", "decord"]
    with ExitStack():
        seed_dir = _seed_videos(work)
        seed_out = os.path.join(work, "seed_out")
        _cli(["extract", seed_dir, "--out", seed_out, *args], {}, work)
        template = _template(seed_out)
        assert template.num_rows == SEEDS, template.num_rows
        print(f"# {time.strftime('%Y-%m-%d')} python bench/archive_scale.py --sizes {a.sizes} "
              f"--s3-sizes {a.s3_sizes} --new {a.new}")
        print("| storage | archive | run | videos | store requests | driver wall s | driver CPU s | "
              "driver peak RSS MB | heavy imports | the listing alone s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        rows = []
        for n in [int(x) for x in a.s3_sizes.split(",") if x]:
            for r in s3(n, a.new, work, seed_dir, template, args, a.requests_log):
                _print(r)
                rows.append(r)
        for n in [int(x) for x in a.sizes.split(",") if x]:
            for r in local(n, a.new, work, seed_dir, template, args):
                _print(r)
                rows.append(r)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(rows, f, indent=1)
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
