"""Connection limits that uvicorn's HTTP protocol does not enforce itself.

uvicorn's httptools protocol (the fast one, used by ``synaptoroute serve``) has no
header read timeout (a connection that never sends a byte, or sends headers one byte
at a time, stays open for ever), no body read timeout, no header size limit (an
unterminated header is buffered whole) and no per-client connection limit;
``limit_concurrency`` answers 503 to every client once idle connections fill it.
:func:`guarded_protocol` returns its subclass that adds exactly those limits:

- ``header_timeout``: from the connection's start (or a request's first byte) to
  the end of its headers; then the connection is closed.
- ``body_timeout``: from the end of the headers to the end of the body; and, while
  a response waits for its client to read (the kernel keeps only 16 KiB of it
  unsent), for the client to read some of it (a slow reader gets another period
  each time it does): then the connection is aborted. uvicorn waits for the socket
  to drain without a limit, so a client that never read kept its connection, and
  its slot, past every other timeout.
- ``max_header_bytes``: request line and headers; more gets 431 and a close (a head
  that arrives in one read with the end of the request before it, pipelined, is
  counted as what that read holds besides the ended requests' heads, bodies and
  framing, with a few bytes of room per ended request). After
  the headers, what is not body (chunk-size lines, trailers) may add up to
  ``max_header_bytes`` + ``max_body_bytes``; more gets 431 and a close (the body
  itself is limited by the app's body limit). A refusal is written after the answers
  of the requests pipelined before it, never in their place.
- no WebSocket upgrade: the service has no WebSocket route, and an upgraded
  connection would escape these limits (and never give back its client's count).
- ``max_connections`` / ``max_connections_per_client``: one more connection is
  never queued: its request is answered 503 (``Connection: close``) as soon as its
  headers arrive, and it is closed after ``header_timeout`` if they never do, so one
  client's idle connections cannot take what other clients and the probes need.
  During a flood (more than 64 such connections waiting) the excess is closed at once.

The keep-alive idle timeout between requests stays uvicorn's (``timeout_keep_alive``).

Why one module over 400 lines: every limit hooks the same parser callbacks of one
uvicorn class and shares its per-connection counters; split, each part would reach
into the others' state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from .settings import ServerSettings

__all__ = ["ConnectionLimits", "guarded_protocol"]


@dataclass(frozen=True)
class ConnectionLimits:
    """See the module docstring; every value must be positive."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 1000
    max_connections_per_client: int = 100

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ConnectionLimits:
        """The limits that ``settings`` names."""
        return cls(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_body_bytes=settings.max_body_bytes,
            max_connections=settings.max_connections,
            max_connections_per_client=settings.max_connections_per_client,
        )


def _error_response(status: bytes, detail: str) -> bytes:
    # Written by the protocol before any app runs; the same JSON body as every error.
    body = json.dumps({"detail": detail}).encode("ascii")
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


