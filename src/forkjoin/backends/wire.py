"""Framing and pickling for the process backend's socket between caller and worker.

A frame is an 8-byte little-endian length followed by that many bytes of pickle. The caller's
side reads and writes without blocking (one manager thread serves every worker, so it must never
wait on one of them); the worker's side blocks, since it has nothing else to do.
"""

from __future__ import annotations

import io
import pickle
import socket
import struct
from collections import deque
from typing import Any

HEADER = struct.Struct("<Q")
PROTOCOL = pickle.HIGHEST_PROTOCOL

# Reads of this size drain a socket in few system calls; larger frames are received in place.
READ_SIZE = 1 << 18


def dumps(obj: Any) -> bytes:
    """Pickle fast with the standard pickler; fall back to cloudpickle for lambdas, closures and
    classes defined in ``__main__`` or a notebook (pickled by value)."""
    try:
        data = pickle.dumps(obj, PROTOCOL)
    except Exception:
        data = b"__main__"
    # Instances of classes defined in the caller's script pickle as a reference to ``__main__``,
    # which a worker cannot resolve (it does not re-run the script): send those by value.
    if b"__main__" in data:
        import cloudpickle

        return cloudpickle.dumps(obj, PROTOCOL)
    return data


def dumps_by_value(obj: Any) -> bytes:
    """cloudpickle straight away: for functions, which standard pickle often sends by a name the
    worker cannot import (``__main__.f``)."""
    import cloudpickle

    return cloudpickle.dumps(obj, PROTOCOL)


def loads(data: bytes | bytearray | memoryview) -> Any:
    return pickle.loads(data)


class FrameReader:
    """Accumulates bytes from a non-blocking socket and yields whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._large: bytearray | None = None  # a big frame being received in place
        self._large_view: memoryview | None = None
        self._large_filled = 0

    def read(self, sock: socket.socket) -> list[bytes | bytearray]:
        """Every complete frame available now. Raises EOFError when the peer has closed."""
        frames: list[bytes | bytearray] = []
        while True:
            if self._large is not None:
                assert self._large_view is not None
                try:
                    n = sock.recv_into(self._large_view[self._large_filled :])
                except (BlockingIOError, InterruptedError):
                    return frames
                if n == 0:
                    raise EOFError("connection closed")
                self._large_filled += n
                if self._large_filled == len(self._large):
                    frames.append(self._large)
                    self._large = self._large_view = None
                continue
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return frames
            if not data:
                raise EOFError("connection closed")
            self._buffer += data
            self._split(frames)
            if len(data) < READ_SIZE and self._large is None:
                return frames

    def _split(self, frames: list[bytes | bytearray]) -> None:
        buffer = self._buffer
        while len(buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer)
            end = HEADER.size + size
            if len(buffer) >= end:
                frames.append(bytes(buffer[HEADER.size : end]))
                del buffer[:end]
            elif size > READ_SIZE:
                large = bytearray(size)
                have = len(buffer) - HEADER.size
                large[:have] = buffer[HEADER.size :]
                buffer.clear()
                self._large, self._large_view, self._large_filled = large, memoryview(large), have
                return
            else:
                return


class FrameWriter:
    """Queues frames for a non-blocking socket and sends as much as the socket takes."""

    def __init__(self) -> None:
        self._chunks: deque[memoryview] = deque()

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def add(self, payload: bytes) -> int:
        self._chunks.append(memoryview(HEADER.pack(len(payload)) + payload))
        return len(payload) + HEADER.size

    def flush(self, sock: socket.socket) -> None:
        """Send queued bytes until the socket would block. Raises OSError if the peer is gone."""
        chunks = self._chunks
        while chunks:
            try:
                sent = sock.send(chunks[0])
            except (BlockingIOError, InterruptedError):
                return
            if sent == len(chunks[0]):
                chunks.popleft()
            else:
                chunks[0] = chunks[0][sent:]
                return

    def clear(self) -> None:
        self._chunks.clear()


# -- the worker's blocking side ------------------------------------------------------------------


def recv_frame(sock: socket.socket) -> bytearray:
    """Blocking read of one frame. Raises EOFError when the caller has gone."""
    header = _recv_exact(sock, HEADER.size)
    (size,) = HEADER.unpack(header)
    return _recv_exact(sock, size)


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        n = sock.recv_into(view[filled:])
        if n == 0:
            raise EOFError("connection closed")
        filled += n
    return buffer


def send_frame(sock: socket.socket, payload: bytes) -> None:
    """Blocking write of one frame."""
    if len(payload) < 65536:
        sock.sendall(HEADER.pack(len(payload)) + payload)
    else:
        sock.sendall(HEADER.pack(len(payload)))
        sock.sendall(payload)


def short_traceback(exc: BaseException) -> str:
    import traceback

    out = io.StringIO()
    traceback.print_exception(exc, file=out)
    return out.getvalue()
