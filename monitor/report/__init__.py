"""Report: a run read back from its TensorBoard files, and the HTML report drawn from it.
"""
