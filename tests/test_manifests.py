"""
Pushing, pulling and deleting manifests: validation, byte-for-byte storage,
media types, digests, and the spec's errors for every malformed request.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import pytest_twisted

from tests.helpers import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
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
LAYER = b"layer-one"


async def pushBlobs(client: Any, name: str = "repo") -> None:
    """
    Push the config and layer every manifest of these tests refers to.
    """
    await pushBlob(client, name, CONFIG)
    await pushBlob(client, name, LAYER)


def validManifest(**fields: Any) -> dict[str, Any]:
    """
    An OCI image manifest over CONFIG and LAYER, with C{fields} replaced.
    """
    return {**imageManifest(CONFIG, [LAYER]), **fields}


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


async def get(client: Any, path: str, method: str = "GET", accept: str | None = None) -> Any:
    headers = {"Accept": accept} if accept else {}
    return await client.request(method, path, headers=headers)


async def tagsOf(client: Any, name: str) -> list[str]:
    """
    The tags of C{name}; none for a repository that holds only blobs.
    """
    response = await client.request("GET", f"/v2/{name}/tags/list")
    if response.code == 404:
        return []
    assert response.code == 200, response.body
    return list(json.loads(response.body)["tags"])


# -- pushing ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_put_by_tag_created(client: Any) -> None:
    """PUT by tag answers 201 with Location and Docker-Content-Digest."""
    await pushBlobs(client)
    content = encode(validManifest())
    response = await putManifest(client, "repo", "v1", content)
    assert response.code == 201, response.body
    digest = digestOf(content)
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Location") == f"/v2/repo/manifests/{digest}"
    assert header(response, "OCI-Subject") is None


@pytest_twisted.ensureDeferred
async def test_put_by_digest_created(client: Any) -> None:
    """PUT by digest answers 201 with Location and Docker-Content-Digest, and adds no tag."""
    await pushBlobs(client, "org/team/repo")
    content = encode(validManifest())
    digest = digestOf(content)
    response = await putManifest(client, "org/team/repo", digest, content)
    assert response.code == 201, response.body
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Location") == f"/v2/org/team/repo/manifests/{digest}"
    assert await tagsOf(client, "org/team/repo") == []


@pytest_twisted.ensureDeferred
async def test_stored_byte_for_byte(client: Any) -> None:
    """A manifest is served byte for byte, odd whitespace and key order kept, with its pushed type."""
    await pushBlobs(client)
    config, layer = descriptorOf(CONFIG, OCI_CONFIG), descriptorOf(LAYER, "application/octet-stream")
    layers, configs = json.dumps(layer, indent=3), json.dumps(config, sort_keys=True)
    content = (
        f'\n  {{"layers" :[ {layers} ] ,\t"schemaVersion":2,\r\n "config":{configs},'
        f' "mediaType": "{OCI_MANIFEST}", "annotations": {{"z": "1", "a": "\\u00e9"}}}}  \n\n'
    ).encode()
    digest = digestOf(content)
    assert (await putManifest(client, "repo", "odd", content)).code == 201
    for reference in ("odd", digest):
        response = await get(client, f"/v2/repo/manifests/{reference}")
        assert response.code == 200
        assert response.body == content
        assert header(response, "Content-Type") == OCI_MANIFEST
        assert header(response, "Docker-Content-Digest") == digest
        # twisted.web's client moves a GET's Content-Length into .length
        assert response.length == len(content)


@pytest_twisted.ensureDeferred
async def test_get_by_tag_and_digest(client: Any) -> None:
    """GET by tag and by digest answer 200 with the same manifest and digest."""
    digest, content = await pushImage(client, "repo", "latest")
    byTag = await get(client, "/v2/repo/manifests/latest", accept=OCI_MANIFEST)
    byDigest = await get(client, f"/v2/repo/manifests/{digest}", accept=OCI_MANIFEST)
    for response in (byTag, byDigest):
        assert response.code == 200
        assert response.body == content
        assert header(response, "Docker-Content-Digest") == digest
        assert header(response, "Content-Type") == OCI_MANIFEST


@pytest_twisted.ensureDeferred
async def test_head_by_tag_and_digest(client: Any) -> None:
    """HEAD by tag and digest answers the GET headers, Content-Length included, and no body."""
    digest, content = await pushImage(client, "repo", "latest")
    for reference in ("latest", digest):
        response = await get(client, f"/v2/repo/manifests/{reference}", method="HEAD")
        assert response.code == 200
        assert response.body == b""
        assert header(response, "Content-Length") == str(len(content))
        assert header(response, "Content-Type") == OCI_MANIFEST
        assert header(response, "Docker-Content-Digest") == digest


@pytest_twisted.ensureDeferred
async def test_put_tag_moves(client: Any) -> None:
    """PUT of another manifest to an existing tag moves the tag and keeps the old manifest."""
    old, _ = await pushImage(client, "repo", "latest")
    new, content = await pushImage(client, "repo", "latest", annotations={"v": "2"})
    assert old != new
    response = await get(client, "/v2/repo/manifests/latest")
    assert (response.body, header(response, "Docker-Content-Digest")) == (content, new)
    assert (await get(client, f"/v2/repo/manifests/{old}")).code == 200


@pytest_twisted.ensureDeferred
async def test_put_digest_mismatch(client: Any) -> None:
    """PUT by a digest the body does not hash to answers 400 DIGEST_INVALID and stores nothing."""
    await pushBlobs(client)
    content = encode(validManifest())
    wrong = digestOf(content + b" ")
    response = await putManifest(client, "repo", wrong, content)
    assert response.code == 400
    assert errorCode(response) == "DIGEST_INVALID"
    for reference in (wrong, digestOf(content)):
        assert errorCode(await get(client, f"/v2/repo/manifests/{reference}")) == "MANIFEST_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_put_digest_algorithm_mismatch(client: Any) -> None:
    """A sha512 reference holding the body's sha256 hex is a mismatch: 400 DIGEST_INVALID."""
    await pushBlobs(client)
    content = encode(validManifest())
    wrong = "sha512:" + digestOf(content).partition(":")[2] * 2
    response = await putManifest(client, "repo", wrong, content)
    assert response.code == 400
    assert errorCode(response) == "DIGEST_INVALID"


