"""The live push: committed changes become small "changed" hints on the pages' websockets.

A change never travels with data. What leaves a worker or a web process is a set of channel
layer group names (`run.12`, `wf.3`, `item.7`, `inbox.u.5`); a socket joined only the groups
its user may see (topics.py decides, with the apps' own access rules); the browser, told that
one of its page parts changed, fetches that part through the ordinary view, which checks
permission again and renders the one partial the page and the htmx swap also use.
docs/live-push.md says why hints and not rendered HTML, and what each set-up costs.

- changes.py  what a committed change touched (runs, workflows, items), from a unit of work
              or from the event log, and the groups that hear of it
- topics.py   which page parts a user may subscribe to, and their groups
- publish.py  the after-commit hook with Redis: a per-process thread publishes the groups
- tail.py     the embedded set-up: each web process reads the event log by id and fans out
- consumer.py the websocket consumer: authenticates, joins groups, coalesces, sends hints
"""
