"""Raw videos → CLIP snippet features in Parquet, as a streaming Ray Data job.

Pipeline: manifest rows → ``flat_map`` decode tasks (torchcodec or decord, on the CPU,
or torchcodec's NVDEC decoder with ``decode_device="cuda"``; one frame per snippet;
resize + crop; bounded chunks of snippets) → CLIP image-encoder actor pool
(``ActorPoolStrategy``; ``num_gpus`` when the cluster has GPUs; fp16/bf16 there) →
writer actors stitch each video's chunks and commit finished videos to the Delta table
(:mod:`vadclip.io.parts`).  The driver plans over Arrow columns: the manifest, the
done set, what changed (:func:`check_run`).  Videos and outputs may be local or in
object storage (:mod:`vadclip.io.storage`); a remote video is streamed to the decode
task's node-local scratch, never through the driver.  A failure of one video becomes
a row of the errors table; re-running skips videos already written (and, unless
asked, videos already failed).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from vadclip.clip.encoder import ClipImageEncoder
from vadclip.errors import InputError
from vadclip.io import layout, provenance, storage
from vadclip.io.features import ERROR_SCHEMA, FEATURE_SCHEMA, META_MAP, meta_map
from vadclip.io.parts import drop_rows
from vadclip.jobs.manifest import manifest_table, with_ids
from vadclip.jobs.output import ResumableOutput
from vadclip.jobs.runner import Job, Pipeline, run
from vadclip.jobs.stages import DecodeStage, EncodeStage, ExtractOptions, Stage
from vadclip.jobs.writers import VideoSink, _Pace
from vadclip.video.decode import (VideoError, check_decoder, identity_of, same_identity, torchcodec_missing,
                                  video_file)



def feature_provenance(opts: ExtractOptions, weights=None) -> Dict[str, Any]:
    """What the feature set written with ``opts`` (and the resolved ``weights``) is:
    see :mod:`vadclip.io.provenance`."""
    from vadclip._version import __version__
    from vadclip.clip.catalog import model_config

    pre = dict(model_config(opts.clip.model).get("preprocess_cfg") or {})
    pre.update(weights.preprocess if weights is not None else {})
    return provenance.extraction(opts.clip, weights, opts.clip.image_size,
                                 pre.get("mean") or provenance.OPENAI_MEAN, pre.get("std") or provenance.OPENAI_STD,
                                 opts.snippet_len, opts.crops, opts.precision, opts.decoder, __version__)


def _one_provenance(features: str, prov: Dict[str, Any]) -> None:
    """An output folder never mixes provenances: features already there from other
    settings stop the run in one line, before any worker."""
    old = provenance.read(features)
    diff = provenance.differences(old, prov, provenance.SAME_FOLDER)
    if diff:
        raise provenance.ProvenanceError(
            f"{features}: holds features of other settings ({'; '.join(diff)}: already there vs this run); "
            "one output folder never mixes provenances: give another --out")


def changed_inputs(held: pa.Table, manifest: pa.Table, threads: int = 32) -> set:
    """The paths of ``held`` (``path``, ``identity``: what the output's rows were made
    from) whose file is no longer that (size or modification time differ).  A path without
    a recorded identity (rows written before identities were) or whose file is gone keeps
    its rows.  What the manifest's own listing saw (its ``listed`` column: a folder or glob
    source) is compared as columns and costs nothing more; the other paths are looked up
    by listing each folder that holds two or more of them (an object store lists 1,000
    keys a request) and with one stat (a HEAD) for a path alone in its folder, ``threads``
    at a time; a failing store raises (the environment's)."""
    from concurrent.futures import ThreadPoolExecutor

    known = held.filter(pc.is_valid(held["identity"]))
    seen = manifest.filter(pc.not_equal(manifest["listed"], ""))
    idx = pc.index_in(known["path"], value_set=seen["path"])
    now = pc.take(seen["listed"], idx)
    differ = known.append_column("now", now).filter(pc.fill_null(pc.not_equal(now, known["identity"]), False))
    out = {p for p, old, new in zip(*(differ[c].to_pylist() for c in ("path", "identity", "now")))
           if not same_identity(new, old)}        # whole seconds (a HEAD) against a listing's milliseconds
    rest = known.filter(pc.is_null(idx))
    folders: Dict[str, List[str]] = {}
    for p in rest["path"].to_pylist():
        folders.setdefault(storage.dirname(p), []).append(p)

    def look(folder: str) -> Dict[str, str]:
        paths = folders[folder]
        if len(paths) == 1:
            try:
                return {paths[0]: identity_of(video_file(paths[0]))}
            except VideoError:
                return {}
        return {p: identity_of(i) for p, i in storage.listed_files(folder, recursive=False).items()}

    if folders:
        found: Dict[str, str] = {}
        with ThreadPoolExecutor(max(1, min(threads, len(folders)))) as pool:
            for one in pool.map(look, list(folders)):
                found.update(one)
        out |= {p for p, old in zip(rest["path"].to_pylist(), rest["identity"].to_pylist())
                if p in found and not same_identity(found[p], old)}
    return out


def feature_dir(out_dir: str) -> str:
    return layout.features_dir(out_dir)


def errors_dir(out_dir: str) -> str:
    return layout.extract_errors_dir(out_dir)


# ------------------------------------------------------------------------------ the job
@dataclass
class _Plan:
    items: pa.Table          # the manifest (:data:`vadclip.jobs.manifest.MANIFEST`), every id filled
    todo: pa.Table           # its rows to run
    output: ResumableOutput
    prov: Dict[str, Any]
    weights: Any
    changed: set
    gpus: bool = False       # the encoders ask for GPUs (--device)
    redone: int = 0          # videos run again because a worker died holding them
    rounds: int = 0
    precision: str = "auto"  # what the encoders use: auto resolved once per folder


CONCRETE_PRECISIONS = ("fp32", "fp16", "bf16")


def _auto_precision(spec) -> Tuple[str, str]:
    enc = ClipImageEncoder(spec, "auto", "cpu")
    return enc.precision, enc.precision_why


def _resolve_precision(opts: ExtractOptions, gpus: bool, log) -> str:
    """``--precision auto`` for a new output folder, fixed for every later run of it (its
    provenance records it): fp16 where the encoders take GPUs; on CPUs what one worker's
    encoder chooses (:func:`vadclip.clip.encoder.cpu_precision`, timed once, in a task)."""
    if gpus:
        precision, why = "fp16", "the encoders run on GPUs"
    else:
        import ray

        precision, why = ray.get(ray.remote(_auto_precision).options(num_cpus=1, max_retries=3).remote(opts.clip))
    log(f"[extract] precision auto: {precision} ({why}); fixed for this output folder")
    return precision


def _check_environment(opts: ExtractOptions, log) -> Any:
    """Once, at job start, on the driver: packages, the CLIP weights, the decoder."""
    from vadclip.clip.catalog import check_packages

    if opts.crops not in (1, 5, 10):     # the API takes any int; the CLI's choices say the same
        raise InputError(f"crops={opts.crops}: the official crops are 1, 5 or 10")
    check_packages("decord", "open_clip")
    weights = opts.clip.resolve()                      # once per job, here, before any worker
    try:
        check_decoder(opts.decoder, opts.decode_device)
    except ValueError as e:
        raise InputError(str(e)) from None
    return weights


def _torchcodec_missing_here() -> Optional[str]:
    return torchcodec_missing()     # cached per process: a plain function for Ray


def _check_torchcodec(opts: ExtractOptions, log) -> None:
    """Whether torchcodec can decode where the videos are decoded: asked of a worker, in a
    task, once a run has videos to decode (a run with none, or the driver, never loads
    torchcodec and torch for it)."""
    if opts.decoder in ("decord", "pyav"):
        return
    import ray

    why = ray.get(ray.remote(_torchcodec_missing_here).options(num_cpus=0, max_retries=3).remote())
    if why is not None:   # a decoder that cannot load is the environment's problem, never a video's
        if opts.decoder == "torchcodec":
            raise InputError(f"--decoder torchcodec: torchcodec cannot decode here: {why}; "
                             "use --decoder auto (decord where torchcodec cannot decode) or --decoder decord")
        log(f"[extract] torchcodec cannot decode here ({why}): decoding with decord")


def _pending(items: pa.Table, done: pa.Table, failed: pa.Table, changed: set,
             retry_failed: bool) -> Tuple[pa.Table, set]:
    """(the items left to run, the failed paths to retry): done and failed ones skipped,
    those whose file changed run again; with ``retry_failed`` the failed run too."""
    gone = pa.array(sorted(changed), pa.string())
    done_p = done["path"].filter(pc.invert(pc.is_in(done["path"], value_set=gone)))
    failed_p = failed["path"].filter(pc.invert(pc.is_in(failed["path"], value_set=gone)))
    retried: set = set()
    if retry_failed:
        retried = set(failed_p.filter(pc.invert(pc.is_in(failed_p, value_set=done_p))).to_pylist())
        failed_p = pa.chunked_array([], pa.string())
    skip = pa.chunked_array(done_p.chunks + failed_p.chunks, pa.string())
    return items.filter(pc.invert(pc.is_in(items["path"], value_set=skip))), retried


def manifest_corrections(items: pa.Table, rows_dir: str, skip: set) -> Dict[str, Dict[str, Any]]:
    """``{path: {"label", "meta"}}`` of the done videos whose manifest row now says something
    else than their feature rows (a camera, a site, a start_time or a label corrected): the
    manifest is the truth for what it describes.  A start_time the rows took from the
    container (``start_time_from: container``) stays unless the manifest gives one.  Each
    part's columns are compared with the manifest's as Arrow; only rows whose text differs
    are parsed."""
    from vadclip.io.features import meta_of
    from vadclip.io.parts import committed_text

    items = items.filter(pc.invert(pc.is_in(items["path"], value_set=pa.array(sorted(skip), pa.string()))))
    t = committed_text(rows_dir, ["path", "label", "meta"])     # a part without label or meta: nulls
    idx = pc.index_in(t["path"], value_set=items["path"])      # one lookup for the whole folder
    want_label, want_meta = pc.take(items["label"], idx), pc.take(items["meta"], idx)
    differ = pc.and_(pc.is_valid(idx), pc.or_(pc.not_equal(pc.fill_null(t["label"], ""), pc.fill_null(want_label, "")),
                                              pc.not_equal(pc.fill_null(t["meta"], ""), pc.fill_null(want_meta, ""))))
    have: Dict[str, Tuple[Optional[str], Dict[str, Any], Optional[str], str]] = {}
    for p, lab, m, wl, wm in zip(*(pc.filter(c, differ).to_pylist()
                                   for c in (t["path"], t["label"], t["meta"], want_label, want_meta))):
        have[p] = (lab or None, meta_of(m), wl or None, wm or "")
    out = {}
    for path, (label, meta, want_label, want_text) in have.items():
        want = meta_of(want_text)
        if meta.get("start_time_from") == "container" and "start_time" not in want:
            want = dict(want, start_time=meta.get("start_time"), start_time_from="container")
        if want_label != label or want != meta:
            out[path] = {"label": want_label or "", "meta": json.dumps(want, sort_keys=True) if want else ""}
    return out


@dataclass
class Checked:
    """What :func:`check_run` found, before anything in the output folder changed."""
    items: pa.Table                  # the manifest, every id filled (:func:`with_ids`)
    output: ResumableOutput
    opts: ExtractOptions
    weights: Any
    prov: Dict[str, Any]
    ids: Tuple[pa.Table, pa.Table]   # (done, failed) identities of the committed parts
    changed: set
    todo: pa.Table
    gpus: bool


def check_run(source: str, out_dir: str, opts: ExtractOptions, retry_failed: bool, log,
              address: Optional[str] = None) -> Checked:
    """Every check that can refuse an extraction (the environment, the CLIP weights, the
    manifest, the folder's provenance, the cluster's resources), reading the folder and
    changing nothing in it: a refused run leaves the folder, and a live run writing it, as
    they were.  ``score --videos`` runs it before it takes the scores folder's lease."""
    weights = _check_environment(opts, log)
    items = manifest_table(source)
    output = ResumableOutput(feature_dir(out_dir), errors_dir(out_dir), FEATURE_SCHEMA, ERROR_SCHEMA)
    before = provenance.read(output.rows_dir)
    if opts.precision == "auto" and (before or {}).get("precision") in CONCRETE_PRECISIONS:
        opts = replace(opts, precision=before["precision"])     # auto follows the folder's first run
    prov = feature_provenance(opts, weights)
    _one_provenance(output.rows_dir, prov)
    done_ids, failed_ids = output.identities()        # what the committed parts hold: read, nothing changed
    changed = changed_inputs(pa.concat_tables([failed_ids, done_ids]), items)
    items = with_ids(items, output.named())
    todo, _ = _pending(items, done_ids, failed_ids, changed, retry_failed)
    gpus = False
    if todo:       # the cluster can run what is asked
        from vadclip.jobs.cluster import ensure_ray, use_gpus

        ensure_ray(address)
        _check_torchcodec(opts, log)
        gpus = use_gpus(opts.device, log)
        if opts.precision == "auto" and before is None:      # a new folder: auto resolves here, once
            opts = replace(opts, precision=_resolve_precision(opts, gpus, log))
            prov = feature_provenance(opts, weights)
    return Checked(items, output, opts, weights, prov, (done_ids, failed_ids), changed, todo, gpus)


def _plan_leased(c: Checked, retry_failed: bool, log, on_changed, on_corrected) -> _Plan:
    """Under the output's lease (taken by the runner): what changed since :func:`check_run`
    read the folder, the rows of rewritten recordings set to be replaced, manifest
    corrections applied."""
    items, output, changed = c.items, c.output, set(c.changed)
    done_ids, failed_ids = c.ids
    # read again under the lease: what an earlier run's writers committed since the read
    # above (before they were fenced) is done too, never written a second time
    done_now, failed_now = output.identities()
    now = pa.concat_tables([failed_now, done_now])
    before = pa.concat_tables([failed_ids, done_ids])["path"]
    new = now.filter(pc.invert(pc.is_in(now["path"], value_set=before)))
    changed |= changed_inputs(new, items) if new.num_rows else set()
    items = with_ids(items, output.named())
    todo, retried = _pending(items, done_now, failed_now, changed, retry_failed)
    if changed:
        # a video replaced at the same path (a camera's daily file rewritten) runs again: its old
        # rows go in the commit that adds its new ones (or at the run's end, where it fails now)
        output.replace_later(output.rows_dir, changed)
        drop_rows(output.errors_dir, "path", changed, output.tokens.get(output.errors_dir))
        if on_changed is not None:      # what was made from the old file goes with it (its scores and events)
            on_changed(changed)
        log(f"[extract] {len(changed)} videos changed since their rows were written: processing them again")
    if retry_failed and retried:
        drop_rows(output.errors_dir, "path", retried, output.tokens.get(output.errors_dir))
    _correct(items, output, changed, on_corrected, log)
    return _Plan(items, todo, output, c.prov, c.weights, changed, c.gpus, precision=c.opts.precision)


def nothing_to_do(c: Checked, retry_failed: bool) -> bool:
    """Whether the folders stay as they are: no video to run, none changed, no failure to
    retry, no manifest correction to apply (read as :func:`check_run` read the folder).
    Parts an interrupted run left uncommitted then stay until a run with work (no reader
    sees them); the run that has work takes the lease and reads everything again."""
    if c.todo.num_rows or c.changed or (retry_failed and c.ids[1].num_rows):
        return False
    return not manifest_corrections(c.items, c.output.rows_dir, set())


def _correct(items, output: ResumableOutput, changed: set, on_corrected, log) -> None:
    corrected = manifest_corrections(items, output.rows_dir, changed)
    if corrected:   # the manifest's columns for a done video changed: its rows follow, no decoding
        from vadclip.io.parts import update_rows

        update_rows(output.rows_dir, "path", corrected, token=output.tokens.get(output.rows_dir))
        if on_corrected is not None:
            on_corrected(corrected)
        log(f"[extract] {len(corrected)} videos' manifest columns changed since their rows were written "
            "(camera, site, start_time, label): their rows updated, nothing decoded again")



STREAM_BLOCK_BYTES = 1 << 20   # below any chunk of frames: each is a block of its own


# videos of one pipeline at most: a longer plan (a first run over a year's archive) runs as
# consecutive pipelines over windows of the plan, each video in a decode task of its own, so the
# driver never holds more than this many input blocks however large the plan
WINDOW = 65536


def _datasets(todo: pa.Table):
    """The round's videos as Ray datasets, :data:`WINDOW` videos each, one video a block (a
    lost node costs the videos in flight on it, not a block of thousands), made with blocks
    of one chunk of frames at most (:data:`STREAM_BLOCK_BYTES`: a decode task hands on each
    chunk as it is decoded; with Ray Data's default of 128 MiB blocks it held chunks until a
    block filled, the whole of a short or low-resolution recording).  The manifest's
    columns of each video go as a map (the plan keeps the text its rows store, to compare
    with them): no JSON crosses between the stages."""
    import ray

    todo = todo.set_column(todo.schema.get_field_index("meta"), pa.field("meta", META_MAP), meta_map(todo["meta"]))
    for lo in range(0, todo.num_rows, WINDOW):
        window = todo.slice(lo, WINDOW)
        ctx = ray.data.DataContext.get_current()
        default, ctx.target_max_block_size = ctx.target_max_block_size, STREAM_BLOCK_BYTES
        try:      # a dataset keeps the context it was made in
            yield ray.data.from_arrow([window.slice(i, 1) for i in range(window.num_rows)])
        finally:
            ctx.target_max_block_size = default


def extraction_stages(plan: _Plan, opts: ExtractOptions, log) -> List[Stage]:
    """Decode (tasks) → encode (actor pool), each with the share of a GPU it takes
    (:meth:`DecodeStage.gpus`, :meth:`EncodeStage.gpus`); the CLIP weights put in the
    object store once for every encoder."""
    from vadclip.jobs.cluster import share_weights

    if opts.decode_device == "cuda" and not plan.gpus:
        log("[extract] decode device cuda: the cluster has no GPU, the videos are decoded on the CPU")
    return [DecodeStage(opts, opts.clip.image_size, DecodeStage.gpus(opts, plan.gpus)),
            EncodeStage(opts, share_weights(plan.weights), EncodeStage.gpus(opts, plan.gpus))]


class ExtractJob(Job):
    """``vadclip extract``, and the extraction part of ``score --videos`` (``scorer``: the
    :class:`vadclip.jobs.score.Scorer` its writers hand each assembled video to).  Its
    pipeline: decode → encode → :class:`VideoSink` (writers that assemble, score and commit
    each video whole)."""
    name = "extract"

    def __init__(self, source: str, out_dir: str, opts: ExtractOptions, retry_failed: bool = False,
                 address: Optional[str] = None, scorer=None, checked: Optional[Checked] = None) -> None:
        self.source, self.out_dir, self.opts = source, storage.absolute(out_dir), opts
        self.retry_failed, self.address, self.scorer, self.checked = retry_failed, address, scorer, checked
        self.wait_s = opts.wait
        self.state: Optional[_Plan] = None
        self.pipeline: Optional[Pipeline] = None
        self.t0: Optional[float] = None
        self._idle: Optional[bool] = None

    def check(self, log) -> None:
        if self.checked is None:
            self.checked = check_run(self.source, self.out_dir, self.opts, self.retry_failed, log, self.address)

    def idle(self) -> bool:
        """Nothing to run, nothing changed, nothing to correct: no lease, no commit."""
        if self._idle is None:      # read once: it compares the manifest with every committed part
            self._idle = nothing_to_do(self.checked, self.retry_failed)
        return self._idle

    def quiet(self, log) -> Optional[Dict[str, Any]]:
        if not self.idle():
            return None
        self.plan(log)
        return self.count(time.time(), log)

    def outputs(self) -> List[ResumableOutput]:
        if self.idle():
            return []
        storage.makedirs(self.out_dir)
        return [self.checked.output]

    def plan(self, log) -> None:
        c = self.checked
        if self.idle():
            # a re-run that finds nothing new writes nothing to the folders, so it takes no lease: the
            # nightly no-op costs the listings and one read of the log, and fences no live run
            self.state = _Plan(c.items, c.todo, c.output, c.prov, c.weights, set(), c.gpus, precision=c.opts.precision)
        else:
            s = self.scorer
            self.state = _plan_leased(c, self.retry_failed, log, s.forget if s is not None else None,
                                      s.correct if s is not None else None)
        n, todo = self.state.items.num_rows, self.state.todo.num_rows
        log(f"[extract] {n} videos: {n - todo} already done or failed earlier, {todo} to process")

    def pipelines(self, log) -> Iterator[Pipeline]:
        plan = self.state
        self.t0 = time.time()
        if not plan.todo.num_rows:
            return
        opts = replace(self.checked.opts, precision=plan.precision)
        self.pipeline = Pipeline("extract", plan.todo, _datasets, extraction_stages(plan, opts, log),
                                 lambda todo, rnd: self._sink(opts, todo, rnd), self._missing,
                                 first=lambda lost: lost["path"][0].as_py())
        yield self.pipeline
        for r in self.pipeline.results:
            for line in r["failures"]:
                log(f"[extract] FAILED {line}")

    def _sink(self, opts: ExtractOptions, todo: pa.Table, rnd: int) -> VideoSink:
        """Round ``rnd``'s writers; their parts named after the run and the round."""
        from vadclip.io.parts import committed_values

        plan, scorer = self.state, self.scorer
        plan.rounds = rnd
        scored = set()
        if rnd > 1 and scorer is not None:   # scored by an earlier round: never twice
            mine = f"part-{scorer.run_id}"
            scored = set(committed_values(scorer.output.rows_dir, "video_id", mine)) | \
                set(committed_values(scorer.output.errors_dir, "video_id", mine))
        run_id = plan.output.run_id
        return VideoSink(plan.output, provenance.with_provenance(FEATURE_SCHEMA, plan.prov),
                         run_id if rnd == 1 else f"{run_id}-r{rnd}", opts.rows_per_file, opts.flush_seconds,
                         n=opts.num_writers or max(1, opts.num_encoders), scorer=scorer, skip_scores=scored,
                         segment=opts.segment_snippets,
                         progress_of=(plan.items.num_rows, plan.items.num_rows - todo.num_rows))

    def _missing(self, todo: pa.Table) -> pa.Table:
        """The round's videos with neither a committed row nor an error row of this run."""
        from vadclip.io.parts import committed_values, remove_uncommitted

        out = self.state.output
        mine = f"part-{out.run_id}"
        written = set(committed_values(out.rows_dir, "path", mine)) | set(committed_values(out.errors_dir, "path", mine))
        lost = todo.filter(pc.invert(pc.is_in(todo["path"], value_set=pa.array(sorted(written), pa.string()))))
        self.state.redone += lost.num_rows
        if not lost.num_rows and any(r.get("staged") for r in self.pipeline.results):
            # segments of a long recording that failed (or was lost and done again) part-way:
            # never counted, and gone now rather than at the next run
            remove_uncommitted(out.rows_dir)
        return lost

    def count(self, t0: float, log) -> Dict[str, Any]:
        """The run's summary (written to ``OUT/extract_summary.json``)."""
        plan = self.state
        summary = _summarise(plan, self.pipeline.results if self.pipeline is not None else [], self.t0 or t0)
        summary["folder"] = _folder_totals(plan, self.out_dir)
        storage.write_text(storage.join(self.out_dir, layout.EXTRACT_SUMMARY),
                           json.dumps(storage.redact_all(summary), indent=2))
        log(f"[extract] done: {summary['videos_ok']} ok, {summary['videos_failed']} failed, "
            f"{summary['videos_skipped']} skipped; {summary['snippets']} snippets, {summary['frames']} frames "
            f"in {summary['elapsed_s']:.1f}s ({summary['frames_per_s']} frames/s) → {plan.output.rows_dir}"
            + (f"; decoded with {', '.join(summary['decoders'])}" if summary.get("decoders") else "")
            + (f"; encoded in {', '.join(summary['precisions'])}" if summary.get("precisions") else "")
            + (f"; encoders: first encode {summary['startup_s']:.1f}s after the start, then busy "
               f"{summary['encoder_busy_fraction']:.1%} of the time at {summary['steady_snippets_per_s']} snippets/s"
               if "startup_s" in summary else ""))
        return summary

def _run_rows(plan: _Plan) -> Dict[str, Any]:
    """What this run committed, read from the folder (a writer that died took its
    counters, never the committed rows): videos, rows, snippets, frames, failures."""
    rows, errs = plan.output.this_run(["video_id", "crop", "snippet_count", "num_frames", "snippet_start"])
    first = [r for r in rows if r["crop"] == 0]
    # a long recording's segments are rows of one video × crop: counted once, their snippets
    # summed, its frames those of its last segment (the video's)
    frames = {r["video_id"]: int(r["num_frames"]) for r in sorted(first, key=lambda r: r["snippet_start"] or 0)}
    return {"videos_ok": len({r["video_id"] for r in rows}), "videos_failed": len({r["video_id"] for r in errs}),
            "rows_written": len({(r["video_id"], r["crop"]) for r in rows}),
            "snippets": sum(int(r["snippet_count"]) for r in first),
            "frames": sum(frames.values()), "failures": [r["error"] for r in errs]}


def _folder_totals(plan: _Plan, out_dir: str) -> Dict[str, Any]:
    """The whole output folder over every run (the summary's other keys are this run's),
    counted as Arrow columns: only the failures listed become Python objects."""
    from vadclip.io.parts import committed_column, committed_text

    ok = committed_column(plan.output.rows_dir, "video_id").unique()
    errs = committed_text(plan.output.errors_dir, ["video_id", "path", "stage", "error"])
    errs = errs.filter(pc.invert(pc.is_in(errs["video_id"], value_set=ok)))
    shown = errs.sort_by("video_id").slice(0, layout.FAILED_LISTED).to_pylist()
    return {"videos_ok": len(ok), "videos_failed": pc.count_distinct(errs["video_id"]).as_py(), "failed": shown}


def _summarise(plan: _Plan, results: List[Dict[str, Any]], t0: float) -> Dict[str, Any]:
    """This run's committed rows and the encoders' pace, as one run summary."""
    s: Dict[str, Any] = {"videos_total": plan.items.num_rows,
                         "videos_skipped": plan.items.num_rows - plan.todo.num_rows,
                         "videos_changed": len(plan.changed), "videos_redone": plan.redone, "rounds": plan.rounds,
                         "videos_ok": 0, "videos_failed": 0,
                         "rows_written": 0, "snippets": 0, "frames": 0}
    if plan.todo.num_rows:
        counts = _run_rows(plan)
        s.update({k: v for k, v in counts.items() if k != "failures"})
    if results:
        pace = _Pace()
        for r in results:
            pace.merge(r["spans"])
        s.update(pace.summary(t0))
        s["decoders"] = sorted({d for r in results for d in r["decoders"]})
        s["precisions"] = sorted({p for r in results for p in r["precisions"]})
        s["writer_nodes"] = sorted({r["node"] for r in results})
        s["encoder_nodes"] = sorted({n for r in results for n in r["encoder_nodes"]})
        s["encoders_holding_gpus"] = len({e for r in results for e in r.get("gpu_encoders", [])})
        s["parts_written"] = sum(r["parts"] for r in results)
    elapsed = time.time() - t0
    s.update(elapsed_s=round(elapsed, 3),
             frames_per_s=round(s["frames"] / elapsed, 2) if elapsed > 0 else 0.0,
             snippets_per_s=round(s["snippets"] / elapsed, 2) if elapsed > 0 else 0.0,
             output=plan.output.rows_dir, errors=plan.output.errors_dir)
    return s



def run_extract(source: str, out_dir: str, opts: ExtractOptions, retry_failed: bool = False,
                address: Optional[str] = None, log=None) -> Dict[str, Any]:
    """Extract features for every video of ``source`` into ``out_dir``/features (Parquet)
    with failures in ``out_dir``/errors.  The workers write every row; the driver plans,
    starts the pipeline and counts what the folder holds.  Returns the run summary (also
    written to ``out_dir``/extract_summary.json)."""
    return run(ExtractJob(source, out_dir, opts, retry_failed, address), log)
