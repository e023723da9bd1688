"""A real uvicorn server in a thread, shared by the service tests that need sockets."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

LIMIT_S = 60.0  # a hang bound for start and stop; reaching it fails the test


class ThreadedServer:
    """uvicorn serving ``app`` in a thread, on a free port of 127.0.0.1.

    Args:
        app: the ASGI application (its lifespan runs: the model loads first).
        config: more ``uvicorn.Config`` options (``http``, ``timeout_keep_alive``...).
    """

    def __init__(self, app: Any, **config: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        options = {"log_level": "warning", "lifespan": "on", **config}
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        deadline = time.monotonic() + LIMIT_S
        while not self.server.started:  # bounded: only guards against a hang
            if not self.thread.is_alive() or time.monotonic() > deadline:
                msg = "the server did not start"
                raise RuntimeError(msg)
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop uvicorn and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(LIMIT_S)
        self.sock.close()
