"""The dashboard's ASGI application (Starlette): pages, the JSON API, the event stream.

`create_app(campaigns, token=..., port=...)` serves one campaign database (key `a`) or two
compared (`a` and `b`). Every request needs the token: in the query (`?token=`; a page
opened so trades it for a cookie and drops it from the address), in an
`Authorization: Bearer` header, or in the cookie; anything else is refused (403), the
style sheets, script and event stream included. Requests must name 127.0.0.1 or
localhost as their host (no DNS rebinding). Every response carries a
Content-Security-Policy that allows nothing but this origin.

Live updates: while a page listens on `/events` (server-sent events), one task per
campaign watches its database (`CampaignWatch.poll`: two `stat`s, then `PRAGMA
data_version` only if they moved) and, when records land, sends each listener the
sections of the page whose HTML changed. Nothing polls the database while no one listens;
the API reads the store when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookies
import importlib.resources
import json
import logging
import secrets
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmfault.classify import Outcome
from vmfault.report.data import replay_command
from vmfault.report.html import REPORT_CSS
from vmfault.report.reactions import status_json
from vmfault.serve.activity import Activity, campaign_activity
from vmfault.serve.pages import (
    Links,
    comparison_fragments,
    comparison_page,
    dashboard_fragments,
    dashboard_page,
    error_page,
    experiment_page,
    experiments_page,
    fragment_hash,
    not_injected_page,
)
from vmfault.serve.watch import CampaignWatch, Snapshot
from vmfault.stats import IntervalMethod
from vmfault.store import PAGE_MAX_ROWS, ExperimentFilter

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "HEARTBEAT_S",
    "POLL_S",
    "Campaign",
    "Hub",
    "TokenGate",
    "create_app",
    "token_cookie",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""Only this origin's own script, style sheets and event stream; inline style attributes
(the report's colour swatches); nothing from anywhere else."""
POLL_S = 0.5
"""How often a watched database's files are looked at while a page listens (s); at least
four times what reading a change last cost."""
HEARTBEAT_S = 15.0
"""A comment line keeps an idle event stream open this often (s)."""
PAGE_ROWS = 50
"""Rows per page of the experiments table."""
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)
ALLOWED_HOSTS = frozenset({"127.0.0.1", "localhost"})
_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_FILTERS = ("stratum", "outcome", "cause", "machine")


def token_cookie(port: int) -> str:
    """The cookie that carries the token (one per port: cookies ignore ports)."""
    return f"vmfault-token-{port}"


# ---------------------------------------------------------------------------- the gate


class TokenGate:
    """ASGI middleware: refuses every request without the token or with a foreign Host,
    trades a token given in a page's query for a cookie, adds the security headers."""

    def __init__(self, app: ASGIApp, *, token: str, port: int) -> None:
        self.app = app
        self.token = token
        self.cookie = token_cookie(port)

    def _valid(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        headers = Headers(scope=scope)

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        host = headers.get("host", "").rpartition(":")[0] or headers.get("host", "")
        if host.strip("[]").lower() not in ALLOWED_HOSTS:
            response: Response = PlainTextResponse(
                "vmfault serve answers only requests for 127.0.0.1 or localhost\n", 403
            )
            await response(scope, receive, secured)
            return
        query = QueryParams(scope.get("query_string", b"").decode("latin-1"))
        cookies = http.cookies.SimpleCookie()
        with contextlib.suppress(http.cookies.CookieError):
            cookies.load(headers.get("cookie", ""))
        cookie = cookies.get(self.cookie)
        bearer = headers.get("authorization", "")
        by_query = self._valid(query.get("token"))
        allowed = (
            by_query
            or (cookie is not None and self._valid(cookie.value))
            or (bearer.lower().startswith("bearer ") and self._valid(bearer[7:].strip()))
        )
        if not allowed:
            response = PlainTextResponse(
                "forbidden: open the address `vmfault serve` printed (it carries the token), "
                "or send the token as ?token=, an Authorization: Bearer header or the cookie\n",
                403,
            )
            await response(scope, receive, secured)
            return
        path = scope["path"]
        if by_query and scope["method"] == "GET" and not path.startswith(("/api/", "/events")):
            rest = urllib.parse.urlencode([(k, v) for k, v in query.multi_items() if k != "token"])
            response = RedirectResponse(path + (f"?{rest}" if rest else ""), 303)
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
            await response(scope, receive, secured)
            return
        await self.app(scope, receive, secured)


# ---------------------------------------------------------------------------- live feeds


@dataclass
class Feed:
    """The latest snapshot of one watched campaign, and the listeners waiting for the next."""

    watch: CampaignWatch
    snapshot: Snapshot | None = None
    listeners: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self) -> Snapshot:
        """Poll the database (in a thread); wake the listeners if it changed."""
        async with self._lock:
            found = await run_in_threadpool(self.watch.poll)
            if found is not None:
                self.snapshot = found
                woken, self.changed = self.changed, asyncio.Event()
                woken.set()
            if self.snapshot is None:
                self.snapshot = await run_in_threadpool(self.watch.current)
            return self.snapshot

    async def run(self, stopping: asyncio.Event) -> None:
        """Poll while anyone listens, every POLL_S or four times the last read's cost."""
        while not stopping.is_set():
            cost = 0.0 if self.snapshot is None else self.snapshot.cost_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), max(POLL_S, 4 * cost))
            if self.listeners and not stopping.is_set():
                try:
                    await self.refresh()
                except Exception:  # a damaged read must not end the feed; say it and go on
                    logger.exception("reading %s failed", self.watch.path)


