"""The admin API (DESIGN.md §7): gRPC server, status table, derived figures; generated code in `v1`."""
