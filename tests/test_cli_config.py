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
