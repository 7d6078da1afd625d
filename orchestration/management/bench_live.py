"""The live push rows of `manage.py bench`: commit → browser, and fan-out under load.

Both rows talk to a real daphne process (WebProcess, started as `make run` starts it, on a free
port, with the bench's database and private queue, so its channel layer prefix is private too)
while real `baton_worker` processes move the runs, exactly as in production. They need nothing
from the dashboard's code: the page, its socket and its partials are reached over HTTP.

1. Commit → browser: headless Chromium keeps a run page open while a sequence of napping steps
   runs. A script Playwright adds before the page's own records, with `performance.timeOrigin +
   performance.now()`, when each graph node's data-status first shows a state (a
   MutationObserver) and when each hint arrives on the page's socket. A step's change committed
   in the transaction that wrote its STEP_SUCCEEDED event, so that event's created_at (set inside
   the transaction, just before the commit) is the start of the clock: the figure can only be
   too high, never too low. Each step naps longer than the coalescing window, so every change is
   pushed on its own, as a person watching one run sees it.
2. Fan-out under load: 200 websocket clients in this process (one asyncio loop in a thread), half
   following the runs list, half the run page of a 1,000-item for_each. Each behaves like
   static/js/live.js: it fetches its partial once subscribed, and on every hint fetches it again
   over HTTP with HX-Request, never two fetches at once (a hint during a fetch means one more
   after it). The workers start only once every client is subscribed, so every change of the
   map is heard. A hint's latency is measured per client and per change: from the change's
   RunEvent created_at to the first hint that client received after it (the fetch that hint
   starts reads a database that already holds the change). When the run has ended and no hint
   has arrived for SETTLE_SECONDS, each client's last partial must show what the database says
   (run status, items done/total, steps finished); any that does not is a stale screen.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import http.cookiejar
import json
import math
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from websockets.asyncio.client import connect
from websockets.typing import Origin

from orchestration import transitions
from orchestration.management.benchkit import (
    AGENT,
    DRIVER_ENV,
    Row,
    Target,
    Workers,
    bench_agent,
    install,
    percentile,
    row,
    wait_for,
)
from orchestration.models import Run, RunEvent, StepRun
from orchestration.status import RUN_FINAL, STEP_FINAL, EventKind

NAP_AGENT = "bench-nap"
NAP_CALLABLE = "orchestration.bench_agents:nap"
# The user whose session the page and the clients ride on; it owns the live bench's workflows,
# so it sees their runs as an owner does (not as a superuser, who would skip the access rules).
LIVE_USER = "bench-live"
# Run pages watched: (steps in the run, runs). A run the size of most workflows' (8 steps), and
# a long one (60 steps: a 170 KB partial, mostly its step table and the 200-event timeline).
BROWSER_PAGES = ((8, 8), (60, 1))
# Each step naps longer than BATON_LIVE_COALESCE_SECONDS (0.25 s), so no change waits for the
# window of the one before; the first step gives the page time to open and subscribe.
STEP_SECONDS = 0.4
WARM_UP_SECONDS = 1.5
CLIENTS = 200
ITEMS = 1000
FANOUT_WORKERS = 4
# No hint for this long after the run ended: every hint the run caused has arrived.
SETTLE_SECONDS = 2.0
# How many clients open their socket at the same time while the crowd gathers.
CONNECTING_AT_ONCE = 20
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

# Added to the run page before its own scripts: records when each graph node first shows each
# status, and when each hint arrives (its listener runs before live.js's, added later).
PAGE_PROBE = """
(() => {
  const live = { seen: {}, hints: [], sent: [], loaded: [], subscribed: false };
  window.__batonBench = live;
  const clock = () => performance.timeOrigin + performance.now();
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        const at = clock();
        let message = {};
        try { message = JSON.parse(event.data); } catch (e) { return; }
        if (message.subscribed) live.subscribed = true;
        if (message.changed) live.hints.push(at);
      });
    }
  };
  // When htmx asks for the part and when its answer is in (before it is morphed in).
  document.addEventListener("htmx:beforeRequest", () => live.sent.push(clock()));
  document.addEventListener("htmx:beforeOnLoad", () => live.loaded.push(clock()));
  const scan = () => {
    const at = clock();
    for (const node of document.querySelectorAll(".node[data-step]")) {
      const states = live.seen[node.dataset.step] || (live.seen[node.dataset.step] = {});
      if (!(node.dataset.status in states)) states[node.dataset.status] = at;
    }
  };
  new MutationObserver(scan).observe(document, {
    subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"],
  });
})();
"""


def live_targets(database: str, broker: str) -> dict[str, Target]:
    goals = {"stale": Target(0, at_most=True)}
    if broker == "redis":
        goals["browser"] = Target(100.0, at_most=True)
    elif database == "sqlite":
        goals["browser"] = Target(500.0, at_most=True)
    return goals


class LiveBench:
    def __init__(self, *, database: str, broker: str, scratch: Path, say: Callable[[str], None], keep: bool = False):
        self.keep = keep
        self.database = database
        self.broker = broker
        self.scratch = scratch
        self.say = say
        self.notes: list[str] = []
        self.run_ids: list[int] = []

    def run(self) -> list[Row]:
        password = secrets.token_urlsafe(18)
        user, _ = get_user_model().objects.get_or_create(username=LIVE_USER)
        # A new password each time: the account exists only for the bench's own sessions.
        user.set_password(password)
        user.is_active = True
        user.save()
        try:
            browser = self.commit_to_browser(password)
            fan = self.fan_out(password)
        finally:
            if self.keep:
                self.say(f"kept runs {', '.join(map(str, self.run_ids))}")
            else:
                Run.objects.filter(pk__in=self.run_ids).delete()
        return self.rows(browser, fan)

    # -----------------------------------------------------------------------------------------
    # 1. Commit → browser

    def commit_to_browser(self, password: str) -> dict[int, dict[str, list[float]]] | None:
        """Per page size (steps in the run): the figures of every change measured on it (ms)."""
        if not CHROMIUM.exists():
            self.notes.append(f"Commit -> browser: SKIPPED, {CHROMIUM} is not installed (apt-get install chromium).")
            return None
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            self.notes.append("Commit -> browser: SKIPPED, playwright is not installed.")
            return None
        figures: dict[int, dict[str, list[float]]] = {}
        with (
            WebProcess(self.scratch, say=self.say) as web,
            Workers(1, self.scratch, say=self.say) as workers,
            workers.explain_failures(),
            web.explain_failures(),
            _async_unsafe_allowed(),  # Playwright's sync API keeps an event loop on this thread
            sync_playwright() as playwright,
        ):
            session = log_in(web.url, LIVE_USER, password)
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = browser.new_context()
                context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": web.url}])
                page = context.new_page()
                page.add_init_script(PAGE_PROBE)
                for steps, runs in BROWSER_PAGES:
                    key = install(browser_document(steps))
                    self.say(f"{key}: {runs} run(s) watched in headless Chromium, on 1 worker")
                    found = figures.setdefault(steps, {"total": [], "push": [], "fetch": [], "morph": []})
                    for _ in range(runs):
                        for name, values in self.watch(page, web.url, key, steps).items():
                            found[name] += values
            finally:
                browser.close()
        for steps, found in figures.items():
            if len(found["total"]) < 50:
                self.notes.append(f"WARNING: commit -> browser ({steps} steps) measured only {len(found['total'])} changes (50 wanted).")
        return figures

    def watch(self, page: Any, url: str, key: str, steps: int) -> dict[str, list[float]]:
        """One run on an open run page: per step, commit -> DOM and its parts (ms)."""
        run = transitions.start_run(workflow=key, trigger="bench")
        self.run_ids.append(run.pk)
        page.goto(f"{url}/runs/{run.pk}/")
        # Polled from here: Playwright's wait_for_function evaluates its predicate with eval(),
        # which the page's Content-Security-Policy (rightly) refuses.
        wait_for(
            lambda: page.evaluate("window.__batonBench.subscribed"),
            timeout=30,
            interval=0.02,
            what="the run page's socket to subscribe",
        )
        ready = time.time() * 1000
        wait_run(run, timeout=60 + steps * STEP_SECONDS * 4)
        last = f"step-{steps:03d}"
        with contextlib.suppress(CommandError):  # a page that never caught up shows in the figures
            wait_for(
                lambda: page.evaluate(f"(window.__batonBench.seen[{last!r}] || {{}}).succeeded !== undefined"),
                timeout=10,
                interval=0.05,
                what="the run page to show the last step",
            )
        probe = page.evaluate("window.__batonBench")
        committed = RunEvent.objects.filter(
            run=run, kind=EventKind.STEP_SUCCEEDED, step_run__isnull=False, step_run__map_index__isnull=True
        ).values_list("step_run__step_key", "created_at")
        found: dict[str, list[float]] = {"total": [], "push": [], "fetch": [], "morph": []}
        hints = sorted(probe["hints"])
        requests = sorted(zip(probe["sent"], probe["loaded"], strict=False))
        missing = 0
        for step_key, created in committed:
            at = created.timestamp() * 1000
            if not step_key.startswith("step-") or at <= ready:
                continue  # the warm-up step, or a change the page heard of with its first fetch
            shown = probe["seen"].get(step_key, {}).get("succeeded")
            if shown is None:
                missing += 1
                continue
            found["total"].append(shown - at)
            index = bisect.bisect_left(hints, at)
            if index < len(hints) and hints[index] <= shown:
                hint = hints[index]
                found["push"].append(hint - at)
                # The request that hint started: the first one sent after it.
                answered = next((loaded for sent, loaded in requests if sent >= hint), None)
                if answered is not None and answered <= shown:
                    found["fetch"].append(answered - hint)
                    found["morph"].append(shown - answered)
        if missing:
            self.notes.append(f"WARNING: commit -> browser: {missing} step(s) of run {run.pk} never showed succeeded.")
        return found

    # -----------------------------------------------------------------------------------------
    # 2. Fan-out under load

    def fan_out(self, password: str) -> dict[str, float]:
        key = install(fanout_document())
        self.say(f"{key}: {CLIENTS} websocket clients, then the map on {FANOUT_WORKERS} workers")
        with WebProcess(self.scratch, say=self.say) as web, web.explain_failures():
            session = log_in(web.url, LIVE_USER, password)
            # No worker runs yet: the map's first chunks wait in the queue until every client listens.
            run = transitions.start_run(workflow=key, trigger="bench")
            self.run_ids.append(run.pk)
            before, began = web.usage(), time.time()
            listen = f"run.{run.pk}" if self.broker == "redis" else ""
            crowd = Crowd(web.url, f"{settings.SESSION_COOKIE_NAME}={session}", run.pk, listen=listen)
            with crowd:
                crowd.wait_gathered(timeout=90)
                gathered = time.time()
                self.say(f"{CLIENTS} clients subscribed in {gathered - crowd.started:.1f} s; starting the workers")
                with Workers(FANOUT_WORKERS, self.scratch, say=self.say) as workers, workers.explain_failures():
                    wait_run(run, timeout=150)
                    ended = time.time()
                    crowd.wait_settled(quiet=SETTLE_SECONDS, timeout=60)
                after, finished = web.usage(), time.time()
                clients = crowd.snapshot()
            errors = [line for line in web.tail(2000).splitlines() if "Error" in line and not line.startswith(" ")]
            if errors:
                self.notes.append(f"WARNING: the web log holds {len(errors)} error lines, e.g.:")
                self.notes += [f"  {line[:200]}" for line in dict.fromkeys(errors)][:3]
        run.refresh_from_db()
        self.say(f"run {run.pk}: {ITEMS} items in {ended - gathered:.1f} s after the workers were asked to start")
        expected = final_markers(run)
        stale = [c for c in clients if c.error or not all(m.search(c.body) for m in expected[c.topic])]
        for client in stale[:3]:
            self.notes.append(f"  stale: {client.topic} client {client.number}: {client.error or 'last partial differs'}")
        changes = [
            at.timestamp()
            for at in RunEvent.objects.filter(run=run, created_at__gt=_aware(gathered)).values_list("created_at", flat=True)
        ]
        latencies: list[float] = []
        unheard = 0
        for client in clients:
            hints = client.hints
            for at in changes:
                index = bisect.bisect_left(hints, at)
                if index < len(hints):
                    latencies.append((hints[index] - at) * 1000)
                else:
                    unheard += 1
        if unheard:
            self.notes.append(f"WARNING: fan-out: {unheard} (client, change) pairs saw no hint after the change.")
        layer: list[float] = []
        for at in changes if crowd.heard else []:
            index = bisect.bisect_left(crowd.heard, at)
            if index < len(crowd.heard):
                layer.append((crowd.heard[index] - at) * 1000)
        if crowd.heard:
            self.notes.append(
                f"Fan-out on Redis: {len(crowd.heard)} messages to group run.{run.pk} heard outside the web "
                f"process, the last {max(crowd.heard) - max(changes):.1f} s after the run's last change."
            )
        fetches = [ms for c in clients for ms in c.fetch_ms]
        origin = min(changes, default=gathered)
        heard = [at for c in clients for at in c.hints]
        first_hint, last_hint = (min(heard) - origin, max(heard) - origin) if heard else (0.0, 0.0)
        last_change = max(changes, default=origin) - origin
        # From the run's last change to the moment the last client's partial showed it.
        current = max(c.fetched_at for c in clients) - max(changes, default=gathered)
        self.notes.append(
            f"Fan-out: the map ran {ended - gathered:.1f} s from the workers' start; {len(changes)} run events "
            f"after the clients gathered; CPU and time from before the clients connected to the last fetch; "
            f"web RSS {before.rss_mb:.0f} MB before the clients, {after.rss_mb:.0f} MB at the end; "
            f"hints came from {first_hint:.1f} s to {last_hint:.1f} s after the first change "
            f"(the last change: {last_change:.1f} s)."
        )
        return {
            "push_p50": statistics.median(latencies) if latencies else float("nan"),
            "push_p95": percentile(latencies, 95) if latencies else float("nan"),
            "stale": len(stale),
            "cpu": after.cpu_seconds - before.cpu_seconds,
            "busy": finished - began,
            "rss": after.peak_rss_mb,
            "messages": sum(c.messages for c in clients),
            "fetches": len(fetches),
            "fetch_p95": percentile(fetches, 95) if fetches else float("nan"),
            "current": current,
            "layer_p95": percentile(layer, 95) if layer else float("nan"),
        }

    # -----------------------------------------------------------------------------------------

    def rows(self, browser: dict[int, dict[str, list[float]]] | None, fan: dict[str, float]) -> list[Row]:
        goals = live_targets(self.database, self.broker)
        second = f"live: {CLIENTS} sockets, {ITEMS}-item for_each, {FANOUT_WORKERS} workers"
        table: list[Row] = []
        for steps, found in (browser or {}).items():
            if not found["total"]:
                continue
            first = f"live: commit -> run page in Chromium, {steps}-step runs"
            count = len(found["total"])
            table += [
                row(first, f"commit -> DOM shows it, median of {count}", statistics.median(found["total"]), "ms"),
                row(first, "commit -> DOM shows it, p95", percentile(found["total"], 95), "ms", goals.get("browser")),
            ]
            for name, measure in (
                ("push", "  commit -> hint on the page"),
                ("fetch", "  hint -> the partial's answer in (fetch)"),
                ("morph", "  answer -> DOM shows it (morph)"),
            ):
                if found[name]:
                    table.append(row(first, f"{measure}, p95", percentile(found[name], 95), "ms"))
        table += [
            row(second, "commit -> hint at the client, median", fan["push_p50"], "ms"),
            row(second, "commit -> hint at the client, p95", fan["push_p95"], "ms"),
        ]
        if not math.isnan(fan["layer_p95"]):
            table.append(row(second, "  commit -> the group's message on Redis, p95", fan["layer_p95"], "ms"))
        table += [
            row(second, "stale screens after the run ended", fan["stale"], "clients", goals["stale"]),
            row(second, "the run's last change -> every client's partial shows it", fan["current"], "s"),
            row(second, "hints received, all clients", fan["messages"], "messages"),
            row(second, "partial fetches, all clients", fan["fetches"], "fetches"),
            row(second, "  one fetch, p95", fan["fetch_p95"], "ms"),
            row(second, f"web process CPU over {fan['busy']:.0f} s", fan["cpu"], "s"),
            row(second, "web process peak RSS", fan["rss"], "MB"),
        ]
        return table


# ---------------------------------------------------------------------------------------------
# The web process, the session, the clients


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    rss_mb: float
    peak_rss_mb: float


class WebProcess:
    """daphne serving Baton on a free loopback port, on the bench's database and queue."""

    def __init__(self, scratch: Path, *, say: Callable[[str], None]):
        self.port = free_port()
        self.say = say
        self.log_path = scratch / f"web-{self.port}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WebProcess:
        env = dict(os.environ)
        env.pop(DRIVER_ENV, None)
        # No fallback polling: what the page shows, it learnt from a push.
        env.update({"BATON_BASE_URL": self.url, "BATON_LIVE_POLL_SECONDS": "0", "PYTHONUNBUFFERED": "1"})
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
        self.say(f"starting daphne on {self.url}")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "orchestration.config.asgi:application"],
                env=env,
                cwd=settings.BASE_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(self.answers, timeout=60, interval=0.05, what="daphne to answer")
        except BaseException:
            self.stop()
            raise
        return self

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise CommandError(f"daphne exited at start-up:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/login/", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def usage(self) -> Usage:
        """CPU seconds so far (user + system) and resident memory, from /proc."""
        assert self.process is not None
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        # The fields after the command name (which may hold spaces) start at the state, field 3.
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines() if ":" in line
        )

        def megabytes(name: str) -> float:
            return int(status[name].split()[0]) / 1024  # the kernel says kB

        return Usage(ticks / os.sysconf("SC_CLK_TCK"), megabytes("VmRSS"), megabytes("VmHWM"))

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    @contextlib.contextmanager
    def explain_failures(self) -> Iterator[None]:
        try:
            yield
        except CommandError as exc:
            raise CommandError(f"{exc}\n--- web log (last lines) ---\n{self.tail()}") from None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_in(url: str, username: str, password: str) -> str:
    """Sign in through the login form, as a person does; returns the session cookie's value."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{url}/login/", timeout=30) as answer:
        form = answer.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    if token is None:
        raise CommandError("the login page has no CSRF token")
    data = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)})
    request = urllib.request.Request(
        f"{url}/login/", data=data.encode(), headers={"Origin": url, "Referer": f"{url}/login/"}
    )
    with opener.open(request, timeout=30):
        pass
    session = next((c.value for c in jar if c.name == settings.SESSION_COOKIE_NAME), None)
    if not session:
        raise CommandError(f"signing in as {username} gave no session cookie")
    return session


@dataclass
class Client:
    number: int
    topic: str
    path: str
    hints: list[float] = field(default_factory=list)  # time.time() of each {"changed": …}
    messages: int = 0
    fetch_ms: list[float] = field(default_factory=list)
    fetched_at: float = 0.0  # time.time() when the last fetch's answer was in
    body: str = ""
    error: str = ""
    fetching: bool = False
    again: bool = False
    ready: bool = False


class Crowd:
    """CLIENTS websocket clients on one asyncio loop in a thread of their own."""

    def __init__(self, url: str, cookie: str, run_id: int, *, listen: str = ""):
        # With Redis: also hear the group `listen` on the channel layer from here, outside the
        # web process, to tell the layer's delay from the web process's.
        self.listen = listen
        self.heard: list[float] = []  # time.time() of each group message heard here
        self.listening = not listen
        parts = urllib.parse.urlsplit(url)
        self.url, self.host, self.port = url, parts.hostname or "127.0.0.1", parts.port or 80
        self.cookie = cookie
        half = CLIENTS // 2
        # The runs list is at /runs/ (the overview has /).
        self.clients = [Client(n, "runs", "/runs/") for n in range(half)]
        self.clients += [Client(n, f"run:{run_id}", f"/runs/{run_id}/") for n in range(half, CLIENTS)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-live-crowd", daemon=True)
        self.tasks: list[asyncio.Future[None]] = []
        self.started = 0.0

    def __enter__(self) -> Crowd:
        self.started = time.time()
        self.thread.start()
        self.main = asyncio.run_coroutine_threadsafe(self._gather(), self.loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.main.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._cancel(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)

    async def _cancel(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _gather(self) -> None:
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
        listener = [self._listen()] if self.listen else []
        await asyncio.gather(*listener, *(self._client(client, gate) for client in self.clients))

    async def _listen(self) -> None:
        layer = get_channel_layer()
        assert layer is not None
        channel = await layer.new_channel()
        await layer.group_add(self.listen, channel)
        self.listening = True
        while True:
            await layer.receive(channel)
            self.heard.append(time.time())

    async def _client(self, client: Client, gate: asyncio.Semaphore) -> None:
        http = PartialFetcher(self.host, self.port, self.cookie)
        try:
            async with gate:
                socket_url = self.url.replace("http://", "ws://") + "/ws/live/"
                connection = await connect(
                    socket_url, origin=Origin(self.url), additional_headers={"Cookie": self.cookie}, open_timeout=60
                )
                await connection.send(json.dumps({"subscribe": [client.topic]}))
                reply = json.loads(await connection.recv())
                if reply.get("subscribed") != [client.topic]:
                    raise RuntimeError(f"subscribe answered {reply}")
                # As the page does once its socket is open: fetch every part once.
                client.fetching = True
                await self._fetch(client, http)
                client.ready = True
            async for raw in connection:
                at = time.time()
                client.messages += 1
                if json.loads(raw).get("changed"):
                    client.hints.append(at)
                    if client.fetching:
                        client.again = True
                    else:
                        client.fetching = True
                        self.tasks.append(asyncio.ensure_future(self._fetch(client, http)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            client.error = f"{type(exc).__name__}: {exc}"
        finally:
            http.close()

    async def _fetch(self, client: Client, http: PartialFetcher) -> None:
        try:
            while True:
                client.again = False
                began = time.perf_counter()
                client.body = await http.get(client.path)
                client.fetched_at = time.time()
                client.fetch_ms.append((time.perf_counter() - began) * 1000)
                if not client.again:
                    break
        except Exception as exc:
            client.error = f"fetch {client.path}: {type(exc).__name__}: {exc}"
        finally:
            client.fetching = False

    def wait_gathered(self, *, timeout: float) -> None:
        def gathered() -> bool:
            failed = [c for c in self.clients if c.error]
            if failed:
                raise CommandError(f"{len(failed)} websocket client(s) failed, e.g. {failed[0].error}")
            return self.listening and all(c.ready for c in self.clients)

        wait_for(gathered, timeout=timeout, interval=0.05, what=f"{CLIENTS} websocket clients to subscribe")

    def wait_settled(self, *, quiet: float, timeout: float) -> None:
        def settled() -> bool:
            last = max((c.hints[-1] for c in self.clients if c.hints), default=0.0)
            return time.time() - last > quiet and not any(c.fetching for c in self.clients)

        wait_for(settled, timeout=timeout, interval=0.05, what="the clients to stop receiving hints")

    def snapshot(self) -> list[Client]:
        return list(self.clients)


class PartialFetcher:
    """GET over one kept-alive HTTP/1.1 connection, as htmx asks for a part (HX-Request)."""

    def __init__(self, host: str, port: int, cookie: str):
        self.host, self.port, self.cookie = host, port, cookie
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> str:
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                return await self._get(path)
            except (ConnectionError, asyncio.IncompleteReadError):
                # The server closed a kept-alive connection: once more on a new one.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _get(self, path: str) -> str:
        assert self.reader is not None and self.writer is not None
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nCookie: {self.cookie}\r\n"
            "HX-Request: true\r\nAccept: text/html\r\n\r\n"
        )
        self.writer.write(request.encode())
        await self.writer.drain()
        status = await self.reader.readline()
        if not status:
            raise ConnectionError("connection closed")
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                body += await self.reader.readexactly(size)
                await self.reader.readline()
            await self.reader.readline()
        else:
            body = await self.reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        code = int(status.split()[1])
        if code != 200:
            raise RuntimeError(f"GET {path} answered {code}")
        return body.decode()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# ---------------------------------------------------------------------------------------------
# Workflows and helpers


def browser_document(count: int) -> dict[str, Any]:
    nap = {
        "name": NAP_AGENT,
        "kind": "python",
        "description": "Sleeps input.seconds; used by manage.py bench's live rows.",
        "config": {"callable": NAP_CALLABLE},
        "retry": {"attempts": 1},
    }
    keys = ["warm-up"] + [f"step-{number:03d}" for number in range(1, count + 1)]
    steps = [
        {
            "key": key,
            "agent": NAP_AGENT,
            "input": {"seconds": WARM_UP_SECONDS if index == 0 else STEP_SECONDS},
            **({"after": [keys[index - 1]]} if index else {}),
        }
        for index, key in enumerate(keys)
    ]
    return {
        "agents": [nap],
        "workflow": {
            "key": f"bench-live-steps-{count}",
            "name": f"Bench: {count} napping steps watched in a browser",
            "description": "Created by manage.py bench to measure commit -> browser.",
            "owner": LIVE_USER,
            "steps": steps,
        },
    }


def fanout_document() -> dict[str, Any]:
    return {
        "agents": [bench_agent()],
        "workflow": {
            "key": f"bench-live-fanout-{ITEMS}",
            "name": f"Bench: for_each over {ITEMS} no-op items watched by {CLIENTS} sockets",
            "description": "Created by manage.py bench to measure the live push under load.",
            "owner": LIVE_USER,
            "steps": [{"key": "items", "agent": AGENT, "for_each": f"range({ITEMS})"}],
        },
    }


def final_markers(run: Run) -> dict[str, list[re.Pattern[str]]]:
    """What each kind of client's last partial must contain, read from the database now."""
    heads = list(StepRun.objects.filter(run=run, map_index__isnull=True))
    done = sum(1 for step in heads if step.status in STEP_FINAL)
    total = len(run.version.spec.get("steps", []))
    # The steps table's Items cell: a link to the items, "1,000 / 1,000 items".
    items = [
        rf'data-label="Items"><a [^>]*>{s.items_done:,} / {s.items_total:,} items</a>' for s in heads if s.items_total is not None
    ]
    return {
        "runs": [re.compile(rf'<tr data-run="{run.pk}">(?:(?!</tr>).)*data-status="{run.status}"(?:(?!</tr>).)*>{done}/{total}<', re.S)],
        f"run:{run.pk}": [
            re.compile(rf'id="run-live"[^>]*data-status="{run.status}"'),
            re.compile(rf"<dd>{done} of {total}</dd>"),
            *(re.compile(marker) for marker in items),
        ],
    }


def wait_run(run: Run, *, timeout: float) -> None:
    wait_for(
        lambda: Run.objects.filter(pk=run.pk, status__in=RUN_FINAL).exists(),
        timeout=timeout,
        interval=0.025,
        what=f"run {run.pk} to end",
    )


@contextlib.contextmanager
def _async_unsafe_allowed() -> Iterator[None]:
    # Django refuses ORM calls from a thread that runs an event loop. Playwright's sync API keeps
    # one on this thread but makes only blocking calls, one at a time, so nothing races here;
    # the browser tests (tests/browser/conftest.py) and Playwright's Django guide do the same.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _aware(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
