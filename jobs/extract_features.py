"""Ray job entry point: `ray job submit --working-dir . -- python jobs/extract_features.py --help`.

Thin wrapper over `vadclip extract`; under `ray job submit` it connects to the cluster
through RAY_ADDRESS, locally it starts an embedded Ray."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vadclip.cli import entry  # noqa: E402

if __name__ == "__main__":
    entry(["extract", *sys.argv[1:]])
