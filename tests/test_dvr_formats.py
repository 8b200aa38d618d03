"""DVR and NVR exports (issue #35): MPEG-TS and MPEG-PS files, written here with PyAV
(its wheel carries FFmpeg's encoders), decoded with the frames they hold.

Each generated frame ``i`` shows one bright column at ``x = 4 i + 2``
(:func:`vadclip.video.samples.write_numbered_video`), so the test knows which frame a
decoder handed back without asking any decoder.  On these containers torchcodec and
decord seek to the wrong frames (frame 12 for 8, or none at all); ``auto`` decodes them
in order with PyAV and gets every one right."""
import os

import numpy as np
import pytest

from vadclip.video.decode import VideoError, _open_kind, iter_snippet_chunks, open_video, snippet_frame_indices
from vadclip.video.samples import frame_number, write_numbered_video

N = 40
FORMATS = [("h264.ts", "libx264"), ("hevc.ts", "libx265"), ("mpeg2.ts", "mpeg2video"),
           ("mpeg2.mpg", "mpeg2video"), ("h264.mp4", "libx264")]


@pytest.fixture(scope="module")
def dvr(tmp_path_factory):
    d = tmp_path_factory.mktemp("dvr")
    for name, codec in FORMATS:
        write_numbered_video(str(d / name), N, codec)
    whole = (d / "h264.ts").read_bytes()
    (d / "cut.ts").write_bytes(whole[:len(whole) * 3 // 5 // 188 * 188])   # cut on a TS packet boundary
    import av

    with av.open(str(d / "audio.mp4"), "w") as c:                          # sound, no picture
        s = c.add_stream("aac", rate=16000)
        for i in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return d


def _numbers(path, decoder="auto"):
    """(decoder, frame numbers) of the snippets' middle frames as the job decodes them."""
    reader, info = open_video(path, decoder=decoder)
    sel = snippet_frame_indices(info.num_frames, 16).tolist()
    return info, [frame_number(f) for f in reader.get(sel)], sel


@pytest.mark.parametrize("name", [n for n, _ in FORMATS])
def test_auto_decodes_each_dvr_format_with_the_right_frames(dvr, name):
    info, got, sel = _numbers(str(dvr / name))
    assert info.num_frames == N and got == sel, (name, info.decoder)
    assert info.decoder == ("pyav" if name.endswith((".ts", ".mpg")) else info.decoder)
    # the pipeline's own path: chunks of crops, the same count
    info, chunks = iter_snippet_chunks(str(dvr / name), 16, 32, 1, 2)
    assert sum(len(c) for c in chunks) == len(sel)


def test_the_seeking_decoders_are_what_fails_on_mpeg_ts(dvr):
    """Why ``auto`` decodes MPEG-TS in order: asked by name, a seeking decoder's frames
    are wrong or missing here, and where one cannot read the file at all the next one
    in the chain (ending with PyAV) decodes it."""
    wrong = 0
    for kind in ("torchcodec", "decord"):
        try:
            reader = _open_kind(str(dvr / "h264.ts"), "h264.ts", kind)
            wrong += [frame_number(f) for f in reader.get([8, 24])] != [8, 24]
        except Exception:   # noqa: BLE001 - cannot read it at all
            wrong += 1
    assert wrong == 2
    info, chunks = iter_snippet_chunks(str(dvr / "h264.ts"), 16, 32, 1, 2, decoder="decord")
    assert len(list(chunks)) == 2 and info.decoder in ("decord", "pyav")


def test_truncated_and_audio_only_files(dvr):
    info, got, sel = _numbers(str(dvr / "cut.ts"))
    assert info.decoder == "pyav" and 0 < info.num_frames < N
    assert got[:-1] == sel[:-1] and abs(got[-1] - sel[-1]) <= 1     # what is there, where it is
    with pytest.raises(VideoError, match=r"audio.mp4: no video stream \(the file holds audio only\)$"):
        open_video(str(dvr / "audio.mp4"))


@pytest.mark.slow
def test_a_folder_of_dvr_exports_extracts_every_video(ray_local, dvr, tmp_path):
    from vadclip.io.features import read_feature_rows
    from vadclip.io.parts import read_column
    from vadclip.jobs.extract import ExtractOptions, errors_dir, run_extract
    from vadclip.model.config import ClipSpec

    out = tmp_path / "out"
    s = run_extract(str(dvr), str(out), ExtractOptions(clip=ClipSpec.tiny(), batch_size=8), log=lambda *_: None)
    rows = {os.path.basename(r["path"]): r for r in read_feature_rows(str(out / "features"))}
    assert sorted(rows) == sorted([n for n, _ in FORMATS] + ["cut.ts"])
    assert all(rows[n]["num_frames"] == N for n, _ in FORMATS)
    errors = read_column(errors_dir(str(out)), "error")
    assert len(errors) == 1 and errors[0].endswith("audio.mp4: no video stream (the file holds audio only)")
    assert s["videos_ok"] == 6 and s["videos_failed"] == 1 and "pyav" in s["decoders"]
    # each row names what decoded it: MPEG-TS/PS in order with PyAV, the others as --decoder auto chose
    by_name = {n: rows[n]["decoder"] for n in rows}
    assert all(by_name[n] == "pyav" for n in by_name if n.endswith((".ts", ".mpg")))
    assert all(by_name[n].split("-")[0] in ("torchcodec", "decord", "pyav") for n in by_name)   # torchcodec-cpu/-cuda
    assert set(by_name.values()) == set(s["decoders"])
    print("decoders:", by_name)


@pytest.mark.parametrize("name,codec", [("h264.ts", "libx264"), ("mpeg2.ts", "mpeg2video"), ("h264.mp4", "libx264")])
def test_key_frames_are_found_by_seeking_never_by_decoding_from_the_start(tmp_path, name, codec):
    """Issue #46: the report's key frames of a long recording (here 300 frames, a keyframe
    every 12) are the frames shown at their times, each found by a seek to the keyframe
    before it (MPEG-TS, which has no index, seeks again earlier where it lands after), so a
    frame near the end costs a GOP or two of decoding, not the whole file."""
    from vadclip.video.decode import frames_at

    n = 300
    path = str(tmp_path / name)
    write_numbered_video(path, n, codec)
    for f in (0, 5, 150, 291, n - 1):
        (frame,), decoded = frames_at(path, [(f + 0.5) / 25.0])
        assert frame_number(frame) == f, (name, f)
        assert decoded <= 60, (name, f, decoded)        # decoding from the start: f + 1 frames