@pytest_twisted.ensureDeferred
async def test_put_sha512_reference(client: Any) -> None:
    """A manifest PUT by its sha512 digest is stored and served under that digest."""
    await pushBlobs(client)
    content = encode(validManifest())
    digest = digestOf(content, "sha512")
    response = await putManifest(client, "repo", digest, content)
    assert response.code == 201, response.body
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Location") == f"/v2/repo/manifests/{digest}"
    fetched = await get(client, f"/v2/repo/manifests/{digest}")
    assert fetched.code == 200
    assert fetched.body == content
    assert header(fetched, "Docker-Content-Digest") == digest


@pytest_twisted.ensureDeferred
async def test_put_sha512_blobs(client: Any) -> None:
    """A manifest may reference blobs by sha512 digests."""
    config = await pushBlob(client, "repo", CONFIG, "sha512")
    layer = await pushBlob(client, "repo", LAYER, "sha512")
    document = validManifest()
    document["config"]["digest"], document["layers"][0]["digest"] = config, layer
    response = await putManifest(client, "repo", "v1", encode(document))
    assert response.code == 201, response.body


_INVALID: dict[str, bytes] = {
    "not-json": b'{"schemaVersion": 2,',
    "not-utf8": b'{"schemaVersion": 2, "x": "\xff\xfe"}',
    "empty": b"",
    "array": b"[]",
    "schema-1": encode(validManifest(schemaVersion=1)),
    "schema-string": encode(validManifest(schemaVersion="2")),
    "schema-float": encode(validManifest(schemaVersion=2.0)),
    "schema-missing": encode({k: v for k, v in validManifest().items() if k != "schemaVersion"}),
    "config-missing": encode({k: v for k, v in validManifest().items() if k != "config"}),
    "config-not-object": encode(validManifest(config="sha256:" + "0" * 64)),
    "config-no-digest": encode(validManifest(config={"mediaType": OCI_CONFIG, "size": 2})),
    "config-bad-digest": encode(validManifest(config={**descriptorOf(CONFIG, OCI_CONFIG), "digest": "x"})),
    "config-no-media-type": encode(validManifest(config={"digest": digestOf(CONFIG), "size": 1})),
    "layer-negative-size": encode(validManifest(layers=[{**descriptorOf(LAYER, "a/b"), "size": -1}])),
    "layer-string-size": encode(validManifest(layers=[{**descriptorOf(LAYER, "a/b"), "size": "9"}])),
    "layers-not-list": encode(validManifest(layers=descriptorOf(LAYER, "a/b"))),
    "annotations-not-strings": encode(validManifest(annotations={"a": 1})),
    "subject-not-descriptor": encode(validManifest(subject="sha256:" + "0" * 64)),
    "unknown-media-type": encode(validManifest(mediaType=DOCKER_MANIFEST.replace("v2", "v1"))),
}


