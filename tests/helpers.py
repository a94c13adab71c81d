"""
Small helpers shared by the HTTP tests: digests, pushing blobs, reading
headers and the spec's JSON error bodies.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from typing import Any


def exchange(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """
    Send C{raw} bytes to 127.0.0.1:C{port}; everything received until the
    server closes.  Blocking: run it in a thread.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def digestOf(data: bytes, algorithm: str = "sha256") -> str:
    """
    The OCI digest of C{data}.
    """
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def header(response: Any, name: str) -> str | None:
    """
    The single value of header C{name}, or L{None}; several values fail.
    """
    values = response.headers.getRawHeaders(name)
    if values is None:
        return None
    assert len(values) == 1, f"{name}: {values!r}"
    return str(values[0])


def contentLength(response: Any) -> int | None:
    """
    The response's C{Content-Length}: twisted.web's client moves it out of
    the headers into C{response.length}, except in answers to HEAD.
    """
    value = header(response, "Content-Length")
    if value is not None:
        return int(value)
    length = response.length
    return length if isinstance(length, int) else None


def errorCode(response: Any) -> str:
    """
    The code of the one error in a spec JSON error body, after checking the
    body's shape and its C{Content-Type}.
    """
    assert header(response, "Content-Type") == "application/json", response.headers
    document = json.loads(response.body)
    [error] = document["errors"]
    assert set(error) == {"code", "message", "detail"}, error
    assert isinstance(error["message"], str) and error["message"]
    return str(error["code"])


async def pushBlob(client: Any, name: str, data: bytes, algorithm: str = "sha256") -> str:
    """
    Push C{data} to repository C{name} in one monolithic POST; its digest.
    """
    digest = digestOf(data, algorithm)
    response = await client.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", data=data)
    assert response.code == 201, (response.code, response.body)
    return digest


async def startUpload(client: Any, name: str) -> str:
    """
    Open an upload session in repository C{name}; its C{Location} path.
    """
    response = await client.request("POST", f"/v2/{name}/blobs/uploads/")
    assert response.code == 202, (response.code, response.body)
    location = header(response, "Location")
    assert location is not None
    return location


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def descriptorOf(content: bytes, mediaType: str, **extra: Any) -> dict[str, Any]:
    """
    An OCI descriptor of C{content}, with any extra fields.
    """
    return {"mediaType": mediaType, "digest": digestOf(content), "size": len(content), **extra}


def imageManifest(
    config: bytes,
    layers: list[bytes],
    mediaType: str = OCI_MANIFEST,
    configMediaType: str = OCI_CONFIG,
    layerMediaType: str = OCI_LAYER,
    **extra: Any,
) -> dict[str, Any]:
    """
    An image manifest document over the given config and layer contents.
    """
    return {
        "schemaVersion": 2,
        "mediaType": mediaType,
        "config": descriptorOf(config, configMediaType),
        "layers": [descriptorOf(layer, layerMediaType) for layer in layers],
        **extra,
    }


async def putManifest(
    client: Any, name: str, reference: str, content: bytes, mediaType: str | None = OCI_MANIFEST
) -> Any:
    """
    PUT C{content} as manifest C{reference} of C{name}; the response.
    """
    headers = {} if mediaType is None else {"Content-Type": mediaType}
    return await client.request("PUT", f"/v2/{name}/manifests/{reference}", data=content, headers=headers)


async def pushImage(
    client: Any,
    name: str,
    reference: str | None = None,
    *,
    config: bytes = b'{"architecture":"amd64","os":"linux"}',
    layers: tuple[bytes, ...] = (b"layer-one",),
    **extra: Any,
) -> tuple[str, bytes]:
    """
    Push the blobs and an OCI image manifest over them to C{name}, by
    C{reference} (its own digest when L{None}); its digest and bytes.
    """
    for blob in (config, *layers):
        await pushBlob(client, name, blob)
    content = json.dumps(imageManifest(config, list(layers), **extra)).encode()
    digest = digestOf(content)
    response = await putManifest(client, name, reference or digest, content)
    assert response.code == 201, (response.code, response.body)
    return digest, content


async def waitFor(condition: Callable[[], bool], seconds: float = 10, what: str = "condition") -> None:
    """
    Let the reactor run until C{condition()} holds; fail after C{seconds},
    saying C{what} was awaited.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{what} not reached in {seconds} s")
