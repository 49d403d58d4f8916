"""Ops: what runs beside training: generated Prometheus rules, Grafana dashboards, file_sd
targets, and ``doctor``, the end-to-end check of a deployment.
"""
