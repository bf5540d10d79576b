"""The live dashboard: a small read-only web page of running pools, on 127.0.0.1 only.

::

    browser ──GET /?token=…──────────> aiohttp, in its own thread and event loop
            <── page (state inlined) ─┤   guard: GET/HEAD only, token, Host is loopback
            ──GET /api/state?token=…─>│   LiveView.state(): counters, timeline, failures
            <── JSON, every second ───┤   a tick every second: LiveView.tick() reads the
                                          event logs' counters into a short history

Security, as Jupyter does it: nothing listens unless asked; the socket is bound to 127.0.0.1;
every request needs the random token printed with the URL (else 403); the Host header must
name the loopback address (no DNS rebinding); there is no endpoint that changes anything.

Why aiohttp: a well-kept asyncio server (aio-libs; the server of Ray's own dashboard) that
runs in one background thread with a clean start and stop, serves static files, and is often
installed already (``ray[default]`` needs it). Charts: uPlot (MIT, 50 kB, no dependencies,
drawn on a canvas: fast for second-by-second series), shipped in ``static/``.
"""

from __future__ import annotations

import asyncio
import html
import json
import secrets
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError
from .live import TICK_SECONDS, LiveView

STATIC = Path(__file__).parent / "static"
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 10.0
_LOOPBACK_NAMES = ("127.0.0.1", "localhost")

_global: Dashboard | None = None
_global_lock = threading.Lock()


def _aiohttp() -> Any:
    try:
        from aiohttp import web
    except ImportError as exc:
        raise BackendUnavailableError(
            'the dashboard needs aiohttp: pip install "forkjoin[dashboard]"'
        ) from exc
    return web


class Dashboard:
    """A running dashboard. ``url`` has the token; ``close()`` (or ``with``) stops it."""

    def __init__(self, view: LiveView, port: int = 0, quiet: bool = False) -> None:
        web = _aiohttp()
        self.view = view
        self.token = secrets.token_urlsafe(24)
        self.port = 0
        self._web = web
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self.state_requests = 0  # state fetches served (the page's polls): for benchmarks
        self._thread = threading.Thread(
            target=self._serve, args=(port,), name="fj-dashboard", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS) or self._error is not None:
            self.close()
            raise RuntimeError(
                f"the dashboard could not start on {HOST}:{port} ({self._error}); "
                f"pick another port or leave port=0 for a free one"
            ) from self._error
        if not quiet:
            print(f"forkjoin dashboard: {self.url}", file=sys.stderr, flush=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.url
        return f"<forkjoin Dashboard {state}>"

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the server thread -----------------------------------------------------------------------

    def _serve(self, port: int) -> None:
        web = self._web
        loop = self._loop
        asyncio.set_event_loop(loop)
        runner = None
        ticker = None
        try:
            app = web.Application(middlewares=[self._guard])
            app.router.add_get("/", self._page)
            app.router.add_get("/api/state", self._state)
            app.router.add_static("/static/", STATIC)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, HOST, port)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
            self.view.tick()
            ticker = loop.create_task(self._tick())
        except BaseException as exc:  # reported by __init__, in the caller's thread
            self._error = exc
        self._ready.set()
        try:
            if self._error is None:
                loop.run_forever()
        finally:
            if ticker is not None:
                ticker.cancel()
            if runner is not None:
                loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.view.tick()
            except Exception as exc:  # a log read failed: show the rest, say why once
                print(f"forkjoin dashboard: {exc!r}", file=sys.stderr)

    def _allowed(self, request: Any) -> bool:
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("token "):
            given = header[len("token ") :]
        return secrets.compare_digest(given.encode(), self.token.encode())

    @property
    def _guard(self) -> Any:
        web = self._web

        @web.middleware
        async def guard(request: Any, handler: Any) -> Any:
            if request.method not in ("GET", "HEAD"):
                return web.Response(status=405, text="the dashboard is read-only\n")
            if request.host.rsplit(":", 1)[0] not in _LOOPBACK_NAMES:
                return web.Response(status=403, text="forbidden: not a loopback host\n")
            if not self._allowed(request):
                return web.Response(
                    status=403, text="forbidden: open the URL with the token that was printed\n"
                )
            response = await handler(request)
            response.headers["Cache-Control"] = "no-store"
            response.headers["Referrer-Policy"] = "no-referrer"  # the token stays here
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response

        return guard

    async def _page(self, request: Any) -> Any:
        page = (STATIC / "dashboard.html").read_text()
        state = json.dumps(self.view.state()).replace("</", "<\\/")
        page = page.replace("__STATE__", state).replace("__TOKEN__", html.escape(self.token))
        return self._web.Response(text=page, content_type="text/html")

    async def _state(self, request: Any) -> Any:
        self.state_requests += 1
        return self._web.json_response(self.view.state())

    # -- stopping --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving (idempotent); returns once the socket is closed."""
        global _global
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT_SECONDS)
        with _global_lock:
            if _global is self:
                _global = None


def active() -> Dashboard | None:
    """The process-wide dashboard (``forkjoin.dashboard()``) if it is running."""
    board = _global
    return board if board is not None and not board._closed else None


def start_dashboard(
    logs: Iterable[Any] | None = None,
    *,
    port: int = 0,
    title: str = "forkjoin",
    quiet: bool = False,
) -> Dashboard:
    """A dashboard of the given event logs (None: every pool in this process)."""
    return Dashboard(LiveView(None if logs is None else list(logs), title), port, quiet)


def dashboard(port: int = 0, *, quiet: bool = False) -> Dashboard:
    """Serve a live page of every pool in this process (``fj.map``'s and each ``Pool``'s):
    workers, throughput and ETA, a task timeline, failures with tracebacks. Bound to
    127.0.0.1; the printed URL carries a random token. Calling it again returns the running
    one; ``close()`` stops it. Needs ``pip install "forkjoin[dashboard]"``."""
    global _global
    with _global_lock:
        if _global is not None and not _global._closed:
            return _global
    board = start_dashboard(None, port=port, title="forkjoin", quiet=quiet)
    with _global_lock:
        _global = board
    return board
