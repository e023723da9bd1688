"""What ``synaptoroute serve`` checks of its address before the service starts."""

from __future__ import annotations

import errno
import logging
import socket

__all__ = ["check_bindable"]


def check_bindable(host: str, port: int) -> None:
    """Exit with 1, saying why as uvicorn does, when ``host`` resolves to no address or
    ``port`` is in use on one of its addresses.

    Each address is bound and let go, as asyncio's server binds them (``SO_REUSEADDR``,
    IPv6 only on IPv6 sockets); uvicorn binds them again once the app has started. An
    address asyncio may pass over (a family the kernel lacks, one not available here)
    is left to uvicorn, as is a process taking the port in between: those fail, as
    before, after the start-up.
    """
    log = logging.getLogger("uvicorn.error")
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from exc
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    continue
                log.error(
                    "[Errno %d] error while attempting to bind on address %r: %s",
                    exc.errno,
                    address,
                    (exc.strerror or "").lower(),
                )
                raise SystemExit(1) from exc
