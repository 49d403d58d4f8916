"""Sinks: where the records go, on the export thread (never the training thread).

The export thread itself, the Prometheus collector with its endpoint and the Pushgateway
pusher, TensorBoard, the alert senders and forensics bundles.
"""
