"""Capture: the training step as the Monitor sees it.

The Monitor orchestrates; each step writes its row of the device ring (``steps``, ``ring``),
``sample_schedule`` says which steps are sampled, ``sampled_step`` turns a sampled step into
a Snapshot. Clipping by norm and skip-on-spike act on the step.
"""
