"""
The referrers API: an OCI image index of every manifest whose C{subject} is
a given digest, filtered by artifact type, per repository.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted

from tests.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    digestOf,
    errorCode,
    header,
    pushBlob,
    pushImage,
    putManifest,
)

EMPTY = "application/vnd.oci.empty.v1+json"
SBOM = "application/vnd.example.sbom.v1+json"
SIGNATURE_CONFIG = "application/vnd.example.signature.config.v1+json"
BUNDLE = "application/vnd.example.bundle.v1"


def subjectOf(digest: str, content: bytes) -> dict[str, Any]:
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(content)}


async def pushArtifact(
    client: Any, name: str, subject: dict[str, Any], reference: str | None = None, **extra: Any
) -> tuple[str, bytes]:
    """
    Push an artifact manifest with an empty config and one layer that
    refers to C{subject}; its digest and bytes.
    """
    configMediaType = extra.pop("configMediaType", EMPTY)
    layer = json.dumps([configMediaType, extra]).encode()
    return await pushImage(
        client,
        name,
        reference,
        config=b"{}",
        layers=(layer,),
        configMediaType=configMediaType,
        subject=subject,
        **extra,
    )


async def referrers(client: Any, name: str, digest: str, query: str = "") -> tuple[Any, list[Any]]:
    """
    GET the referrers of C{digest}; the response and its manifests.
    """
    response = await client.request("GET", f"/v2/{name}/referrers/{digest}{query}")
    assert response.code == 200, response.body
    assert header(response, "Content-Type") == OCI_INDEX
    index = json.loads(response.body)
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    return response, index["manifests"]


def byDigest(descriptors: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["digest"]: d for d in descriptors}


@pytest_twisted.ensureDeferred
async def test_referrers_index(client: Any) -> None:
    """The referrers of a digest are an OCI index of descriptors with artifactType and annotations."""
    base, baseContent = await pushImage(client, "repo", "latest")
    subject = subjectOf(base, baseContent)
    sbom, sbomContent = await pushArtifact(
        client, "repo", subject, artifactType=SBOM, annotations={"org.example.kind": "sbom", "n": "1"}
    )
    signature, signatureContent = await pushArtifact(
        client, "repo", subject, "sig", configMediaType=SIGNATURE_CONFIG
    )
    bundle = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": BUNDLE,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": sbom, "size": len(sbomContent)}],
            "subject": subject,
            "annotations": {"bundle": "yes"},
        }
    ).encode()
    assert (await putManifest(client, "repo", "bundle", bundle, OCI_INDEX)).code == 201
    await pushImage(client, "repo", "unrelated", annotations={"unrelated": "yes"})

    _, manifests = await referrers(client, "repo", base)
    assert len(manifests) == 3
    assert byDigest(manifests) == {
        sbom: {
            "mediaType": OCI_MANIFEST,
            "digest": sbom,
            "size": len(sbomContent),
            "artifactType": SBOM,
            "annotations": {"org.example.kind": "sbom", "n": "1"},
        },
        signature: {
            "mediaType": OCI_MANIFEST,
            "digest": signature,
            "size": len(signatureContent),
            "artifactType": SIGNATURE_CONFIG,
        },
        digestOf(bundle): {
            "mediaType": OCI_INDEX,
            "digest": digestOf(bundle),
            "size": len(bundle),
            "artifactType": BUNDLE,
            "annotations": {"bundle": "yes"},
        },
    }


@pytest_twisted.ensureDeferred
async def test_referrers_filter(client: Any) -> None:
    """?artifactType= keeps only matching referrers and answers OCI-Filters-Applied: artifactType."""
    base, baseContent = await pushImage(client, "repo", "latest")
    subject = subjectOf(base, baseContent)
    sbom, _ = await pushArtifact(client, "repo", subject, artifactType=SBOM)
    other, _ = await pushArtifact(client, "repo", subject, artifactType=SBOM, annotations={"b": "2"})
    await pushArtifact(client, "repo", subject, configMediaType=SIGNATURE_CONFIG)

    response, manifests = await referrers(client, "repo", base, f"?artifactType={quote(SBOM, safe='/')}")
    assert header(response, "OCI-Filters-Applied") == "artifactType"
    assert sorted(d["digest"] for d in manifests) == sorted([sbom, other])
    assert {d["artifactType"] for d in manifests} == {SBOM}

    response, manifests = await referrers(client, "repo", base, "?artifactType=application/none")
    assert header(response, "OCI-Filters-Applied") == "artifactType"
    assert manifests == []

    response, manifests = await referrers(client, "repo", base)
    assert header(response, "OCI-Filters-Applied") is None
    assert len(manifests) == 3


@pytest.mark.parametrize("name", ["repo", "never/pushed"])
@pytest_twisted.ensureDeferred
async def test_referrers_unknown_digest(client: Any, name: str) -> None:
    """The referrers of an unknown digest are 200 with an empty manifests list."""
    await pushImage(client, "repo", "latest")
    for digest in (digestOf(b"unknown"), digestOf(b"unknown", "sha512")):
        _, manifests = await referrers(client, name, digest)
        assert manifests == []


@pytest.mark.parametrize("digest", ["nope", "sha256", "sha256:", ":abc", "SHA256:abc", "sha256:a%2Fb"])
@pytest_twisted.ensureDeferred
async def test_referrers_malformed_digest(client: Any, digest: str) -> None:
    """A malformed digest is 400 DIGEST_INVALID."""
    response = await client.request("GET", f"/v2/repo/referrers/{digest}")
    assert response.code == 400
    assert errorCode(response) == "DIGEST_INVALID"


@pytest_twisted.ensureDeferred
async def test_put_answers_oci_subject(client: Any) -> None:
    """A manifest PUT with a subject answers OCI-Subject with the subject's digest; one without does not."""
    base, baseContent = await pushImage(client, "repo", "latest")
    await pushBlob(client, "repo", b"{}")
    await pushBlob(client, "repo", b"payload")
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM,
        "config": {"mediaType": EMPTY, "digest": digestOf(b"{}"), "size": 2},
        "layers": [{"mediaType": "text/plain", "digest": digestOf(b"payload"), "size": 7}],
        "subject": subjectOf(base, baseContent),
    }
    content = json.dumps(document).encode()
    for reference in ("tagged", digestOf(content)):
        response = await putManifest(client, "repo", reference, content)
        assert response.code == 201
        assert header(response, "OCI-Subject") == base
    response = await putManifest(client, "repo", "plain", baseContent)
    assert header(response, "OCI-Subject") is None


