"""What this server sends to the network: only what a person asked for.

- `public_ip` / `resolve_public`: the one test of whether an address may be fetched from (an MCP image URL, and
  Gradio's own URL downloads for `meta`-marked inputs and `/file=<url>`). An address passes only when it is
  globally routable (`ipaddress.is_global`: no loopback, private, link-local, carrier-grade NAT 100.64.0.0/10,
  cloud metadata 100.100.100.200 or 169.254.169.254, reserved ranges) and no IPv4 address embedded in an IPv6 one
  (IPv4-mapped and -compatible, 6to4, Teredo, NAT64) fails the same test. Host names are resolved by the system's
  resolver; every address they resolve to must pass, and the connection is then made to that address.
- `install_url_safety()` puts that test in place of safehttpx's, which Gradio calls: safehttpx accepts any public
  answer among private ones, passes 100.64.0.0/10 and 6to4 forms, and sends host names it refused to a public
  DNS-over-HTTPS service.
- `QUIET_ENVIRONMENT`: the switches that keep libraries from calling home (albumentations' version check through
  insightface, Gradio's analytics and version check, the Hub's telemetry), set by `quiet()` before they are read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket

# Each is set only where the environment does not already say otherwise.
QUIET_ENVIRONMENT = {
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations (imported by insightface) asks the package index at import
    "GRADIO_ANALYTICS_ENABLED": "False",  # Gradio's usage analytics and version check at launch
    "HF_HUB_DISABLE_TELEMETRY": "1",  # the Hub client's telemetry pings (downloads themselves still work)
    "DO_NOT_TRACK": "1",  # the common opt-out other libraries read
}

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (the well-known and local-use NAT64 prefixes).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# A host written as numbers the system resolver would read as an IPv4 address in another notation: octal
# (0177.0.0.1), hexadecimal (0x7f.1), fewer parts (127.1) or one integer (2130706433).
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}\.?$", re.IGNORECASE)


class NotPublicError(ValueError):
    """An address this server does not fetch from (the message names it)."""


def quiet() -> None:
    """Set the switches of `QUIET_ENVIRONMENT` (where unset) and turn onnxruntime's telemetry off."""
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        import onnxruntime
    except ImportError:
        return
    onnxruntime.disable_telemetry_events()


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, 6to4, Teredo server and client, NAT64)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in net for net in (*_NAT64, _IPV4_COMPATIBLE)):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def public_ip(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `address` is globally routable, and so is every IPv4 address embedded in it."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0] if isinstance(address, str) else address)
    except ValueError:
        return False
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        return all(v4.is_global and not v4.is_multicast for v4 in _embedded_ipv4(ip))
    return True


async def resolve_public(host: str) -> str:
    """The address to connect to for `host`, by the system's resolver; NotPublicError unless every address it
    resolves to is public (a name that also points inside is refused, whichever answer would be used)."""
    name = (host or "").strip().strip("[]")
    if not name:
        raise NotPublicError("no host")
    try:
        literal = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        literal = None
    if literal is not None:
        if not public_ip(literal):
            raise NotPublicError(f"{host} is not a public address")
        return str(literal)
    if _NUMERIC_HOST.match(name):
        raise NotPublicError(f"{host} is not an address in the usual notation")
    try:
        answers = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise NotPublicError(f"{host} could not be resolved") from e
    addresses = [a[4][0] for a in answers if a[0] in (socket.AF_INET, socket.AF_INET6)]
    if not addresses or not all(public_ip(a) for a in addresses):
        raise NotPublicError(f"{host} is not a public address")
    return addresses[0]


async def _no_public_dns(hostname: str) -> list[str]:
    """In place of safehttpx's DNS-over-HTTPS fallback: host names are never sent to an outside resolver."""
    return []


def install_url_safety() -> None:
    """Make safehttpx (and so Gradio's URL downloads) use `resolve_public` (once; names in private_names.py)."""
    import safehttpx

    if getattr(safehttpx, "_studio_installed", False):
        return
    safehttpx.async_validate_url = resolve_public
    safehttpx.async_resolve_hostname_google = _no_public_dns
    safehttpx.is_public_ip = public_ip
    safehttpx._studio_installed = True
