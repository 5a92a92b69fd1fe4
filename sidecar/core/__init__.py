"""The bottom layer: types every other package shares (signals, taxonomy, export errors, queue entry,
ingest interface, clock). It imports nothing else from `sidecar`, so any package may import it."""
