"""Hostile servers on 127.0.0.1 that SiteServer cannot play: one that trickles its answer a byte a second, one
that accepts connections and never answers. Both count their connections and stop cleanly."""

from __future__ import annotations

import socket
import threading


class _RawServer:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.stopped = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"{type(self).__name__}-{self.port}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self._thread.join(5)
        self.sock.close()
        with self._lock:
            for conn in self._conns:
                conn.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            self.accepted(conn)

    def accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError


class SilentServer(_RawServer):
    """Accepts every connection, reads nothing, answers nothing, closes nothing (until stopped)."""

    def accepted(self, conn: socket.socket) -> None:
        pass


class TrickleServer(_RawServer):
    """Answers every request with a 200 and a 2000-byte body, sent one byte a second."""

    def __init__(self, content_type: str = "text/html") -> None:
        super().__init__()
        self.content_type = content_type
        self.bytes_sent = 0

    def accepted(self, conn: socket.socket) -> None:
        threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\nContent-Length: 2000\r\n"
                         f"\r\n".encode())
            body = b"<html><body>" + b"x" * 1988
            for n in range(len(body)):
                if self.stopped.wait(1.0):  # one byte a second, until stopped
                    return
                conn.sendall(body[n:n + 1])
                with self._lock:
                    self.bytes_sent += 1
        except OSError:
            return  # the client gave up: that is the point
