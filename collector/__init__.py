"""The central collector: MQTT subscriber, storage, tracing queries, HTTP API."""
