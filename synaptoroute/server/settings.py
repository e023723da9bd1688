"""Settings of the HTTP service, and the start-up safety check."""

from __future__ import annotations

import ipaddress
import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ..batching import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_SIZE, DEFAULT_MAX_WAIT_MS
from ..exceptions import InvalidInputError

__all__ = ["API_KEY_ENV", "DEFAULT_MAX_BODY_BYTES", "ServerSettings", "is_loopback"]

#: The environment variable that holds the bearer token for route changes.
API_KEY_ENV = "SYNAPTOROUTE_API_KEY"
DEFAULT_MAX_BODY_BYTES = 1 << 20


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
        encoder_threads: ONNX Runtime threads (default: the CPU quota, see ``synaptoroute._cpu``).
        encoder_spin: let ONNX Runtime threads spin between batches. Off by default:
            spinning takes the cores that the event loop needs to parse requests
            (measured in ``benchmarks/http_service.py``).
        log_level: uvicorn's log level.
        console: serve the browser console at ``/console`` (read-only without the API key).

    Example:
        >>> ServerSettings(host="0.0.0.0", api_key="s3cret").changes_enabled
        True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    encoder_threads: int | None = Field(default=None, ge=1)
    encoder_spin: bool = False
    log_level: str = "info"
    console: bool = True

    @classmethod
    def from_env(cls, **values: object) -> ServerSettings:
        """Settings from keyword values, the API key from ``SYNAPTOROUTE_API_KEY`` if unset."""
        if values.get("api_key") is None and os.environ.get(API_KEY_ENV):
            values["api_key"] = os.environ[API_KEY_ENV]
        return cls.model_validate(values)

    @property
    def changes_enabled(self) -> bool:
        """Whether route-changing endpoints exist at all."""
        return not self.read_only

    def check_safe(self) -> None:
        """Refuse an exposed service that anyone could change.

        Raises:
            InvalidInputError: changes are enabled, no API key is set, and ``host``
                is not a loopback address.
        """
        if self.api_key is not None and not self.api_key.get_secret_value():
            msg = f"{API_KEY_ENV} is set but empty; set a real token or unset it"
            raise InvalidInputError(msg)
        if self.changes_enabled and self.api_key is None and not is_loopback(self.host):
            msg = (
                f"refusing to listen on {self.host!r} with route changes enabled and no API "
                f"key: set {API_KEY_ENV}, pass --read-only, or listen on 127.0.0.1"
            )
            raise InvalidInputError(msg)
