import os
import warnings

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", message=".*No pretrained weights.*")


@pytest.fixture(scope="session")
def tiny_clip():
    from vadclip.clip_backbone import FrozenCLIP
    from vadclip.config import tiny_clip_kwargs

    return FrozenCLIP("ViT-B-16", None, tiny_clip_kwargs(32))
