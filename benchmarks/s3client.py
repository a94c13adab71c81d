#!/usr/bin/env python
"""
Which S3 client for the s3 backend's small requests: boto3 in a thread
pool, the lean path (botocore's SigV4 signer and boto3's urllib3
connections, without boto3's per-call machinery, in the same pool), or
botocore's signer with treq on the reactor?  Each GETs and PUTs small
objects (the manifest and tag traffic, where a client's own overhead
shows) on a SeaweedFS started for the purpose, with the same concurrency;
prints requests per second and this process's CPU time per request.

    python benchmarks/s3client.py [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from seaweedfixture import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, SeaweedFS
from twisted.internet import defer, task


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def boto3Pool(reactor: Any, server: SeaweedFS, n: int, concurrency: int, method: str) -> None:
    from ociklein.storage.s3 import S3Client

    client = S3Client(server.config("clientbench/"), reactor=reactor, threads=concurrency)
    key = client.keys.prefix + "object"
    client.put(key, b"x" * 1000)

    def get() -> bytes:
        body = client.s3.get_object(Bucket=client.bucket, Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    async def one() -> None:
        if method == "GET":
            await client.run(get)
        else:
            await client.run(client.s3.put_object, Bucket=client.bucket, Key=key, Body=b"x" * 1000)

    await drive(one, n, concurrency)
    client.close()


async def leanPool(reactor: Any, server: SeaweedFS, n: int, concurrency: int, method: str) -> None:
    from ociklein.storage.s3 import S3Client

    client = S3Client(server.config("clientbench/"), reactor=reactor, threads=concurrency)
    key = client.keys.prefix + "object"
    client.put(key, b"x" * 1000)

    async def one() -> None:
        if method == "GET":
            await client.run(client.get, key)
        else:
            await client.run(client.put, key, b"x" * 1000)

    await drive(one, n, concurrency)
    client.close()


async def treqSigned(reactor: Any, server: SeaweedFS, n: int, concurrency: int, method: str) -> None:
    import treq
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from twisted.web.client import HTTPConnectionPool

    credentials = Credentials(ACCESS_KEY, SECRET_KEY)
    url = f"{server.endpoint}/{BUCKET}/clientbench/object"
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = concurrency

    async def one() -> None:
        body = b"x" * 1000 if method == "PUT" else b""
        request = AWSRequest(method=method, url=url, data=body)
        request.context["payload_signing_enabled"] = False
        S3SigV4Auth(credentials, "s3", REGION).add_auth(request)
        headers = {k: [v] for k, v in request.headers.items()}
        response = await treq.request(method, url, headers=headers, data=body or None, pool=pool)
        await treq.content(response)
        assert response.code == 200, response.code

    await drive(one, n, concurrency)
    await pool.closeCachedConnections()


async def drive(one: Any, n: int, concurrency: int) -> None:
    left = [n]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await one()

    await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)])


async def main(reactor: Any, n: int, concurrency: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="s3client-"))
    server = SeaweedFS(directory).start()
    try:
        for method in ("GET", "PUT"):
            for name, run in (
                ("boto3 + thread pool", boto3Pool),
                ("lean + thread pool", leanPool),
                ("botocore signer + treq", treqSigned),
            ):
                await run(reactor, server, 100, concurrency, method)  # warm up
                began, cpuBegan = time.perf_counter(), cpu()
                await run(reactor, server, n, concurrency, method)
                elapsed, used = time.perf_counter() - began, cpu() - cpuBegan
                print(
                    f"{method} {name:24} {n / elapsed:7.0f} req/s  {used / n * 1e6:6.0f} µs CPU/request",
                    flush=True,
                )
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args.requests, args.concurrency)))
