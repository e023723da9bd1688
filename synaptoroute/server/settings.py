"""Settings of the HTTP service, and the start-up safety check."""

from __future__ import annotations

import argparse
import ipaddress
import os
import string
import threading
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from .._cpu import MAX_THREADS
from ..batching import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_COST,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_MAX_WAIT_MS,
    MAX_TEXT_COST,
    TEXT_COST_OVERHEAD,
)
from ..exceptions import InvalidInputError
from ..storage import is_database_url
from ..storage.base import check_store_path, redact_url

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_MAX_BODY_BYTES",
    "ServerSettings",
    "add_limit_arguments",
    "is_loopback",
    "limit_values",
]

#: The environment variable that holds the bearer token for route changes.
API_KEY_ENV = "SYNAPTOROUTE_API_KEY"
DEFAULT_MAX_BODY_BYTES = 1 << 20

# What a Host header's name may hold (RFC 3986 reg-name, IP literals, a port).
_HOST_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=%:[]")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost`` or a loopback address)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to anything: treat it as exposed.
        return False


class ServerSettings(BaseModel):
    """How the service runs.

    Attributes:
        store: SQLite file holding the routes; ``None`` keeps them in memory.
        routes_file: a YAML or JSON routes file applied to the store at start.
        host, port: where uvicorn listens.
        api_key: bearer token required by every route-changing endpoint.
        read_only: refuse every route change (403), whatever the token.
        max_body_bytes: larger request bodies get 413 without being read further.
        request_timeout: seconds a query may wait for its batch before 503.
        retry_after: seconds sent in ``Retry-After`` with a 503.
        drain_timeout: seconds SIGTERM waits for requests in flight.
        max_batch_size, max_wait_ms, max_queue_size: the router's batching worker.
        memory_trim_interval: seconds between two checks of whether the RSS grew
            (by 8 MiB) since the C heap was last trimmed, giving freed pages back to
            the OS after a burst (glibc only; 0 disables).
        max_queue_cost: queued texts' cost (characters the model reads plus 16 a
            text) beyond which queries get 503; the queue's bound by work, not count.
        encoder_threads: ONNX Runtime threads (default: the CPU quota, see ``synaptoroute._cpu``).
        encoder_spin: let ONNX Runtime threads spin between batches. Off by default:
            spinning takes the cores that the event loop needs to parse requests
            (measured in ``benchmarks/http_service.py``).
        log_level: uvicorn's log level.
        auth_reads: route reads (``GET /routes``, ``/routes/{name}``, ``/threshold``,
            ``/negatives``) need the bearer token too.
        allowed_hosts: ``Host`` names a keyless service answers besides loopback
            names (a keyless service refuses others with 421: DNS rebinding).
        routes_page_size: routes in one ``GET /routes`` page unless ``limit`` says
            otherwise (and the most it may say).
        max_batch_cost: most one ``/route/batch`` may cost, in characters the model
            reads plus 16 a text (413 above).
        max_batches_in_flight: ``/route/batch`` requests served at once (429 above).
        batch_chunk_cost: a batch reaches the model in chunks of about this cost, so
            single queries are served between two chunks.
        header_timeout, body_timeout: seconds to receive a request's headers, then
            its body, before the connection is closed.
        keep_alive_timeout: seconds an idle keep-alive connection stays open.
        max_header_bytes: request line and headers; more gets 431.
        max_connections, max_connections_per_client: one more connection gets 503
            and is closed at once.
        rate_limit, rate_burst: requests a second per client address (a token
            bucket of ``rate_burst``; 429 beyond); ``None`` turns it off. Probes
            (``/healthz``, ``/readyz``) are never limited.
        console: serve the browser console at ``/console`` (read-only without the API key).
        store_poll_interval: seconds between two checks of a SQLite store for other
            processes' commits (``synaptoroute routes add``, other workers on the
            file). A PostgreSQL store is told by notifications and keeps its own.

    Example:
        >>> ServerSettings(host="0.0.0.0", api_key="s3cret").changes_enabled
        True
    """

    # inf and nan refused on every float (pydantic took inf): --drain-timeout inf
    # crashed start-up (uvicorn takes whole seconds); no limit here means "never" by it.
    # Inputs out of validation errors too: a key given as a number was echoed in them.
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, hide_input_in_errors=True
    )

    store: str | None = None
    routes_file: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    read_only: bool = False
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    request_timeout: float = Field(default=30.0, gt=0)
    retry_after: int = Field(default=1, ge=0)
    drain_timeout: float = Field(default=30.0, ge=0)
    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1)
    max_wait_ms: float = Field(default=DEFAULT_MAX_WAIT_MS, ge=0)
    max_queue_size: int = Field(default=DEFAULT_MAX_QUEUE_SIZE, ge=1)
    memory_trim_interval: float = Field(default=1.0, ge=0)
    max_queue_cost: int = Field(
        default=DEFAULT_MAX_QUEUE_COST, ge=MAX_TEXT_COST + TEXT_COST_OVERHEAD
    )
    encoder_threads: int | None = Field(default=None, ge=1, le=MAX_THREADS)
    encoder_spin: bool = False
    log_level: str = "info"
    auth_reads: bool = False
    allowed_hosts: tuple[str, ...] = ()
    routes_page_size: int = Field(default=1000, ge=1)
    max_batch_cost: int = Field(default=131_072, ge=1024)
    max_batches_in_flight: int = Field(default=2, ge=1)
    batch_chunk_cost: int = Field(default=8192, ge=1)
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    keep_alive_timeout: int = Field(default=5, ge=1)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_client: int = Field(default=100, ge=1)
    rate_limit: float | None = Field(default=None, gt=0)
    rate_burst: int = Field(default=50, ge=1)
    console: bool = True
    store_poll_interval: float = Field(default=1.0, gt=0, le=threading.TIMEOUT_MAX)

    @field_validator("store")
    @classmethod
    def _store_named_so(cls, store: str | None) -> str | None:
        # Refused here, before a log line could print it (a server named another way
        # than postgresql:// is not redacted): the lifespan refused it only at start.
        if store:
            check_store_path(store)
        return store

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        # A name no Host header can carry would never match: the service would refuse
        # the very clients it was told to answer, with nothing said at start.
        for host in hosts:
            if not host.strip() or not set(host.strip()) <= _HOST_CHARACTERS:
                msg = (
                    f"{host!r} is not a host name: a Host header carries ASCII letters, "
                    "digits, '-' and '.', or an address (a non-ASCII name in its "
                    "punycode form, xn--...)"
                )
                raise ValueError(msg)
            wildcard = host.strip().startswith("*.")
            domain = host.strip()[2:] if wildcard else host.strip()
            if "*" in domain or (wildcard and "" in domain.split(".")):
                # Matched literally, a '*' would match no Host a client sends: the
                # service would refuse every client it was told to answer ('*.' would
                # answer any name ending in a dot, an attacker's included).
                msg = (
                    f"{host!r}: '*' is only read as a leading '*.' before a domain (any "
                    "name under it, as in '*.example.com'); give each name otherwise"
                )
                raise ValueError(msg)
        return hosts

    @field_validator("rate_burst")
    @classmethod
    def _burst_of_a_limit(cls, burst: int, info: ValidationInfo) -> int:
        # Given without a limit it was ignored: no limit applied, while the operator
        # thought one was set. (Only a burst given, and not the default: settings
        # dumped and read back name every field.)
        default = cls.model_fields["rate_burst"].default
        if burst != default and "rate_limit" in info.data and info.data["rate_limit"] is None:
            raise ValueError("needs --rate-limit (rate_limit): no rate limit is set")
        return burst

    @property
    def storage_options(self) -> dict[str, Any]:
        """What :meth:`AdaptiveRouter.open` passes to the store named by ``store``."""
        if not self.store or is_database_url(self.store):
            return {}
        return {"poll_interval": self.store_poll_interval}

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() are what logs print: a PostgreSQL URL's password stays out
        # (the API key is a SecretStr already). model_dump() gives the value as set.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "store" and value else value

    @classmethod
    def from_env(cls, **values: object) -> ServerSettings:
        """Settings from keyword values, the API key from ``SYNAPTOROUTE_API_KEY`` if unset."""
        # Set but empty is kept (not taken as unset), so check_safe refuses it.
        if values.get("api_key") is None and API_KEY_ENV in os.environ:
            values["api_key"] = os.environ[API_KEY_ENV]
        return cls.model_validate(values)

    @property
    def changes_enabled(self) -> bool:
        """Whether route-changing endpoints exist at all."""
        return not self.read_only

    def check_key(self) -> None:
        """Refuse an API key that could not work: set but empty (or blank), which would
        otherwise read as none and leave route changes open, or with characters that
        an HTTP header cannot carry as such (non-ASCII, spaces, control characters),
        which no client could ever present.

        Also refuses ``auth_reads`` without a key: the reads it asks to protect would be
        open.

        Raises:
            InvalidInputError: the key is set and blank, or not printable ASCII; or
                ``auth_reads`` with no key.
        """
        if self.api_key is None:
            if self.auth_reads:
                msg = f"--auth-reads (auth_reads) needs an API key: set {API_KEY_ENV}"
                raise InvalidInputError(msg)
            return
        key = self.api_key.get_secret_value()
        if not key.strip():
            msg = f"{API_KEY_ENV} is set but empty; set a real token or unset it"
            raise InvalidInputError(msg)
        if not all("!" <= c <= "~" for c in key):
            msg = (
                f"{API_KEY_ENV} must be printable ASCII without spaces (it travels in an "
                'HTTP header); generate one with: python -c "import secrets; '
                'print(secrets.token_urlsafe(32))"'
            )
            raise InvalidInputError(msg)

    def check_safe(self) -> None:
        """Refuse an exposed service that anyone could change.

        Raises:
            InvalidInputError: the API key is set but blank or not printable ASCII, or
                ``auth_reads`` has none (:meth:`check_key`), or
                changes are enabled, no API key is set, and ``host`` is not a loopback
                address.
        """
        self.check_key()
        if self.changes_enabled and self.api_key is None and not is_loopback(self.host):
            msg = (
                f"refusing to listen on {self.host!r} with route changes enabled and no API "
                f"key: set {API_KEY_ENV}, pass --read-only, or listen on 127.0.0.1"
            )
            raise InvalidInputError(msg)


