"""
The fixtures of the client tests, loaded with C{pytest_plugins =
["clientfixtures"]}: registries to point the client at (ociklein on each
backend, and Distribution 2.8), and in-process HTTP servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from clienthelpers import listen
from distributionfixture import Distribution, distribution
from interophelpers import startRegistry, stopRegistry
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import IResource

__all__ = ["distribution", "serving", "target"]

TARGETS = ["memory", "fs", "distribution"]


@pytest.fixture(scope="session", params=TARGETS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """
    A running registry: ociklein on each backend, then Distribution 2.8;
    each test uses repositories of its own.
    """
    directory = tmp_path_factory.mktemp(f"client-{request.param}")
    if request.param == "distribution":
        with Distribution(directory).start() as running:
            yield running
        return
    running = startRegistry(request.param, directory)
    yield running
    stopRegistry(running)


@pytest_twisted.async_yield_fixture
async def serving() -> AsyncIterator[Any]:
    """
    C{await serving(resource)} -> the base URL; stopped after the test.
    """
    ports: list[IListeningPort] = []

    async def serve(resource: IResource) -> str:
        port = await listen(resource)
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield serve
    for port in ports:
        await port.stopListening()
