"""Sequence parallelism for the Wan2.1 DiT on torch.distributed (pure PyTorch).

* :mod:`.ulysses`: the Ulysses token layout a ``WanDiT`` uses on each rank (``WanDiT.sequence_parallel``);
* :mod:`.group`: :class:`SequenceParallelDiT`, a process group the caller leads, called like ``WanDiT.forward``.
"""
from .group import SequenceParallelDiT, WorkerCrashed, rank_devices
from .ulysses import Ulysses, UlyssesTokens, check_sp_geometry, ulysses_bytes_per_forward, valid_sp_sizes

__all__ = ["SequenceParallelDiT", "WorkerCrashed", "rank_devices", "Ulysses", "UlyssesTokens", "check_sp_geometry",
           "ulysses_bytes_per_forward", "valid_sp_sizes"]
