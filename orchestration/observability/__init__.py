"""Observability for machines: `/metrics` for Prometheus, `/healthz` for load balancers and
service managers. (The worker's log lines name their attempt through orchestration/logcontext.py.)

- metrics.py  the collector: every value read from the database at scrape time
- health.py   database, broker and ticker checks
- views.py    the two endpoints (mounted by orchestration/config/urls.py)

Outside the core's layers: it reads the core's tables and calls nothing that changes them.
"""
