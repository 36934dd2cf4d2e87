"""Fetching a picture by URL for ``search`` and ``add`` (extension, off unless config.toml allows it).

A daemon that fetches URLs for its clients can be turned into a probe of the network it sits in
(server-side request forgery): cloud metadata endpoints, admin ports on loopback, hosts behind the
firewall. So every fetch obeys ``[fetch]`` in config.toml:

- only ``http`` and ``https``; the host must be allowed: a listed name (``images.example.com``,
  or ``*.example.com`` for its subdomains) or an address inside a listed network;
- the name is resolved **once**, each address is checked, and the connection goes to the checked
  address (a second lookup could answer differently: DNS rebinding);
- loopback, private, link-local, shared, reserved and cloud-metadata addresses are refused unless
  they lie inside a listed *network*: a listed name alone never unlocks them;
- redirects are followed by hand, each target checked by the same rules, at most
  ``max_redirects`` of them;
- the whole fetch, redirects included, is capped in time (``timeout_s``) and in size (``max_bytes``).

Every refusal is err_no 1 with the reason, before any connection to a refused address is opened.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from same_search.config import ConfigError, FetchConfig
from same_search.errors import bad_request

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: host, port -> the addresses the name resolves to (injectable, so tests need no DNS).
Resolver = Callable[[str, int], Awaitable[list[str]]]

SCHEMES = ("http", "https")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Cloud instance-metadata endpoints; some are public addresses, so they are named one by one.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "192.0.0.192",  # Oracle Cloud
    )
)


def address_refusal(address: IpAddress) -> str | None:
    """Why a fetch must not connect to ``address`` unless its network is listed; None if public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    checks = (
        (address in METADATA, "a cloud metadata address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_unspecified, "an unspecified address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for refused, reason in checks if refused), None)


@dataclass(frozen=True)
class AllowList:
    """The operator's ``[fetch] allow``: host names (``*.`` for subdomains) and networks."""

    hosts: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def parse(cls, entries: list[str]) -> AllowList:
        """Entries as config.toml gives them; a malformed one is a :class:`ConfigError`."""
        hosts, suffixes, networks = set(), [], []
        for entry in entries:
            text = entry.strip().lower().rstrip(".")
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            name = text[2:] if text.startswith("*.") else text
            if not name or not all(part and part.replace("-", "").isalnum() for part in name.split(".")):
                raise ConfigError(
                    f"[fetch] allow: {entry!r} is neither a host name (or *.domain) nor an address or network"
                )
            if text.startswith("*."):
                suffixes.append("." + name)
            else:
                hosts.add(name)
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def host_listed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.hosts or any(host.endswith(suffix) for suffix in self.suffixes)

    def network_listed(self, address: IpAddress) -> bool:
        return any(address in network for network in self.networks)

    def refusal(self, host: str, address: IpAddress) -> str | None:
        """Why ``host`` at ``address`` may not be fetched; None when it may."""
        if self.network_listed(address):
            return None
        special = address_refusal(address)
        if special is not None:
            return f"{host} is {address}, {special}, and no network in [fetch] allow contains it"
        if self.host_listed(host):
            return None
        return f"{host} ({address}) is not in [fetch] allow"


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the operating system's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _PinnedResolver(AbstractResolver):
    """Answers the one name with the one address that was checked: no second lookup."""

    def __init__(self, host: str, address: IpAddress) -> None:
        self.host, self.address = host, address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self.host:  # cannot happen: one session per checked hop
            raise OSError(f"unexpected host {host!r}")
        family = socket.AF_INET6 if self.address.version == 6 else socket.AF_INET
        return [
            ResolveResult(hostname=host, host=str(self.address), port=port, family=family, proto=0, flags=0)
        ]

    async def close(self) -> None:
        return None


class Fetcher:
    """Fetches pictures by URL under the ``[fetch]`` rules (module doc)."""

    def __init__(self, cfg: FetchConfig, resolver: Resolver | None = None) -> None:
        self.cfg = cfg
        self.allow = AllowList.parse(cfg.allow)
        self.resolver: Resolver = resolver or system_resolver

    async def fetch(self, url: Any, field: str = "url") -> bytes:
        """The body of ``url`` (err_no 1 naming ``field`` and the reason when refused or failed)."""
        if not self.cfg.enabled:
            raise bad_request(
                f"{field} is not enabled on this daemon (the operator sets [fetch] in config.toml)"
            )
        if not isinstance(url, str) or not url:
            raise bad_request(f"{field} must be a non-empty string")
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                return await self._follow(self._parse(url, field), field)
        except TimeoutError:
            raise bad_request(f"{field}: no complete answer within {self.cfg.timeout_s:g}s") from None

    def _parse(self, text: str, field: str) -> URL:
        try:
            url = URL(text)
        except (ValueError, TypeError) as exc:
            raise bad_request(f"{field} is not a valid URL: {exc}") from None
        if url.scheme not in SCHEMES:
            raise bad_request(
                f"{field}: only http and https URLs are fetched, not {url.scheme or 'no'} scheme"
            )
        if not url.host:
            raise bad_request(f"{field} has no host")
        return url

    async def _follow(self, url: URL, field: str) -> bytes:
        for _ in range(self.cfg.max_redirects + 1):
            address = await self._checked_address(url, field)
            status, location, body = await self._get(url, address, field)
            if status not in REDIRECTS:
                if status != 200:
                    raise bad_request(f"{field}: {url.host} answered HTTP {status}")
                return body
            if not location:
                raise bad_request(f"{field}: HTTP {status} redirect without a Location")
            url = self._parse(str(url.join(URL(location))), f"{field} (redirected)")
        raise bad_request(f"{field}: more than {self.cfg.max_redirects} redirects")

    async def _checked_address(self, url: URL, field: str) -> IpAddress:
        """Resolve the host once; the first address the allow-list permits, or err_no 1."""
        host = url.host or ""
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            try:
                found = await self.resolver(host, url.port or 0)
                addresses = [ipaddress.ip_address(a.split("%")[0]) for a in found]
            except (OSError, ValueError) as exc:
                raise bad_request(f"{field}: cannot resolve {host}: {exc}") from None
        if not addresses:
            raise bad_request(f"{field}: {host} has no address")
        reasons = []
        for address in addresses:
            reason = self.allow.refusal(host, address)
            if reason is None:
                return address
            reasons.append(reason)
        raise bad_request(f"{field} refused: {reasons[0]}")

    async def _get(self, url: URL, address: IpAddress, field: str) -> tuple[int, str | None, bytes]:
        """One GET to the checked address: (status, Location, body capped at max_bytes)."""
        connector = aiohttp.TCPConnector(
            resolver=_PinnedResolver(url.host or "", address), use_dns_cache=False
        )
        limit = self.cfg.max_bytes
        try:
            async with (
                aiohttp.ClientSession(connector=connector, trust_env=False) as session,
                session.get(url, allow_redirects=False, headers={"Accept": "image/*"}) as response,
            ):
                if response.status in REDIRECTS:
                    return response.status, response.headers.get("Location"), b""
                if response.content_length is not None and response.content_length > limit:
                    raise bad_request(
                        f"{field}: the picture is {response.content_length} bytes, more than {limit}"
                    )
                body = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > limit:
                        raise bad_request(f"{field}: the picture is larger than {limit} bytes")
                return response.status, None, bytes(body)
        except aiohttp.ClientError as exc:
            raise bad_request(f"{field}: cannot fetch from {url.host}: {exc or type(exc).__name__}") from None
