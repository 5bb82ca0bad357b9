"""Branching rollouts for the Early Experience baselines: what each alternative does.

At every expert state of a train trajectory the episode is reset, the gold prefix
replayed (TextWorldExpress and ScienceWorld are deterministic given the episode
spec) and one alternative action taken; the observation it leads to is recorded, as
is the observation the expert's own action leads to. The alternatives are the critic
pairs' (`critic_alternatives`), so both baselines and ACT see the same actions; only
the baselines see what they do.

A replay is checked against the trajectory: every observation along the gold path,
and the state each branch starts from, must equal the recorded one, or the episode
is a failed replay (counted, never silently dropped). The cost is one reset and t
gold steps per alternative at step t: O(k T^2 / 2) env steps per episode of length T.

One record per state (JSON lines):
  {"state_id", "source", "step", "state" (the rendered state), "expert_action",
   "expert_observation", "alternatives": [{"action", "observation", "valid"}]}
"""
from __future__ import annotations

import collections
import dataclasses
import json
import time
from typing import Any, Iterable, Mapping, Sequence

from act_jax.data.pipeline import as_text
from act_jax.data.states import State
from act_jax.data.trajectory import Trajectory
from act_jax.envs.base import EpisodeSpec, TextEnv, TimeStep
from act_jax.envs.expert import describe_error
from act_jax.envs.pool import EnvPool

Branch = dict[str, Any]


@dataclasses.dataclass
class EpisodeBranches:
  branches: list[Branch]
  env_steps: int
  reason: str = ""  # why the replay failed; "" when it did not


def critic_alternatives(critic_pairs: Any) -> dict[str, list[str]]:
  """{state_id: its critic pairs' alternative actions, sorted} from a critic_pairs source."""
  out: dict[str, list[str]] = collections.defaultdict(list)
  for i in range(len(critic_pairs)):
    r = critic_pairs[i]
    out[as_text(r["state_id"])].append(as_text(r["alternative_action"]))
  return {k: sorted(v) for k, v in out.items()}


def replay_prefix(env: TextEnv, spec: EpisodeSpec, actions: Sequence[str]) -> TimeStep:
  """The time step after resetting to `spec` and taking `actions`."""
  ts = env.reset(spec)
  for a in actions:
    ts = env.step(a)
  return ts


def branch_episode(env: TextEnv, traj: Trajectory, states: Sequence[State],
                   alternatives: Mapping[str, Sequence[str]]) -> EpisodeBranches:
  """Branches of one trajectory's `states` (each `State.step` indexes `traj.steps`)."""
  spec = EpisodeSpec.from_meta(traj.meta)
  actions = [s.action for s in traj.steps]
  steps = 0
  try:
    ts = env.reset(spec)
    after: list[str] = []  # the observation each gold action leads to
    for t, step in enumerate(traj.steps):
      if ts.observation != step.observation:
        return EpisodeBranches([], steps, f"step {t}: the replayed observation differs "
                               "from the trajectory's")
      ts = env.step(step.action)
      steps += 1
      after.append(ts.observation)
    out = []
    for s in states:
      alts = []
      for a in alternatives.get(s.state_id, ()):
        start = replay_prefix(env, spec, actions[:s.step])
        if start.observation != traj.steps[s.step].observation:
          return EpisodeBranches([], steps, f"step {s.step}: a branch's replayed state "
                                 "differs from the trajectory's")
        ts = env.step(a)
        steps += s.step + 1
        alts.append({"action": a, "observation": ts.observation, "valid": ts.action_valid})
      out.append({"state_id": s.state_id, "source": s.source, "step": s.step,
                  "state": s.text, "expert_action": s.expert_action,
                  "expert_observation": after[s.step], "alternatives": alts})
    return EpisodeBranches(out, steps)
  except Exception as e:  # pylint: disable=broad-except
    # A simulator exception fails this episode, not the run (as in `expert.replay_gold`).
    return EpisodeBranches([], steps, f"simulator error: {describe_error(e)}")


def make_branches(pool: EnvPool, trajectories: Sequence[Trajectory], traj_ids: Sequence[str],
                  states: Sequence[State], alternatives: Mapping[str, Sequence[str]]
                  ) -> tuple[list[Branch], dict[str, Any]]:
  """Branches of every state over the pool, in state order, and the step's report."""
  by_traj: dict[str, list[State]] = collections.defaultdict(list)
  for s in states:
    by_traj[s.state_id.rsplit("/", 1)[0]].append(s)
  spec_keys = {"env", "game", "split", "seed"}
  jobs = [(t, by_traj[i]) for t, i in zip(trajectories, traj_ids)
          if by_traj[i] and spec_keys <= t.meta.keys()]
  no_spec = sum(1 for t, i in zip(trajectories, traj_ids)
                if by_traj[i] and not spec_keys <= t.meta.keys())
  t0 = time.perf_counter()
  results: list[EpisodeBranches | None] = [None] * len(jobs)
  for i, r in pool.imap_unordered(lambda env, job: branch_episode(env, *job, alternatives),
                                  jobs):
    results[i] = r
  records = [b for r in results for b in r.branches]
  failed = [(t.meta, r.reason) for (t, _), r in zip(jobs, results) if r.reason]
  alts = [a for b in records for a in b["alternatives"]]
  report = {
      "episodes": len(jobs), "failed_replays": len(failed),
      "episodes_without_spec": no_spec, "states": len(states), "branched_states": len(records),
      "states_skipped": len(states) - len(records),
      "states_without_alternatives": sum(1 for b in records if not b["alternatives"]),
      "branches": len(alts), "invalid_alternatives": sum(1 for a in alts if not a["valid"]),
      "env_steps": sum(r.env_steps for r in results), "wall_s": round(time.perf_counter() - t0, 2),
      "failures": [{**meta, "reason": why} for meta, why in failed[:20]],
  }
  return records, report


def write_jsonl(path: str, records: Iterable[Branch]) -> None:
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def read_jsonl(path: str) -> list[Branch]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