def whole_number(text: str) -> int:
    """An option's whole number: ASCII digits, an optional ``-`` (the type of every
    integer option of the command line).

    ``int()`` also reads "8_000" and other scripts' digits ("٨٠٠٠"), which the
    environment variables (``SYNAPTOROUTE_PORT``, ``SYNAPTOROUTE_THREADS``) refuse:
    a flag and its variable now agree.
    """
    digits = text.strip().removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(text)
    return int(text)


# argparse names the type in its message: "invalid int value: '8_000'", as before.
whole_number.__name__ = "int"


#: ``serve`` options for the hardening settings: (flag, field, type, help).
_LIMIT_OPTIONS: list[tuple[str, str, type, str]] = [
    ("--max-batch-cost", "max_batch_cost", int, "413 for a /route/batch costing more"),
    ("--max-queue-cost", "max_queue_cost", int, "503 once queued texts cost more"),
    ("--memory-trim-interval", "memory_trim_interval", float, "seconds; 0: never trim"),
    ("--max-batches-in-flight", "max_batches_in_flight", int, "429 for one more batch"),
    ("--header-timeout", "header_timeout", float, "seconds to receive a request's headers"),
    ("--body-timeout", "body_timeout", float, "seconds to receive a request's body"),
    ("--keep-alive-timeout", "keep_alive_timeout", int, "seconds an idle connection stays"),
    ("--max-header-bytes", "max_header_bytes", int, "431 above this"),
    ("--max-connections", "max_connections", int, "503 for one more connection"),
    ("--max-connections-per-client", "max_connections_per_client", int, "per client address"),
    ("--rate-limit", "rate_limit", float, "requests a second per client address (429 above)"),
    ("--rate-burst", "rate_burst", int, "requests a client may send at once"),
    ("--routes-page-size", "routes_page_size", int, "routes in one GET /routes page"),
    (
        "--store-poll-interval",
        "store_poll_interval",
        float,
        "seconds between checks of a SQLite store for other processes' changes",
    ),
]


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the service's limits and read protection to a ``serve`` parser."""
    fields = ServerSettings.model_fields
    for flag, field, kind, text in _LIMIT_OPTIONS:
        default = fields[field].default
        suffix = "off" if default is None else default
        kind_of = whole_number if kind is int else kind
        parser.add_argument(flag, dest=field, type=kind_of, help=f"{text} (default {suffix})")
    parser.add_argument(
        "--auth-reads",
        action="store_true",
        help="route reads (GET /routes, /routes/NAME, /threshold, /negatives) need the API key too",
    )
    parser.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        metavar="NAME",
        help="a Host name a keyless service answers besides loopback names (repeatable)",
    )


def limit_flags() -> dict[str, str]:
    """:func:`add_limit_arguments`' options by the settings field each sets."""
    return {field: flag for flag, field, _, _ in _LIMIT_OPTIONS} | {
        "auth_reads": "--auth-reads",
        "allowed_hosts": "--allowed-host",
    }


def limit_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that :func:`add_limit_arguments`' options were given."""
    values: dict[str, Any] = {
        field: getattr(args, field)
        for _, field, _, _ in _LIMIT_OPTIONS
        if getattr(args, field, None) is not None
    }
    values["auth_reads"] = bool(getattr(args, "auth_reads", False))
    values["allowed_hosts"] = tuple(getattr(args, "allowed_hosts", None) or ())
    return values
