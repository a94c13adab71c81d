"""
The optional parts of the distribution spec: tags on a push by digest,
sparse manifests behind C{allowSparseManifests}, each through StubTreq and
a live port on every backend, with the switches both off and on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from authhelpers import PASSWORDS, Authorized, basic, writePolicy, writeUsers
from twisted.internet import reactor

from ociklein import Registry
from ociklein.auth import AccessControl
from ociklein.core import MAX_TAGS_PER_PUSH
from tests.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    descriptorOf,
    digestOf,
    errorCode,
    header,
    imageManifest,
    pushBlob,
    pushImage,
    putManifest,
)

CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYER = b"optional-layer"

SPARSE = [{"allowSparseManifests": False}, {"allowSparseManifests": True}]


@pytest.fixture
def options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """
    The Registry keywords of a test, given with indirect parametrization.
    """
    return dict(getattr(request, "param", {}))


@pytest.fixture
def registry(backend: tuple[Any, Any], options: dict[str, Any], tmp_path: Path) -> Registry:
    """
    The registry of a test; with C{access} in its options, under the users
    and policy of the access-control tests (alice does everything, bob
    pulls and pushes team/*, anonymous pulls public/**).
    """
    if options.pop("access", False):
        options["access"] = AccessControl.fromFiles(
            reactor, htpasswd=str(writeUsers(tmp_path)), access=str(writePolicy(tmp_path)), reloadInterval=0
        )
    return Registry(*backend, maxManifestBytes=64 * 1024, **options)


def as_(client: Any, user: str) -> Authorized:
    return Authorized(client, basic(user, PASSWORDS[user]))


def ociTags(response: Any) -> list[str]:
    return list(response.headers.getRawHeaders("OCI-Tag") or [])


async def tagsOf(client: Any, name: str) -> list[str]:
    response = await client.request("GET", f"/v2/{name}/tags/list")
    if response.code == 404:
        return []
    assert response.code == 200, response.body
    return list(json.loads(response.body)["tags"])


async def manifestAt(client: Any, name: str, reference: str, method: str = "GET") -> tuple[int, Any]:
    response = await client.request(method, f"/v2/{name}/manifests/{reference}")
    return response.code, response


async def pushedImage(client: Any, name: str, **extra: Any) -> tuple[str, bytes]:
    """
    The blobs of an image pushed to C{name}, and its manifest (not pushed).
    """
    await pushBlob(client, name, CONFIG)
    await pushBlob(client, name, LAYER)
    content = json.dumps(imageManifest(CONFIG, [LAYER], **extra)).encode()
    return digestOf(content), content


def query(tags: list[str]) -> str:
    return "?" + "&".join(f"tag={tag}" for tag in tags)


# -- tags on a push by digest ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_push_by_digest_applies_tags(client: Any) -> None:
    """PUT by digest with tag parameters stores the manifest, points every tag at it, one OCI-Tag per tag."""
    digest, content = await pushedImage(client, "tagged")
    response = await putManifest(client, "tagged", digest + query(["v1", "latest", "V1.0-rc_2"]), content)
    assert response.code == 201, response.body
    assert ociTags(response) == ["v1", "latest", "V1.0-rc_2"]
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Location") == f"/v2/tagged/manifests/{digest}"
    for tag in ("v1", "latest", "V1.0-rc_2"):
        code, got = await manifestAt(client, "tagged", tag)
        assert (code, got.body, header(got, "Docker-Content-Digest")) == (200, content, digest)
    assert await tagsOf(client, "tagged") == ["V1.0-rc_2", "latest", "v1"]


@pytest_twisted.ensureDeferred
async def test_push_without_tags_sends_no_oci_tag(client: Any) -> None:
    """Pushes by digest without tag parameters, or by tag, answer no OCI-Tag header."""
    digest, content = await pushedImage(client, "plain")
    assert ociTags(await putManifest(client, "plain", digest, content)) == []
    assert ociTags(await putManifest(client, "plain", "v1", content)) == []


@pytest_twisted.ensureDeferred
async def test_push_by_sha512_digest_tags_keep_sha512(client: Any) -> None:
    """Tags applied on a sha512 push resolve to the sha512 digest, in GET and HEAD."""
    _, content = await pushedImage(client, "long")
    digest = digestOf(content, "sha512")
    response = await putManifest(client, "long", digest + query(["v1", "v2"]), content)
    assert response.code == 201, response.body
    assert ociTags(response) == ["v1", "v2"]
    assert header(response, "Docker-Content-Digest") == digest
    for method in ("GET", "HEAD"):
        code, got = await manifestAt(client, "long", "v2", method)
        assert (code, header(got, "Docker-Content-Digest")) == (200, digest)
    code, got = await manifestAt(client, "long", digest)
    assert (code, got.body) == (200, content)


@pytest_twisted.ensureDeferred
async def test_push_with_tags_moves_them(client: Any) -> None:
    """A tag parameter moves an existing tag to the newly pushed manifest; other tags stay."""
    old, _ = await pushImage(client, "moving", "latest")
    await putManifest(
        client, "moving", f"{old}?tag=stable", (await manifestAt(client, "moving", old))[1].body
    )
    digest, content = await pushedImage(client, "moving", annotations={"v": "2"})
    response = await putManifest(client, "moving", f"{digest}?tag=latest", content)
    assert (response.code, ociTags(response)) == (201, ["latest"])
    assert header((await manifestAt(client, "moving", "latest"))[1], "Docker-Content-Digest") == digest
    assert header((await manifestAt(client, "moving", "stable"))[1], "Docker-Content-Digest") == old


@pytest_twisted.ensureDeferred
async def test_push_with_repeated_tag_applies_it_once(client: Any) -> None:
    """A tag given twice is applied once and answered with one OCI-Tag."""
    digest, content = await pushedImage(client, "twice")
    response = await putManifest(client, "twice", digest + query(["a", "b", "a"]), content)
    assert (response.code, ociTags(response)) == (201, ["a", "b"])


@pytest_twisted.ensureDeferred
async def test_push_with_ten_tags(client: Any) -> None:
    """Ten tags in one push (the spec's minimum) are all applied."""
    digest, content = await pushedImage(client, "ten")
    tags = [f"t{i}" for i in range(10)]
    response = await putManifest(client, "ten", digest + query(tags), content)
    assert (response.code, ociTags(response)) == (201, tags)
    assert await tagsOf(client, "ten") == sorted(tags)


@pytest.mark.parametrize("bad", ["-bad", "", "a" * 129, "b@d", "%2Fx", "%C3%A9"])
@pytest_twisted.ensureDeferred
async def test_push_with_invalid_tag_changes_nothing(client: Any, bad: str) -> None:
    """One invalid tag refuses the whole push with 400 TAG_INVALID: no manifest stored, no tag moved."""
    old, _ = await pushImage(client, "strict", "good")
    digest, content = await pushedImage(client, "strict", annotations={"new": "yes"})
    response = await putManifest(client, "strict", digest + query(["good", bad, "other"]), content)
    assert response.code == 400, response.body
    assert errorCode(response) == "TAG_INVALID"
    assert ociTags(response) == []
    assert (await manifestAt(client, "strict", digest))[0] == 404
    assert header((await manifestAt(client, "strict", "good"))[1], "Docker-Content-Digest") == old
    assert await tagsOf(client, "strict") == ["good"]


@pytest_twisted.ensureDeferred
async def test_push_with_too_many_tags_is_414(client: Any) -> None:
    """More distinct tags than the registry takes in one push answer 414 TAG_INVALID and change nothing."""
    digest, content = await pushedImage(client, "many")
    tags = [f"t{i}" for i in range(MAX_TAGS_PER_PUSH + 1)]
    response = await putManifest(client, "many", digest + query(tags), content)
    assert response.code == 414, response.body
    assert errorCode(response) == "TAG_INVALID"
    assert (await manifestAt(client, "many", digest))[0] == 404
    assert await tagsOf(client, "many") == []


@pytest_twisted.ensureDeferred
async def test_tag_parameters_need_a_digest_reference(client: Any) -> None:
    """Tag parameters on a push by tag answer 400 TAG_INVALID and store nothing."""
    digest, content = await pushedImage(client, "bytag")
    response = await putManifest(client, "bytag", "v1?tag=v2", content)
    assert response.code == 400, response.body
    assert errorCode(response) == "TAG_INVALID"
    assert (await manifestAt(client, "bytag", digest))[0] == 404
    assert await tagsOf(client, "bytag") == []


@pytest_twisted.ensureDeferred
async def test_invalid_manifest_applies_no_tag(client: Any) -> None:
    """A manifest refused by validation points none of its tag parameters anywhere."""
    content = json.dumps(imageManifest(CONFIG, [LAYER])).encode()  # its blobs were never pushed
    await pushBlob(client, "unchecked", b"something")
    response = await putManifest(client, "unchecked", digestOf(content) + "?tag=v1", content)
    assert (response.code, errorCode(response)) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert await tagsOf(client, "unchecked") == []


# -- sparse manifests ------------------------------------------------------


def sparseIndex() -> tuple[bytes, list[str]]:
    """
    An index of two platform manifests that were never pushed.
    """
    children = [
        json.dumps(imageManifest(CONFIG, [LAYER], annotations={"n": str(i)})).encode() for i in (1, 2)
    ]
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptorOf(child, OCI_MANIFEST) for child in children],
    }
    return json.dumps(document).encode(), [digestOf(child) for child in children]


@pytest.mark.parametrize("options", SPARSE, indirect=True, ids=["off", "on"])
@pytest_twisted.ensureDeferred
async def test_index_with_absent_children(client: Any, options: dict[str, Any]) -> None:
    """An index with absent children is 400 MANIFEST_BLOB_UNKNOWN unless sparse manifests are allowed."""
    content, children = sparseIndex()
    response = await putManifest(client, "mirror/idx", "v1", content, OCI_INDEX)
    if not options["allowSparseManifests"]:
        assert (response.code, errorCode(response)) == (400, "MANIFEST_BLOB_UNKNOWN")
        assert await tagsOf(client, "mirror/idx") == []
        return
    assert response.code == 201, response.body
    code, got = await manifestAt(client, "mirror/idx", "v1")
    assert (code, got.body, header(got, "Content-Type")) == (200, content, OCI_INDEX)
    assert await tagsOf(client, "mirror/idx") == ["v1"]
    catalog = json.loads((await client.request("GET", "/v2/_catalog")).body)["repositories"]
    assert "mirror/idx" in catalog
    for child in children:
        code, got = await manifestAt(client, "mirror/idx", child)
        assert (code, errorCode(got)) == (404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("options", SPARSE, indirect=True, ids=["off", "on"])
@pytest_twisted.ensureDeferred
async def test_image_with_absent_blobs(client: Any, options: dict[str, Any]) -> None:
    """An image with absent blobs is stored only when sparse manifests are allowed; its blobs stay 404."""
    content = json.dumps(imageManifest(CONFIG, [LAYER])).encode()
    digest = digestOf(content)
    response = await putManifest(client, "mirror/img", f"{digest}?tag=v1", content)
    if not options["allowSparseManifests"]:
        assert (response.code, errorCode(response)) == (400, "MANIFEST_BLOB_UNKNOWN")
        assert (await manifestAt(client, "mirror/img", digest))[0] == 404
        return
    assert (response.code, ociTags(response)) == (201, ["v1"])
    for method in ("GET", "HEAD"):
        code, got = await manifestAt(client, "mirror/img", "v1", method)
        assert (code, header(got, "Docker-Content-Digest")) == (200, digest)
    for blob in (CONFIG, LAYER):
        got = await client.request("GET", f"/v2/mirror/img/blobs/{digestOf(blob)}")
        assert (got.code, errorCode(got)) == (404, "BLOB_UNKNOWN")
    deleted = await client.request("DELETE", f"/v2/mirror/img/manifests/{digest}")
    assert deleted.code == 202
    assert await tagsOf(client, "mirror/img") == []


@pytest.mark.parametrize("options", SPARSE[1:], indirect=True, ids=["on"])
@pytest_twisted.ensureDeferred
async def test_sparse_still_validates_the_manifest(client: Any, options: dict[str, Any]) -> None:
    """With sparse manifests allowed, a malformed manifest is still 400 MANIFEST_INVALID."""
    document = imageManifest(CONFIG, [LAYER])
    document["layers"][0]["digest"] = "not-a-digest"
    response = await putManifest(client, "mirror/bad", "v1", json.dumps(document).encode())
    assert (response.code, errorCode(response)) == (400, "MANIFEST_INVALID")


# -- automatic mount (no from) ---------------------------------------------


MOUNT = [{"automaticMount": False}, {"automaticMount": True}]
GUARDED = {"automaticMount": True, "access": True}


async def mount(client: Any, name: str, digest: str, source: str | None = None) -> Any:
    path = f"/v2/{name}/blobs/uploads/?mount={digest}"
    return await client.request("POST", path if source is None else f"{path}&from={source}")


async def blobCode(client: Any, name: str, digest: str) -> int:
    return int((await client.request("HEAD", f"/v2/{name}/blobs/{digest}")).code)


@pytest.mark.parametrize("options", MOUNT, indirect=True, ids=["off", "on"])
@pytest_twisted.ensureDeferred
async def test_mount_without_from(client: Any, options: dict[str, Any]) -> None:
    """A mount naming no source is 201 from any repository holding the blob when on; a session when off."""
    digest = await pushBlob(client, "some/where", b"shared layer")
    response = await mount(client, "else/where", digest)
    if not options["automaticMount"]:
        assert response.code == 202, response.body
        assert str(header(response, "Location")).startswith("/v2/else/where/blobs/uploads/")
        assert await blobCode(client, "else/where", digest) == 404
        return
    assert response.code == 201, response.body
    assert header(response, "Location") == f"/v2/else/where/blobs/{digest}"
    assert header(response, "Docker-Content-Digest") == digest
    got = await client.request("GET", f"/v2/else/where/blobs/{digest}")
    assert (got.code, got.body) == (200, b"shared layer")


@pytest.mark.parametrize("options", MOUNT, indirect=True, ids=["off", "on"])
@pytest_twisted.ensureDeferred
async def test_mount_without_from_of_absent_blob(client: Any, options: dict[str, Any]) -> None:
    """A mount of a blob no repository holds (or holds no longer) opens an upload session."""
    digest = await pushBlob(client, "gone/away", b"deleted layer")
    assert (await client.request("DELETE", f"/v2/gone/away/blobs/{digest}")).code == 202
    for missing in (digest, digestOf(b"never pushed"), digestOf(b"never pushed", "sha512")):
        response = await mount(client, "target/repo", missing)
        assert response.code == 202, response.body
        assert await blobCode(client, "target/repo", missing) == 404


@pytest.mark.parametrize("options", MOUNT, indirect=True, ids=["off", "on"])
@pytest_twisted.ensureDeferred
async def test_mount_without_from_sha512(client: Any, options: dict[str, Any]) -> None:
    """Automatic mounts find sha512 blobs too."""
    digest = await pushBlob(client, "some/where", b"long layer", "sha512")
    response = await mount(client, "else/where", digest)
    assert response.code == (201 if options["automaticMount"] else 202), response.body


@pytest.mark.parametrize("options", [GUARDED], indirect=True, ids=["guarded"])
@pytest_twisted.ensureDeferred
async def test_mount_never_reveals_unpullable_blob(client: Any, options: dict[str, Any]) -> None:
    """Under access control, a blob only in repositories the caller may not pull is not mounted."""
    alice, bob = as_(client, "alice"), as_(client, "bob")
    digest = await pushBlob(alice, "admin/secret", b"secret layer")
    for source in (None, "admin/secret"):
        response = await mount(bob, "team/app", digest, source)
        assert response.code == 202, response.body
        assert await blobCode(bob, "team/app", digest) == 404
    await pushBlob(alice, "public/copy", b"secret layer")
    response = await mount(bob, "team/app", digest)
    assert response.code == 201, response.body
    assert await blobCode(bob, "team/app", digest) == 200


@pytest.mark.parametrize("options", MOUNT[1:], indirect=True, ids=["on"])
@pytest_twisted.ensureDeferred
async def test_mount_with_invalid_digest(client: Any, options: dict[str, Any]) -> None:
    """A mount of a malformed or unsupported digest is 400 DIGEST_INVALID with automatic mounts on."""
    for bad in ("sha256:abc", "md5:" + "0" * 32, "nonsense"):
        response = await mount(client, "target/repo", bad)
        assert (response.code, errorCode(response)) == (400, "DIGEST_INVALID")


@pytest.mark.parametrize("options", [GUARDED], indirect=True, ids=["guarded"])
@pytest_twisted.ensureDeferred
async def test_mount_looks_at_bounded_candidates(
    client: Any, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An automatic mount pages through the blob's holders and gives up after MAX_MOUNT_CANDIDATES."""
    alice, bob = as_(client, "alice"), as_(client, "bob")
    digest = digestOf(b"popular layer")
    for name in ("admin/a", "admin/b", "admin/c", "admin/d", "public/e"):
        await pushBlob(alice, name, b"popular layer")
    monkeypatch.setattr("ociklein.core._MOUNT_PAGE", 2)
    monkeypatch.setattr("ociklein.core.MAX_MOUNT_CANDIDATES", 4)
    assert (await mount(bob, "team/one", digest)).code == 202
    monkeypatch.setattr("ociklein.core.MAX_MOUNT_CANDIDATES", 5)
    assert (await mount(bob, "team/two", digest)).code == 201


@pytest.mark.parametrize("options", MOUNT[1:], indirect=True, ids=["on"])
@pytest_twisted.ensureDeferred
async def test_mount_checks_each_holder(client: Any, registry: Registry, options: dict[str, Any]) -> None:
    """A repository listed as holding the blob without the blob being stored is not mounted from."""
    missing = digestOf(b"linked but never stored")
    await registry.core.blobs.link("stale/holder", missing)
    assert await registry.core.blobs.repositoriesHolding(missing, None, 10) == ["stale/holder"]
    assert (await mount(client, "target/repo", missing)).code == 202
    assert await blobCode(client, "target/repo", missing) == 404


@pytest.mark.parametrize("options", SPARSE[1:], indirect=True, ids=["on"])
@pytest_twisted.ensureDeferred
async def test_sparse_blobs_of_other_algorithms(client: Any, options: dict[str, Any]) -> None:
    """With sparse manifests allowed, blobs named by digests ociklein never stores are accepted, not a 5xx."""
    document = imageManifest(CONFIG, [LAYER])
    document["layers"][0]["digest"] = "sha384:" + "a" * 96
    document["config"]["digest"] = "sha256:" + "A" * 64
    content = json.dumps(document).encode()
    response = await putManifest(client, "mirror/odd", "v1", content)
    assert response.code == 201, response.body
    code, got = await manifestAt(client, "mirror/odd", "v1")
    assert (code, got.body) == (200, content)


# -- digest-algorithm on the POST that starts an upload ---------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest_twisted.ensureDeferred
async def test_upload_announcing_its_algorithm(client: Any, algorithm: str) -> None:
    """A session started with a supported ?digest-algorithm= takes blobs of it, chunked or whole."""
    data = b"announced " * 100
    digest = digestOf(data, algorithm)
    response = await client.request("POST", f"/v2/algo/blobs/uploads/?digest-algorithm={algorithm}")
    assert response.code == 202, response.body
    location = header(response, "Location")
    patched = await client.request("PATCH", location, data=data[:10], headers={"Content-Range": "0-9"})
    assert patched.code == 202, patched.body
    finished = await client.request("PUT", f"{location}?digest={digest}", data=data[10:])
    assert finished.code == 201, finished.body
    got = await client.request("GET", f"/v2/algo/blobs/{digest}")
    assert (got.code, got.body) == (200, data)
    other = digestOf(b"whole", algorithm)
    path = f"/v2/algo/blobs/uploads/?digest-algorithm={algorithm}&digest={other}"
    assert (await client.request("POST", path, data=b"whole")).code == 201


@pytest.mark.parametrize("algorithm", ["md5", "sha384", "SHA256", "", "sha256%00"])
@pytest_twisted.ensureDeferred
async def test_upload_announcing_unsupported_algorithm(client: Any, algorithm: str) -> None:
    """?digest-algorithm= of an algorithm ociklein does not store is 400 DIGEST_INVALID, no session."""
    response = await client.request("POST", f"/v2/algo/blobs/uploads/?digest-algorithm={algorithm}")
    assert (response.code, errorCode(response)) == (400, "DIGEST_INVALID")
    assert header(response, "Location") is None
