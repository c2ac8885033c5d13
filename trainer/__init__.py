"""clipserve's reference trainer: ρMoCo, ρBYOL, ρSimCLR and ρSwAV on a stream of clip batches.

A separate, lightweight process: it decodes nothing itself and imports only ``clipserve.client``
from clipserve. Run it as ``python -m trainer --objective moco --server URL`` (or under torchrun).
"""
