"""Start a django-q2 cluster and Baton's ticker in one process; Ctrl-C/SIGTERM stop both."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections


class Command(BaseCommand):
    help = "Runs the django-q2 worker cluster plus the ticker (retries, lost workers, lost messages)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-cluster", action="store_true", help="Run only the ticker.")
        parser.add_argument("--no-ticker", action="store_true", help="Run only the cluster.")

    def handle(self, *args: Any, **options: Any) -> None:
        from django_q.cluster import Cluster

        from orchestration.ticker import tick

        stopping = threading.Event()
        cluster = None
        if not options["no_cluster"]:
            cluster = Cluster()  # installs its own SIGTERM/SIGINT handlers that stop it
            cluster.start()

        def stop(signum: int, frame: Any) -> None:
            # Only note it here: the loop below stops the cluster outside the signal handler.
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"baton worker ready (queue {settings.QUEUE_NAME}, {settings.WORKERS} workers)")
        self.stdout.flush()
        while not stopping.is_set():
            if cluster is not None and not cluster.sentinel.is_alive():
                break
            if not options["no_ticker"]:
                try:
                    close_old_connections()
                    tick()
                except Exception as exc:  # keep ticking through a database restart
                    self.stderr.write(f"tick failed: {exc}")
            stopping.wait(settings.BATON_TICK_SECONDS)
        if cluster is not None and cluster.sentinel.is_alive():
            # When a service manager signals the whole process group, django-q2's sentinel may
            # die inside its stop-event wait, and Event.set() then blocks for ever. Stop from a
            # thread and give up waiting after a while instead of hanging the shutdown.
            stopper = threading.Thread(target=cluster.stop, daemon=True)
            stopper.start()
            stopper.join(timeout=10)
            if stopper.is_alive():
                self.stderr.write("baton worker: the cluster did not stop in 10 s; exiting anyway")
                self.stdout.flush()
                os._exit(1)
        self.stdout.write("baton worker stopped")
