"""Expert trajectories: replay every gold path, check it succeeds, write JSON lines.

  python -m act_jax.envs.expert --env twx --games cookingworld,twc,coin --split train \\
      --n 1000 --out data/twx_train.jsonl
  python -m act_jax.envs.expert --env scienceworld --split-spec id --n 5 --out sw_id.jsonl

Each step records the observation, the gold action and the admissible actions there
(ScienceWorld's valid list ∪ {gold action}; `meta.augmented_steps` counts the
additions). TWX gold actions the parser rejects (rare no-ops) are skipped and listed
in `meta.skipped_gold_actions`. Replays that do not end in success are counted,
printed and written to `<out>.failures.jsonl` (success=False, meta.reason): never
silently dropped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any, Sequence

from act_jax import cli
from act_jax.data.trajectory import Step, Trajectory, write_jsonl
from act_jax.envs.base import EpisodeSpec, TextEnv
from act_jax.envs.pool import EnvPool
from act_jax.envs.splits import DEFAULT_SPLITS, SW_SIMPLIFICATION, TWX_HARD_PARAMS, TWX_TRAIN_PARAMS

PARAM_PRESETS = {"train": TWX_TRAIN_PARAMS, "hard": TWX_HARD_PARAMS, "default": {}}


@dataclasses.dataclass
class Replay:
  trajectory: Trajectory
  seconds: float
  env_steps: int


def describe_error(e: BaseException) -> str:
  java = getattr(e, "java_exception", None)
  try:
    return f"{type(e).__name__}: {java.toString() if java is not None else e}"[:500]
  except Exception:  # pylint: disable=broad-except
    return type(e).__name__


def replay_gold(env: TextEnv, spec: EpisodeSpec, max_steps: int | None = None) -> Replay:
  """Resets to spec, replays its gold path, and returns the trajectory with success set.

  A failed replay has success=False and meta["reason"] saying why.
  """
  t0 = time.perf_counter()
  steps: list[Step] = []
  gold: list[str] = []
  skipped: list[str] = []
  augmented = 0
  reason = ""
  task, success, score = "", False, 0.0
  try:
    ts = env.reset(spec, gold=True)
    task = ts.task
    gold = env.gold_actions()
    if not gold or gold[0].startswith("ERROR"):
      reason = f"no gold path: {gold[:1]}"
      gold = []
    for action in gold:
      if max_steps is not None and len(steps) >= max_steps:
        break
      admissible = list(ts.admissible)
      if action not in admissible:
        if env.admissible_is_complete:
          # TWX gold paths hold the odd no-op the parser rejects ("open kitchen cupboard"
          # when it is open): skipped, and the success check below still holds.
          skipped.append(action)
          continue
        admissible.append(action)
        augmented += 1
      steps.append(Step(observation=ts.observation, action=action, admissible=admissible))
      ts = env.step(action)
      if ts.done:
        break
    success, score = ts.success, ts.score
    if not reason and not success:
      reason = ("task failed" if ts.done else "gold path ended before success") + \
               f" after {len(steps)} steps of a {len(gold)}-action gold path, score {score:.2f}"
  except Exception as e:  # pylint: disable=broad-except
    # A simulator exception (e.g. params it cannot build) fails this episode, not the run.
    reason = f"simulator error: {describe_error(e)}"
  meta: dict[str, Any] = {**spec.to_meta(), "gold_len": len(gold), "score": score,
                          "augmented_steps": augmented, "skipped_gold_actions": skipped}
  if reason:
    meta["reason"] = reason
  traj = Trajectory(task=task, steps=steps, success=success and not reason,
                    source=f"expert:{spec.env}", meta=meta)
  return Replay(traj, time.perf_counter() - t0, len(steps))


def generate(pool: EnvPool, specs: Sequence[EpisodeSpec], progress: bool = True,
             max_steps: int | None = None
             ) -> tuple[list[Trajectory], list[Trajectory], dict[str, Any]]:
  """Replays specs over the pool: (successes, failures, summary), both lists in spec order."""
  bar = None
  if progress:
    import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm.tqdm(total=len(specs), desc="gold replay", file=sys.stderr)
  replays: list[Replay | None] = [None] * len(specs)
  t0 = time.perf_counter()
  for i, r in pool.imap_unordered(lambda env, s: replay_gold(env, s, max_steps), specs):
    replays[i] = r
    if bar is not None:
      bar.update(1)
      bar.set_postfix(failed=sum(x is not None and not x.trajectory.success for x in replays))
  if bar is not None:
    bar.close()
  wall = time.perf_counter() - t0
  ok = [r.trajectory for r in replays if r.trajectory.success]
  bad = [r.trajectory for r in replays if not r.trajectory.success]
  per_game: dict[str, dict[str, int]] = {}
  for r in replays:
    g = per_game.setdefault(r.trajectory.meta["game"], {"ok": 0, "failed": 0})
    g["ok" if r.trajectory.success else "failed"] += 1
  env_steps = sum(r.env_steps for r in replays)
  summary = {
      "episodes": len(specs), "succeeded": len(ok), "failed": len(bad), "per_game": per_game,
      "env_steps": env_steps, "wall_s": round(wall, 2),
      # Per-episode time includes reset and gold-path generation.
      "ms_per_step": round(1000 * sum(r.seconds for r in replays) / max(env_steps, 1), 2),
      "augmented_steps": sum(r.trajectory.meta["augmented_steps"] for r in replays),
      "skipped_gold_actions": sum(len(r.trajectory.meta["skipped_gold_actions"]) for r in replays),
      "failures": [{**t.meta} for t in bad[:50]],
  }
  return ok, bad, summary


def _parse_param_overrides(items: Sequence[str]) -> dict[str, str]:
  out = {}
  for item in items:
    game, _, params = item.partition(":")
    out[game] = params
  return out


def build_specs(args: argparse.Namespace) -> list[EpisodeSpec]:
  """The episodes the command line asks for."""
  if args.split_spec:
    split = DEFAULT_SPLITS[args.env][args.split_spec]
    if args.games:
      split = split.with_(games=tuple(args.games.split(",")))
    return split.episodes(args.n)
  if not args.games:
    raise SystemExit("--games or --split-spec is required")
  games = args.games.split(",")
  if args.env == "twx":
    from act_jax.envs.twx import TWX_SEEDS  # pylint: disable=import-outside-toplevel
    params = {**PARAM_PRESETS[args.params_preset], **_parse_param_overrides(args.params)}
    seeds = lambda g: TWX_SEEDS[args.split]
  else:
    from act_jax.envs.sciworld import sw_variations  # pylint: disable=import-outside-toplevel
    params = {g: args.simplification for g in games}
    seeds = lambda g: sw_variations(g, args.split)
  specs = []
  for g in games:
    s = seeds(g)[args.start:]
    specs += [EpisodeSpec(args.env, g, args.split, seed, params.get(g, ""))
              for seed in (s if args.n is None else s[:args.n])]
  return specs


def parser() -> argparse.ArgumentParser:
  p = cli.parser("envs.expert", __doc__)
  p.add_argument("--env", choices=["twx", "scienceworld"], default="twx", help="environment")
  p.add_argument("--games", default="", help="comma-separated TWX games or ScienceWorld tasks")
  p.add_argument("--split", choices=["train", "dev", "test"], default="train",
                 help="simulator fold")
  p.add_argument("--split-spec", default="", help="a named split of splits.DEFAULT_SPLITS[env] "
                 "(train, id, ood_...); overrides --split and params")
  p.add_argument("--n", type=int, default=None, help="episodes per game (default: the whole fold)")
  p.add_argument("--start", type=int, default=0, help="offset into each game's fold seeds")
  p.add_argument("--params-preset", choices=sorted(PARAM_PRESETS), default="train",
                 help="TWX game params: splits.TWX_TRAIN_PARAMS, TWX_HARD_PARAMS or defaults")
  p.add_argument("--params", action="append", default=[], metavar="GAME:K=V,K=V",
                 help="override one TWX game's params (repeatable)")
  p.add_argument("--simplification", default=SW_SIMPLIFICATION, help="ScienceWorld simplifications")
  p.add_argument("--workers", type=int, default=1, help="envs (JVMs) replaying in parallel")
  p.add_argument("--max-steps", type=int, default=None, help="cap on replayed gold steps")
  p.add_argument("--no-look-inventory", action="store_true",
                 help="observations without the appended look / inventory text")
  p.add_argument("--no-admissible", action="store_true",
                 help="leave admissible lists out (ScienceWorld's run to ~1000 actions a step)")
  p.add_argument("--out", required=True, help="JSONL file of the trajectories")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)

  specs = build_specs(args)
  kwargs = {"observe_look_inventory": not args.no_look_inventory}
  with EnvPool(args.env, args.workers, **kwargs) as pool:
    ok, bad, summary = generate(pool, specs, progress=not args.no_progress,
                                max_steps=args.max_steps)
  if args.no_admissible:
    for t in ok + bad:
      for s in t.steps:
        s.admissible = None
  write_jsonl(args.out, ok)
  summary["out"] = args.out
  if bad:
    summary["failures_out"] = args.out + ".failures.jsonl"
    write_jsonl(summary["failures_out"], bad)
  print(json.dumps(summary, indent=1))
  if bad:
    print(f"WARNING: {len(bad)}/{len(specs)} gold replays failed; see {summary['failures_out']}",
          file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
