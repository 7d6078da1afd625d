"""What `manage.py bench` runs: a no-op agent, a napping agent and a no-op django-q2 task (on the
workers), and the slow local HTTP endpoint its `http` agent calls (in the bench process itself).

The no-ops do as little as possible, so the bench measures Baton and django-q2, not the work.
The endpoint does one known amount of work, so the bench can say how close the workers come
to keeping every one of them busy with it.
"""

from __future__ import annotations

import json
import os
import sys
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
    JSON body (or what `answer(body)` returns), from a thread per connection; use it as a context
    manager. HTTP/1.1 keep-alive, so a client's pool can reuse its connections; `in_flight` and
    `max_in_flight` count the requests being answered."""

    def __init__(self, delay: float, *, answer: Any = None):
        self.delay = delay
        self.answer = answer
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The headers and the body go out in two writes: with Nagle's algorithm the body
            # waits for the client's delayed ACK of the headers, 40 ms on Linux, and a call to a
            # server "answering in 50 ms" took 90. Servers in use (nginx, uvicorn) set it too.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # one line per request would drown the bench
                return

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner.connections += 1

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with owner._lock:
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    time.sleep(owner.delay)
                    if owner.answer is not None:
                        reply = owner.answer(json.loads(raw) if raw else None)
                    else:
                        reply = {"ok": True, "key": self.headers.get("Idempotency-Key", "")}
                    body = json.dumps(reply).encode()
                    # Counted before the answer leaves, so a run that has finished is never
                    # ahead of the count.
                    with owner._lock:
                        owner.answered += 1
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with owner._lock:
                        owner.in_flight -= 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # Every slot of every worker may connect at the same moment; the default backlog is 5.
            request_queue_size = 1024

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that went away (a cancelled or timed-out call) is not the bench's
                # fault; the default prints a traceback per connection into the bench's output.
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

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


def completion(body: Any) -> dict[str, Any]:
    """An OpenAI-compatible chat completion for the bench's model server: fixed usage figures."""
    last = ((body or {}).get("messages") or [{}])[-1].get("content", "")
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"done: {last}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
    }
