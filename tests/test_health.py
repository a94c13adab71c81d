"""
Health and metrics: /livez, /readyz and /metrics beside /v2/ or on their own
listener (--admin-listen), readiness failing when storage takes no writes,
and the metrics the issue lists moving as requests are served.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from conftest import makeBackends
from helpers import digestOf
from prometheus_client.parser import text_string_to_metric_families
from twistdprocess import TwistdRegistry
from twisted.internet import reactor

from ociklein import Registry
from ociklein._metrics import REGISTRY, storageError
from ociklein.registry import RegistryService


def sample(name: str, **labels: str) -> float:
    """The current value of one sample of ociklein's metrics (0 when absent)."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _get(url: str) -> tuple[int, bytes, Any]:
    response = await treq.get(url, persistent=False)
    return response.code, await treq.content(response), response


async def _started(service: RegistryService) -> AsyncIterator[RegistryService]:
    service.startService()
    yield service
    await service.stopService()


@pytest_twisted.async_yield_fixture(params=["memory", "fs"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A registry of each backend serving health and metrics beside /v2/; its URL and root."""
    registry = Registry(*makeBackends(request.param, tmp_path / "root"))
    async for service in _started(registry.service(["tcp:0:interface=127.0.0.1"], reactor)):
        yield f"http://127.0.0.1:{service.ports[0].getHost().port}", tmp_path / "root"


@pytest_twisted.ensureDeferred
async def test_livez_and_readyz(served: tuple[str, Path]) -> None:
    """/livez and /readyz answer 200 in plain text, naming each readiness check."""
    url, _ = served
    code, body, response = await _get(f"{url}/livez")
    assert (code, body) == (200, b"ok\n")
    assert response.headers.getRawHeaders("Content-Type") == ["text/plain; charset=utf-8"]
    code, body, _ = await _get(f"{url}/readyz")
    assert code == 200
    assert body.decode().splitlines() == ["[+]storage ok", "[+]listening ok", "readyz check passed"]


@pytest_twisted.ensureDeferred
async def test_only_exact_paths(served: tuple[str, Path]) -> None:
    """Only the exact paths are health endpoints; /livez/x and /v2/livez stay the registry's 404s."""
    url, _ = served
    for path in ("/livez/x", "/v2/livez", "/metricsx"):
        code, _, response = await _get(url + path)
        assert code == 404, path
        assert response.headers.getRawHeaders("Content-Type") == ["application/json"], path


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
@pytest_twisted.ensureDeferred
async def test_readyz_fails_when_storage_takes_no_writes_as_user(served: tuple[str, Path]) -> None:
    """/readyz answers 503 naming storage when the root's tmp/ refuses new files (as a user)."""
    url, root = served
    if not (root / "tmp").exists():
        pytest.skip("the memory backend has no root")
    (root / "tmp").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, body, _ = await _get(f"{url}/readyz")
    finally:
        (root / "tmp").chmod(stat.S_IRWXU)
    assert code == 503
    assert "[-]storage failed: storage root is not writable" in body.decode()


@pytest_twisted.ensureDeferred
async def test_readyz_fails_when_storage_takes_no_writes(tmp_path: Path) -> None:
    """/readyz answers 503 naming storage when the fs root cannot take a new file."""
    manifests, blobs = makeBackends("fs", tmp_path / "root")
    service = Registry(manifests, blobs).service(["tcp:0:interface=127.0.0.1"], reactor)
    async for started in _started(service):
        url = f"http://127.0.0.1:{started.ports[0].getHost().port}"
        os.rename(tmp_path / "root" / "tmp", tmp_path / "moved")
        (tmp_path / "root" / "tmp").write_bytes(b"not a directory")
        try:
            code, body, _ = await _get(f"{url}/readyz")
        finally:
            os.unlink(tmp_path / "root" / "tmp")
            os.rename(tmp_path / "moved", tmp_path / "root" / "tmp")
        assert code == 503
        lines = body.decode().splitlines()
        assert lines[0].startswith("[-]storage failed: storage root is not writable")
        assert lines[-1] == "readyz check failed"
        code, _, _ = await _get(f"{url}/readyz")
        assert code == 200


@pytest_twisted.ensureDeferred
async def test_metrics_count_requests(served: tuple[str, Path]) -> None:
    """Requests, durations, bytes each way and open sessions move in /metrics as requests are served."""
    url, _ = served
    labels = {"route": "uploads", "method": "POST", "status": "201"}
    before = {
        "requests": sample("ociklein_http_requests_total", **labels),
        "durations": sample("ociklein_http_request_duration_seconds_count", route="uploads", method="POST"),
        "received": sample("ociklein_http_received_bytes_total", route="uploads"),
        "sent": sample("ociklein_http_sent_bytes_total", route="blob"),
    }
    data = b"x" * 5000
    response = await treq.post(
        f"{url}/v2/m/blobs/uploads/?digest={digestOf(data)}", data=data, persistent=False
    )
    await treq.content(response)
    assert response.code == 201
    code, body, _ = await _get(f"{url}/v2/m/blobs/{digestOf(data)}")
    assert (code, body) == (200, data)
    response = await treq.post(f"{url}/v2/m/blobs/uploads/", persistent=False)
    await treq.content(response)
    code, text, response = await _get(f"{url}/metrics")
    assert code == 200
    assert response.headers.getRawHeaders("Content-Type")[0].startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(text.decode())}
    names = set(families)
    assert {
        "ociklein_http_requests",
        "ociklein_http_request_duration_seconds",
        "ociklein_http_received_bytes",
        "ociklein_http_sent_bytes",
        "ociklein_http_open_connections",
        "ociklein_upload_sessions_open",
        "process_cpu_seconds",
        "process_open_fds",
        "python_info",
    } <= names
    assert sample("ociklein_http_requests_total", **labels) == before["requests"] + 1
    assert (
        sample("ociklein_http_request_duration_seconds_count", route="uploads", method="POST")
        == before["durations"] + 2
    )
    assert sample("ociklein_http_received_bytes_total", route="uploads") == before["received"] + 5000
    assert sample("ociklein_http_sent_bytes_total", route="blob") == before["sent"] + 5000
    assert sample("ociklein_upload_sessions_open") >= 1
    [connections] = families["ociklein_http_open_connections"].samples
    assert connections.value >= 1  # at least the scrape's own


def test_storage_errors_by_kind() -> None:
    """A failed storage operation counts under its errno name; an unnamed one under other."""
    import errno

    before = sample("ociklein_storage_errors_total", kind="ENOSPC")
    storageError(OSError(errno.ENOSPC, "No space left on device"))
    assert sample("ociklein_storage_errors_total", kind="ENOSPC") == before + 1
    other = sample("ociklein_storage_errors_total", kind="other")
    storageError(OSError("no errno"))
    assert sample("ociklein_storage_errors_total", kind="other") == other + 1


@pytest_twisted.ensureDeferred
async def test_hostile_method_does_not_make_a_series(served: tuple[str, Path]) -> None:
    """A made-up method is counted as 'other', so clients cannot create time series at will."""
    url, _ = served
    response = await treq.request("BREW", f"{url}/v2/", persistent=False)
    await treq.content(response)
    assert (
        REGISTRY.get_sample_value(
            "ociklein_http_requests_total", {"route": "base", "method": "BREW", "status": "405"}
        )
        is None
    )


@pytest_twisted.ensureDeferred
async def test_admin_listen_moves_health_and_metrics() -> None:
    """With an admin endpoint, health and metrics are served there only, and /v2/ only on the main port."""
    service = Registry().service(
        ["tcp:0:interface=127.0.0.1"], reactor, adminListen=["tcp:0:interface=127.0.0.1"]
    )
    async for started in _started(service):
        [main] = started.ports
        [admin] = started.adminPorts
        mainURL = f"http://127.0.0.1:{main.getHost().port}"
        adminURL = f"http://127.0.0.1:{admin.getHost().port}"
        for path in ("/livez", "/readyz", "/metrics"):
            assert (await _get(mainURL + path))[0] == 404, path
            assert (await _get(adminURL + path))[0] == 200, path
        assert (await _get(mainURL + "/v2/"))[0] == 200
        assert (await _get(adminURL + "/v2/"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_metrics_off() -> None:
    """With metrics off, /metrics is a 404 and health stays."""
    service = Registry().service(["tcp:0:interface=127.0.0.1"], reactor, metrics=False)
    async for started in _started(service):
        url = f"http://127.0.0.1:{started.ports[0].getHost().port}"
        assert (await _get(url + "/metrics"))[0] == 404
        assert (await _get(url + "/livez"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_twistd_admin_listen(twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path) -> None:
    """twistd ociregistry --admin-listen serves health and metrics there; the registry's port does not."""
    from twistdprocess import freePort

    adminPort = freePort()
    server = twistdRegistry(
        f"--admin-listen=tcp:{adminPort}:interface=127.0.0.1", "--backend=fs", f"--root={tmp_path / 'root'}"
    )
    code, body, _ = await _get(f"http://127.0.0.1:{adminPort}/readyz")
    assert code == 200, body
    code, body, _ = await _get(f"http://127.0.0.1:{adminPort}/metrics")
    assert code == 200 and b"ociklein_http_requests_total" in body
    assert (await _get(f"{server.url}/metrics"))[0] == 404
