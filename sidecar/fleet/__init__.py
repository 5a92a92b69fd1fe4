"""Fleet mode (DESIGN.md §9): sidecars in front of the same upstream share, through Redis, per endpoint,
the breaker's verdict, one recovery prober (a lease) and a retry budget; each writes a heartbeat.

Redis accelerates and never gates delivery: the request path reads only local state kept fresh by
background tasks (the one exception, a retry asking the fleet budget, asks during its backoff and waits
beyond it at most the command timeout), and while Redis is down every sidecar decides alone, as without
fleet mode.

Modules: `keys` (names in Redis), `scripts` (the Lua that makes each step atomic), `connection`
(the client, up/down tracking, reconnect with backoff), `view` (pure decisions: the lease, the gate),
`breaker` (shared breaker and probing per endpoint), `budget` (fleet retry budget), `membership`
(heartbeats and `status --fleet`), `fleet` (assembly and lifecycle), `handoff` (a departing sidecar's
backlog delivered by the others; with `handoff_codec`, `handoff_status` and `leftbehind`).
"""