@pytest_twisted.ensureDeferred
async def test_subject_need_not_exist(client: Any) -> None:
    """A referrer may be pushed before its subject, and is listed under the subject's digest."""
    missing = digestOf(b"pushed later")
    artifact, _ = await pushArtifact(client, "repo", subjectOf(missing, b"pushed later"), artifactType=SBOM)
    _, manifests = await referrers(client, "repo", missing)
    assert [d["digest"] for d in manifests] == [artifact]


@pytest_twisted.ensureDeferred
async def test_delete_referrer(client: Any) -> None:
    """Deleting a referrer by digest removes it from the index; untagging it does not."""
    base, baseContent = await pushImage(client, "repo", "latest")
    subject = subjectOf(base, baseContent)
    first, _ = await pushArtifact(client, "repo", subject, "first", artifactType=SBOM)
    second, _ = await pushArtifact(client, "repo", subject, artifactType=SBOM, annotations={"x": "y"})
    assert (await client.request("DELETE", "/v2/repo/manifests/first")).code == 202
    _, manifests = await referrers(client, "repo", base)
    assert sorted(d["digest"] for d in manifests) == sorted([first, second])
    assert (await client.request("DELETE", f"/v2/repo/manifests/{first}")).code == 202
    _, manifests = await referrers(client, "repo", base)
    assert [d["digest"] for d in manifests] == [second]


@pytest_twisted.ensureDeferred
async def test_delete_subject_keeps_referrers(client: Any) -> None:
    """Deleting the subject leaves its referrers listed."""
    base, baseContent = await pushImage(client, "repo", "latest")
    artifact, _ = await pushArtifact(client, "repo", subjectOf(base, baseContent), artifactType=SBOM)
    assert (await client.request("DELETE", f"/v2/repo/manifests/{base}")).code == 202
    _, manifests = await referrers(client, "repo", base)
    assert [d["digest"] for d in manifests] == [artifact]


@pytest_twisted.ensureDeferred
async def test_referrers_per_repository(client: Any) -> None:
    """Referrers are per repository: the same subject in another repository has its own list."""
    base, baseContent = await pushImage(client, "one", "latest")
    await pushImage(client, "two", "latest")
    subject = subjectOf(base, baseContent)
    inOne, _ = await pushArtifact(client, "one", subject, artifactType=SBOM)
    inTwo, _ = await pushArtifact(client, "two", subject, configMediaType=SIGNATURE_CONFIG)
    _, manifests = await referrers(client, "one", base)
    assert [d["digest"] for d in manifests] == [inOne]
    _, manifests = await referrers(client, "two", base)
    assert [(d["digest"], d["artifactType"]) for d in manifests] == [(inTwo, SIGNATURE_CONFIG)]
    _, manifests = await referrers(client, "three", base)
    assert manifests == []
