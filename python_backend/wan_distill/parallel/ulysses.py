"""Ulysses sequence parallelism for one WanDiT forward over a torch.distributed process group of P ranks.

Every rank holds the whole DiT and the same inputs. After the patch embedding each rank keeps L' = ceil(L / P)
consecutive video tokens (rank r: tokens r*L' ... (r+1)*L' - 1) with their RoPE rotations. Per block:

* self-attention: q/k/v of the rank's tokens (all n heads; RMSNorm over the full width and RoPE already applied)
  go through one all-to-all, [B, L', n, d] -> [B, P*L', n/P, d]: every rank now has the whole sequence for n/P
  heads, attends, and a second all-to-all brings the output back, [B, P*L', n/P, d] -> [B, L', n*d];
* cross-attention, FFN, modulation and the head are per token: local, no communication.

The head's output [B, L', out*prod(patch)] is all-gathered (every rank returns the full result) and unpatchified.

L not divisible by P: the token sequence is zero-padded to P*L'. The padded tokens are dropped from the keys and
values before attention (keys are sliced to the first L, so no mask and no change to any real token's result)
and from the gathered output; their queries compute rows nobody reads. n not divisible by P is refused
(:func:`check_sp_geometry`), as the heads are what Ulysses splits.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..config import ConfigError, DiTConfig
from ..models.dit import attention

__all__ = ["Ulysses", "UlyssesTokens", "check_sp_geometry", "valid_sp_sizes", "ulysses_bytes_per_forward"]


def valid_sp_sizes(cfg: DiTConfig) -> list[int]:
    """Sequence-parallel sizes this DiT allows: the divisors of its head count."""
    return [p for p in range(1, cfg.num_heads + 1) if cfg.num_heads % p == 0]


def check_sp_geometry(cfg: DiTConfig, sp_size: int) -> None:
    """Refuse an ``sp_size`` that does not divide the DiT's heads (ConfigError naming both and the valid sizes)."""
    if sp_size < 1 or cfg.num_heads % sp_size:
        raise ConfigError(
            f"sp_size {sp_size} does not divide the DiT's num_heads {cfg.num_heads} (dim {cfg.dim}, head_dim "
            f"{cfg.head_dim}): Ulysses sequence parallelism gives each rank num_heads / sp_size heads; "
            f"choose sp_size among {valid_sp_sizes(cfg)}")


class Ulysses:
    """The sequence-parallel seam of one rank: ``WanDiT.sequence_parallel = Ulysses(rank, size)``.

    Called with the token count L of a forward, returns that forward's :class:`UlyssesTokens`. ``group`` None
    is the default process group. ``bytes_sent`` counts what this rank has sent to the other ranks so far
    (all-to-all and all-gather payloads, excluding the share a rank keeps for itself).
    """

    def __init__(self, rank: int, size: int, group: dist.ProcessGroup | None = None):
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} outside a group of {size}")
        self.rank, self.size, self.group = rank, size, group
        self.bytes_sent = 0

    def __call__(self, num_tokens: int) -> UlyssesTokens:
        return UlyssesTokens(self, num_tokens)

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """x [P, ...]: slice j goes to rank j -> [P, ...]: slice i came from rank i."""
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=self.group)
        self.bytes_sent += x.numel() * x.element_size() * (self.size - 1) // self.size
        return out

    def all_gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(out, x, group=self.group)
        self.bytes_sent += x.numel() * x.element_size() * (self.size - 1)
        return out


class UlyssesTokens:
    """Token layout of one forward on one rank (the three methods of ``models.dit.LocalTokens``)."""

    def __init__(self, sp: Ulysses, num_tokens: int):
        self.sp, self.num_tokens = sp, num_tokens
        self.local = math.ceil(num_tokens / sp.size)  # L' tokens per rank
        self.padded = self.local * sp.size

    def shard(self, x: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, D], freqs [L, 1, d/2] -> this rank's x [B, L', D], freqs [L', 1, d/2] (padding: zeros / 1)."""
        pad = self.padded - self.num_tokens
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            freqs = torch.cat([freqs, freqs.new_ones(pad, *freqs.shape[1:])])
        start = self.sp.rank * self.local
        return x[:, start:start + self.local].contiguous(), freqs[start:start + self.local]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q/k/v [B, L', n, d] (all heads of this rank's tokens) -> [B, L', n*d], attention over all L tokens."""
        p = self.sp.size
        b, s, n, d = q.shape
        if n % p:
            raise ValueError(f"Ulysses needs num_heads ({n}) divisible by the group size ({p})")
        # sequence-sharded -> head-sharded: [3, B, L', P, n/P, d] -> [P, 3, B, L', n/P, d] -> exchange
        qkv = torch.stack([q, k, v]).unflatten(3, (p, n // p)).movedim(3, 0)
        qkv = self.sp.all_to_all(qkv)  # [P (source rank = token block), 3, B, L', n/P, d]
        q, k, v = qkv.permute(1, 2, 0, 3, 4, 5).reshape(3, b, p * s, n // p, d)  # whole sequence, n/P heads
        real = self.num_tokens
        out = attention(q, k[:, :real], v[:, :real])  # [B, P*L', n/P*d]; padded keys dropped
        # head-sharded -> sequence-sharded: [B, P, L', n/P, d] -> [P, B, L', n/P, d] -> exchange
        out = self.sp.all_to_all(out.reshape(b, p, s, n // p, d).movedim(1, 0))  # [P (source = head group), B, L', ...]
        return out.permute(1, 2, 0, 3, 4).reshape(b, s, n * d)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L', C] -> [B, L, C] on every rank."""
        return torch.cat(self.sp.all_gather(x), dim=1)[:, :self.num_tokens]


def ulysses_bytes_per_forward(cfg: DiTConfig, num_tokens: int, sp_size: int, batch: int = 1,
                              act_bytes: int = 2) -> dict[str, int]:
    """Bytes one rank sends to the others in one DiT forward (what :class:`Ulysses` counts in ``bytes_sent``).

    Per block two all-to-alls: q, k, v out (3 B L' D elements) and the attention output back (B L' D), of which a
    rank keeps 1/P; at the end the all-gather of the fp32 head output (B L' out*prod(patch) elements) to P-1 ranks.
    ``act_bytes``: 2 for bf16 activations, 4 for fp32.
    """
    p = sp_size
    local = math.ceil(num_tokens / p)
    per_layer = 4 * batch * local * cfg.dim * act_bytes * (p - 1) // p
    gather = batch * local * cfg.out_dim * math.prod(cfg.patch_size) * 4 * (p - 1)
    return {"per_layer": per_layer, "all_to_all": per_layer * cfg.num_layers, "gather": gather,
            "total": per_layer * cfg.num_layers + gather}
