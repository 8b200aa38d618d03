"""No credential of a storage URI in what a job prints, writes or logs (issue #44 item 5): a
URI's user:password (``abfs://account:KEY@container/…``) and a query string's keys
(``?access_key=…&secret_key=…``, an Azure SAS's ``sig=``, a signed URL's signature)."""
import json
import sys

import pytest

from vadclip.io.storage import redact, redact_all

KEY = "Zk9SECRETv8Q+/aBcD=="


@pytest.mark.parametrize("uri,kept", [
    (f"abfs://account:{KEY}@container/cams/", "abfs://account:***@container/cams/"),
    (f"s3://archive/cams/?access_key=AKIA{KEY}&secret_key={KEY}&region=eu-west-1",
     "s3://archive/cams/?access_key=***&secret_key=***&region=eu-west-1"),
    (f"https://acct.blob.core.windows.net/c/v.mp4?sv=2024-01-01&sig={KEY}&se=2026",
     "https://acct.blob.core.windows.net/c/v.mp4?sv=2024-01-01&sig=***&se=2026"),
    (f"https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F{KEY}&X-Amz-Signature={KEY}",
     "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***"),
    ("s3://archive/cams/day-01/cam3.mp4", "s3://archive/cams/day-01/cam3.mp4"),
])
def test_redact_takes_out_every_kind_of_credential_a_uri_carries(uri, kept):
    assert redact(uri) == kept and KEY not in redact(f"reading {uri} failed")
    summary = {"output": uri, "failed_videos": [{"error": f"{uri}: not found"}], "n": 3}
    assert KEY not in json.dumps(redact_all(summary)) and redact_all(summary)["n"] == 3


def test_a_failing_command_names_the_uri_without_its_key(tmp_path):
    """The user's real path: a command given a URI with a key in it fails (no such store
    here); its one line names the URI, not the key."""
    import subprocess

    r = subprocess.run([sys.executable, "-m", "vadclip.cli", "extract", f"abfs://account:{KEY}@container/cams/",
                        "--out", str(tmp_path / "o"), "--tiny-clip"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode in (2, 3), r.stderr[-2000:]
    assert KEY not in r.stderr and KEY not in r.stdout and "account:***@container" in r.stderr
