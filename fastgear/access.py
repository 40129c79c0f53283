"""Admin access control: who may change the server, and who may look at it.

gearmand lets anyone who reaches its port `shutdown`, `cancel job` or `drop function`.
`--admin-allow LIST` limits the text admin commands that change the server (and the
monitor's changing HTTP actions) to the peers LIST names; `--admin-allow-read LIST` does
the same for the read-only views. A LIST is comma-separated entries, each an IPv4 or IPv6
network in CIDR form (`10.0.0.0/8`, `fd00::/8`), a bare address (one host: /32 or /128),
`cn:NAME` (a TLS peer whose client certificate's subject CN is exactly NAME), or the word
`none` alone (nobody). This module only parses lists and answers "may this peer do
that"; admin.py says which commands change the server, server.py and monitor.py ask
before running them. Lists are parsed once at start-up (config.validate() refuses a bad
entry), so a typo can never leave the server open or closed by accident.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["AccessError", "AccessList", "Peer", "Policy", "RefusalLog", "parse_list"]

# X.509's upper bound for a CommonName (ub-common-name); the I/O layer keeps 64 bytes.
MAX_CN = 64
NONE_WORD = "none"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessError(ValueError):
    """An access list entry that is not a CIDR, an address, `cn:NAME` or `none`."""


class Peer(NamedTuple):
    """Who sent a request: its address as the I/O layer printed it (inet_ntop) and its
    client certificate's CN ("" without TLS or without a certificate)."""

    ip: str
    cn: str = ""



class AccessList:
    """A parsed list; `matches(peer)` is true when any entry names the peer."""

    __slots__ = ("names", "networks", "text")

    def __init__(self, networks: tuple[_Network, ...], names: frozenset[str], text: str):
        self.networks = networks
        self.names = names
        self.text = text

    def matches(self, peer: Peer) -> bool:
        if peer.cn and peer.cn in self.names:
            return True
        address = _address(peer.ip)
        if address is None:
            return False
        return any(address.version == net.version and address in net
                   for net in self.networks)

    def __repr__(self) -> str:
        return f"AccessList({self.text!r})"


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; the operator wrote them
    # as IPv4, so they are matched as IPv4.
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _entry(entry: str) -> _Network | str:
    """One entry as a network, or the CN of a `cn:` entry."""
    if entry[:3].lower() == "cn:":
        name = entry[3:]
        if not name:
            raise AccessError(f"{entry!r}: cn: needs a name (cn:NAME)")
        if len(name.encode()) > MAX_CN:
            raise AccessError(f"{entry!r}: a certificate CN has at most {MAX_CN} bytes")
        if not name.isprintable():
            raise AccessError(f"{entry!r}: the CN holds a control character")
        return name
    try:
        return ipaddress.ip_network(entry, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ipaddress.ip_network(entry, strict=False)
            raise AccessError(f"{entry!r} has bits set after the prefix length "
                              f"(the network is {loose})") from None
    raise AccessError(f"{entry!r} is not an IPv4/IPv6 address, a CIDR network or "
                      f"cn:NAME (host names are not resolved)")


def parse_list(text: str) -> AccessList:
    """Parse a comma-separated list; AccessError names the first bad entry."""
    if not isinstance(text, str) or not text.strip():
        raise AccessError("the list is empty (give CIDRs, addresses, cn:NAME entries, "
                          "or 'none' for nobody)")
    entries = [part.strip() for part in text.split(",")]
    if entries == [NONE_WORD]:
        return AccessList((), frozenset(), text)
    networks, names = [], set()
    for entry in entries:
        if not entry:
            raise AccessError("an entry is empty (two commas in a row, or one at an end)")
        if entry.lower() == NONE_WORD:
            raise AccessError("'none' must be the whole list")
        parsed = _entry(entry)
        if isinstance(parsed, str):
            names.add(parsed)
        else:
            networks.append(parsed)
    return AccessList(tuple(networks), frozenset(names), text)


class Policy:
    """The two lists of a server and what they allow.

    `write` None (no --admin-allow) is gearmand's rule: anyone may change the server, except
    that `shutdown` is only accepted from loopback (admin.py). `read` None leaves the views
    open. When only --admin-allow-read is given it closes the whole admin interface to
    everyone else: a peer that may not even look does not get to change anything either.
    """

    __slots__ = ("read", "write")

    def __init__(self, write: AccessList | None = None, read: AccessList | None = None):
        self.write = write
        self.read = read

    @classmethod
    def from_config(cls, cfg) -> Policy:
        write = getattr(cfg, "admin_allow", None)
        read = getattr(cfg, "admin_allow_read", None)
        return cls(parse_list(write) if write is not None else None,
                   parse_list(read) if read is not None else None)

    @property
    def open(self) -> bool:
        """No list given: every check passes (gearmand's behaviour)."""
        return self.write is None and self.read is None

    def may_read(self, peer: Peer) -> bool:
        return (self.read is None or self.read.matches(peer)
                or (self.write is not None and self.write.matches(peer)))

    def may_change(self, peer: Peer) -> bool:
        if self.write is None:
            return self.may_read(peer)
        return self.write.matches(peer)

    def flag_for(self, change: bool) -> str:
        """The flag that refused a peer, for the log line."""
        return "--admin-allow" if change and self.write is not None else "--admin-allow-read"

    def has_names(self) -> bool:
        return any(lst is not None and lst.names for lst in (self.write, self.read))


class RefusalLog:
    """Logs refusals, at most `per_second` lines a second, so a peer hammering the admin
    port cannot flood the log; what was left out is counted in the next line."""

    def __init__(self, emit: Callable[[str], None] | None = None, per_second: int = 20):
        # The server passes a writer that ignores --verbose: gearmand's default level
        # (ERROR) would hide these, and they are what an operator audits.
        self.emit = emit or logging.getLogger("fastgear").warning
        self.per_second = per_second
        self._lock = threading.Lock()
        self._window = 0
        self._used = 0
        self._skipped = 0

    def refused(self, what: str, name: str, peer: Peer, port: int, flag: str) -> None:
        """Log `what` `name` (e.g. "admin command", "shutdown") refused to peer."""
        now = int(time.monotonic())
        with self._lock:
            if now != self._window:
                self._window, self._used = now, 0
            if self._used >= self.per_second:
                self._skipped += 1
                return
            self._used += 1
            skipped, self._skipped = self._skipped, 0
        more = f" ({skipped} more refusals not logged)" if skipped else ""
        where = f"[{peer.ip}]:{port}" if ":" in peer.ip else f"{peer.ip}:{port}"
        cn = f" (cn={peer.cn!r})" if peer.cn else ""
        self.emit(f"access denied: {what} {name} from {where}{cn}: not in {flag}{more}")
