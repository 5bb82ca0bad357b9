"""Rollout evaluation: run a policy on episodes of each split, batched over an EnvPool.

A policy is any callable `policy(batch: Sequence[PolicyInput]) -> list[str]`: one
action per live episode, called once per tick with every live episode of the pool, so
a model-backed policy batches its generation (or its scoring of admissible actions).
Each `PolicyInput` holds the task, the (observation, action) history, the current
observation and the admissible actions; `to_trajectory()` gives the same state in the
project's trajectory schema for prompt builders.

Also: next-action accuracy on held-out expert states, Wilson intervals (`stats`), a markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from act_jax import cli, stats
from act_jax.data.trajectory import Step, Trajectory
from act_jax.envs.base import EpisodeSpec
from act_jax.envs.pool import EnvPool
from act_jax.parsing import normalize_action


@dataclasses.dataclass(frozen=True)
class PolicyInput:
  """The state of one live episode, as a policy sees it."""
  task: str
  history: tuple[tuple[str, str], ...]  # (observation, action) of the steps so far.
  observation: str
  admissible: tuple[str, ...]
  spec: EpisodeSpec | None = None
  instruction: str = ""  # a recorded trajectory's own; live episodes have none.

  @property
  def step(self) -> int:
    return len(self.history)

  def to_trajectory(self, instruction: str = "") -> Trajectory:
    """This state in the trajectory schema: the last step is the current one, action "".

    instruction: used when the state carries none of its own (live episodes), so a
    policy renders it as its training data did.
    """
    steps = [Step(observation=o, action=a) for o, a in self.history]
    steps.append(Step(observation=self.observation, action="", admissible=list(self.admissible)))
    return Trajectory(task=self.task, steps=steps, instruction=self.instruction or instruction,
                      meta=self.spec.to_meta() if self.spec else {})


Policy = Callable[[Sequence[PolicyInput]], list[str]]


class OraclePolicy:
  """Replays gold paths, looked up by episode key; gold exists from the initial state only."""

  def __init__(self, gold: Mapping[str, Sequence[str]], fallback: str = "look around"):
    self.gold = {k: list(v) for k, v in gold.items()}
    self.fallback = fallback

  @classmethod
  def from_trajectories(cls, trajectories: Iterable[Trajectory]) -> "OraclePolicy":
    return cls({EpisodeSpec.from_meta(t.meta).key: [s.action for s in t.steps]
                for t in trajectories})

  def __call__(self, batch: Sequence[PolicyInput]) -> list[str]:
    out = []
    for x in batch:
      if x.spec is None or x.spec.key not in self.gold:
        raise KeyError(f"no gold path for {x.spec}")
      gold = self.gold[x.spec.key]
      out.append(gold[x.step] if x.step < len(gold) else self.fallback)
    return out


class RandomPolicy:
  """Picks a uniformly random admissible action.

  The RNG is seeded per (seed, episode, step), so the choice does not depend on how
  episodes are batched: a pool run and a one-env loop take the same actions.
  """

  def __init__(self, seed: int = 0, fallback: str = "look around"):
    self.seed = seed
    self.fallback = fallback

  def __call__(self, batch: Sequence[PolicyInput]) -> list[str]:
    out = []
    for x in batch:
      rng = random.Random(f"{self.seed}|{x.spec.key if x.spec else x.task}|{x.step}")
      out.append(rng.choice(x.admissible) if x.admissible else self.fallback)
    return out


def collect_gold(pool: EnvPool, specs: Sequence[EpisodeSpec]) -> dict[str, list[str]]:
  """Gold paths of `specs` (one reset each), for an `OraclePolicy`."""
  def job(env, spec):
    env.reset(spec, gold=True)
    return env.gold_actions()
  out = {}
  for i, gold in pool.imap_unordered(job, specs):
    out[specs[i].key] = gold
  return out


@dataclasses.dataclass
class EpisodeResult:
  spec: EpisodeSpec
  success: bool
  score: float
  steps: int
  invalid_actions: int
  actions: list[str]

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["spec"] = self.spec.to_meta()
    return d


def run_episodes(policy: Policy, pool: EnvPool, specs: Sequence[EpisodeSpec], max_steps: int,
                 progress: Callable[[int], None] | None = None) -> list[EpisodeResult]:
  """Runs one episode per spec, up to max_steps actions each; results in spec order.

  Every free env takes the next pending spec; each tick calls the policy once on all
  live episodes, then steps their envs together. `progress(1)` as each episode ends.
  """
  n = len(pool)
  pending = list(enumerate(specs))[::-1]
  results: list[EpisodeResult | None] = [None] * len(specs)
  live: list[dict[str, Any] | None] = [None] * n
  def finish(slot: int) -> None:
    ep = live[slot]
    results[ep["index"]] = EpisodeResult(
        spec=ep["spec"], success=ep["ts"].success, score=ep["ts"].score, steps=len(ep["history"]),
        invalid_actions=ep["invalid"], actions=[a for _, a in ep["history"]])
    live[slot] = None
    if progress is not None:
      progress(1)

  while True:
    fill: list[EpisodeSpec | None] = [None] * n
    for slot in range(n):
      if live[slot] is None and pending:
        idx, spec = pending.pop()
        live[slot] = {"index": idx, "spec": spec, "history": [], "invalid": 0}
        fill[slot] = spec
    for slot, ts in enumerate(pool.reset(fill)):
      if ts is not None:
        live[slot]["ts"] = ts
        if ts.done or max_steps <= 0:
          finish(slot)
    slots = [s for s in range(n) if live[s] is not None]
    if not slots:
      if pending:
        continue  # Every new episode ended at reset; refill.
      break
    batch = [PolicyInput(task=live[s]["ts"].task, history=tuple(live[s]["history"]),
                         observation=live[s]["ts"].observation,
                         admissible=tuple(live[s]["ts"].admissible), spec=live[s]["spec"])
             for s in slots]
    actions = policy(batch)
    if len(actions) != len(batch):
      raise ValueError(f"policy returned {len(actions)} actions for {len(batch)} episodes")
    step_args: list[str | None] = [None] * n
    for s, a in zip(slots, actions):
      step_args[s] = a
    for s, ts in enumerate(pool.step(step_args)):
      if ts is None:
        continue
      ep = live[s]
      ep["history"].append((ep["ts"].observation, step_args[s]))
      ep["invalid"] += int(not ts.action_valid)
      ep["ts"] = ts
      if ts.done or len(ep["history"]) >= max_steps:
        finish(s)
  return results  # type: ignore[return-value]


def summarize(results: Sequence[EpisodeResult], keep_episodes: bool = False) -> dict[str, Any]:
  """Success rate with its 95% Wilson interval, mean steps, invalid-action rate (JSON-able)."""
  n = len(results)
  k = sum(r.success for r in results)
  steps = sum(r.steps for r in results)
  lo, hi = stats.wilson_interval(k, n)
  out = {
      "episodes": n,
      "successes": k,
      "success_rate": k / n if n else 0.0,
      "success_ci95": [lo, hi],
      "avg_steps": steps / n if n else 0.0,
      "avg_score": sum(r.score for r in results) / n if n else 0.0,
      "invalid_action_rate": sum(r.invalid_actions for r in results) / steps if steps else 0.0,
  }
  if keep_episodes:
    out["per_episode"] = [r.to_dict() for r in results]
  return out


def evaluate(policy: Policy, pool: EnvPool, splits: Mapping[str, Sequence[EpisodeSpec]],
             max_steps: int, keep_episodes: bool = False,
             progress: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
  """{split: summary} for a policy over each split's episodes (see `summarize`)."""
  return {name: summarize(run_episodes(policy, pool, specs, max_steps, progress), keep_episodes)
          for name, specs in splits.items()}


