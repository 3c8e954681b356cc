"""HOST:PORT flags, parsed one way for every component."""
from __future__ import annotations


def parse_hostport(text: str, flag: str = "address", *, default_host: str | None = None,
                   example: str = "127.0.0.1:8080") -> tuple[str, int]:
    """'10.0.0.1:8080', '[::1]:8080', ':8080' (with default_host) -> (host, port).
    ValueError names the flag and shows an example."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") or (default_host or "")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag} {text!r}: expected HOST:PORT, e.g. {example}")
    return host, int(port)
