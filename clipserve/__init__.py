"""clipserve: a video clip service for self-supervised video learning.

Data flows one way: dataset index -> planner (ClipPlan) -> executor (PyAV on CPU, DALI on GPU)
-> batches ``clips (B, ρ, C, T, H, W)`` uint8 -> shared-memory ring -> trainer.
"""

__version__ = "0.1.0"
