"""
The ORAS Python SDK (oras-py) against a real C{twistd ociregistry}: file
artifacts pushed and pulled, and artifacts attached to an image through
C{subject}, found again with the referrers API.

oras-py 0.2 has no C{artifactType} argument, so the artifact type is carried
the way oras 1.0 clients did: as the manifest's config media type, which the
registry reports as C{artifactType} in the referrers index.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import oras.client
import oras.oci
from interophelpers import RunningRegistry, http, pushWithSkopeo
from ocilayout import OCI_INDEX, OCI_MANIFEST, makeImage, sha256, writeLayout

pytest_plugins = ["interopfixtures"]

ARTIFACT_TYPE = "application/vnd.example.report.v1+json"
SIGNATURE_TYPE = "application/vnd.example.signature.v1+json"


def orasClient(interop: RunningRegistry) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=interop.address, insecure=True)


def pushFile(
    interop: RunningRegistry,
    target: str,
    path: Path,
    artifactType: str,
    subject: oras.oci.Subject | None = None,
) -> str:
    """
    Push C{path} as the one layer of an artifact of C{artifactType}; its digest.
    """
    response = orasClient(interop).push(
        target=f"{interop.address}/{target}",
        files=[f"{path}:text/plain"],
        manifest_config=f"/dev/null:{artifactType}",
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201, response.text
    return str(response.headers["Docker-Content-Digest"])


def test_push_and_pull_file_artifact(interop: RunningRegistry, tmp_path: Path) -> None:
    """oras pushes a file artifact with its own artifact type and pulls the same contents back."""
    contents = b"line one\n\x00binary\xffbytes\n" * 100
    (tmp_path / "report.txt").write_bytes(contents)
    digest = pushFile(interop, "oras/files:v1", tmp_path / "report.txt", ARTIFACT_TYPE)

    client = orasClient(interop)
    [pulled] = client.pull(target=f"{interop.address}/oras/files:v1", outdir=str(tmp_path / "out"))
    assert Path(pulled) == tmp_path / "out" / "report.txt"
    assert Path(pulled).read_bytes() == contents
    manifest = client.get_manifest(f"{interop.address}/oras/files:v1")
    assert manifest["config"]["mediaType"] == ARTIFACT_TYPE
    assert manifest["layers"][0]["digest"] == sha256(contents)
    assert client.get_tags(f"{interop.address}/oras/files") == ["v1"]
    stored = http(interop, "GET", f"/v2/oras/files/manifests/{digest}")
    assert (stored.headers["Content-Type"], sha256(stored.content)) == (OCI_MANIFEST, digest)


def test_artifact_with_subject_is_a_referrer(interop: RunningRegistry, tmp_path: Path) -> None:
    """Artifacts oras attaches to an image are its referrers, filterable by type, until oras deletes one."""
    image = makeImage(layers=1)
    pushWithSkopeo(interop, writeLayout(tmp_path / "image", image, "v1"), "v1", "oras/signed")
    subject = oras.oci.Subject(mediaType=OCI_MANIFEST, digest=image.digest, size=len(image.manifest))
    (tmp_path / "sig.txt").write_bytes(b"signed by nobody\n")
    (tmp_path / "report.txt").write_bytes(b"no findings\n")
    signature = pushFile(interop, "oras/signed:sig", tmp_path / "sig.txt", SIGNATURE_TYPE, subject)
    report = pushFile(interop, "oras/signed:report", tmp_path / "report.txt", ARTIFACT_TYPE, subject)

    stored = json.loads(http(interop, "GET", f"/v2/oras/signed/manifests/{signature}").content)
    assert stored["subject"] == {
        "mediaType": OCI_MANIFEST,
        "digest": image.digest,
        "size": len(image.manifest),
    }
    everything = http(interop, "GET", f"/v2/oras/signed/referrers/{image.digest}")
    assert everything.status_code == 200
    assert everything.headers["Content-Type"] == OCI_INDEX
    assert "OCI-Filters-Applied" not in everything.headers
    listing = everything.json()
    assert (listing["schemaVersion"], listing["mediaType"]) == (2, OCI_INDEX)
    assert {(d["digest"], d["artifactType"], d["mediaType"]) for d in listing["manifests"]} == {
        (signature, SIGNATURE_TYPE, OCI_MANIFEST),
        (report, ARTIFACT_TYPE, OCI_MANIFEST),
    }
    filtered = http(
        interop,
        "GET",
        f"/v2/oras/signed/referrers/{image.digest}?artifactType={quote(SIGNATURE_TYPE, safe='')}",
    )
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    [only] = filtered.json()["manifests"]
    assert (only["digest"], only["artifactType"]) == (signature, SIGNATURE_TYPE)
    assert only["size"] == len(http(interop, "GET", f"/v2/oras/signed/manifests/{signature}").content)
    none = http(interop, "GET", f"/v2/oras/signed/referrers/{image.digest}?artifactType=application/x-none")
    assert none.json()["manifests"] == []

    assert orasClient(interop).delete_tag(f"{interop.address}/oras/signed", "sig") is True
    remaining = http(interop, "GET", f"/v2/oras/signed/referrers/{image.digest}").json()["manifests"]
    assert [d["digest"] for d in remaining] == [report]
