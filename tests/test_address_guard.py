"""The address guard on URL inputs: every spelling of an internal address is refused, at every redirect hop, and
the connection goes to the address that was checked. Nothing here sends a packet beyond loopback: non-loopback
addresses are only resolved (by a test resolver) and checked, with the connection layer replaced."""

from __future__ import annotations

import io

import pytest
import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from crawler.sample_site import Route, SiteServer, encode, photo_like
from query.address_guard import AddressRefused, GuardedAdapter, check_url, is_internal, system_resolver
from query.inputs import QueryInputError, fetch_url

PUBLIC = "93.184.216.34"  # a global address; never connected to here

SPELLINGS = ["localhost", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::1]", "[::ffff:127.0.0.1]",
             "0.0.0.0", "169.254.169.254", "[fd00::1]", "127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4",
             "[fe80::1]", "224.0.0.1", "100.64.0.1"]


@pytest.mark.parametrize("host", SPELLINGS)
def test_every_spelling_of_an_internal_address_is_refused(host):
    # The system resolver turns each numeric spelling into its address locally (no DNS query is sent).
    with pytest.raises(AddressRefused, match="--allow-private"):
        check_url(f"http://{host}/cat.jpg")
    assert check_url(f"http://{host}/cat.jpg", allow_private=True)


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "::ffff:10.0.0.1", "0.0.0.0", "::",
                                     "ff02::1", "192.0.2.1"])
def test_metadata_multicast_and_reserved_addresses_are_internal(address):
    assert is_internal(address)


def test_public_addresses_pass():
    assert not is_internal(PUBLIC) and not is_internal("2606:4700:4700::1111")
    assert check_url("https://images.public.test/a.jpg", resolver=lambda host, port: [PUBLIC]) == [PUBLIC]


def test_a_name_with_any_internal_address_is_refused():
    with pytest.raises(AddressRefused, match="10.0.0.7"):
        check_url("http://mixed.public.test/", resolver=lambda host, port: [PUBLIC, "10.0.0.7"])


RESOLVE = {"images.public.test": [PUBLIC], "metadata.public.test": ["169.254.169.254"],
           "rebind.public.test": ["127.0.0.1"]}


def fake_resolver(host: str, port: int) -> list[str]:
    if host in RESOLVE:
        return RESOLVE[host]
    assert host.replace(".", "").replace(":", "").isalnum() and not host.endswith(".test")
    return system_resolver(host, port)  # numeric spellings only: resolved locally, no DNS query


class CannedAdapter(GuardedAdapter):
    """The guard as it is, with the connection layer replaced: canned answers, every connection recorded."""

    def __init__(self, answers: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        super().__init__(resolver=fake_resolver)
        self.answers = answers
        self.connections: list[tuple[str, str]] = []

    def send_to(self, request, address, **kwargs):
        self.connections.append((request.url, address))
        status, headers, body = self.answers[request.url]
        response = requests.Response()
        response.status_code, response.url, response.request = status, request.url, request
        response.headers = CaseInsensitiveDict(headers)
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), preload_content=False, status=status)
        return response


@pytest.mark.parametrize("target", ["http://metadata.public.test/latest/meta-data/", "http://2130706433/admin",
                                    "http://[::ffff:127.0.0.1]:9200/_cat/indices", "http://rebind.public.test/",
                                    "file:///etc/passwd"])
def test_a_public_url_redirecting_inwards_is_refused_at_the_hop(target):
    adapter = CannedAdapter({"http://images.public.test/cat.jpg": (302, {"Location": target}, b"")})
    with pytest.raises(QueryInputError) as refused:
        fetch_url("http://images.public.test/cat.jpg", adapter=adapter)
    assert "internal address" in str(refused.value) or "not an http(s) URL" in str(refused.value)
    assert adapter.connections == [("http://images.public.test/cat.jpg", PUBLIC)], "no connection inwards"


def test_the_connection_goes_to_the_checked_address_with_the_names_host_header():
    image = encode(photo_like(7000, 120, 90))
    seen_hosts = []

    with SiteServer({"/cat.jpg": Route(image, "image/jpeg")}) as site:
        # "photos.example.test" exists only in this resolver: had the connection resolved the name again, it
        # would have failed; it goes to the address the guard checked, and the server sees the name.
        adapter = GuardedAdapter(allow_private=True, resolver=lambda host, port: ["127.0.0.1"])
        original = adapter.send_to

        def recording(request, address, **kwargs):
            response = original(request, address, **kwargs)
            seen_hosts.append((address, request.headers.get("Host")))
            return response

        adapter.send_to = recording
        data = fetch_url(f"http://photos.example.test:{site.port}/cat.jpg", adapter=adapter)
    assert data == image
    assert seen_hosts == [("127.0.0.1", f"photos.example.test:{site.port}")]
    assert site.requests["/cat.jpg"] == 1


def test_loopback_is_refused_end_to_end_without_allow_private():
    with SiteServer({"/cat.jpg": Route(encode(photo_like(7001, 120, 90)), "image/jpeg")}) as site:
        for host in ("127.0.0.1", "localhost", "127.1", "2130706433"):
            with pytest.raises(QueryInputError, match="internal address"):
                fetch_url(f"http://{host}:{site.port}/cat.jpg")
        assert site.requests["/cat.jpg"] == 0
