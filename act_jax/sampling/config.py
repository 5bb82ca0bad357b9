"""What the compiled sampler is specialised on, and how lengths are bucketed."""
from __future__ import annotations

import dataclasses

# Finish reasons as the device stores them; index into FINISH_REASONS.
LENGTH, EOS, STOP = 0, 1, 2
FINISH_REASONS = ("length", "eos", "stop")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How each token is picked and which tokens end a sequence.

  Hashable and static under `jax.jit`: every distinct value compiles its own
  programs, so keep one per use (rollout, GRPO, evaluation). Lengths, `n` and
  stop strings are per-call arguments instead, so they never force a compile.

  Attributes:
    temperature: 0 means greedy (argmax).
    top_k: keep the k most likely tokens; 0 keeps all.
    top_p: keep the smallest set of most likely tokens whose mass reaches p.
    eos_ids: tokens that end a sequence (kept in the output, finish "eos");
      None: the model config's (filled in by `Sampler`), () for none.
    stop_token_ids: token sequences that end a sequence when the output ends with
      one (kept in the output, finish "stop"); the text-level sampler adds the
      tokenisations of its stop strings here so the loop can exit early.
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_ids: tuple[int, ...] | None = None
  stop_token_ids: tuple[tuple[int, ...], ...] = ()

  def __post_init__(self):
    # Lists (e.g. from a ConfigDict) -> tuples, so the config stays hashable.
    if self.eos_ids is not None:
      object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
    object.__setattr__(self, "stop_token_ids",
                       tuple(tuple(int(i) for i in s) for s in self.stop_token_ids))
    if self.temperature < 0:
      raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
    if any(len(s) == 0 for s in self.stop_token_ids):
      raise ValueError("sampling.stop_token_ids: empty stop sequence")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


@dataclasses.dataclass(frozen=True)
class Buckets:
  """Padded shapes, so a run compiles a handful of programs, not one per batch.

  Lengths round up to 2^k or 1.5 * 2^k (at most a third wasted); the KV cache
  size (prompt bucket + room for new tokens) rounds up to a multiple of
  `slot_multiple`; the batch to a power of two that the mesh's batch axes divide.
  """
  min_len: int = 16
  slot_multiple: int = 64
  min_batch: int = 1

  def length(self, n: int) -> int:
    return max(self.min_len, round_up_geometric(n))

  def slots(self, prompt_bucket: int, max_new_tokens: int) -> int:
    # The last sampled token is never fed back, so it needs no slot.
    need = prompt_bucket + max(max_new_tokens - 1, 1)
    return -(-need // self.slot_multiple) * self.slot_multiple

  def batch(self, n: int, shards: int) -> int:
    b = max(self.min_batch, 1 << max(n - 1, 0).bit_length())
    return -(-b // shards) * shards


def round_up_geometric(n: int) -> int:
  """Smallest 2^k or 3 * 2^(k-1) that is >= n."""
  if n <= 2:
    return max(n, 1)
  p = 1 << (n - 1).bit_length()  # next power of two
  three_quarters = 3 * p // 4
  return three_quarters if three_quarters >= n and three_quarters * 4 == 3 * p else p

