import os
import warnings

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", message=".*No pretrained weights.*")


@pytest.fixture(scope="session")
def torchcodec_ok():
    """torchcodec loads (FFmpeg's shared libraries are installed); where it does not,
    its tests skip — unless VADCLIP_REQUIRE_TORCHCODEC=1 (CI), where they fail."""
    from vadclip.video import torchcodec_missing

    why = torchcodec_missing()
    if why is not None:
        if os.environ.get("VADCLIP_REQUIRE_TORCHCODEC") == "1":
            pytest.fail(f"torchcodec is required here (VADCLIP_REQUIRE_TORCHCODEC=1) and does not load: {why}")
        pytest.skip(f"torchcodec does not load here: {why}")
    return True


@pytest.fixture(scope="session")
def tiny_clip():
    from vadclip.clip_backbone import FrozenCLIP
    from vadclip.config import ClipSpec

    return FrozenCLIP(ClipSpec.tiny())


def init_local_ray():
    """A real local Ray with more logical CPUs than cores, so Ray Train workers and
    Ray Data tasks never starve each other on a 2-core machine; a Data pipeline
    that stops progressing fails fast instead of eating CI time."""
    import ray

    os.environ["VADCLIP_DATA_NO_PROGRESS_TIMEOUT_S"] = "120"
    os.environ["VADCLIP_PROGRESS_BARS"] = "0"
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=6, include_dashboard=False, log_to_driver=False)
    from vadclip.raysetup import ensure_ray

    ensure_ray()
    return ray


@pytest.fixture(scope="session")
def ray_local():
    yield init_local_ray()
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory):
    """Real H.264 files of varied fps and sizes (3 normal, 3 abnormal), a corrupt
    file, an empty file and a missing path, with a CSV manifest."""
    from vadclip.sample_videos import make_sample_set, write_manifest

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
