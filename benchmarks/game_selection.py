#!/usr/bin/env python
"""θ0's next-action accuracy per TextWorldExpress game, to pick games for ACT.

    python benchmarks/game_selection.py                      # every candidate, 40 states
    python benchmarks/game_selection.py --states 10 --games arithmetic
    python benchmarks/game_selection.py --rank-states 16     # fewer states for rank mode

θ0 is the real SmolLM2-135M-Instruct (`configs/smollm2_twx.py`'s `pipeline.model_dir`;
write it first with `python -m act_jax.hf smollm2 models/smollm2-135m-instruct`).
Everything goes through the pipeline's own code, with `configs/smollm2_twx.py`
(`get_config("cpu")` on a CPU backend: float32; else "gpu") as the config, one game
at a time:

  states    `env_splits(c)["id"]`: train-fold seeds from 800 on (held out from the
            training split), the game's gold paths replayed by `envs.expert.generate`
            (observe_look_inventory as configured), N evenly spaced states of the first
            N episodes picked by `rollout.next_action_accuracy(max_states=N)`
  prompts   `ModelPolicy` renders them as training does: chat template, the config's
            `data.max_state_tokens`, the pipeline's instruction (`evaluation.
            training_instruction`: built-in expert data has none)
  model     `Pipeline(c, workdir)`: its tokenizer step (`data_steps.make_tokenizer`),
            `full_config`, `sampler` and `params_of(model_dir)`, as its eval step uses
  accuracy  `rollout.next_action_accuracy` in `rank` mode (admissible actions by summed
            log p of "Action: <a>" + EOS) and `generate` mode (greedy, 24 new tokens,
            `parsing.parse_action`); compared after `normalize_action`

Columns: mean prompt tokens (the chat-templated action prompt of the measured
states), mean admissible actions (rank chance = mean 1/|admissible|), rank and
generate accuracy, generate parse rate (completions with an "Action:" line) and
admissible rate (generated actions that are in the admissible list), seconds.

The only knob beyond the pipeline's: `ModelPolicy(batch_size=...)` (states per model
call; the pipeline's evaluation uses 64). Rank mode scores every admissible action of
every state of a call in ONE forward pass, so 64 states x ~30 actions x ~700 tokens
would not fit a CPU's memory; here rank uses `--rank-batch` states per call.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs persist across runs (a CPU compile of one shape takes ~10-20 s).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/jax_cache_game_selection")

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# Candidate games: name -> (TWX game, params). Small worlds, so prompts stay short.
CANDIDATES = {
    "twc": ("twc", "numLocations=1,numItemsToPutAway=2,includeDoors=0"),
    "coin": ("coin", "numLocations=2,numDistractorItems=0,includeDoors=0"),
    "simonsays": ("simonsays", ""),
    "peckingorder": ("peckingorder", ""),
    "arithmetic": ("arithmetic", ""),
    "sorting": ("sorting", ""),
    "mapreader": ("mapreader", "numLocations=3,maxDistanceApart=1,"
                                "maxDistractorItemsPerLocation=0,includeDoors=0"),
}


def load_config(arg: str):
  spec = importlib.util.spec_from_file_location("smollm2_twx", ROOT / "configs" / "smollm2_twx.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def game_config(c, game: str, params: str):
  """The config as a one-game run of the pipeline would have it."""
  g = copy.deepcopy(c)
  g.env.games = [game]
  g.env.train_params = {game: params}
  return g


def selected(states: list, n: int) -> list:
  """The states `rollout.next_action_accuracy(max_states=n)` measures (its own rule)."""
  if len(states) <= n:
    return states
  keep = np.linspace(0, len(states) - 1, n).round().astype(int)
  return [states[i] for i in keep]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--states", type=int, default=40, help="held-out expert states per game")
  p.add_argument("--rank-states", type=int, default=None,
                 help="states for rank mode (default: --states); rank scores every "
                      "admissible action, ~|admissible| times generate's cost")
  p.add_argument("--games", default=",".join(CANDIDATES),
                 help=f"comma-separated, of {list(CANDIDATES)}")
  p.add_argument("--modes", default="rank,generate")
  p.add_argument("--config-arg", default=None,
                 help="get_config's argument (default: cpu on a CPU backend, else gpu)")
  p.add_argument("--gen-batch", type=int, default=8, help="states per generate call")
  p.add_argument("--rank-batch", type=int, default=1, help="states per rank call")
  p.add_argument("--workdir", default=None, help="default: a fresh temp dir")
  p.add_argument("--out", default="", help="write the rows as JSON here")
  args = p.parse_args(argv)

  import jax
  from act_jax import evaluation
  from act_jax.data import steps as data_steps
  from act_jax.envs import expert as expert_lib, rollout
  from act_jax.envs.splits import env_splits, make_pool
  from act_jax.parsing import normalize_action
  from act_jax.pipeline import Pipeline
  from act_jax.policy import ModelPolicy

  t_start = time.perf_counter()
  cfg_arg = args.config_arg or ("cpu" if jax.default_backend() == "cpu" else "gpu")
  c = load_config(cfg_arg)
  c.env.pool_size = 1  # one JVM: gold replays take milliseconds
  names = [g.strip() for g in args.games.split(",") if g.strip()]
  unknown = sorted(set(names) - set(CANDIDATES))
  if unknown:
    raise SystemExit(f"--games: unknown {unknown}; known {list(CANDIDATES)}")
  modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  n_rank = args.rank_states or args.states
  workdir = args.workdir or tempfile.mkdtemp(prefix="game_selection_")

  # The model once, through the pipeline (its tokenizer step, full config, sampler).
  pipe = Pipeline(c, workdir)
  os.makedirs(pipe.path("tokenizer"), exist_ok=True)
  data_steps.make_tokenizer(c, pipe.path("tokenizer"), pipe.path("trajectories"))
  t0 = time.perf_counter()
  params = pipe.params_of(c.pipeline.model_dir)
  tok, pcfg = pipe.tok, data_steps.prompt_config(c)
  print(f"config {cfg_arg}: dtype={pipe.full_config.model.dtype} "
        f"max_state_tokens={c.data.max_state_tokens} backend={jax.default_backend()}; "
        f"model loaded in {time.perf_counter() - t0:.1f}s", flush=True)

  rows = []
  with make_pool(c) as pool:
    for name in names:
      game, gparams = CANDIDATES[name]
      gc = game_config(c, game, gparams)
      t_game = time.perf_counter()
      spec = env_splits(gc)["id"]
      n_eps = max(args.states, n_rank)
      trajs, failures, _ = expert_lib.generate(pool, spec.episodes(n_eps), progress=False)
      instruction = evaluation.training_instruction(trajs)
      states = rollout.expert_states(trajs)
      row = {"game": name, "env_game": game, "params": gparams, "episodes": len(trajs),
             "failed_replays": len(failures), "all_states": len(states),
             "mean_gold_len": float(np.mean([len(t.steps) for t in trajs])) if trajs else 0.0}
      meas = selected(states, args.states)
      probe = ModelPolicy(pipe.sampler, params, tok, pcfg, max_state_tokens=c.data.max_state_tokens,
                          instruction=instruction)
      lens = [len(ids) for ids in probe.prompt_ids([x for x, _, _ in meas])]
      adm = [len(x.admissible) for x, _, _ in meas]
      row.update(prompt_tokens_mean=float(np.mean(lens)), prompt_tokens_max=int(max(lens)),
                 admissible_mean=float(np.mean(adm)),
                 rank_chance=float(np.mean([1 / a for a in adm])))
      for mode in modes:
        tm = time.perf_counter()
        bs = args.rank_batch if mode != "generate" else args.gen_batch
        pol = ModelPolicy(pipe.sampler, params, tok, pcfg, mode=mode,
                          max_state_tokens=c.data.max_state_tokens, instruction=instruction,
                          batch_size=bs)
        n = args.states if mode == "generate" else n_rank
        seen: list[tuple[object, str]] = []

        def recording(inputs, pol=pol, seen=seen):  # what the policy answered, per state
          out = pol(inputs)
          seen.extend(zip(inputs, out))
          return out

        na = rollout.next_action_accuracy(recording, trajs, max_states=n)
        gold = {(x.spec.key, x.step): a for x, a, _ in states}
        row[mode] = {"accuracy": na["accuracy"], "ci95": na["accuracy_ci95"],
                     "states": na["states"], "admissible_rate": na["admissible_rate"],
                     "seconds": time.perf_counter() - tm}
        picks = [(normalize_action(gold[x.spec.key, x.step]), normalize_action(a))
                 for x, a in seen]
        row[mode]["picks"] = [{"gold": g, "policy": a} for g, a in picks]
        if mode == "generate":
          row[mode]["parse_rate"] = 1 - pol.unparsed / max(pol.generated, 1)
          # Not a pipeline metric: the completion names the expert action somewhere in
          # free text ("Your next action is to take a makeup kit."); the parser wants
          # an "Action:" line.
          row[mode]["mentions_gold_rate"] = float(np.mean([g in a for g, a in picks]))
        print(f"  {name} {mode}: acc={na['accuracy']:.3f} on {na['states']} states "
              f"({row[mode]['seconds']:.0f}s)", flush=True)
      row["seconds"] = time.perf_counter() - t_game
      rows.append(row)
      print(f"{name}: {json.dumps(row)}", flush=True)

  def pct(r, mode, key="accuracy"):
    return f"{100 * r[mode][key]:.0f}" if mode in r and key in r[mode] else "-"

  print("\n| game | params | episodes | states (rank/gen) | mean gold len | mean prompt tok "
        "| mean admissible | rank chance % | rank acc % [95% CI] | gen acc % [95% CI] "
        "| gen parse % | gen admissible % | gen mentions gold % | s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    def acc(mode):
      if mode not in r:
        return "-"
      lo, hi = r[mode]["ci95"]
      return f"{100 * r[mode]['accuracy']:.0f} [{100 * lo:.0f}, {100 * hi:.0f}]"
    n_r = r.get("rank", {}).get("states", "-")
    n_g = r.get("generate", {}).get("states", "-")
    print(f"| {r['game']} | `{r['params'] or '(defaults)'}` | {r['episodes']} | {n_r}/{n_g} "
          f"| {r['mean_gold_len']:.1f} | {r['prompt_tokens_mean']:.0f} (max "
          f"{r['prompt_tokens_max']}) | {r['admissible_mean']:.1f} "
          f"| {100 * r['rank_chance']:.0f} | {acc('rank')} | {acc('generate')} "
          f"| {pct(r, 'generate', 'parse_rate')} | {pct(r, 'generate', 'admissible_rate')} "
          f"| {pct(r, 'generate', 'mentions_gold_rate')} | {r['seconds']:.0f} |")
  wall = time.perf_counter() - t_start
  print(f"\ntotal wall time {wall:.0f}s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "wall_s": wall, "config_arg": cfg_arg, "argv": sys.argv[1:]},
                f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
