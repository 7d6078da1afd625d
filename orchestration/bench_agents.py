"""What `manage.py bench` runs: a no-op agent, a napping agent and a no-op django-q2 task (on the
workers), and the slow local HTTP endpoint its `http` agent calls (in the bench process itself).

The no-ops do as little as possible, so the bench measures Baton and django-q2, not the work.
The endpoint does one known amount of work, so the bench can say how close the workers come
to keeping every one of them busy with it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def noop(payload: Any, context: Any) -> None:
    """The `bench-noop` agent: takes its input and returns nothing."""
    return None


def nap(payload: Any, context: Any) -> None:
    """The `bench-nap` agent of the live rows: sleeps payload["seconds"], so each step's change
    reaches an open page on its own, not inside the previous change's push."""
    time.sleep(float((payload or {}).get("seconds", 0)))


def stamp(path: str) -> None:
    """A plain django-q2 task (no Baton tables): write the time it ran to `path`.

    The bench process runs on the same host, so it can subtract its own enqueue time. The
    rename makes the file appear complete or not at all.
    """
    ran_at = time.time()
    partial = f"{path}.part"
    with open(partial, "w") as handle:
        handle.write(repr(ran_at))
    os.replace(partial, path)


class SlowJsonServer:
    """An HTTP server on 127.0.0.1 that answers every POST after `delay` seconds with a small
    JSON body, from a thread of its own; use it as a context manager."""

    def __init__(self, delay: float):
        self.delay = delay
        self.answered = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # one line per request would drown the bench
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                time.sleep(owner.delay)
                body = json.dumps({"ok": True, "key": self.headers.get("Idempotency-Key", "")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with owner._lock:
                    owner.answered += 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # Every worker may connect at the same moment; the default backlog is 5.
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="bench-http")

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/answer"

    def __enter__(self) -> SlowJsonServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
