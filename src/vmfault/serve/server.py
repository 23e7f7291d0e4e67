"""`vmfault serve`: the dashboard on 127.0.0.1, served by uvicorn in a thread of its own.

`LiveServer(dbs).start()` opens the databases read-only, binds 127.0.0.1 (a UsageError
names a port in use), and serves until `stop()`; its `url` carries a random token, as
Jupyter's does. The thread is a daemon and `stop()` ends it: the event streams say `bye`
after one last read of the databases, and uvicorn closes every connection. The campaign
process of `campaign run --serve` serves the same way while it runs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import uvicorn

from vmfault.errors import UsageError
from vmfault.serve.app import Campaign, Hub, create_app
from vmfault.serve.watch import CampaignWatch
from vmfault.stats import IntervalMethod

__all__ = ["DEFAULT_PORT", "HOST", "PORT_TRIES", "LiveServer"]

HOST = "127.0.0.1"
"""The only address the dashboard listens on."""
DEFAULT_PORT = 8765
"""The first port tried when none is given; the next PORT_TRIES - 1 follow if it is taken."""
PORT_TRIES = 20
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
"""How long `stop()` waits for the last update to reach the pages and the thread to end."""

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def _bind(port: int | None) -> socket.socket:
    """A listening socket on 127.0.0.1: `port`, or the first free one from DEFAULT_PORT."""
    candidates = [port] if port is not None else [DEFAULT_PORT + i for i in range(PORT_TRIES)]
    for candidate in candidates:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, candidate))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and port is None:
                continue
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {candidate} on {HOST} is in use",
                    hint="choose another with --port, or --port 0 for any free one",
                ) from None
            raise UsageError(f"cannot listen on {HOST}:{candidate}: {exc.strerror}") from None
        sock.listen(64)
        sock.set_inheritable(False)
        return sock
    raise UsageError(
        f"ports {candidates[0]} to {candidates[-1]} on {HOST} are all in use",
        hint="choose one with --port, or --port 0 for any free one",
    )


class LiveServer:
    """The dashboard of one campaign database (or two, compared), served in a thread.

    `dbs` as the user named them (they label replay commands). Use as a context manager,
    or `start()` and `stop()`.
    """

    def __init__(
        self,
        dbs: Sequence[Path],
        *,
        port: int | None = None,
        confidence: float = 0.95,
        method: IntervalMethod = IntervalMethod.WILSON,
        token: str | None = None,
    ) -> None:
        if not 1 <= len(dbs) <= 2:
            raise UsageError(
                f"{len(dbs)} databases given; the dashboard shows one campaign or compares two",
                hint="give one database, or two to compare them",
            )
        if port is not None and not 0 <= port <= 65535:
            raise UsageError(f"port {port} does not exist", hint="give a port from 1 to 65535")
        self.dbs = [Path(db) for db in dbs]
        self.requested_port = port
        self.confidence = confidence
        self.method = method
        self.token = token or secrets.token_urlsafe(24)
        self.port = 0
        self._watches: list[CampaignWatch] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hub: Hub | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """The address to open: http://127.0.0.1:PORT/?token=TOKEN."""
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def start(self) -> Self:
        """Open the databases, bind the port and serve; UsageError for a missing or foreign
        database or a port in use."""
        try:
            for db in self.dbs:
                if not db.is_file():
                    raise UsageError(
                        f"no campaign database at {db}", hint="give the path `campaign run` used"
                    )
                self._watches.append(
                    CampaignWatch(
                        db, db_label=str(db), confidence=self.confidence, method=self.method
                    )
                )
            for watch in self._watches:
                watch.store.campaign_info()  # a foreign or damaged file fails here, not later
            sock = _bind(self.requested_port)
            self.port = int(sock.getsockname()[1])
            campaigns = [
                Campaign(key, str(db), watch)
                for key, db, watch in zip("ab", self.dbs, self._watches, strict=False)
            ]
            app = create_app(
                campaigns,
                token=self.token,
                port=self.port,
                confidence=self.confidence,
                method=self.method,
                on_ready=self._on_ready,
            )
            config = uvicorn.Config(
                app,
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="on",
                http="h11",
                ws="none",
                loop="asyncio",
                timeout_graceful_shutdown=3,
                server_header=False,
            )
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(
                target=self._serve, args=(sock,), name="vmfault-serve", daemon=True
            )
            self._thread.start()
            if not self._ready.wait(START_TIMEOUT_S) or self._failure is not None:
                raise UsageError(f"the dashboard did not start: {self._failure or 'timeout'}")
        except BaseException:
            self.stop()
            raise
        logger.info("serving %s at %s:%d", ", ".join(map(str, self.dbs)), HOST, self.port)
        return self

    def _on_ready(self, hub: Hub) -> None:
        self._hub = hub
        self._loop = asyncio.get_running_loop()
        self._ready.set()

    def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            self._server.run(sockets=[sock])
        except BaseException as exc:  # reported by start(), or logged once serving
            self._failure = exc
            logger.exception("the dashboard server failed")
        finally:
            sock.close()
            self._ready.set()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C interrupts the wait)."""
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """Send the pages one last update, end their streams, stop serving, close the
        databases; idempotent."""
        thread, loop, hub = self._thread, self._loop, self._hub
        if thread is not None and thread.is_alive() and loop is not None and hub is not None:
            try:
                asyncio.run_coroutine_threadsafe(hub.finish(), loop).result(STOP_TIMEOUT_S)
            except Exception:  # the streams end with the server all the same
                logger.warning("the dashboard's last update did not complete", exc_info=True)
        if self._server is not None:
            self._server.should_exit = True
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)
            if thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                thread.join(STOP_TIMEOUT_S)
        self._thread = self._server = self._loop = self._hub = None
        for watch in self._watches:
            watch.close()
        self._watches = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