def expert_states(trajectories: Iterable[Trajectory]) -> list[tuple[PolicyInput, str, int]]:
  """Every state of every expert trajectory: (state, the expert's action, trajectory index).

  Admissible lists are augmented with the expert action (ScienceWorld's may lack it).
  """
  out = []
  for k, t in enumerate(trajectories):
    has_spec = {"env", "game", "split", "seed"} <= t.meta.keys()
    spec = EpisodeSpec.from_meta(t.meta) if has_spec else None
    for i, s in enumerate(t.steps):
      adm = list(s.admissible or [])
      if s.admissible is not None and s.action not in adm:
        adm.append(s.action)
      x = PolicyInput(task=t.task, history=tuple((p.observation, p.action) for p in t.steps[:i]),
                      observation=s.observation, admissible=tuple(adm), spec=spec,
                      instruction=t.instruction)
      out.append((x, s.action, k))
  return out


def next_action_accuracy(policy: Policy, trajectories: Iterable[Trajectory],
                         batch_size: int = 64, max_states: int | None = None,
                         seed: int = 0, progress: Callable[[int], None] | None = None
                         ) -> dict[str, Any]:
  """Fraction of held-out expert states where the policy picks the expert action.

  For a scoring policy (rank admissible actions by likelihood) or a generative one;
  actions are compared after `normalize_action`. max_states: at most this many states,
  evenly spaced over all of them (so every game and step depth stays represented).
  The 95% interval is a bootstrap over episodes (`stats.cluster_bootstrap_ci`): the
  states of one episode are not independent draws.
  """
  from act_jax import stats  # pylint: disable=import-outside-toplevel
  states = expert_states(trajectories)
  if max_states is not None and len(states) > max_states:
    keep = np.linspace(0, len(states) - 1, max_states).round().astype(int)
    states = [states[i] for i in keep]
  hits, admissible = [], 0
  for i in range(0, len(states), batch_size):
    chunk = states[i:i + batch_size]
    actions = policy([x for x, _, _ in chunk])
    if len(actions) != len(chunk):
      raise ValueError(f"policy returned {len(actions)} actions for {len(chunk)} states")
    for (x, gold, _), a in zip(chunk, actions):
      hits.append(normalize_action(a) == normalize_action(gold))
      admissible += normalize_action(a) in {normalize_action(b) for b in x.admissible}
    if progress is not None:
      progress(len(chunk))
  n, correct = len(states), int(sum(hits))
  ci = stats.cluster_bootstrap_ci(hits, [k for _, _, k in states], seed=seed)
  return {"states": n, "correct": correct, "accuracy": correct / n if n else 0.0,
          "accuracy_ci95": list(ci), "episodes": len({k for _, _, k in states}),
          # Per state, in a fixed order, for deltas paired by state (`results`).
          "per_state": [int(h) for h in hits], "per_state_episode": [k for _, _, k in states],
          "interval": "bootstrap over episodes",
          "admissible_rate": admissible / n if n else 0.0}


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """One row per split: success % [95% CI], episodes, avg steps, invalid-action %."""
  lines = ["| split | success % | 95% CI | episodes | avg steps | invalid % |",
           "|---|---|---|---|---|---|"]
  for name, r in results.items():
    lo, hi = r["success_ci95"]
    lines.append(f"| {name} | {100 * r['success_rate']:.1f} | [{100 * lo:.1f}, {100 * hi:.1f}] | "
                 f"{r['episodes']} | {r['avg_steps']:.1f} | {100 * r['invalid_action_rate']:.1f} |")
  return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
  p = cli.parser("envs.rollout", "Baselines: an oracle or random-admissible policy on the "
                 "evaluation splits (success with Wilson intervals, per split).")
  p.add_argument("--env", choices=["twx", "scienceworld"], default="twx", help="environment")
  p.add_argument("--games", default="", help="comma-separated TWX games (default: training games)")
  p.add_argument("--policy", choices=["oracle", "random"], default="random",
                 help="oracle: the gold path; random: a random admissible action")
  p.add_argument("--n", type=int, default=100, help="episodes per game per split")
  p.add_argument("--max-steps", type=int, default=50, help="steps per episode at most")
  p.add_argument("--workers", type=int, default=2, help="envs (JVMs) in parallel")
  p.add_argument("--seed", type=int, default=0, help="seed of the random policy")
  p.add_argument("--out", default="", help="write the JSON results here (default: print only)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Baselines from the command line: oracle or random-admissible on the default splits."""
  # pylint: disable=import-outside-toplevel
  import json

  from act_jax.console import Progress
  from act_jax.envs.splits import DEFAULT_SPLITS, eval_episodes, twx_splits
  args = parser().parse_args(argv)

  splits = (twx_splits(args.games.split(",")) if args.env == "twx" and args.games
            else DEFAULT_SPLITS[args.env])
  episodes = eval_episodes(splits, args.n)
  kwargs = {"admissible": False} if args.env == "scienceworld" and args.policy == "oracle" else {}
  with EnvPool(args.env, args.workers, **kwargs) as pool:
    if args.policy == "oracle":
      policy: Policy = OraclePolicy(collect_gold(pool, [s for v in episodes.values() for s in v]))
    else:
      policy = RandomPolicy(args.seed)
    with Progress(sum(map(len, episodes.values())), "episodes") as bar:
      results = evaluate(policy, pool, episodes, args.max_steps, progress=bar.update)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
  print(markdown_table(results))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
