import os
import warnings

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", message=".*No pretrained weights.*")


def torchcodec_decodes(path: str):
    """None where torchcodec really decodes ``path`` in this process, else why not.
    Asked of torchcodec itself, never of vadclip's own probe (the code under test)."""
    try:
        from torchcodec.decoders import VideoDecoder

        VideoDecoder(path).get_frame_at(0)
    except Exception as e:   # no FFmpeg: "Could not load libtorchcodec" at the first decoder
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None


@pytest.fixture(scope="session")
def torchcodec_ok(sample_videos):
    """torchcodec decodes a real file here (FFmpeg's shared libraries are installed);
    where it does not, its tests skip — unless VADCLIP_REQUIRE_TORCHCODEC=1 (CI), where
    they fail."""
    why = torchcodec_decodes(sample_videos["good"][0]["path"])
    if why is not None:
        if os.environ.get("VADCLIP_REQUIRE_TORCHCODEC") == "1":
            pytest.fail(f"torchcodec is required here (VADCLIP_REQUIRE_TORCHCODEC=1) and does not decode: {why}")
        pytest.skip(f"torchcodec does not decode here: {why}")
    return True


@pytest.fixture(scope="session")
def expected_decoder(sample_videos):
    """What ``--decoder auto`` must decode with in this process: torchcodec where it
    really decodes a file, decord elsewhere."""
    return "torchcodec-cpu" if torchcodec_decodes(sample_videos["good"][0]["path"]) is None else "decord"


@pytest.fixture(scope="session")
def isolation():
    """Skips where namespaces are not available, except in CI (``CI`` set), where
    these tests must run."""
    from isolation import isolation_missing

    why = isolation_missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"these tests must run in CI: {why}")
        pytest.skip(why)
    return True


@pytest.fixture(scope="session")
def tiny_clip():
    from vadclip.clip.backbone import FrozenCLIP
    from vadclip.model.config import ClipSpec

    return FrozenCLIP(ClipSpec.tiny())


def init_local_ray():
    """A real local Ray with more logical CPUs than cores, so Ray Train workers and
    Ray Data tasks never starve each other on a 2-core machine; a Data pipeline
    that stops progressing fails fast instead of eating CI time."""
    import ray

    os.environ["VADCLIP_DATA_NO_PROGRESS_TIMEOUT_S"] = "120"
    os.environ["VADCLIP_PROGRESS_BARS"] = "0"
    if not ray.is_initialized():
        # every worker starts with the tests' fault injection (tests/faultinject.py), inert
        # until a test arms a fault in this folder
        import tempfile

        import faultinject

        os.environ[faultinject.ENV] = tempfile.mkdtemp(prefix="vadclip-faults-")
        here = os.path.dirname(os.path.abspath(__file__))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
        ray.init(address="local", num_cpus=6, include_dashboard=False, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": faultinject.HOOK})
    from vadclip.jobs.cluster import ensure_ray

    ensure_ray()
    return ray


@pytest.fixture(scope="session")
def ray_local():
    yield init_local_ray()
    import ray

    ray.shutdown()


@pytest.fixture
def faults(ray_local):
    """:mod:`faultinject`, its faults cleared after the test."""
    import faultinject

    yield faultinject
    faultinject.disarm()


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory):
    """Real H.264 files of varied fps and sizes (3 normal, 3 abnormal), a corrupt
    file, an empty file and a missing path, with a CSV manifest."""
    from vadclip.video.samples import make_sample_set, write_manifest

    d = tmp_path_factory.mktemp("videos")
    manifest, gt = make_sample_set(str(d), 3, 3, frames_range=(40, 200), seed=7)
    corrupt = d / "corrupt.mp4"
    good = open(manifest[0]["path"], "rb").read()
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8)
    truncated = d / "truncated.mp4"
    truncated.write_bytes(good[: len(good) // 3])
    (d / "empty.mp4").write_bytes(b"")
    bad = [{"path": str(corrupt), "label": "Normal", "video_id": "corrupt"},
           {"path": str(truncated), "label": "Normal", "video_id": "truncated"},
           {"path": str(d / "empty.mp4"), "label": "Normal", "video_id": "empty"},
           {"path": str(d / "missing.mp4"), "label": "Normal", "video_id": "missing"}]
    write_manifest(manifest + bad, str(d / "manifest.csv"))
    return {"dir": d, "manifest": str(d / "manifest.csv"), "good": manifest, "bad": bad, "gt": gt}


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process here, with pytest's own exit status, once every result is
    reported and every plugin has finished: the interpreter's own teardown of what the
    suite loaded in-process (torch, decord, pyarrow's and Ray's native threads) crashed
    once after a whole slow tier had passed and printed its summary (a SIGSEGV, exit
    139, no test running), which turned a reported result into a failed CI."""
    import sys

    status = getattr(config, "_vadclip_exit", None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    session.config._vadclip_exit = int(exitstatus)
