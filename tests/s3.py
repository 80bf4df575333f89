"""A throwaway S3 server for the tests: moto's (`moto[server]`, requirements-dev.txt) in its own
process on 127.0.0.1 and a free port, and fresh buckets in it.

`s3_server()` starts it and stops it on the way out; `S3Server.new_bucket()` makes a bucket with
a name no other test uses; `S3Server.environment(bucket)` is what a Dali process needs to use
it (`DALI_STORAGE_URL` and the standard `AWS_*` variables)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

START_TIMEOUT_S = 60
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "dali-test", "AWS_SECRET_ACCESS_KEY": "dali-test-secret"}
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self) -> Any:
        """A boto3 client of the server (to make buckets and look inside them)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self) -> str:
        name = f"dali-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every key in `bucket`, sorted."""
        listed = self.client().list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def environment(self, bucket: str, prefix: str = "") -> dict[str, str]:
        url = f"s3://{bucket}/{prefix}".rstrip("/")
        return {
            "DALI_STORAGE_URL": url,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            **CREDENTIALS,
        }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def s3_server() -> Iterator[S3Server]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server did not answer in {START_TIMEOUT_S} s"
                    ) from None
                time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
