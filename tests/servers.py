"""Real HTTP servers on loopback that stand in for the outside world in tests.

`ScriptedServer` answers each request from a script keyed by path; it records every request
(headers and body) so tests can check what Baton sent. `FakeOpenAI` is an OpenAI-compatible
chat-completions endpoint that returns usage figures, errors and slow answers on demand.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


class ScriptedServer:
    """A threaded HTTP server; `script(path, *replies)` queues answers, the last one repeats."""

    def __init__(self) -> None:
        self.replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                path = self.path.split("?")[0]
                with server.lock:
                    server.requests.append(
                        Seen(self.command, path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    queue = server.replies.get(path)
                    reply = (queue.popleft() if len(queue) > 1 else queue[0]) if queue else Reply(404, {"error": "not scripted"})
                try:
                    reply = server.respond(path, body, reply)
                    if reply.delay:
                        time.sleep(reply.delay)
                    payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            do_GET = do_POST = do_PUT = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, at every test's teardown.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def respond(self, path: str, body: Any, reply: Reply) -> Reply:
        """Hook for subclasses that compute answers from the request."""
        return reply

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, path: str, *replies: Reply) -> None:
        with self.lock:
            self.replies[path] = deque(replies)

    def seen(self, path: str) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def refusing_port() -> Iterator[str]:
    """A loopback URL whose port refuses connections: bound (so no other test can take it)
    but never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def completion(text: str, *, prompt_tokens: int = 12, completion_tokens: int = 5, model: str = "fake-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class FakeOpenAI(ScriptedServer):
    """OpenAI-compatible: POST /v1/chat/completions. By default it echoes the last user message."""

    PATH = "/v1/chat/completions"

    def respond(self, path: str, body: Any, reply: Reply) -> Reply:
        if path == self.PATH and reply.status == 404 and not self.replies.get(path):
            last = (body or {}).get("messages", [{}])[-1].get("content", "")
            return Reply(200, completion(f"echo: {last}", prompt_tokens=len(str(last)) // 4 + 1))
        return reply

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


class HoldingServer:
    """Answers every POST after `delay` seconds, keeping the connection alive (HTTP/1.1), and
    notices a client that goes away meanwhile (`abandoned`): what shows that a cancelled or
    timed-out call was stopped, not merely forgotten. `answer(body)` may choose (status, body,
    delay) per request; with `trickle`, the answer's body comes a byte every `trickle` seconds
    and never ends."""

    def __init__(self, delay: float = 1.0, *, trickle: float | None = None, answer: Any = None) -> None:
        self.delay = delay
        self.trickle = trickle
        self.answer = answer or (lambda body: (200, {"ok": True, "input": body}, self.delay))
        self.bodies: list[Any] = []
        self.keys: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered = 0
        self.abandoned = 0
        self.connections = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def setup(self) -> None:
                super().setup()
                with owner.lock:
                    owner.connections += 1

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with owner.lock:
                    owner.bodies.append(body)
                    owner.keys.append(self.headers.get("Idempotency-Key", ""))
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                unsent = False
                try:
                    status, reply, delay = owner.answer(body)
                    if owner.trickle is not None:
                        self._trickle(owner.trickle)
                        return
                    if not self._wait(delay):
                        with owner.lock:
                            owner.abandoned += 1
                        self.close_connection = True
                        return
                    payload = json.dumps(reply).encode()
                    # Counted before the answer leaves: a client that has read it must never
                    # find the count behind (a test asserts it right after its call returns).
                    with owner.lock:
                        owner.answered += 1
                    unsent = True
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    unsent = False
                except (BrokenPipeError, ConnectionResetError):
                    with owner.lock:
                        owner.abandoned += 1
                        owner.answered -= int(unsent)
                    self.close_connection = True
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

            def _gone(self, timeout: float) -> bool:
                readable, _, _ = select.select([self.connection], [], [], timeout)
                if not readable:
                    return False
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            def _wait(self, seconds: float) -> bool:
                """Sleep `seconds`; False as soon as the client closes the connection."""
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0:
                    if self._gone(min(left, 0.02)):
                        return False
                return True

            def _trickle(self, every: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                self.wfile.write(b"[")
                self.wfile.flush()
                while not self._gone(every):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                with owner.lock:
                    owner.abandoned += 1
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/work"

    def __enter__(self) -> HoldingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
