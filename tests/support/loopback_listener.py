"""A loopback TCP listener that records every connection made to it.

The reliability suite points hostile key URIs at it (another port of 127.0.0.1, userinfo tricks, plain
http): a connection recorded here is an outbound request the controller should never have made.
Whatever connects is read briefly (so the first bytes show what was asked) and then closed.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Connection:
    peer: tuple[str, int]
    first_bytes: bytes


class LoopbackListener:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self._socket.listen(64)
        self._socket.settimeout(0.2)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="loopback-listener", daemon=True)

    @property
    def origin(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._connections)

    def wait_for(self, count: int, *, timeout: float = 10.0) -> list[Connection]:
        """The connections once ``count`` have been accepted (the accepting thread may lag behind a client
        that already got its answer), or those there are after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.connections) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.connections

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, peer = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # Recorded as soon as it is accepted (a test may look right after its client got an answer
            # elsewhere), then completed with the first bytes it sent.
            with self._lock:
                index = len(self._connections)
                self._connections.append(Connection(peer, b""))
            with client:
                client.settimeout(0.5)
                try:
                    first = client.recv(512)
                except OSError:
                    first = b""
            with self._lock:
                self._connections[index] = Connection(peer, first)

    def __enter__(self) -> LoopbackListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._socket.close()
