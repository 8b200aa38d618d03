"""The KubeRay manifests of deploy/kuberay/ against KubeRay v1.6.2's own CRD schemas
(../shared/kuberay, the OpenAPI v3 schema of each resource, made strict the way the
API server is: an unknown field is an error), and each entrypoint's flags parsed by the
project's CLI.  No Kubernetes cluster runs here: what the operator would do with them
is not tested (docs/kubernetes.md says so)."""
import copy
import glob
import os
import re
import shlex

import jsonschema
import pytest
import yaml

from vadclip.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRDS = os.path.join(ROOT, "..", "shared", "kuberay")
MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "deploy", "kuberay", "*.yaml")))


def _strict(schema):
    """The schema with unknown fields refused wherever Kubernetes prunes or refuses them."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and \
                    not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(s)
    return s


@pytest.fixture(scope="module")
def crds():
    if not os.path.isdir(CRDS):
        if os.environ.get("CI"):
            pytest.fail(f"KubeRay's CRDs are missing at {CRDS}")
        pytest.skip("no ../shared/kuberay here")
    out = {}
    for f in glob.glob(os.path.join(CRDS, "ray.io_*.yaml")):
        crd = yaml.safe_load(open(f))
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = \
                    _strict(v["schema"]["openAPIV3Schema"])
    return out


def _entrypoints(doc):
    spec = doc["spec"]
    return [spec["jobTemplate"]["entrypoint"]] if doc["kind"] == "RayCronJob" else [spec["entrypoint"]]


def test_the_manifests_are_there():
    kinds = sorted(yaml.safe_load(open(f))["kind"] for f in MANIFESTS)
    assert kinds == ["RayCronJob", "RayJob", "RayJob", "RayJob"]


@pytest.mark.parametrize("path", MANIFESTS, ids=os.path.basename)
def test_each_manifest_is_valid_against_kuberays_crd(crds, path):
    doc = yaml.safe_load(open(path))
    schema = crds[(doc["apiVersion"], doc["kind"])]
    jsonschema.validate(doc, schema)
    job = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    cluster = job["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"      # the head runs no work
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert all(p["spec"]["serviceAccountName"] == "vadclip" for p in pods)   # credentials from the pod's identity
    text = open(path).read()
    assert not re.search(r"AWS_SECRET|AWS_ACCESS_KEY|SESSION_TOKEN", text)  # no secret in a manifest
    gpu = [g for g in cluster["workerGroupSpecs"]
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and gpu[0]["minReplicas"] == 0


def test_a_typo_in_a_manifest_is_caught(crds):
    doc = yaml.safe_load(open(MANIFESTS[0]))
    doc["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        jsonschema.validate(doc, crds[(doc["apiVersion"], doc["kind"])])


@pytest.mark.parametrize("path", MANIFESTS, ids=os.path.basename)
def test_each_entrypoint_parses_with_the_cli(path):
    for entry in _entrypoints(yaml.safe_load(open(path))):
        argv = shlex.split(entry)
        assert argv[0] == "python" and argv[1].startswith("jobs/")
        script = open(os.path.join(ROOT, argv[1])).read()
        command = re.search(r'entry\(\["([a-z-]+)"', script).group(1)
        args = build_parser().parse_args([command, *argv[2:]])
        assert args.cmd == command