_OVER_LIMIT_GRACE_S = 1.0
# Over-limit connections waiting for their request to be answered 503; past this
# many, more are closed at once (a flood must not hold descriptors).
_MAX_PENDING_REFUSALS = 64
_HEADERS_TOO_LARGE = _error_response(
    b"431 Request Header Fields Too Large", "request headers too large"
)
_FRAMING_TOO_LARGE = _error_response(
    b"431 Request Header Fields Too Large", "chunk framing or trailers too large"
)
_MALFORMED = _error_response(b"400 Bad Request", "malformed HTTP request")
# Bytes of a parsed head that its size (URL and header fields) leaves out: the method,
# the version, the line ends, spacing around values. Per request ended in a read.
_HEAD_SLACK = 64
# The framing of one chunk of a chunked body: its size line (with an extension, rare)
# and the line end after its data.
_FRAME_BYTES = 24


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app an over-limit connection gets: 503, then the connection closes."""
    body = b'{"detail":"too many connections; retry later"}'
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


#: Bytes the kernel may hold unsent for a connection (``TCP_NOTSENT_LOWAT``).
_KERNEL_UNSENT = 16 * 1024


def _send_in_view(transport: asyncio.Transport) -> None:
    """Keep what a client has not read in the transport's buffer, where the send
    deadline sees it: the kernel holds little unsent (else a loopback socket took
    megabytes, and a client reading slowly showed no progress for a period), and any
    byte left unsent pauses writing (else a response under the 64 KiB high-water mark
    never armed the deadline, and uvicorn's close waited on it for ever)."""
    sock = transport.get_extra_info("socket")
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is not None and lowat is not None:
        with contextlib.suppress(OSError):  # not TCP (a Unix socket), or not supported
            sock.setsockopt(socket.IPPROTO_TCP, lowat, _KERNEL_UNSENT)
    # Socket transports (asyncio's, uvloop's) pause at size > high: 0. A TLS one
    # pauses at size >= high, so 0 paused it with nothing buffered and every response
    # waited for a drain that never came: 1.
    tls = transport.get_extra_info("ssl_object") is not None
    transport.set_write_buffer_limits(high=1 if tls else 0, low=0)


def _cancel(handle: asyncio.TimerHandle | None) -> None:
    """Cancel ``handle`` if there is one."""
    if handle is not None:
        handle.cancel()


class _GuardedProtocol(HttpToolsProtocol):
    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._send_deadline: asyncio.TimerHandle | None = None
        self._unsent = 0  # the send buffer's size when its deadline was last set
        self._running_cycle: Any = None  # the request whose app runs (see on_headers_complete)
        self._in_headers = True
        self._headers_ended = False  # a request's headers ended in the current chunk
        self._messages_ended = 0  # requests that ended in the current chunk
        self._next_begun = False  # a request began since the last one ended
        self._header_bytes = 0
        self._chunk_heads = 0  # bytes of the heads that ended in the current chunk
        self._chunk_frames = 0  # chunked-body chunks that began in the current chunk
        self._chunk_body_bytes = 0  # body bytes of the current chunk, whatever the request
        self._body_bytes = 0  # this request's body bytes, as the parser hands them on
        self._framing_bytes = 0  # its other bytes after the headers (chunk lines, trailers)
        self._refused = False
        # A refusal waiting for the answer of the request before it: (response, request).
        self._refusal: tuple[bytes, Any] | None = None
        self._counted_refusal = False
        self._client_key = ""

    # -- bookkeeping shared by the server's connections ---------------------------
    def _per_client(self) -> dict[str, int]:
        counts: dict[str, int] | None = getattr(self.server_state, "synaptoroute_clients", None)
        if counts is None:
            counts = {}
            self.server_state.synaptoroute_clients = counts  # type: ignore[attr-defined]
        return counts

    def _pending_refusals(self) -> list[int]:
        pending: list[int] | None = getattr(self.server_state, "synaptoroute_refusing", None)
        if pending is None:
            pending = [0]
            self.server_state.synaptoroute_refusing = pending  # type: ignore[attr-defined]
        return pending

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        _cancel(self._deadline)
        self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        # The response waits for the client to read: give it body_timeout to read some.
        if self._send_deadline is None:
            self._unsent = self.transport.get_write_buffer_size()
            self._send_deadline = self.loop.call_later(self.limits.body_timeout, self._unread)

    def resume_writing(self) -> None:
        self._stop_send_deadline()
        super().resume_writing()

    def _stop_send_deadline(self) -> None:
        _cancel(self._send_deadline)
        self._send_deadline = None

    def _unread(self) -> None:
        self._send_deadline = None
        unsent = self.transport.get_write_buffer_size()
        if unsent < self._unsent:
            # It read some: a slow reader of a large response (one write: the buffer
            # stays above the low-water mark until nearly all of it is read) goes on.
            self._unsent = unsent
            self._send_deadline = self.loop.call_later(self.limits.body_timeout, self._unread)
            return
        # close() would wait to flush what the client does not read: abort.
        self.transport.abort()

    def _refuse(self, response: bytes, *, its_own_cycle: bool = False) -> None:
        """Answer ``response`` and close, after the responses of earlier pipelined
        requests still being answered: written at once, a client read it as theirs and
        never saw them (a ``POST`` it took as refused had run). ``its_own_cycle``: the
        refused request's headers were passed on (a refusal of its body's framing)."""
        self._refused = True
        self._disarm()
        after = self._last_before_refusal(its_own_cycle)
        if after is not None and not after.response_complete:
            self._refusal = (response, after)
            return
        self._answer_and_close(response)

    def _answer_and_close(self, response: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _last_before_refusal(self, its_own_cycle: bool) -> Any:
        """The last request before the refused one, whose answer goes first."""
        if not its_own_cycle:
            return self.cycle  # the refused request has none
        refused = self.cycle
        if not any(c is refused for c, _ in self.pipeline):
            return None  # it runs: every earlier request was answered
        # Still queued: it never runs (its body is cut off).
        waiting = [(c, app) for c, app in self.pipeline if c is not refused]
        self.pipeline.clear()
        self.pipeline.extend(waiting)
        return waiting[0][0] if waiting else self._running_cycle

    # -- the protocol ---------------------------------------------------------------
    def _should_upgrade_to_ws(self, *upgrade: Any) -> bool:  # uvicorn < 0.30 passes one
        # The service has no WebSocket route. An upgraded connection is handed to
        # another protocol object, so this one's connection_lost never ran: each
        # upgrade request leaked a count of its client, which was then refused for
        # good (503) after max_connections_per_client of them. Upgrade requests are
        # answered as plain HTTP instead.
        return False

    def send_400_response(self, msg: str) -> None:
        # A request the HTTP parser cannot read (conflicting lengths, a bad chunk, a
        # raw non-ASCII byte in the target): answered with the JSON body of every
        # other error, where uvicorn wrote a text/plain one, and after the answers of
        # the requests pipelined before it (uvicorn wrote it at once: a client read it
        # as the answer to a request that had run). An error in a running request's
        # body is answered at once (that request gets a disconnect).
        self._refuse(_MALFORMED, its_own_cycle=not self._in_headers)

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn logs two warnings per upgrade request (one blames a missing library):
        # any client could fill the log with them.
        return

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _send_in_view(transport)
        limits = self.limits
        self._client_key = self.client[0] if self.client else ""
        counts = self._per_client()
        counts[self._client_key] = counts.get(self._client_key, 0) + 1
        if (
            len(self.connections) > limits.max_connections
            or counts[self._client_key] > limits.max_connections_per_client
        ):
            pending = self._pending_refusals()
            if pending[0] >= _MAX_PENDING_REFUSALS:
                # A flood: close at once, so its descriptors are never held.
                self._refused = True
                self.transport.close()
                return
            # Answered (not reset) once its request arrives: a client that wrote its
            # request before our close would otherwise see a reset, not the 503.
            pending[0] += 1
            self._counted_refusal = True
            self.app = _too_many_connections
            # An honest client sends its request at once; an idle one goes soon.
            self._arm(min(limits.header_timeout, _OVER_LIMIT_GRACE_S))
            return
        self._arm(limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_send_deadline()
        running = self._running_cycle
        if running is not None and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        if self._counted_refusal:
            self._pending_refusals()[0] -= 1
        counts = self._per_client()
        left = counts.get(self._client_key, 1) - 1
        if left > 0:
            counts[self._client_key] = left
        else:
            counts.pop(self._client_key, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        counting = self._in_headers
        self._headers_ended = False
        self._messages_ended = 0
        self._chunk_body_bytes = self._chunk_heads = self._chunk_frames = 0
        body_before = self._body_bytes
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._messages_ended and self._in_headers and self._next_begun:
            # A request ended in this chunk and the next one's headers began in it
            # (pipelining): they were not counted. They are what the chunk holds
            # besides bodies, the ended requests' heads (as parsed, with a little
            # room for the request line and spacing) and their chunk framing.
            known = (
                self._chunk_body_bytes
                + self._chunk_heads
                + _FRAME_BYTES * self._chunk_frames
                + _HEAD_SLACK * self._messages_ended
            )
            self._header_bytes += max(0, len(data) - known)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(_HEADERS_TOO_LARGE)
        elif counting and self._in_headers and not self._headers_ended:
            # Still inside the headers after this chunk: count it (the parser holds
            # unfinished header values in memory until the line ends).
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(_HEADERS_TOO_LARGE)
        elif not counting and not self._messages_ended:
            # Wholly after the headers and before the message's end: what is not body
            # is chunk framing or trailers, which the parser also holds (a trailer's
            # value until its line ends) and which no body limit counts.
            self._framing_bytes += len(data) - (self._body_bytes - body_before)
            limits = self.limits
            if self._framing_bytes > limits.max_header_bytes + limits.max_body_bytes:
                self._refuse(_FRAMING_TOO_LARGE, its_own_cycle=True)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._next_begun = True
        if self._deadline is None:
            self._arm(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_headers = False
        self._headers_ended = True
        # Headers that arrived whole in one chunk were not counted on the way.
        size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse(_HEADERS_TOO_LARGE)
            return
        # What of this head the current chunk held (earlier chunks' share was counted).
        self._chunk_heads += max(0, size - self._header_bytes)
        self._arm(self.limits.body_timeout)
        super().on_headers_complete()
        # uvicorn marks only the newest parsed request disconnected when a connection
        # is lost; with requests pipelined, the one running is another, and its next
        # write (to a closed transport) failed with a logged traceback. Tracked here
        # and in on_response_complete, which every supported uvicorn has.
        if self.cycle is not None and not any(c is self.cycle for c, _ in self.pipeline):
            self._running_cycle = self.cycle

    def on_response_complete(self) -> None:
        waiting = self.pipeline[-1][0] if self.pipeline else None  # the next to start
        super().on_response_complete()
        if waiting is not None and not any(c is waiting for c, _ in self.pipeline):
            self._running_cycle = waiting
        refusal = self._refusal
        if refusal is not None and refusal[1].response_complete:
            self._refusal = None
            self._answer_and_close(refusal[0])

    def on_chunk_header(self) -> None:
        self._chunk_frames += 1

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._chunk_body_bytes += len(body)
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._in_headers = True  # what comes next is the next request's headers
        self._messages_ended += 1
        self._next_begun = False
        self._header_bytes = self._body_bytes = self._framing_bytes = 0
        super().on_message_complete()


def guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    return type("GuardedHttpToolsProtocol", (_GuardedProtocol,), {"limits": limits})
