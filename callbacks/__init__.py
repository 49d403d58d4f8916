"""Lightning callbacks of gradwatch."""

from .training_diagnostics import TrainingDiagnostics

__all__ = ["TrainingDiagnostics"]
