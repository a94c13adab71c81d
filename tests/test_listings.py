"""
Listings: the tags of a repository and the catalog of repositories, sorted
and paged with C{n}, C{last} and C{Link} headers.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import pytest_twisted

from tests.helpers import errorCode, header, pushImage, putManifest

TAGS = ["v1.0", "latest", "A", "b", "10", "9", "_x", "a-1", "a.b", "a_b", "Z"]
_LINK = re.compile(r'<([^>]+)>; rel="next"')


async def pushTags(client: Any, name: str, tags: list[str]) -> None:
    """
    One image in C{name}, tagged with every tag of C{tags}.
    """
    _, content = await pushImage(client, name)
    for tag in tags:
        response = await putManifest(client, name, tag, content)
        assert response.code == 201, response.body


async def listing(client: Any, path: str) -> tuple[Any, str | None]:
    """
    GET a listing; the decoded JSON and the target of its C{Link} header.
    """
    response = await client.request("GET", path)
    assert response.code == 200, response.body
    assert header(response, "Content-Type") == "application/json"
    link = header(response, "Link")
    if link is None:
        return json.loads(response.body), None
    match = _LINK.fullmatch(link)
    assert match is not None, link
    return json.loads(response.body), match.group(1)


async def walk(client: Any, path: str, key: str) -> tuple[list[str], int]:
    """
    Follow C{Link} headers from C{path}; every item and the number of pages.
    """
    items: list[str] = []
    pages = 0
    target: str | None = path
    while target is not None:
        document, target = await listing(client, target)
        items += document[key]
        pages += 1
        assert pages < 50, "paging does not end"
    return items, pages


# -- tags ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tags_sorted(client: Any) -> None:
    """The tags list is every tag of the repository, sorted, with the repository's name."""
    await pushTags(client, "org/repo", TAGS)
    document, link = await listing(client, "/v2/org/repo/tags/list")
    assert document == {"name": "org/repo", "tags": sorted(TAGS)}
    assert link is None


@pytest_twisted.ensureDeferred
async def test_tags_n_and_last(client: Any) -> None:
    """n limits the page and last starts after the given tag, even one not in the list."""
    await pushTags(client, "repo", TAGS)
    ordered = sorted(TAGS)
    document, _ = await listing(client, "/v2/repo/tags/list?n=3")
    assert document["tags"] == ordered[:3]
    document, _ = await listing(client, f"/v2/repo/tags/list?n=2&last={ordered[3]}")
    assert document["tags"] == ordered[4:6]
    document, _ = await listing(client, "/v2/repo/tags/list?last=a0")
    assert document["tags"] == [t for t in ordered if t > "a0"]
    document, link = await listing(client, "/v2/repo/tags/list?last=zzz")
    assert (document["tags"], link) == ([], None)


@pytest_twisted.ensureDeferred
async def test_tags_link_header(client: Any) -> None:
    """A truncated page carries Link: </v2/<name>/tags/list?n=…&last=…>; rel="next"."""
    await pushTags(client, "org/repo", ["a", "b", "c", "d"])
    response = await client.request("GET", "/v2/org/repo/tags/list?n=2")
    assert header(response, "Link") == '</v2/org/repo/tags/list?n=2&last=b>; rel="next"'
    assert json.loads(response.body)["tags"] == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_tags_no_link_on_last_page(client: Any) -> None:
    """The last page, even one exactly n long, has no Link header."""
    await pushTags(client, "repo", ["a", "b", "c", "d"])
    for path in ("/v2/repo/tags/list?n=2&last=b", "/v2/repo/tags/list?n=4", "/v2/repo/tags/list?n=9"):
        response = await client.request("GET", path)
        assert response.code == 200
        assert header(response, "Link") is None, path


