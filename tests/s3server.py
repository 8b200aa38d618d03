"""A real S3-API server for the object-storage tests: moto's standalone server
(``moto[server]``) on 127.0.0.1 and a free port, started as a separate process and
stopped at the end; pyarrow, Ray, boto3 and MLflow reach it through the standard
``AWS_*`` environment variables, exactly as they would reach a real bucket."""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

from localserver import free_port, wait_until_answering

ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED")


@contextmanager
def s3_server(*buckets: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    try:
        wait_until_answering(url + "/moto-api/", proc, "moto server", 30, interval_s=0.2)
        os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        import boto3

        client = boto3.client("s3")
        for b in buckets:
            client.create_bucket(Bucket=b)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
