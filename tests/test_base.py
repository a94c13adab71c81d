"""
The API root and errors for routes that do not exist.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_base_answers_with_api_version(client: Any) -> None:
    """GET /v2/ answers 200 with the Docker-Distribution-API-Version header."""
    response = await client.request("GET", "/v2/")
    assert response.code == 200
    assert response.headers.getRawHeaders("Docker-Distribution-API-Version") == ["registry/2.0"]


@pytest_twisted.ensureDeferred
async def test_unknown_route_is_json(client: Any) -> None:
    """An unknown route answers 404 with the spec's JSON error body, not HTML."""
    response = await client.request("GET", "/nothing/here")
    assert response.code == 404
    assert response.headers.getRawHeaders("Content-Type") == ["application/json"]
    assert json.loads(response.body)["errors"][0]["code"] == "NAME_UNKNOWN"
