"""Delivery to the upstream Collector: queue consumers, the sender chain and transports."""
