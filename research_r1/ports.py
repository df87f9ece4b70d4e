"""Whether a server can listen where it is told to, asked before it loads anything."""

from __future__ import annotations

import errno
import socket

from research_r1.errors import InputError


def check_port(host: str, port: int) -> None:
    """Raise a one-line `InputError` unless `host:port` can be bound now. The socket is bound
    with SO_REUSEADDR, as uvicorn and gradio bind theirs, so a port that only has connections
    in TIME_WAIT counts as free and one a server listens on as busy; it is closed at once."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise InputError(f"--host {host}: not an address here ({error.strerror})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise InputError(
                        f"port {port} on {host} is in use (another server?); pick another "
                        "with --port"
                    ) from None
                raise InputError(
                    f"cannot listen on port {port} on {host} ({error.strerror}); pick another "
                    "with --port"
                ) from None
