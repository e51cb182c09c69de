"""A TCP gate in front of a server: clients connect to the gate, which relays to the server, and
an outage closes the gate (its port refuses, every open connection is reset) until it opens
again. A server's outage as its clients see it, while the server keeps its state (moto's S3
server keeps its objects only in memory: stopping it would lose them)."""

from __future__ import annotations

import socket
import struct
import threading
from contextlib import suppress

# SO_LINGER of 0: close() sends a reset, as a crashed server's host does, not a clean FIN.
RESET = struct.pack("ii", 1, 0)


class TcpGate:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port = host, target_port
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        with socket.socket() as probe:  # a free port, kept across outages
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """The outage: the port stops listening and every relayed connection is reset."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
            listener.close()
        for connection in connections:
            with suppress(OSError):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection((self.host, self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # closed meanwhile
                    client.close()
                    server.close()
                    return
                self._connections |= {client, server}
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, client: socket.socket, server: socket.socket) -> None:
        """Relay both ways until both ends are done, then close both."""
        upstream = threading.Thread(target=_relay, args=(client, server), daemon=True)
        upstream.start()
        _relay(server, client)
        upstream.join()
        with self._lock:
            self._connections -= {client, server}
        client.close()
        server.close()


def _relay(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(1 << 16):
            sink.sendall(data)
    with suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
