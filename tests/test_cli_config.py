"""`vadclip train --config FILE`: a preset with overrides, or a whole config, with the
flags given on the command line on top; a bad file is a one-line error (exit 2)."""
import json

from vadclip import VadConfig
from vadclip.cli import _train_config, build_parser, main


def _cfg(*argv):
    return _train_config(build_parser().parse_args(["train", "--train", "x", *argv]))


def test_config_file_preset_with_overrides_and_flags_on_top(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: custom\nclasses: [normal, fire, fall]\nlr: 0.001\nepochs: 3\n")
    c = _cfg("--config", str(tmp_path / "c.yaml"), "--epochs", "5", "--tiny-clip")
    assert (c.preset, c.class_keys, c.lr, c.epochs, c.clip.pretrained, c.padding) == \
        ("custom", ["normal", "fire", "fall"], 0.001, 5, None, "masked")


def test_whole_config_file_round_trips(tmp_path):
    xd = VadConfig.from_preset("xd", epochs=7)
    (tmp_path / "full.json").write_text(json.dumps(xd.to_dict()))
    c = _cfg("--config", str(tmp_path / "full.json"), "--lr", "0.5")
    assert c == xd.replace(lr=0.5)
    assert _cfg() == VadConfig.from_preset("ucf")                 # no file: the ucf preset, as before


def test_bad_config_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("preset: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    for f, msg in ((tmp_path / "bad.yaml", "not JSON or YAML"), (tmp_path / "list.yaml", "expected a mapping"),
                   (tmp_path / "none.yaml", "config file not found")):
        assert main(["train", "--train", str(tmp_path), "--config", str(f)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]


def test_clip_is_one_mapping_and_old_flat_fields_still_load(tmp_path):
    """``clip:`` in a config file is one ClipSpec; a flag lays over it; configs saved with
    the older clip_model / clip_pretrained / clip_model_kwargs fields fold into it."""
    import pytest

    from vadclip.model.config import ClipSpec
    from vadclip.errors import InputError

    (tmp_path / "c.yaml").write_text("preset: xd\nclip: {model: vadclip-tiny, pretrained: null}\nepochs: 2\n")
    c = _cfg("--config", str(tmp_path / "c.yaml"))
    assert (c.preset, c.clip, c.epochs) == ("xd", ClipSpec("vadclip-tiny", None), 2)
    assert c.clip.embed_dim == 32 and c.clip.image_size == 224      # from the registered open_clip config
    assert VadConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    old = {k: v for k, v in c.to_dict().items() if k != "clip"}
    old.update(clip_model="ViT-B-16", clip_pretrained=None, clip_model_kwargs={"embed_dim": 64})
    assert VadConfig.from_dict(old).clip == ClipSpec("ViT-B-16", None, {"embed_dim": 64})
    assert c.replace(clip_pretrained="laion2b_s34b_b88k").clip == ClipSpec("vadclip-tiny", "laion2b_s34b_b88k")
    with pytest.raises(InputError, match="unknown CLIP settings"):
        VadConfig.from_dict(dict(c.to_dict(), clip={"name": "x"}))