@pytest.mark.parametrize("case", sorted(_INVALID))
@pytest_twisted.ensureDeferred
async def test_put_invalid_manifest(client: Any, case: str) -> None:
    """Bad JSON, a wrong schemaVersion, a missing config or a bad descriptor is 400 MANIFEST_INVALID."""
    await pushBlobs(client)
    contentType = None if case == "unknown-media-type" else OCI_MANIFEST
    response = await putManifest(client, "repo", "v1", _INVALID[case], contentType)
    assert response.code == 400
    assert errorCode(response) == "MANIFEST_INVALID"
    assert await tagsOf(client, "repo") == []


@pytest.mark.parametrize("missing", ["config", "layer"])
@pytest_twisted.ensureDeferred
async def test_put_blob_unknown(client: Any, missing: str) -> None:
    """A manifest whose config or layer is not in the repository is 400 MANIFEST_BLOB_UNKNOWN."""
    await pushBlob(client, "repo", LAYER if missing == "config" else CONFIG)
    response = await putManifest(client, "repo", "v1", encode(validManifest()))
    assert response.code == 400
    assert errorCode(response) == "MANIFEST_BLOB_UNKNOWN"
    absent = digestOf(CONFIG if missing == "config" else LAYER)
    assert json.loads(response.body)["errors"][0]["detail"]["digest"] == absent
    assert (await get(client, "/v2/repo/manifests/v1")).code == 404


@pytest_twisted.ensureDeferred
async def test_put_blob_in_other_repository(client: Any) -> None:
    """Blobs pushed only to another repository do not count: 400 MANIFEST_BLOB_UNKNOWN."""
    await pushBlobs(client, "other")
    response = await putManifest(client, "repo", "v1", encode(validManifest()))
    assert response.code == 400
    assert errorCode(response) == "MANIFEST_BLOB_UNKNOWN"
    assert (await putManifest(client, "other", "v1", encode(validManifest()))).code == 201


@pytest_twisted.ensureDeferred
async def test_put_foreign_layer_need_not_exist(client: Any) -> None:
    """A non-distributable layer with urls need not be pushed."""
    await pushBlob(client, "repo", CONFIG)
    foreign = descriptorOf(
        b"windows", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", urls=["https://x/y"]
    )
    document = {**imageManifest(CONFIG, [], DOCKER_MANIFEST, DOCKER_CONFIG), "layers": [foreign]}
    response = await putManifest(client, "repo", "v1", encode(document), DOCKER_MANIFEST)
    assert response.code == 201, response.body


def indexOf(children: list[tuple[str, bytes]], mediaType: str = OCI_INDEX, **extra: Any) -> bytes:
    childType = DOCKER_MANIFEST if mediaType == DOCKER_LIST else OCI_MANIFEST
    manifests = [
        {"mediaType": childType, "digest": digest, "size": len(content), "platform": {"os": "linux"}}
        for digest, content in children
    ]
    return encode({"schemaVersion": 2, "mediaType": mediaType, "manifests": manifests, **extra})


@pytest_twisted.ensureDeferred
async def test_put_index_child_missing(client: Any) -> None:
    """An index whose child manifest is not in the repository is 400 MANIFEST_BLOB_UNKNOWN."""
    child = await pushImage(client, "other")
    present = await pushImage(client, "repo", annotations={"present": "yes"})
    response = await putManifest(client, "repo", "v1", indexOf([present, child]), OCI_INDEX)
    assert response.code == 400
    assert errorCode(response) == "MANIFEST_BLOB_UNKNOWN"
    assert json.loads(response.body)["errors"][0]["detail"]["digest"] == child[0]
    assert (await putManifest(client, "repo", "v1", indexOf([present]), OCI_INDEX)).code == 201


