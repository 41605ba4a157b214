"""The live web view: a control-room page of every open session and a page per session, served by
the tracker itself over HTTP(S) with Server-Sent Events.

It lives in the tracker's process (README: "Live web view") because the tracker already holds
everything it shows: the store, the latest previews (memory only) and the moment each frame is
stored. It only reads. aiohttp runs it on an event loop of its own thread; store reads go to a
small thread pool so a slow query never stalls the streams. Each live stream polls what the
ingest hook recorded every ``POLL_S``, so ingest threads never wake a viewer and a frame shows
within ``POLL_S`` plus one query of being stored.

Access: ``Authorization: Bearer <token>`` or a cookie set by ``/login``; the tracker's own token
and a separate read-only viewer token (which the gRPC API does not accept) are both let in.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import html
import json
import logging
import math
import ssl
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from loopstream.tracker import export
from loopstream.tracker.engine import TrackerEngine
from loopstream.tracker.ingest import IngestResult
from loopstream.tracker.previews import LatestPreviews
from loopstream.tracker.sessions import SessionNotFound
from loopstream.v1 import tracker_pb2 as pb

log = logging.getLogger("loopstream.tracker")

POLL_S = 0.5  # a live stream looks for new frames this often
REFRESH_S = 1.0  # the control room, and a quiet session page (rates, lag, a close), are re-sent this often
RATE_WINDOW_S = 10.0  # frames/s of a session over this window
MAX_PLOT_FRAMES = 2000  # frames of statistics a session page is sent on connect (and keeps)
TAIL_FRAMES = 10  # track tails drawn over the shown frame: its loops' positions this many frames back
STOP_GRACE_S = 2.0  # requests in flight (an export) get this long when the tracker stops
MAX_STREAMS = 64  # open live streams at once; more are refused (503) so viewers cannot starve ingest
COOKIE = "loopstream_view"
STATIC = resources.files("loopstream.tracker") / "web"
PLOT_COLUMNS = [
    "frame_index",
    "timestamp_s",
    "fluence_ions_cm2",
    "loop_count",
    "density_per_um2",
    "mean_major_nm",
    "mean_minor_nm",
    "drift_x_nm",
    "drift_y_nm",
]


@dataclass
class _Activity:
    """What the ingest hook saw of one session (the store does not keep it)."""

    stored: collections.deque = field(default_factory=collections.deque)  # monotonic times
    last_stored: float = 0.0
    last_frame_index: int = -1
    rejected: int = 0


def _cookie_value(token: str) -> str:
    """The cookie proves the token without being it (the bearer token never sits in a browser)."""
    return hmac.new(token.encode(), b"loopstream-view", hashlib.sha256).hexdigest()


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _rows(df) -> list[list]:
    return [[_finite(v) for v in row] for row in df.itertuples(index=False, name=None)]


class WebView:
    def __init__(
        self,
        engine: TrackerEngine,
        previews: LatestPreviews,
        tokens: list[str],
        registry: CollectorRegistry,
    ) -> None:
        """``tokens``: the tokens that may look (the tracker's and the viewer's); none = open."""
        self.engine = engine
        self.previews = previews
        self._cookies = {_cookie_value(t) for t in tokens}
        self._headers = {f"Bearer {t}" for t in tokens}
        self._activity: dict[str, _Activity] = collections.defaultdict(_Activity)
        self._lock = threading.Lock()
        self._reads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="webview-read")
        # Work shared by every viewer: the control room's rows (for REFRESH_S) and, per session,
        # the frame shown last. Each viewer's reads compete with ingest for the GIL.
        self._rows_cache: tuple[float, list[dict]] = (-math.inf, [])
        self._shown_cache: dict[str, dict] = {}
        self._cache_lock = threading.Lock()
        self._streams = 0
        self._stopping = asyncio.Event()  # binds to the view's loop at its first wait (Python >= 3.10)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = -1
        self.scheme = "http"
        self._requests = Counter(
            "loopstream_tracker_view_requests",
            "Web view requests, by status code",
            ["status"],
            registry=registry,
        )
        Gauge(
            "loopstream_tracker_view_streams", "Open live streams of the web view", registry=registry
        ).set_function(lambda: self._streams)

    # -- the ingest side (called on gRPC threads: cheap, no I/O) -------------------------------

    def on_frame(self, result: IngestResult, frame: pb.FrameDetections, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            activity = self._activity[frame.session_id] if result.microscope_id else None
            if activity is None:  # unknown session: nothing to show
                return
            if not result.accepted:
                activity.rejected += 1
                return
            if result.duplicate:
                return
            activity.stored.append(now)
            activity.last_stored = now
            activity.last_frame_index = max(activity.last_frame_index, frame.frame_index)
            while activity.stored and activity.stored[0] < now - RATE_WINDOW_S:
                activity.stored.popleft()

    def _activity_of(self, session_id: str) -> dict:
        now = time.monotonic()
        with self._lock:
            a = self._activity.get(session_id)
            if a is None:
                return {"frames_per_s": 0.0, "seconds_since_frame": None, "rejected": 0}
            recent = sum(1 for t in a.stored if t >= now - RATE_WINDOW_S)
            return {
                "frames_per_s": recent / RATE_WINDOW_S,
                "seconds_since_frame": round(now - a.last_stored, 1) if a.last_stored else None,
                "rejected": a.rejected,
            }

    def _last_frame(self, session_id: str) -> int:
        with self._lock:
            a = self._activity.get(session_id)
            return -1 if a is None else a.last_frame_index

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, host: str, port: int, tls: tuple[str, str] | None = None) -> int:
        """Serve on ``host:port`` (0 = ephemeral) from a thread of its own; returns the bound port.
        ``tls``: (certificate, key) PEM paths, the tracker's own."""
        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self.scheme = "https"
        loop = self._loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(host, port, context))
            except BaseException as e:
                failure.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="webview", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise OSError(f"cannot serve the web view on {host}:{port}: {failure[0]}")
        return self.port

    async def _serve(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        self._runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, shutdown_timeout=STOP_GRACE_S
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """End the live streams, stop serving, join the thread."""
        loop, runner, thread = self._loop, self._runner, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            self._stopping.set()
            if runner is not None:  # None when serving failed to start
                await runner.cleanup()
            # Streams still open after the grace period end here, not half-destroyed at loop close.
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(STOP_GRACE_S + 5)
        self._reads.shutdown(wait=True)
        self._loop = None

    # -- HTTP -------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._count, self._authenticate])
        app.add_routes(
            [
                web.get("/healthz", self._health),
                web.get("/login", self._login_page),
                web.post("/login", self._login),
                web.get("/", self._page("control_room.html")),
                web.get("/sessions/{sid}", self._page("session.html")),
                web.get("/static/{name}", self._static),
                web.get("/api/sessions", self._sessions),
                web.get("/api/events", self._control_room_events),
                web.get("/api/sessions/{sid}/events", self._session_events),
                web.get("/api/sessions/{sid}/preview", self._preview),
                web.get("/api/sessions/{sid}/export.zip", self._export),
            ]
        )
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler):
        try:
            response = await handler(request)
        except web.HTTPException as e:
            self._requests.labels(str(e.status)).inc()
            raise
        self._requests.labels(str(response.status)).inc()
        return response

    def _authenticated(self, request: web.Request) -> bool:
        if not self._headers:
            return True
        given = request.headers.get("Authorization", "")
        if any(hmac.compare_digest(given.encode(), h.encode()) for h in self._headers):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return any(hmac.compare_digest(cookie.encode(), c.encode()) for c in self._cookies)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler):
        if request.path in ("/healthz", "/login") or self._authenticated(request):
            return await handler(request)
        reason = (
            "not signed in: send 'Authorization: Bearer <token>' (the tracker's token or its viewer "
            "token) or sign in at /login"
        )
        if request.path.startswith("/api/"):
            return web.json_response({"error": reason}, status=401, headers={"WWW-Authenticate": "Bearer"})
        raise web.HTTPUnauthorized(text=self._login_html(request.path_qs, reason), content_type="text/html")

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "serving"})

    def _login_html(self, next_path: str, message: str = "") -> str:
        page = (STATIC / "login.html").read_text(encoding="utf-8")
        return page.replace("{{next}}", html.escape(next_path)).replace("{{message}}", html.escape(message))

    async def _login_page(self, request: web.Request) -> web.Response:
        if "token" in request.query:  # a link that signs in (e.g. the one the demo prints)
            return self._signed_in(request.query["token"], request.query.get("next", "/"))
        return web.Response(text=self._login_html(request.query.get("next", "/")), content_type="text/html")

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        return self._signed_in(str(form.get("token", "")), str(form.get("next", "/")))

    def _signed_in(self, token: str, next_path: str) -> web.Response:
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/"  # never redirect off this server
        value = _cookie_value(token.strip())
        if not any(hmac.compare_digest(value.encode(), c.encode()) for c in self._cookies):
            return web.Response(
                text=self._login_html(next_path, "wrong token: use the tracker's token or its viewer token"),
                content_type="text/html",
                status=401,
            )
        response = web.Response(status=303, headers={"Location": next_path})
        response.set_cookie(
            COOKIE, value, httponly=True, samesite="Strict", secure=self.scheme == "https", path="/"
        )
        return response

    def _page(self, name: str):
        async def page(request: web.Request) -> web.Response:
            return web.Response(text=(STATIC / name).read_text(encoding="utf-8"), content_type="text/html")

        return page

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        media = {".js": "text/javascript", ".css": "text/css"}.get(name[name.rfind(".") :])
        entry = STATIC / name
        if media is None or "/" in name or not entry.is_file():
            raise web.HTTPNotFound(text=f"no static file {name!r}")
        return web.Response(
            body=entry.read_bytes(), content_type=media, headers={"Cache-Control": "max-age=3600"}
        )

    async def _read(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._reads, function, *args)

    # -- the control room ---------------------------------------------------------------------

    def _session_rows(self) -> list[dict]:
        rows = []
        for s in self.engine.sessions(include_closed=False):
            recent = self.engine.store.last_frames(s["session_id"], TAIL_FRAMES)
            preview = self.previews.get(s["session_id"])
            rows.append(
                {
                    "session_id": s["session_id"],
                    "microscope_id": s["microscope_id"],
                    "sample": s["sample"],
                    "model_name": s["model_name"],
                    "model_version": s["model_version"] or "latest",
                    "shadow_model_version": s["shadow_model_version"],
                    "frames_stored": s["frames_stored"],
                    "last_frame_index": s["last_frame_index"],
                    "loops_per_frame": float(recent.loop_count.mean()) if len(recent) else None,
                    "preview_frame": preview.frame_index if preview else None,
                    **self._activity_of(s["session_id"]),
                }
            )
        return rows

    def _shared_session_rows(self) -> list[dict]:
        with self._cache_lock:
            made, rows = self._rows_cache
            if time.monotonic() - made >= REFRESH_S:
                rows = self._session_rows()
                self._rows_cache = (time.monotonic(), rows)
            return rows

    async def _sessions(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": await self._read(self._shared_session_rows)})

    async def _control_room_events(self, request: web.Request) -> web.StreamResponse:
        async def events():
            while not self._stopping.is_set():
                yield {"sessions": await self._read(self._shared_session_rows)}
                await self._pause(REFRESH_S)

        return await self._event_stream(request, events())

    # -- one session ------------------------------------------------------------------------

    def _session_update(self, session_id: str, from_frame: int, shown_frame: int | None) -> dict:
        """New statistics rows from ``from_frame`` on, and the frame to show if it is not ``shown_frame``."""
        session = self.engine.session(session_id)
        frames = self.engine.store.frames(session_id, from_frame)[PLOT_COLUMNS].tail(MAX_PLOT_FRAMES)
        update = {
            "session": {k: _finite(v) for k, v in session.items()},
            "columns": PLOT_COLUMNS,
            "frames": _rows(frames),
            **self._activity_of(session_id),
        }
        preview = self.previews.get(session_id)
        show = preview.frame_index if preview else session["last_frame_index"]
        if show >= 0 and show != shown_frame:
            with self._cache_lock:
                cached = self._shown_cache.get(session_id)
                wanted = (show, preview is not None)
                if cached is None or (cached["frame_index"], cached["preview"]) != wanted:
                    cached = self._shown_frame(session, *wanted)
                    self._shown_cache[session_id] = cached
            update["shown"] = cached
        return update

    def _shown_frame(self, session: dict, frame_index: int, has_preview: bool) -> dict:
        """One frame's ellipses (frame px), their sizes (nm) and the tails of their tracks."""
        store = self.engine.store
        sid = session["session_id"]
        detections = store.detections(sid, max(frame_index - TAIL_FRAMES, 0), frame_index)
        (frame_row,) = store.frames(sid, frame_index, frame_index).itertuples(index=False)
        here = detections[detections.frame_index == frame_index]
        tails = [
            group[["x_px", "y_px"]].round(1).values.tolist()
            for _, group in detections[detections.track_id.isin(here.track_id)].groupby("track_id")
            if len(group) > 1
        ]
        return {
            "frame_index": frame_index,
            "width_px": int(frame_row.width_px),
            "height_px": int(frame_row.height_px),
            "preview": has_preview,
            "ellipses": here[["x_px", "y_px", "major_px", "minor_px", "angle_deg"]].round(2).values.tolist(),
            "major_nm": (here.major_px * session["pixel_size_nm"]).round(2).tolist(),
            "tails": tails,
        }

    async def _session_events(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["sid"]
        try:
            await self._read(self.engine.session, sid)
        except SessionNotFound as e:
            raise web.HTTPNotFound(text=str(e)) from None

        async def events():
            next_frame, shown, seen, sent = 0, None, None, 0.0
            while not self._stopping.is_set():
                last = self._last_frame(sid)
                preview = self.previews.get(sid)
                state = (last, preview.frame_index if preview else None)
                # A new frame or preview at once; otherwise once a period (rates, lag, a close).
                if state != seen or time.monotonic() - sent >= REFRESH_S:
                    seen, sent = state, time.monotonic()
                    update = await self._read(self._session_update, sid, next_frame, shown)
                    if update["frames"]:
                        next_frame = update["frames"][-1][0] + 1
                    shown = update.get("shown", {}).get("frame_index", shown)
                    yield update
                    if update["session"]["closed"]:
                        return
                await self._pause(POLL_S)

        return await self._event_stream(request, events())

    async def _preview(self, request: web.Request) -> web.Response:
        preview = self.previews.get(request.match_info["sid"])
        if preview is None:
            raise web.HTTPNotFound(
                text="no preview of this session yet: its client sends none (--preview-every)"
            )
        return web.Response(
            body=preview.data,
            content_type=preview.media_type,
            headers={"Cache-Control": "no-store", "X-Frame-Index": str(preview.frame_index)},
        )

    async def _export(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["sid"]
        joined = request.query.get("join_fragments", "0")
        if joined not in ("0", "1"):
            raise web.HTTPBadRequest(text=f"join_fragments={joined!r}: give 1 (join track fragments) or 0")
        try:
            archive = await self._read(self._zip_export, sid, joined == "1")
        except SessionNotFound as e:
            raise web.HTTPNotFound(text=str(e)) from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="loopstream-{sid}.zip"',
            }
        )
        await response.prepare(request)
        with archive:
            while piece := archive.read(export.CHUNK_BYTES):
                await response.write(piece)
        await response.write_eof()
        return response

    def _zip_export(self, sid: str, join_fragments: bool) -> tempfile.SpooledTemporaryFile:
        """The session's export as one zip, written piece by piece as the store is read (the
        export streams; a spooled file keeps memory bounded for large sessions); with
        ``join_fragments`` the tracks as ``loopstream-tracker export --join-fragments`` gives them."""
        spool = tempfile.SpooledTemporaryFile(max_size=export.CHUNK_BYTES)  # noqa: SIM115 (returned open)
        with zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED) as archive:
            member = None
            for chunk in export.export_session(self.engine, sid, join_fragments):
                if member is None:
                    member = archive.open(chunk.name, "w", force_zip64=True)
                member.write(chunk.data)
                if chunk.last:
                    member.close()
                    member = None
        spool.seek(0)
        return spool

    # -- Server-Sent Events -----------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep, or return at once when the server stops."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _event_stream(self, request: web.Request, events) -> web.StreamResponse:
        if self._streams >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(
                text=f"{MAX_STREAMS} live views are open already: close one and reload"
            )
        response = web.StreamResponse(
            # X-Accel-Buffering: nginx (and ingress-nginx) would otherwise hold events back.
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        self._streams += 1
        log.info("viewer connected", extra={"path": request.path, "streams": self._streams})
        try:
            async for event in events:
                await response.write(f"data: {json.dumps(event, allow_nan=False)}\n\n".encode())
        except ConnectionResetError:
            pass  # the viewer went away
        finally:
            self._streams -= 1
            with contextlib.suppress(RuntimeError):  # a generator cancelled mid-step closes itself
                await events.aclose()
            log.info("viewer disconnected", extra={"path": request.path, "streams": self._streams})
        return response