@dataclass(frozen=True)
class Campaign:
    """One served campaign database: its key (`a`, `b`), how the user named it, its watch."""

    key: str
    db_label: str
    watch: CampaignWatch

    @property
    def links(self) -> Links:
        """Its pages' addresses."""
        return Links(self.key)


class Hub:
    """The feeds of the served campaigns and the signal that the server stops."""

    def __init__(self, campaigns: Sequence[Campaign]) -> None:
        self.campaigns = {c.key: c for c in campaigns}
        self.feeds = {c.key: Feed(c.watch) for c in campaigns}
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rendered: dict[tuple[str, tuple[int, ...]], tuple[dict[str, str], dict[str, str]]]
        self._rendered = {}
        self._render_lock = threading.Lock()

    def start(self) -> None:
        """Start one watching task per campaign (in the server's event loop)."""
        self._tasks = [asyncio.create_task(feed.run(self.stopping)) for feed in self.feeds.values()]

    async def finish(self) -> None:
        """Read every database once more, let the listeners send it, then end the streams."""
        for feed in self.feeds.values():
            with contextlib.suppress(Exception):
                await feed.refresh()
        self.stopping.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def rendered(
        self, view: str, snapshots: Sequence[Snapshot], render: Callable[[], dict[str, str]]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The fragments of `view` at these snapshots and their hashes, rendered once for
        every listener."""
        key = (view, tuple(s.revision for s in snapshots))
        with self._render_lock:  # listeners' threads: one renders, the others reuse it
            found = self._rendered.get(key)
            if found is None:
                fragments = render()
                found = (fragments, {k: fragment_hash(v) for k, v in fragments.items()})
                for old in [k for k in self._rendered if k[0] == view]:
                    del self._rendered[old]
                self._rendered[key] = found
            return found


# ---------------------------------------------------------------------------- helpers


def _campaign(request: Request, key: str | None = None) -> Campaign:
    hub: Hub = request.app.state.hub
    key = key or request.query_params.get("campaign") or "a"
    found = hub.campaigns.get(key)
    if found is None:
        raise HTTPException(
            404, f"no campaign {key!r} here; this server has {', '.join(hub.campaigns)}"
        )
    return found


def _check_params(request: Request, allowed: Sequence[str]) -> None:
    unknown = sorted(set(request.query_params) - {*allowed, "token"})
    if unknown:
        raise HTTPException(
            400, f"unknown parameter {', '.join(unknown)}; this address takes {', '.join(allowed)}"
        )


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be between {low} and {high}, not {value}")
    return value


def _filter(request: Request) -> ExperimentFilter:
    values = {name: request.query_params.get(name) or None for name in _FILTERS}
    outcome = values["outcome"]
    known = [o.value for o in Outcome]
    if outcome is not None and outcome not in known:
        raise HTTPException(400, f"unknown outcome {outcome!r}; use one of {', '.join(known)}")
    return ExperimentFilter(**values)


def _newest_first(request: Request) -> bool:
    order = request.query_params.get("order") or "id"
    if order not in ("id", "newest"):
        raise HTTPException(400, f"order must be id or newest, not {order!r}")
    return order == "newest"


def _events(view: str, key: str | None = None) -> str:
    return "/events?" + urllib.parse.urlencode({"view": view, **({"campaign": key} if key else {})})


async def _snapshot(campaign: Campaign, request: Request) -> Snapshot:
    hub: Hub = request.app.state.hub
    return await hub.feeds[campaign.key].refresh()


def _compare(request: Request) -> bool:
    return len(request.app.state.hub.campaigns) > 1


# ---------------------------------------------------------------------------- pages


async def index(request: Request) -> Response:
    """The dashboard of the one campaign, or the comparison of two."""
    _check_params(request, ())
    hub: Hub = request.app.state.hub
    if len(hub.campaigns) == 1:
        return await dashboard(request)
    a, b = [await _snapshot(c, request) for c in hub.campaigns.values()]
    page = await run_in_threadpool(
        comparison_page, a.report, b.report, (a.activity, b.activity), events=_events("compare")
    )
    return HTMLResponse(page)


async def dashboard(request: Request) -> Response:
    """One campaign's live dashboard."""
    _check_params(request, ())
    campaign = _campaign(request, request.path_params.get("key"))
    snap = await _snapshot(campaign, request)
    page = await run_in_threadpool(
        dashboard_page,
        snap.report,
        snap.activity,
        campaign.links,
        events=_events("dashboard", campaign.key),
        compare=_compare(request),
    )
    return HTMLResponse(page)


async def experiments(request: Request) -> Response:
    """The experiments table, filtered and paged on the server."""
    _check_params(request, (*_FILTERS, "order", "page"))
    campaign = _campaign(request, request.path_params["key"])
    found = _filter(request)
    newest = _newest_first(request)
    number = _int_param(request, "page", 1, 1, 10**9)
    store = campaign.watch.store

    def render() -> str:
        page = store.experiment_page(
            found, offset=(number - 1) * PAGE_ROWS, limit=PAGE_ROWS, newest_first=newest
        )
        return experiments_page(
            store.campaign_info().name,
            campaign.links,
            page,
            store.filter_values(),
            newest_first=newest,
            done=store.count(),
            events=_events("counts", campaign.key),
            compare=_compare(request),
        )

    return HTMLResponse(await run_in_threadpool(render))


async def experiment(request: Request) -> Response:
    """One experiment's page."""
    _check_params(request, ())
    campaign = _campaign(request, request.path_params["key"])
    experiment_id = int(request.path_params["experiment_id"])
    store = campaign.watch.store
    snap = await _snapshot(campaign, request)

    def render() -> str | None:
        record = store.load(experiment_id)
        rows = store.rows_for([experiment_id])
        if record is None or not rows:
            return None
        ids = [experiment_id - 1, experiment_id + 1]
        present = {int(str(r["experiment_id"])) for r in store.rows_for(ids)}
        return experiment_page(
            snap.info.name,
            campaign.links,
            rows[0],
            record,
            db_label=campaign.db_label,
            golden=snap.report.golden,
            neighbours=(
                ids[0] if ids[0] in present else None,
                ids[1] if ids[1] in present else None,
            ),
            compare=_compare(request),
        )

    page = await run_in_threadpool(render)
    if page is None:
        raise HTTPException(404, f"experiment {experiment_id} is not recorded (yet)")
    return HTMLResponse(page)


async def not_injected(request: Request) -> Response:
    """Why faults could not be placed, grouped."""
    _check_params(request, ())
    campaign = _campaign(request, request.path_params["key"])
    snap = await _snapshot(campaign, request)
    page = await run_in_threadpool(
        not_injected_page,
        snap.report,
        campaign.links,
        events=_events("counts", campaign.key),
        compare=_compare(request),
    )
    return HTMLResponse(page)


async def campaign_root(request: Request) -> Response:
    """`/campaigns/a` without its slash."""
    return RedirectResponse(Links(request.path_params["key"]).base, 308)


# ---------------------------------------------------------------------------- API


async def api_campaigns(request: Request) -> Response:
    """The served campaigns: key, name, database, counts."""
    _check_params(request, ())
    hub: Hub = request.app.state.hub

    def read() -> list[dict[str, Any]]:
        found = []
        for campaign in hub.campaigns.values():
            info = campaign.watch.store.campaign_info()
            found.append(
                {
                    "key": campaign.key,
                    "name": info.name,
                    "db": campaign.db_label,
                    "total": info.total_planned,
                    "done": campaign.watch.store.count(),
                }
            )
        return found

    return JSONResponse({"campaigns": await run_in_threadpool(read)})


async def api_status(request: Request) -> Response:
    """`vmfault campaign status --json`, from the same function, read now."""
    _check_params(request, ("campaign", "confidence", "method"))
    campaign = _campaign(request)
    confidence, method = request.app.state.confidence, request.app.state.method
    if "confidence" in request.query_params:
        try:
            confidence = float(request.query_params["confidence"])
        except ValueError:
            raise HTTPException(400, "confidence must be a number such as 0.95") from None
        if not 0.5 <= confidence <= 0.9999:
            raise HTTPException(400, f"confidence must be in [0.5, 0.9999], not {confidence}")
    if "method" in request.query_params:
        try:
            method = IntervalMethod(request.query_params["method"])
        except ValueError:
            allowed = ", ".join(m.value for m in IntervalMethod)
            raise HTTPException(400, f"method must be one of {allowed}") from None
    store = campaign.watch.store

    def read() -> dict[str, Any]:
        return status_json(store, confidence=confidence, method=method)

    return JSONResponse(await run_in_threadpool(read))


async def api_activity(request: Request) -> Response:
    """Whether the campaign runs, its speed, expected end and workers, read now."""
    _check_params(request, ("campaign",))
    campaign = _campaign(request)
    store = campaign.watch.store

    def read() -> dict[str, Any]:
        info = store.campaign_info()
        return campaign_activity(store, total=info.total_planned, done=store.count()).to_json()

    return JSONResponse(await run_in_threadpool(read))


async def api_experiments(request: Request) -> Response:
    """The analysis rows (as `campaign export` writes them) a filter matches, paged."""
    _check_params(request, ("campaign", *_FILTERS, "offset", "limit", "order"))
    campaign = _campaign(request)
    found = _filter(request)
    newest = _newest_first(request)
    offset = _int_param(request, "offset", 0, 0, 2**62)
    limit = _int_param(request, "limit", PAGE_ROWS, 1, PAGE_MAX_ROWS)
    store = campaign.watch.store
    page = await run_in_threadpool(
        lambda: store.experiment_page(found, offset=offset, limit=limit, newest_first=newest)
    )
    return JSONResponse(
        {
            "campaign": campaign.key,
            "filter": found.to_json(),
            "order": "newest" if newest else "id",
            "total": page.total,
            "offset": page.offset,
            "limit": page.limit,
            "experiments": list(page.rows),
        }
    )


async def api_experiment(request: Request) -> Response:
    """One experiment: its analysis row, its whole record (`vmfault inject --json`'s
    shape) and its replay command."""
    _check_params(request, ("campaign",))
    campaign = _campaign(request)
    experiment_id = int(request.path_params["experiment_id"])
    store = campaign.watch.store

    def read() -> dict[str, Any] | None:
        rows = store.rows_for([experiment_id])
        record = store.record_json(experiment_id)
        if not rows or record is None:
            return None
        return {
            "experiment_id": experiment_id,
            "row": rows[0],
            "record": record,
            "replay": replay_command(campaign.db_label, experiment_id),
        }

    found = await run_in_threadpool(read)
    if found is None:
        raise HTTPException(404, f"experiment {experiment_id} is not recorded (yet)")
    return JSONResponse(found)


# ---------------------------------------------------------------------------- events


def _sse(event: str, data: Mapping[str, Any], ident: str | None = None) -> str:
    lines = [f"event: {event}"]
    if ident is not None:
        lines.append(f"id: {ident}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def _view_payload(
    hub: Hub, view: str, keys: Sequence[str], snapshots: Sequence[Snapshot]
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """What one update of `view` says (besides its sections), its fragments and hashes."""
    activities: list[Activity] = [s.activity for s in snapshots]
    payload: dict[str, Any] = {
        "revision": ".".join(str(s.revision) for s in snapshots),
        "campaigns": {
            key: {
                "state": snap.activity.state.value,
                "done": snap.summary.done,
                "total": snap.summary.total,
                "status": snap.summary.to_json(),
            }
            for key, snap in zip(keys, snapshots, strict=True)
        },
    }
    if view == "dashboard":
        links = hub.campaigns[keys[0]].links
        snap = snapshots[0]
        fragments, hashes = hub.rendered(
            f"dashboard-{keys[0]}",
            snapshots,
            lambda: dashboard_fragments(snap.report, snap.activity, links),
        )
    elif view == "compare":
        a, b = snapshots
        fragments, hashes = hub.rendered(
            "compare",
            snapshots,
            lambda: comparison_fragments(a.report, b.report, (activities[0], activities[1])),
        )
    else:
        fragments, hashes = {}, {}
    return payload, fragments, hashes


async def events(request: Request) -> Response:
    """Server-sent events: `update` whenever a watched database changed (the sections of
    the page whose HTML changed, and each campaign's counts and `campaign status`), a
    comment line every HEARTBEAT_S, and `bye` when the server stops."""
    _check_params(request, ("view", "campaign"))
    hub: Hub = request.app.state.hub
    view = request.query_params.get("view") or "dashboard"
    if view == "compare":
        if len(hub.campaigns) < 2:
            raise HTTPException(400, "view=compare needs two campaigns")
        keys: list[str] = list(hub.campaigns)
    elif view in ("dashboard", "counts"):
        keys = [_campaign(request).key]
    else:
        raise HTTPException(400, "view must be dashboard, compare or counts")
    feeds = [hub.feeds[key] for key in keys]

    async def stream() -> AsyncIterator[str]:
        for feed in feeds:
            feed.listeners += 1
        try:
            yield "retry: 3000\n\n"
            sent: dict[str, str] = {}
            shown: tuple[int, ...] = ()
            while True:
                snapshots = [feed.snapshot or await feed.refresh() for feed in feeds]
                revisions = tuple(s.revision for s in snapshots)
                if revisions != shown:
                    payload, fragments, hashes = await run_in_threadpool(
                        _view_payload, hub, view, keys, snapshots
                    )
                    payload["sections"] = {
                        k: v for k, v in fragments.items() if sent.get(k) != hashes[k]
                    }
                    payload["hashes"] = hashes
                    sent, shown = dict(hashes), revisions
                    yield _sse("update", payload, payload["revision"])
                    continue
                if hub.stopping.is_set():
                    yield _sse("bye", {"reason": "the server stopped"})
                    return
                woken = await _first(
                    [feed.changed.wait() for feed in feeds] + [hub.stopping.wait()], HEARTBEAT_S
                )
                if not woken:
                    yield ": keep-alive\n\n"
        finally:
            for feed in feeds:
                feed.listeners -= 1

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
    )


async def _first(waits: Sequence[Awaitable[object]], timeout_s: float) -> bool:
    """Wait until one of `waits` completes (True), or `timeout_s` (False); cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for task in tasks:
            task.cancel()


# ---------------------------------------------------------------------------- assets


async def static(request: Request) -> Response:
    """The dashboard's own files, shipped in the package (nothing comes from elsewhere)."""
    name = request.path_params["name"]
    if name == "report.css":
        return Response(REPORT_CSS, media_type="text/css; charset=utf-8")
    media = _STATIC.get(name)
    if media is None:
        raise HTTPException(404, f"no file {name!r}")
    data = importlib.resources.files("vmfault.serve").joinpath("static", name).read_bytes()
    return Response(data, media_type=media)


# ---------------------------------------------------------------------------- errors


async def _error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error (see the log)"
    if request.url.path.startswith(("/api/", "/events")):
        return JSONResponse({"error": detail}, status)
    return HTMLResponse(error_page(status, detail), status)


# ---------------------------------------------------------------------------- the app


def create_app(
    campaigns: Sequence[Campaign],
    *,
    token: str,
    port: int,
    confidence: float = 0.95,
    method: IntervalMethod = IntervalMethod.WILSON,
    on_ready: Callable[[Hub], None] | None = None,
) -> ASGIApp:
    """The dashboard of one campaign or two, behind the token gate. `on_ready(hub)` is
    called in the event loop once it serves (a server thread learns its hub there)."""
    if not 1 <= len(campaigns) <= 2:
        raise ValueError(f"the dashboard serves one or two campaigns, not {len(campaigns)}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub = Hub(campaigns)
        app.state.hub = hub
        app.state.confidence = confidence
        app.state.method = method
        hub.start()
        if on_ready is not None:
            on_ready(hub)
        try:
            yield
        finally:
            if not hub.stopping.is_set():
                await hub.finish()

    routes = [
        Route("/", index),
        Route("/campaigns/{key}", campaign_root),
        Route("/campaigns/{key}/", dashboard),
        Route("/campaigns/{key}/experiments", experiments),
        Route("/campaigns/{key}/experiments/{experiment_id:int}", experiment),
        Route("/campaigns/{key}/not-injected", not_injected),
        Route("/events", events),
        Route("/api/campaigns", api_campaigns),
        Route("/api/status", api_status),
        Route("/api/activity", api_activity),
        Route("/api/experiments", api_experiments),
        Route("/api/experiments/{experiment_id:int}", api_experiment),
        Route("/static/{name}", static),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _error, Exception: _error},
    )
    return TokenGate(app, token=token, port=port)
