"""Framing and pickling for the process backend's socket between caller and worker.

A frame is a 12-byte header (payload length, number of file descriptors) followed by that many
bytes of pickle. File descriptors (shared-memory segments, see ``buffers.py``) ride along as
``SCM_RIGHTS`` with the header's bytes, so a reader has them by the time it parses the header;
it keeps them in arrival order and gives each frame as many as its header says. The caller's
side reads and writes without blocking (one manager thread serves every worker, so it must never
wait on one of them); the worker's side blocks, since it has nothing else to do.
"""

from __future__ import annotations

import array
import io
import os
import pickle
import socket
import struct
from collections import deque
from typing import Any

HEADER = struct.Struct("<QI")  # payload length, number of file descriptors sent with the header
# At most this many fds in one frame (the kernel's SCM_MAX_FD is 253 per sendmsg).
MAX_FDS_PER_FRAME = 200
_ANCILLARY_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * 4)
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


def loads(data: bytes | bytearray | memoryview) -> Any:
    return pickle.loads(data)


Frame = tuple[bytes | bytearray, list[int]]


def _take_fds(ancillary: list[tuple[int, int, bytes]], into: deque[int]) -> None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            into.extend(fds)


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class FrameReader:
    """Accumulates bytes (and fds) from a non-blocking socket and yields whole frames.

    The receiver owns the fds of each frame it returns and must close them.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._fds: deque[int] = deque()  # received, not yet given to a frame
        self._large: bytearray | None = None  # a big frame being received in place
        self._large_view: memoryview | None = None
        self._large_filled = 0
        self._large_fds: list[int] = []

    def read(self, sock: socket.socket) -> list[Frame]:
        """Every complete frame available now. Raises EOFError when the peer has closed."""
        frames: list[Frame] = []
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
                    frames.append((self._large, self._large_fds))
                    self._large = self._large_view = None
                    self._large_fds = []
                continue
            try:
                data, ancillary, flags, _ = sock.recvmsg(READ_SIZE, _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return frames
            if ancillary:
                _take_fds(ancillary, self._fds)
            if flags & socket.MSG_CTRUNC:
                raise EOFError("file descriptors were lost in transit (MSG_CTRUNC)")
            if not data:
                raise EOFError("connection closed")
            self._buffer += data
            self._split(frames)
            if len(data) < READ_SIZE and self._large is None:
                return frames

    def _split(self, frames: list[Frame]) -> None:
        buffer = self._buffer
        while len(buffer) >= HEADER.size:
            size, nfds = HEADER.unpack_from(buffer)
            end = HEADER.size + size
            if len(buffer) >= end or size > READ_SIZE:
                if len(self._fds) < nfds:
                    raise EOFError("a frame arrived without its file descriptors")
                fds = [self._fds.popleft() for _ in range(nfds)]
            if len(buffer) >= end:
                frames.append((bytes(buffer[HEADER.size : end]), fds))
                del buffer[:end]
            elif size > READ_SIZE:
                large = bytearray(size)
                have = len(buffer) - HEADER.size
                large[:have] = buffer[HEADER.size :]
                buffer.clear()
                self._large, self._large_view, self._large_filled = large, memoryview(large), have
                self._large_fds = fds
                return
            else:
                return

    def close(self) -> None:
        """Close fds received but never handed out (the peer died mid-frame)."""
        close_fds(list(self._fds) + self._large_fds)
        self._fds.clear()
        self._large_fds = []


class FrameWriter:
    """Queues frames for a non-blocking socket and sends as much as the socket takes.

    A frame's fds are duplicated when queued, so the sender may close or reuse its own
    descriptors at once; the duplicates are closed when sent (the kernel holds its own reference
    from then on) or when the queue is cleared.
    """

    def __init__(self) -> None:
        self._chunks: deque[tuple[memoryview, list[int]]] = deque()

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def add(self, payload: bytes, fds: list[int] | None = None) -> int:
        owned = [os.dup(fd) for fd in fds] if fds else []
        header = HEADER.pack(len(payload), len(owned))
        self._chunks.append((memoryview(header + payload), owned))
        return len(payload) + HEADER.size

    def flush(self, sock: socket.socket) -> None:
        """Send queued bytes until the socket would block. Raises OSError if the peer is gone."""
        chunks = self._chunks
        while chunks:
            chunk, fds = chunks[0]
            try:
                if fds:
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    sent = sock.sendmsg([chunk], rights)
                    close_fds(fds)
                    fds = []
                else:
                    sent = sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            if sent == len(chunk):
                chunks.popleft()
            else:
                chunks[0] = (chunk[sent:], fds)
                return

    def clear(self) -> None:
        for _, fds in self._chunks:
            close_fds(fds)
        self._chunks.clear()


# -- the worker's blocking side ------------------------------------------------------------------


def recv_frame(sock: socket.socket) -> Frame:
    """Blocking read of one frame and its fds. Raises EOFError when the caller has gone."""
    header = bytearray()
    fds: deque[int] = deque()
    while len(header) < HEADER.size:
        data, ancillary, flags, _ = sock.recvmsg(HEADER.size - len(header), _ANCILLARY_SIZE)
        if ancillary:
            _take_fds(ancillary, fds)
        if flags & socket.MSG_CTRUNC:
            raise EOFError("file descriptors were lost in transit (MSG_CTRUNC)")
        if not data:
            raise EOFError("connection closed")
        header += data
    size, nfds = HEADER.unpack(header)
    if len(fds) != nfds:
        close_fds(list(fds))
        raise EOFError(f"expected {nfds} file descriptors with a frame, got {len(fds)}")
    return _recv_exact(sock, size), list(fds)


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


def send_frame(sock: socket.socket, payload: bytes, fds: list[int] | None = None) -> None:
    """Blocking write of one frame, with its fds attached to the header."""
    header = HEADER.pack(len(payload), len(fds) if fds else 0)
    if fds:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sent = sock.sendmsg([header], rights)
        if sent < len(header):
            sock.sendall(header[sent:])
        sock.sendall(payload)
    elif len(payload) < 65536:
        sock.sendall(header + payload)
    else:
        sock.sendall(header)
        sock.sendall(payload)


def short_traceback(exc: BaseException) -> str:
    import traceback

    out = io.StringIO()
    traceback.print_exception(exc, file=out)
    return out.getvalue()
