"""Which S3 client library the object store uses: put/get latency of one generated PNG.

Starts a moto S3 server (`moto[server]`, a separate process on 127.0.0.1, random port), makes a
bucket, and with each client — obstore, boto3 (and s3fs when it is installed) — puts then gets
the same ~60 kB PNG `--ops` times, one request at a time, from one client object made up front
(as the service keeps one). Reports p50/p99/mean per operation in milliseconds; the first
`--warmup` operations of each kind are left out (connection set-up, first-call imports).

Also times today's local save (sd_core.pngmeta.save_png: encode + temp file + fsync + rename)
against the store's local backend with the same PNG, so the single-machine path is measured.

    python benchmarks/bench_storage.py                 # 200 ops each
    python benchmarks/bench_storage.py --ops 500 --json out.json

Not a test: timings depend on the machine and its load. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUCKET = "bench"
KEY = "images/1/1-0.png"


def sample_png(target_bytes: int = 60_000) -> tuple[Image.Image, bytes]:
    """A PNG of about `target_bytes`: mild noise over a gradient compresses like a render; the
    side grows until the file is that large."""
    rng = np.random.default_rng(0)
    side = 128
    while True:
        gradient = np.linspace(0, 255, side, dtype=np.float32)[None, :, None]
        noise = rng.normal(0, 6, (side, side, 3))
        image = Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8), "RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        if buffer.tell() >= target_bytes:
            return image, buffer.getvalue()
        side += 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, endpoint
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto server did not start")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    at = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {
        "p50_ms": 1000 * at(0.50),
        "p99_ms": 1000 * at(0.99),
        "mean_ms": 1000 * statistics.fmean(ordered),
    }


def timed(operation: Callable[[], object], ops: int, warmup: int) -> dict[str, float]:
    samples = []
    for n in range(ops + warmup):
        start = time.perf_counter()
        operation()
        if n >= warmup:
            samples.append(time.perf_counter() - start)
    return percentiles(samples)


def bench_obstore(endpoint: str, data: bytes, ops: int, warmup: int) -> dict[str, object]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id="bench",
        secret_access_key="bench",
        client_options={"allow_http": True},
    )

    def get() -> None:
        assert len(obstore.get(store, KEY).bytes()) == len(data)

    return {
        "put": timed(lambda: obstore.put(store, KEY, data), ops, warmup),
        "get": timed(get, ops, warmup),
    }


def bench_boto3(endpoint: str, data: bytes, ops: int, warmup: int) -> dict[str, object]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )

    def get() -> None:
        assert len(client.get_object(Bucket=BUCKET, Key=KEY)["Body"].read()) == len(data)

    return {
        "put": timed(lambda: client.put_object(Bucket=BUCKET, Key=KEY, Body=data), ops, warmup),
        "get": timed(get, ops, warmup),
    }


def bench_s3fs(endpoint: str, data: bytes, ops: int, warmup: int) -> dict[str, object] | None:
    try:
        import s3fs
    except ImportError:
        return None
    fs = s3fs.S3FileSystem(key="bench", secret="bench", endpoint_url=endpoint)
    path = f"{BUCKET}/{KEY}"
    return {
        "put": timed(lambda: fs.pipe_file(path, data), ops, warmup),
        "get": timed(lambda: fs.cat_file(path), ops, warmup),
    }


def bench_local(image: Image.Image, ops: int, warmup: int) -> dict[str, object]:
    """Today's save (pngmeta.save_png to a path, what the worker called before the store) vs
    the store's local backend, same image; the two alternate op by op, so a change in the
    machine's load hits both alike."""
    from sd_core.pngmeta import save_png
    from stable_diffusion_api.services.storage import ImageStorage

    with tempfile.TemporaryDirectory() as folder:
        direct = Path(folder) / "direct" / "1-0.png"
        storage = ImageStorage.local(Path(folder) / "store")
        before: list[float] = []
        after: list[float] = []
        for n in range(ops + warmup):
            for samples, save in (
                (before, lambda: save_png(image, direct)),
                (after, lambda: storage.save_png(image, KEY)),
            ):
                start = time.perf_counter()
                save()
                if n >= warmup:
                    samples.append(time.perf_counter() - start)
        return {
            "pngmeta.save_png (before)": percentiles(before),
            "ImageStorage.save_png (after)": percentiles(after),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    image, data = sample_png()
    results: dict[str, object] = {"png_bytes": len(data), "ops": args.ops}
    results["local"] = bench_local(image, args.ops, args.warmup)
    process, endpoint = start_moto()
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket=BUCKET)
        for name, bench in (("obstore", bench_obstore), ("boto3", bench_boto3)):
            results[name] = bench(endpoint, data, args.ops, args.warmup)
        s3fs_result = bench_s3fs(endpoint, data, args.ops, args.warmup)
        if s3fs_result is not None:
            results["s3fs"] = s3fs_result
    finally:
        process.terminate()
        process.wait(timeout=10)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