@pytest_twisted.ensureDeferred
async def test_subject_need_not_exist(client: Any) -> None:
    """A manifest whose subject is not in the registry is accepted, with OCI-Subject."""
    await pushBlobs(client)
    subject = {"mediaType": OCI_MANIFEST, "digest": digestOf(b"nowhere"), "size": 7}
    response = await putManifest(client, "repo", "sig", encode(validManifest(subject=subject)))
    assert response.code == 201, response.body
    assert header(response, "OCI-Subject") == subject["digest"]
    assert (await get(client, "/v2/repo/manifests/sig")).code == 200


@pytest_twisted.ensureDeferred
async def test_put_too_large(client: Any) -> None:
    """A manifest over maxManifestBytes is refused with 413 SIZE_INVALID and not stored."""
    await pushBlobs(client)
    for padding in (64 * 1024, 2 * 1024 * 1024):
        content = encode(validManifest(annotations={"padding": "x" * padding}))
        assert len(content) > 64 * 1024
        response = await putManifest(client, "repo", "big", content)
        assert response.code == 413
        assert errorCode(response) == "SIZE_INVALID"
        assert (await get(client, "/v2/repo/manifests/big")).code == 404
        assert (await get(client, f"/v2/repo/manifests/{digestOf(content)}")).code == 404


@pytest_twisted.ensureDeferred
async def test_put_at_limit(client: Any) -> None:
    """A manifest of exactly maxManifestBytes is accepted."""
    await pushBlobs(client)
    content = encode(validManifest(annotations={"padding": ""}))
    content = encode(validManifest(annotations={"padding": "x" * (64 * 1024 - len(content))}))
    assert len(content) == 64 * 1024
    assert (await putManifest(client, "repo", "big", content)).code == 201


# -- media types -----------------------------------------------------------


async def pushDocker(client: Any, name: str) -> tuple[str, bytes]:
    await pushBlobs(client, name)
    content = encode(imageManifest(CONFIG, [LAYER], DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER))
    response = await putManifest(client, name, digestOf(content), content, DOCKER_MANIFEST)
    assert response.code == 201, response.body
    return digestOf(content), content


