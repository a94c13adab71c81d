"""
Two stateless s3 nodes behind an nginx that round-robins every request over
both: skopeo pushes through it (its upload sessions split across nodes) and
pulls back through one node directly, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from interophelpers import skopeo
from nginxfixture import Nginx
from ocilayout import OCI_MANIFEST, makeImage, readLayout, writeLayout
from seaweedfixture import SeaweedFS, s3Arguments, uniquePrefix
from twistdprocess import TwistdRegistry, freePort


def _roundRobin(port: int, upstreams: list[str]) -> str:
    """
    The inside of an http block: docs/deploy.md's proxy settings in plain
    HTTP, over an upstream of every node (nginx's default: round-robin).
    """
    servers = "".join(f"        server {address};\n" for address in upstreams)
    return (
        "    upstream ociklein {\n"
        f"{servers}"
        "        keepalive 32;\n"
        "    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        "        client_max_body_size 0;\n"
        "        proxy_request_buffering off;\n"
        "        proxy_buffering off;\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_set_header Host $http_host;\n"
        "        location / { proxy_pass http://ociklein; }\n"
        "    }\n"
    )


@pytest.fixture
def roundRobin(
    seaweedfs: SeaweedFS, twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path
) -> Iterator[tuple[str, list[TwistdRegistry]]]:
    """
    Two s3 nodes on one prefix and an nginx round-robin in front: its
    address and the nodes.
    """
    args = s3Arguments(seaweedfs, uniquePrefix())
    nodes = [twistdRegistry(*args), twistdRegistry(*args)]
    port = freePort()
    nginx = Nginx(_roundRobin(port, [node.address for node in nodes]), tmp_path / "nginx", port).start()
    try:
        yield f"127.0.0.1:{port}", nodes
    finally:
        nginx.stop()


def test_skopeo_through_round_robin(roundRobin: tuple[str, list[TwistdRegistry]], tmp_path: Path) -> None:
    """skopeo push via a round-robin over two nodes pulls back identical through one node."""
    address, nodes = roundRobin
    image = makeImage(layers=3)
    layout = writeLayout(tmp_path / "in", image, "v1")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{address}/rr/image:v1")
    for node in nodes:
        # Both nodes took part in the push: nginx spread its requests.
        assert any(method in ("PATCH", "PUT", "POST") for method, _, _ in node.requests())
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{nodes[1].address}/rr/image:v1",
        f"oci:{tmp_path / 'out'}:v1",
    )
    index, blobs = readLayout(tmp_path / "out")
    [entry] = index["manifests"]
    assert (entry["mediaType"], entry["digest"]) == (OCI_MANIFEST, image.digest)
    assert blobs == {image.digest: image.manifest, **image.blobs}
