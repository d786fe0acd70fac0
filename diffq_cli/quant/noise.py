"""Sources of the unit noise that DiffQ scales per group during training.

Drawing new ``torch.randn`` values for every weight at every step is exact, but on CPU 11.7M
normals cost about a quarter of a ResNet-18 training step (and fresh noise measured within the
seeds' spread of the pool). The pool keeps a few pre-generated chunks of exact N(0, 1) (or
U(-1/2, 1/2)) values.
Each parameter reads a window of one chunk at a fresh random offset, with a random sign, every
step, and one chunk is partly redrawn every step. Each weight thus sees an exactly distributed
noise value, drawn from millions of candidates, that changes every step; only the correlation
between far-apart windows differs from fresh noise. Chunks are never modified in place: a refresh
builds a new chunk, so noise saved for a pending backward pass stays valid (gradient accumulation
with several forwards before one backward is safe).
"""

import torch

# Fraction of one chunk redrawn per step: with 2 chunks, every value is renewed every 16 steps.
REFRESH_FRACTION = 0.125
MIN_CHUNK = 1 << 18
# Two chunks a little larger than the largest parameter: enough room for random offsets (over
# 140k places for ResNet-18's largest tensor, times two signs) at half the weights' memory.
# Four chunks of 1.25x (the first design) cost as much memory as the weights themselves.
NUM_CHUNKS = 2
SLACK = 1 / 16


class NoisePool:
    """Random windows into pre-generated noise; see the module docstring.

    Args:
        kind: "gaussian" (N(0, 1)) or "uniform" (U(-1/2, 1/2)).
        largest: numel of the largest parameter that will ask for noise.
        total: total numel of all such parameters.
        device: where the pool lives (the parameters' device).
    """

    def __init__(self, kind: str, largest: int, total: int, device: torch.device):
        self.kind = kind
        self.chunk_size = max(MIN_CHUNK, largest + int(largest * SLACK))
        self.num_chunks = NUM_CHUNKS
        self.device = device
        self.chunks = [self._draw(self.chunk_size) for _ in range(self.num_chunks)]
        self._step = 0

    def _draw(self, n: int) -> torch.Tensor:
        if self.kind == "gaussian":
            return torch.randn(n, device=self.device)
        return torch.rand(n, device=self.device).sub_(0.5)

    def refresh(self) -> None:
        """Redraws part of one chunk (out of place, see the module docstring)."""
        index = self._step % self.num_chunks
        span = int(self.chunk_size * REFRESH_FRACTION)
        start = (self._step // self.num_chunks) % int(1 / REFRESH_FRACTION) * span
        chunk = self.chunks[index].clone()
        chunk[start : start + span] = self._draw(min(span, self.chunk_size - start))
        self.chunks[index] = chunk
        self._step += 1

    def windows(self, sizes: list[int]) -> list[tuple[torch.Tensor, float]]:
        """One (noise window, sign) per requested size, at fresh random places."""
        # One host-side draw for all parameters: CPU RNG, so no device synchronisation.
        draws = torch.randint(0, 1 << 62, (len(sizes),)).tolist()
        out = []
        for size, draw in zip(sizes, draws, strict=True):
            chunk = self.chunks[draw % self.num_chunks]
            offset = (draw >> 4) % (self.chunk_size - size + 1)
            sign = 1.0 if (draw >> 3) & 1 else -1.0
            out.append((chunk[offset : offset + size], sign))
        return out

    def state_dict(self) -> dict:
        """Chunks and step, so that a resumed run draws exactly the same noise."""
        return {"chunks": [c.cpu() for c in self.chunks], "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        if len(state["chunks"]) != self.num_chunks or state["chunks"][0].numel() != self.chunk_size:
            raise ValueError("noise pool state does not match this model's quantizer")
        self.chunks = [c.to(self.device) for c in state["chunks"]]
        self._step = int(state["step"])

    def to(self, device: torch.device) -> "NoisePool":
        self.device = device
        self.chunks = [c.to(device) for c in self.chunks]
        return self
