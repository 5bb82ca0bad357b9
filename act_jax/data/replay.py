"""Supervised records replayed inside another stage's steps, against forgetting.

ACT's critic stage trains only on "which action is better?" prompts; a small model
then forgets how to write an action at all (from scratch, the critic stage left the
IL loss at 3-8x θ0's and generate mode 100% unparsed). Replaying θ0's own random-play
format records (an action prompt -> a *random* admissible action, no expert
information: `data.steps.random_play_records`) in every critic step keeps the action
format without telling the critic which action is right.

`loop.run(..., replay=Replay(...))` adds `replay_*` fields to each step's batch and
the train step adds `weight` x the replayed records' mean action cross-entropy to the
stage's own loss (`step.make_grad_fn`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from act_jax.data import pipeline

PREFIX = "replay_"


class Replay:
  """`batch_size` records per step (global), drawn without replacement within a step
  (with, when there are fewer records), seeded by (seed, step), so a resumed run
  replays what an uninterrupted one would."""

  def __init__(self, records: Sequence[dict[str, Any]], batch_size: int, weight: float,
               seed: int, pad_id: int):
    if not records:
      raise ValueError("replay: no records to replay")
    if batch_size < 1:
      raise ValueError(f"config.train.replay_batch_size={batch_size}: must be >= 1")
    self.records, self.batch_size, self.weight = list(records), batch_size, float(weight)
    self.seed, self.pad_id = seed, pad_id
    lengths = [len(r["input_ids"]) for r in self.records]
    self.buckets = pipeline.power_of_two_buckets(max(lengths), min(32, max(lengths)))
    self.width = pipeline.target_width(self.records)

  def batch(self, step: int, shard_index: int = 0, shard_count: int = 1
            ) -> dict[str, np.ndarray]:
    """This process's rows of step `step`'s replay batch, `replay_`-prefixed."""
    if self.batch_size % shard_count:
      raise ValueError(f"config.train.replay_batch_size={self.batch_size} is not divisible "
                       f"by the {shard_count} data shards")
    rng = np.random.default_rng((self.seed, step))
    chosen = rng.choice(len(self.records), self.batch_size,
                        replace=self.batch_size > len(self.records))
    n = self.batch_size // shard_count
    mine = [self.records[i] for i in chosen[shard_index * n:(shard_index + 1) * n]]
    length = pipeline.bucket_for(max(len(self.records[i]["input_ids"]) for i in chosen),
                                 self.buckets)  # the same on every process
    b = pipeline.collate(mine, length, self.pad_id, "supervised", target_width=self.width)
    out = {PREFIX + k: b[k] for k in ("tokens", "mask", "target_index", "target_mask")}
    out[PREFIX + "weight"] = np.full(n, self.weight, np.float32)
    return out


def split(batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """A step's batch -> (the stage's own fields, the replay fields unprefixed or None)."""
  own = {k: v for k, v in batch.items() if not k.startswith(PREFIX)}
  rep = {k[len(PREFIX):]: v for k, v in batch.items() if k.startswith(PREFIX)}
  return own, rep or None
