"""Judging: Pulses and Snapshots -> Findings -> Alerts (no torch).

One module per detector family on a small ``base``; ``catalog`` lists the built-in ones,
``engine`` fires and resolves Alerts, ``remedies`` reads a finding's remedy against the run,
``init_audit`` judges the weights before the first step.
"""
