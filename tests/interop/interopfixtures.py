"""
The fixture of the interoperability tests: one real C{twistd ociregistry}
per storage backend.

Test modules load it with C{pytest_plugins = ["interopfixtures"]} rather
than from a C{conftest.py}: a second C{conftest} module in a directory
without C{__init__.py} would shadow C{tests/conftest.py} for every test that
imports from it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from interophelpers import RunningRegistry, startRegistry, stopRegistry
from seaweedfixture import s3Arguments

BACKENDS = ["memory", "fs", "s3"]


@pytest.fixture(scope="session", params=BACKENDS)
def interop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningRegistry]:
    """
    A real registry process of the given backend, shared by all interop
    tests; each test works in repositories of its own.
    """
    backendArgs = None
    if request.param == "s3":
        backendArgs = s3Arguments(request.getfixturevalue("seaweedfs"))
    running = startRegistry(
        request.param, tmp_path_factory.mktemp(f"interop-{request.param}"), backendArgs=backendArgs
    )
    yield running
    stopRegistry(running)