@pytest.mark.parametrize("mediaType", [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
@pytest_twisted.ensureDeferred
async def test_media_type_round_trip(client: Any, mediaType: str) -> None:
    """OCI manifest, OCI index, Docker manifest and Docker list each round-trip with their type."""
    if mediaType == OCI_MANIFEST:
        content = encode(validManifest())
        await pushBlobs(client)
    elif mediaType == DOCKER_MANIFEST:
        content = encode(imageManifest(CONFIG, [LAYER], DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER))
        await pushBlobs(client)
    elif mediaType == OCI_INDEX:
        content = indexOf([await pushImage(client, "repo")])
    else:
        content = indexOf([await pushDocker(client, "repo")], DOCKER_LIST)
    response = await putManifest(client, "repo", "t", content, mediaType)
    assert response.code == 201, response.body
    for method in ("GET", "HEAD"):
        fetched = await get(client, "/v2/repo/manifests/t", method, accept=mediaType)
        assert fetched.code == 200
        assert header(fetched, "Content-Type") == mediaType
        assert header(fetched, "Docker-Content-Digest") == digestOf(content)
        assert fetched.body == (content if method == "GET" else b"")


@pytest.mark.parametrize("mediaType", [OCI_MANIFEST, DOCKER_MANIFEST])
@pytest_twisted.ensureDeferred
async def test_media_type_from_body(client: Any, mediaType: str) -> None:
    """Without a Content-Type header, the body's mediaType decides the served type."""
    await pushBlobs(client)
    content = encode(validManifest(mediaType=mediaType))
    response = await putManifest(client, "repo", "t", content, None)
    assert response.code == 201, response.body
    fetched = await get(client, "/v2/repo/manifests/t")
    assert header(fetched, "Content-Type") == mediaType
    assert fetched.body == content


@pytest.mark.parametrize(
    ("contentType", "declared"), [(OCI_MANIFEST, DOCKER_MANIFEST), (DOCKER_MANIFEST, OCI_MANIFEST)]
)
@pytest_twisted.ensureDeferred
async def test_media_type_disagrees(client: Any, contentType: str, declared: str) -> None:
    """A Content-Type that disagrees with the body's mediaType is 400 MANIFEST_INVALID."""
    await pushBlobs(client)
    response = await putManifest(client, "repo", "t", encode(validManifest(mediaType=declared)), contentType)
    assert response.code == 400
    assert errorCode(response) == "MANIFEST_INVALID"
    assert await tagsOf(client, "repo") == []


# -- deleting --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_by_tag_untags_only(client: Any) -> None:
    """DELETE by tag answers 202 and removes the tag only; the digest still GETs."""
    digest, content = await pushImage(client, "repo", "a")
    assert (await putManifest(client, "repo", "b", content)).code == 201
    response = await client.request("DELETE", "/v2/repo/manifests/a")
    assert response.code == 202
    assert errorCode(await get(client, "/v2/repo/manifests/a")) == "MANIFEST_UNKNOWN"
    assert (await get(client, "/v2/repo/manifests/b")).code == 200
    assert (await get(client, f"/v2/repo/manifests/{digest}")).body == content
    assert await tagsOf(client, "repo") == ["b"]


@pytest_twisted.ensureDeferred
async def test_delete_by_digest_removes_tags(client: Any) -> None:
    """DELETE by digest answers 202 and removes the manifest and every tag on it."""
    digest, content = await pushImage(client, "repo", "a")
    assert (await putManifest(client, "repo", "b", content)).code == 201
    other, _ = await pushImage(client, "repo", "c", annotations={"other": "yes"})
    response = await client.request("DELETE", f"/v2/repo/manifests/{digest}")
    assert response.code == 202
    for reference in ("a", "b", digest):
        assert errorCode(await get(client, f"/v2/repo/manifests/{reference}")) == "MANIFEST_UNKNOWN"
        assert (await get(client, f"/v2/repo/manifests/{reference}", "HEAD")).code == 404
    assert await tagsOf(client, "repo") == ["c"]
    assert (await get(client, f"/v2/repo/manifests/{other}")).code == 200


@pytest.mark.parametrize("reference", ["missing", "sha256:" + "0" * 64])
@pytest_twisted.ensureDeferred
async def test_delete_missing(client: Any, reference: str) -> None:
    """DELETE of a tag or digest that is not there answers 404 MANIFEST_UNKNOWN."""
    await pushImage(client, "repo", "present")
    for name in ("repo", "never/pushed"):
        response = await client.request("DELETE", f"/v2/{name}/manifests/{reference}")
        assert response.code == 404
        assert errorCode(response) == "MANIFEST_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_delete_twice(client: Any) -> None:
    """A second DELETE of the same digest answers 404 MANIFEST_UNKNOWN."""
    digest, _ = await pushImage(client, "repo", "a")
    assert (await client.request("DELETE", f"/v2/repo/manifests/{digest}")).code == 202
    response = await client.request("DELETE", f"/v2/repo/manifests/{digest}")
    assert errorCode(response) == "MANIFEST_UNKNOWN"


_IMPOSSIBLE = [
    ("repo", "-bad"),
    ("repo", ".bad"),
    ("repo", "a" * 129),
    ("repo", "a" * 200),
    ("repo", "sha256:short"),
    ("repo", "md5:" + "0" * 32),
    ("repo", "sha256:" + "A" * 64),
    ("Repo", "latest"),
    ("re..po", "latest"),
    ("repo/", "latest"),
    ("a" * 256, "latest"),
]


@pytest.mark.parametrize(("name", "reference"), _IMPOSSIBLE)
@pytest_twisted.ensureDeferred
async def test_impossible_reference(client: Any, name: str, reference: str) -> None:
    """GET, HEAD and DELETE of a reference or name outside the grammar answer 404 MANIFEST_UNKNOWN."""
    await pushImage(client, "repo", "latest")
    path = f"/v2/{name}/manifests/{reference}"
    for method in ("GET", "DELETE"):
        response = await client.request(method, path)
        assert response.code == 404, (method, response.body)
        assert errorCode(response) == "MANIFEST_UNKNOWN"
    head = await client.request("HEAD", path)
    assert head.code == 404
    assert header(head, "Content-Type") == "application/json"
    assert head.body == b""


@pytest.mark.parametrize("tag", ["-bad", ".bad", "a" * 129, "a" * 200, "b@d", "%2Fx"])
@pytest_twisted.ensureDeferred
async def test_put_invalid_tag(client: Any, tag: str) -> None:
    """PUT to a tag outside the grammar answers 400 TAG_INVALID."""
    await pushBlobs(client)
    response = await putManifest(client, "repo", tag, encode(validManifest()))
    assert response.code == 400
    assert errorCode(response) == "TAG_INVALID"
    assert await tagsOf(client, "repo") == []


@pytest.mark.parametrize("tag", ["a" * 128, "_x", "V1.0-rc_2", "0"])
@pytest_twisted.ensureDeferred
async def test_put_edge_tags(client: Any, tag: str) -> None:
    """Tags at the edges of the grammar are accepted and listed."""
    await pushBlobs(client)
    assert (await putManifest(client, "repo", tag, encode(validManifest()))).code == 201
    assert (await get(client, f"/v2/repo/manifests/{tag}")).code == 200
    assert await tagsOf(client, "repo") == [tag]


@pytest.mark.parametrize("name", ["Repo", "re..po", "-repo", "repo/", "a" * 256, "a%2Fb"])
@pytest_twisted.ensureDeferred
async def test_put_invalid_name(client: Any, name: str) -> None:
    """PUT to a repository name outside the grammar answers 400 NAME_INVALID."""
    response = await putManifest(client, name, "v1", encode(validManifest()))
    assert response.code == 400
    assert errorCode(response) == "NAME_INVALID"


# -- nothing a client sends is a 500 ---------------------------------------

_NONSENSE_WORDS = ["", "x", "sha256", "application/json", "\u00e9\u2603", "null", "2", " "]


def nonsense(rng: random.Random, depth: int = 0) -> Any:
    """
    A random JSON value that is never a valid descriptor (no string in it
    contains a colon) and never an empty list.
    """
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([-1, 0, 1, 2, 2**70, -(2**63)])
    if kind == "float":
        return rng.choice([0.5, -2.0, 1e308, 2.0])
    if kind == "str":
        return rng.choice(_NONSENSE_WORDS)
    if kind == "list":
        return [nonsense(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    keys = ["mediaType", "digest", "size", "config", "layers", "manifests", "subject", "annotations", "urls"]
    return {rng.choice(keys): nonsense(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def wrongTypes(valid: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The valid manifest C{valid} with one field at a time set to a value of
    a wrong type (or a wrong value of the right type).
    """
    cases: list[dict[str, Any]] = []
    wrong: list[Any] = [1, -1, 1.5, True, [], {}, ["x"], {"a": "b"}, "", "x", [[[]]], {"a": {"b": []}}]

    def mutate(path: tuple[Any, ...], values: list[Any]) -> None:
        for value in values:
            document = json.loads(json.dumps(valid))
            target = document
            for step in path[:-1]:
                target = target[step]
            if json.dumps(target.get(path[-1]) if isinstance(target, dict) else None) == json.dumps(value):
                continue
            target[path[-1]] = value
            cases.append(document)

    notString = [v for v in wrong if not isinstance(v, str)]
    mutate(("schemaVersion",), [*wrong, None, 2.0, "2", 1, 3])
    mutate(("mediaType",), [*notString, "application/json", DOCKER_LIST])
    mutate(("annotations",), [v for v in wrong if v != {}] + [{"a": None}, {"a": ["b"]}])
    mutate(("artifactType",), notString)
    descriptors: list[tuple[Any, ...]] = [("config",), ("layers", 0), ("subject",)]
    for path in descriptors:
        mutate(path, [*wrong, None] if path != ("subject",) else wrong)
        mutate((*path, "mediaType"), [*notString, None, ""])
        mutate((*path, "digest"), [*notString, None, "", "x", "sha256", "sha256:", ":abc", "SHA256:ab"])
        mutate((*path, "size"), [v for v in wrong if not isinstance(v, int) or isinstance(v, bool)])
        mutate((*path, "size"), [-1, None, 2.0, -(2**64)])
    mutate(("layers",), [v for v in wrong if not isinstance(v, list)] + [None, [None], [1], ["x"]])
    return cases


@pytest_twisted.ensureDeferred
async def test_malformed_manifests_are_400(client: Any) -> None:
    """Random JSON shapes, wrong types in every field and nested nonsense: 400, repository unchanged."""
    rng = random.Random(20251127)
    base, baseContent = await pushImage(client, "repo", "base")
    subject = {"mediaType": OCI_MANIFEST, "digest": base, "size": len(baseContent)}
    mutated = wrongTypes(validManifest(subject=subject, annotations={"a": "b"}))
    cases = [(encode(d), rng.choice([OCI_MANIFEST, None])) for d in rng.sample(mutated, 50)]
    for _ in range(25):
        document = nonsense(rng)
        if isinstance(document, dict) and rng.random() < 0.7:
            document["schemaVersion"] = 2
            document["mediaType"] = rng.choice([OCI_MANIFEST, OCI_INDEX, DOCKER_LIST, None])
        contentType = rng.choice([OCI_MANIFEST, OCI_INDEX, None, "text/plain", "application/json; x"])
        cases.append((encode(document), contentType))
    raw = [b"[" * 5000, b'{"a":' * 5000, b"\x00\xff", b"{}", b"null", b"\xef\xbb\xbf{}", b"NaN"]
    cases += [(body, OCI_MANIFEST) for body in raw]
    for body, contentType in cases:
        for reference in ("fuzz", digestOf(body)):
            response = await putManifest(client, "repo", reference, body, contentType)
            assert response.code == 400, (body[:200], contentType, response.code, response.body)
            assert errorCode(response) in {"MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN"}, body[:200]
    assert await tagsOf(client, "repo") == ["base"]
    for body, _ in cases:
        assert (await get(client, f"/v2/repo/manifests/{digestOf(body)}", "HEAD")).code == 404
    referrers = await get(client, f"/v2/repo/referrers/{base}")
    assert json.loads(referrers.body)["manifests"] == []
    catalog = await get(client, "/v2/_catalog")
    assert json.loads(catalog.body)["repositories"] == ["repo"]


@pytest.mark.parametrize(
    ("method", "path", "code", "status"),
    [
        ("GET", "/v2/repo/tags/list?n=x", "PAGINATION_NUMBER_INVALID", 400),
        ("GET", "/v2/repo/tags/list?n=%C2%B2", "PAGINATION_NUMBER_INVALID", 400),
        ("GET", "/v2/_catalog?n=-1", "PAGINATION_NUMBER_INVALID", 400),
        ("GET", "/v2/repo/referrers/nope", "DIGEST_INVALID", 400),
        ("GET", "/v2/repo/manifests/%00", "MANIFEST_UNKNOWN", 404),
        ("PUT", "/v2/repo/manifests/%00", "TAG_INVALID", 400),
        ("PUT", "/v2/repo/manifests/sha256:%00", "DIGEST_INVALID", 400),
        ("PUT", "/v2/repo/manifests/sha999:abc", "DIGEST_INVALID", 400),
        ("POST", "/v2/repo/manifests/latest", "UNSUPPORTED", 405),
        ("PATCH", "/v2/repo/tags/list", "UNSUPPORTED", 405),
    ],
)
@pytest_twisted.ensureDeferred
async def test_errors_are_json(client: Any, method: str, path: str, code: str, status: int) -> None:
    """Every 4xx answers Content-Type application/json and the spec's errors document."""
    await pushImage(client, "repo", "latest")
    response = await client.request(method, path, data=b"{}")
    assert response.code == status, response.body
    assert errorCode(response) == code
    error = json.loads(response.body)["errors"][0]
    assert isinstance(error["detail"], dict)


@pytest_twisted.ensureDeferred
async def test_same_manifest_under_another_tag_is_not_stored_again() -> None:
    """Tagging an already stored manifest again moves only the tag: no second write of its bytes."""
    from conftest import StubClient

    from ociklein import MemoryBlobStore, MemoryManifestBackend, Registry

    class CountingBackend(MemoryManifestBackend):
        stored = 0

        def putManifest(self, *args: Any, **kwargs: Any) -> Any:
            CountingBackend.stored += 1
            return super().putManifest(*args, **kwargs)

    client = StubClient(Registry(CountingBackend(), MemoryBlobStore()))
    config = b'{"architecture":"amd64","os":"linux"}'
    await pushBlob(client, "app", config)
    content = json.dumps(imageManifest(config, [])).encode()
    for tag in ("v1", "latest", "stable"):
        response = await putManifest(client, "app", tag, content)
        assert response.code == 201
    assert CountingBackend.stored == 1
    listed = await client.request("GET", "/v2/app/tags/list")
    assert json.loads(listed.body)["tags"] == ["latest", "stable", "v1"]
