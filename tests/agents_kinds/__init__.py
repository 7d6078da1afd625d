"""The agent kinds that call the outside world (http, llm) and the outbound guard they share.

Every remote service here is a real HTTP server on 127.0.0.1 (tests/servers.py).
"""
