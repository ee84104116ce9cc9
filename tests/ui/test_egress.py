"""ui/egress.py: which addresses may be fetched from, and the switches that keep the server from calling home."""

from __future__ import annotations

import asyncio

import pytest

from ui import egress


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("2002:0808:0808::1", True),  # 6to4 of a public IPv4 address
        ("64:ff9b::808:808", True),  # NAT64 of a public one
        ("100.100.100.200", False),  # a cloud metadata service
        ("100.64.0.1", False),  # carrier-grade NAT, Tailscale peers
        ("169.254.169.254", False),
        ("10.66.0.1", False),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("2002:a9fe:a9fe::", False),  # 6to4 for 169.254.169.254
        ("2002:0a00:0001::", False),  # 6to4 for 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 for 169.254.169.254
        ("64:ff9b:1::a00:1", False),  # local-use NAT64 for 10.0.0.1
        ("::ffff:127.0.0.1", False),
        ("::127.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("not an address", False),
    ],
)
def test_public_ip(address, public):
    assert egress.public_ip(address) is public


@pytest.mark.parametrize(
    "host", ["0177.0.0.1", "0x7f.1", "127.1", "2130706433", "999.1.1.1", "localhost", "[::1]", "100.64.0.1", ""]
)
def test_hosts_that_are_refused(host):
    with pytest.raises(egress.NotPublicError):
        asyncio.run(egress.resolve_public(host))


def test_a_name_is_resolved_by_the_system_and_every_answer_must_be_public(monkeypatch):
    answers = {"mixed.example": ["93.184.216.34", "10.0.0.7"], "public.example": ["93.184.216.34"]}

    async def getaddrinfo(self, host, port, **kwargs):  # the event loop's resolver: the system's
        import socket

        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in answers[host]]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    assert asyncio.run(egress.resolve_public("public.example")) == "93.184.216.34"
    with pytest.raises(egress.NotPublicError, match="is not a public address"):
        asyncio.run(egress.resolve_public("mixed.example"))  # one answer points inside: refused whichever is used


def test_gradio_url_downloads_use_the_same_rule():
    """Gradio fetches URLs given to `meta`-marked inputs (and `/file=<url>`) through safehttpx: after the install,
    safehttpx refuses what `resolve_public` refuses and never asks a public DNS service."""
    import safehttpx

    egress.install_url_safety()
    for host in ("100.100.100.200", "100.64.0.1", "2002:a9fe:a9fe::"):
        with pytest.raises(ValueError):
            asyncio.run(safehttpx.async_validate_url(host))
    assert asyncio.run(safehttpx.async_resolve_hostname_google("example.com")) == []
    assert not safehttpx.is_public_ip("100.64.0.1")


def test_quiet_sets_only_what_is_unset(monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")  # the person's own choice stays
    monkeypatch.delenv("NO_ALBUMENTATIONS_UPDATE", raising=False)
    egress.quiet()
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "True" and os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"
