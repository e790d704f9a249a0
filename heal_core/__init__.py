"""HEAL (Hindsight Entropy-Assisted Learning) as plain Python: no orchestration, no storage backends."""

__version__ = "0.1.0"
