"""Records: the plain host data everything downstream reads (no torch).

Pulse and Snapshot, findings and alerts, the thresholds, the alert table, the regimes, the
metric contract, the named columns of the device tables and the packing of a host copy into
a Snapshot. Every other room imports this one; it imports none of them.
"""
