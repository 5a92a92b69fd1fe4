"""OTLP receivers: gRPC (grpc.aio) and HTTP (aiohttp)."""