@pytest.mark.parametrize("n", [1, 3, 4, 11])
@pytest_twisted.ensureDeferred
async def test_tags_walk_links(client: Any, n: int) -> None:
    """Following Link pages walks every tag exactly once, in order."""
    await pushTags(client, "repo", TAGS)
    tags, pages = await walk(client, f"/v2/repo/tags/list?n={n}", "tags")
    assert tags == sorted(TAGS)
    assert pages == -(-len(TAGS) // n)


@pytest_twisted.ensureDeferred
async def test_tags_n_zero(client: Any) -> None:
    """n=0 answers an empty list and no Link."""
    await pushTags(client, "repo", ["a", "b"])
    document, link = await listing(client, "/v2/repo/tags/list?n=0")
    assert document == {"name": "repo", "tags": []}
    assert link is None


@pytest_twisted.ensureDeferred
async def test_tags_after_delete(client: Any) -> None:
    """A deleted tag leaves the list; the repository stays listable."""
    await pushTags(client, "repo", ["a", "b"])
    assert (await client.request("DELETE", "/v2/repo/manifests/a")).code == 202
    assert (await listing(client, "/v2/repo/tags/list"))[0]["tags"] == ["b"]


@pytest.mark.parametrize("name", ["nothing", "org/nothing", "Bad", "a" * 300])
@pytest_twisted.ensureDeferred
async def test_tags_unknown_repository(client: Any, name: str) -> None:
    """The tags list of an unknown (or impossible) repository is 404 NAME_UNKNOWN."""
    await pushTags(client, "repo", ["a"])
    response = await client.request("GET", f"/v2/{name}/tags/list")
    assert response.code == 404
    assert errorCode(response) == "NAME_UNKNOWN"


@pytest.mark.parametrize("n", ["x", "-1", "1.5", "1e3", "%C2%B2", "%D9%A1", "0x10", " 1"])
@pytest_twisted.ensureDeferred
async def test_tags_bad_n(client: Any, n: str) -> None:
    """A non-numeric n is 400 PAGINATION_NUMBER_INVALID."""
    await pushTags(client, "repo", ["a"])
    response = await client.request("GET", f"/v2/repo/tags/list?n={n}")
    assert response.code == 400
    assert errorCode(response) == "PAGINATION_NUMBER_INVALID"


# -- catalog ---------------------------------------------------------------

REPOSITORIES = ["zeta", "alpha/one", "alpha", "beta-2", "alpha/one/two", "alpha-one", "m.n"]


async def pushRepositories(client: Any, names: list[str]) -> None:
    for name in names:
        await pushImage(client, name, "latest")


@pytest_twisted.ensureDeferred
async def test_catalog_empty(client: Any) -> None:
    """An empty registry's catalog is an empty list."""
    document, link = await listing(client, "/v2/_catalog")
    assert document == {"repositories": []}
    assert link is None


@pytest_twisted.ensureDeferred
async def test_catalog_sorted(client: Any) -> None:
    """The catalog lists every repository once, sorted; the default page holds them all."""
    await pushRepositories(client, REPOSITORIES)
    await pushImage(client, "zeta", "second", annotations={"second": "yes"})
    document, link = await listing(client, "/v2/_catalog")
    assert document == {"repositories": sorted(REPOSITORIES)}
    assert link is None


@pytest_twisted.ensureDeferred
async def test_catalog_n_last_link(client: Any) -> None:
    """n limits the catalog page, last starts after a name, and Link points at the next page."""
    await pushRepositories(client, REPOSITORIES)
    ordered = sorted(REPOSITORIES)
    response = await client.request("GET", "/v2/_catalog?n=3")
    assert json.loads(response.body)["repositories"] == ordered[:3]
    assert ordered[2] == "alpha/one"
    assert header(response, "Link") == '</v2/_catalog?n=3&last=alpha%2Fone>; rel="next"'
    document, _ = await listing(client, "/v2/_catalog?n=3&last=alpha/one")
    assert document["repositories"] == ordered[3:6]
    document, link = await listing(client, f"/v2/_catalog?n=2&last={ordered[-3]}")
    assert (document["repositories"], link) == (ordered[-2:], None)
    document, link = await listing(client, "/v2/_catalog?n=0")
    assert (document["repositories"], link) == ([], None)


@pytest.mark.parametrize("n", [1, 2, 7])
@pytest_twisted.ensureDeferred
async def test_catalog_walk_links(client: Any, n: int) -> None:
    """Following the catalog's Link pages lists every repository exactly once."""
    await pushRepositories(client, REPOSITORIES)
    names, pages = await walk(client, f"/v2/_catalog?n={n}", "repositories")
    assert names == sorted(REPOSITORIES)
    assert pages == -(-len(REPOSITORIES) // n)


@pytest.mark.parametrize("n", ["x", "-5", "%C2%B2"])
@pytest_twisted.ensureDeferred
async def test_catalog_bad_n(client: Any, n: str) -> None:
    """A non-numeric n on the catalog is 400 PAGINATION_NUMBER_INVALID."""
    response = await client.request("GET", f"/v2/_catalog?n={n}")
    assert response.code == 400
    assert errorCode(response) == "PAGINATION_NUMBER_INVALID"
