import subprocess
import sys

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from vadclip.cli import build_parser


def _load():
    with open("cluster.yaml") as fh:
        return yaml.safe_load(fh)


def test_cluster_yaml_passes_ray_validation():
    cfg = _load()
    validate_config(prepare_config(cfg))
    # the project's image (./Dockerfile, FROM the rayproject/ray image of this Ray: tests/test_image.py);
    # nothing is installed node by node, so a node that joins mid-job runs the same code
    from vadclip._version import __version__

    assert cfg["docker"]["image"] == f"vadclip:{__version__}"
    assert not any("pip install" in c for c in cfg["setup_commands"])
    assert cfg["available_node_types"]["gpu_worker"]["max_workers"] > cfg["available_node_types"]["gpu_worker"]["min_workers"]
    # the head offers no CPU to tasks: work and writers go to the worker nodes
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}
    bad = _load()
    bad["max_workers"] = "lots"
    with pytest.raises(Exception, match="lots"):
        validate_config(prepare_config(bad))


def test_every_cli_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    assert set(sub.choices) == {"extract", "train", "score", "calibrate", "evaluate", "compare-features", "import-release",
                                "register-model", "sample-videos", "report", "demo"}
    for name, p in sub.choices.items():
        for act in p._actions:
            if act.dest != "help":
                assert act.help, f"{name} {act.option_strings or act.dest} has no help text"


@pytest.mark.parametrize("job", ["extract_features", "train", "score_archive"])
def test_job_entry_points_run(job):
    r = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--address" in r.stdout


def test_the_shipped_cluster_yaml_declares_the_gpus_its_autoscaler_can_launch():
    # what `--device auto` reads on the head (its monitor's config, ~/ray_bootstrap_config.yaml)
    from vadclip.jobs.cluster import gpus_in_config

    with open("cluster.yaml") as fh:
        config = yaml.safe_load(fh)
    assert gpus_in_config(config) == 8.0          # 8 gpu_worker nodes of one GPU each
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert gpus_in_config({"available_node_types": {"cpu": {"resources": {"CPU": 4}, "max_workers": 3}}}) is None
