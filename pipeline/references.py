"""Product-image references: a manifest's `image` cell may only point where the job allows.

A catalog comes from outside, so its `image` cells are untrusted: `../../etc/shadow`, a symlink
out of the catalog folder, `file:///`, `http://169.254.169.254/` (cloud metadata) are all things
a reader must never open. The rules (job config `images:`, see `ImageSources`):

- a local path must lie, after resolving `..`-free components and every symlink, under one of
  the image roots: the manifest's folder, plus `images.roots` (relative to the manifest's
  folder); `..` components and backslashes are refused outright;
- URLs are refused unless `images.allow_urls`; then only `https`, only to a host named in
  `images.allowed_hosts`, without credentials, and only when *every* address the host resolves
  to is public -- never loopback, private, link-local, multicast or reserved (SSRF);
- every other scheme (`http`, `file`, `ftp`, `s3`, `data`, ...) is refused.

Whoever opens the file or URL later checks again with the same object (a symlink can change,
and so can DNS): validation here makes bad rows visible early, it is not the only gate.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from pipeline.config import ImageSources
from pipeline.errors import BadInputError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
Resolver = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), as text."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def _refused_address(text: str) -> str | None:
    """Why an address must not be fetched from, or None when it is a public one."""
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for kind in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"


class ImageReferences:
    """Checks `image` cells of one manifest against the job's `ImageSources`."""

    def __init__(self, sources: ImageSources, manifest_dir: Path, resolver: Resolver = resolve_host) -> None:
        base = Path(manifest_dir).resolve()
        self.sources = sources
        self.manifest_dir = base
        try:
            self.roots = list(dict.fromkeys([base, *((base / root).resolve() for root in sources.roots)]))
        except (OSError, RuntimeError) as exc:  # a symlink loop among the roots
            raise BadInputError(f"job config images.roots: {exc}") from None
        self._resolver = resolver
        self._hosts: dict[tuple[str, int], str | None] = {}  # (host, port) -> refusal, resolved once

    def check(self, reference: str) -> str:
        """The reference made safe to open: a resolved local path, or the https URL as given.

        Raises ValueError naming what is wrong (the caller adds file, row and field).
        """
        scheme = _SCHEME.match(reference)
        if scheme and len(scheme.group(1)) > 1:
            return self._check_url(reference, scheme.group(1).lower())
        if scheme or "\\" in reference:
            raise ValueError(f"{reference!r}: write a path with '/' relative to the manifest "
                             "(Windows drive letters and backslashes are not allowed)")
        return self._check_path(reference)

    # --- local files -------------------------------------------------------------------------
    def _check_path(self, reference: str) -> str:
        if ".." in PurePosixPath(reference).parts:
            raise ValueError(f"{reference!r}: '..' is not allowed in image paths")
        candidate = Path(reference) if reference.startswith("/") else self.manifest_dir / reference
        try:
            resolved = candidate.resolve()  # follows every symlink, so a link out of a root is caught
            is_file = resolved.is_file()
        except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop (RuntimeError before 3.13) ...
            shown = reference if len(reference) <= 80 else reference[:77] + "..."
            raise ValueError(f"{shown!r}: not a usable image path ({getattr(exc, 'strerror', None) or exc})") from None
        if not any(resolved.is_relative_to(root) for root in self.roots):
            via = f" (it resolves to {resolved})" if resolved != candidate.absolute() else ""
            roots = ", ".join(str(r) for r in self.roots)
            raise ValueError(f"{reference!r} is outside the image roots{via}; allowed: {roots} "
                             "(add a folder to images.roots in the job config)")
        if not is_file:
            raise ValueError(f"{reference!r}: image file not found")
        return str(resolved)

    # --- URLs --------------------------------------------------------------------------------
    def _check_url(self, reference: str, scheme: str) -> str:
        if scheme != "https" or not self.sources.allow_urls:
            if scheme == "https":
                raise ValueError(f"{reference!r}: image URLs are not allowed (set images.allow_urls "
                                 "and images.allowed_hosts in the job config)")
            allowed = " or an https URL" if self.sources.allow_urls else ""
            raise ValueError(f"{reference!r}: scheme {scheme!r} is not allowed; use a path under "
                             f"the image roots{allowed}")
        try:
            parts = urlsplit(reference)
            port = parts.port or 443
        except ValueError as exc:
            raise ValueError(f"{reference!r}: not a valid URL ({exc})") from None
        host = (parts.hostname or "").rstrip(".")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{reference!r}: credentials in image URLs are not allowed")
        if not host:
            raise ValueError(f"{reference!r}: the URL names no host")
        if not any(_host_matches(host, pattern) for pattern in self.sources.allowed_hosts):
            listed = ", ".join(self.sources.allowed_hosts) or "none"
            raise ValueError(f"{reference!r}: host {host!r} is not in images.allowed_hosts ({listed})")
        if (host, port) not in self._hosts:
            self._hosts[host, port] = self._refuse_host(host, port)
        refusal = self._hosts[host, port]
        if refusal:
            raise ValueError(f"{reference!r}: {refusal}")
        return reference

    def _refuse_host(self, host: str, port: int) -> str | None:
        """Resolve the host once; refuse it when any address is not public (DNS may return several,
        and a fetch may pick any of them)."""
        try:
            addresses = self._resolver(host, port)
        except (OSError, UnicodeError) as exc:
            return f"host {host!r} cannot be resolved ({exc})"
        if not addresses:
            return f"host {host!r} has no address"
        for address in addresses:
            kind = _refused_address(address)
            if kind:
                return f"host {host!r} resolves to {address}, a {kind} address (refused: never fetch internal addresses)"
        return None


def _host_matches(host: str, pattern: str) -> bool:
    """`cdn.example.com` matches itself; `*.example.com` matches its subdomains, not itself."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern
