"""Config fields that must take effect wherever a run starts: the schedule's length, the
pipeline's per-stage settings, the batch split, and what a pipeline step's rerun checks."""
import copy
import os

import pytest

from act_jax import loop, pipeline, sharding, stages, step as step_lib, train, workflow
from act_jax.stages import synthetic_critic
import config_files

STAGES = ("base", "act", "il", "rl")


_config = config_files.load


def test_schedule_follows_train_steps_from_the_command_line():
  """pretrained.py with --config.train.steps=1000 decays over 1000 steps, not 100."""
  c = _config("pretrained")
  c.train.steps = 1000
  sched = step_lib.make_schedule(loop.optimizer_config(c, loop.Stage()))
  lr, end = c.optim.lr, c.optim.lr * c.optim.final_lr_frac
  assert float(sched(1000)) == pytest.approx(end)
  assert float(sched(100)) > 0.9 * lr and float(sched(999)) > end


def test_pipeline_honours_checkpoint_every():
  c = _config("embedded")
  c.checkpoint.every = 7
  assert {pipeline.stage_config(c, s, 0).checkpoint.every for s in STAGES} == {7}


def test_act_and_rl_stages_read_their_own_grpo_sections():
  c = _config("embedded")
  c.stages.act.grpo.update(dict(group_size=2, temperature=0.7))
  c.stages.rl.grpo.update(dict(max_new_tokens=20, beta=0.5, advantage="dr_grpo"))
  act, rl = (pipeline.stage_config(c, s, 0).grpo for s in ("act", "rl"))
  assert (act.group_size, act.temperature, act.max_new_tokens, act.beta, act.advantage) == (
      2, 0.7, 10, 0.0, "grpo")
  assert (rl.group_size, rl.temperature, rl.max_new_tokens, rl.beta, rl.advantage) == (
      4, 1.0, 20, 0.5, "dr_grpo")
  assert "grpo" not in pipeline.stage_config(c, "il", 0)
  missing = copy.deepcopy(c)
  del missing.stages.rl["grpo"]
  with pytest.raises(ValueError, match=r"config\.stages\.rl\.grpo"):
    pipeline.stage_config(missing, "rl", 0)
  shared = copy.deepcopy(c)
  shared.grpo = copy.deepcopy(c.stages.act.grpo)  # the old single section: ambiguous
  with pytest.raises(ValueError, match=r"config\.grpo: .*config\.stages\.act\.grpo"):
    pipeline.stage_config(shared, "act", 0)


def _imitation_stage(c):
  return stages.make("il", c, train_source=[], pad_id=0)


def _grpo_stage(c):
  return synthetic_critic.make_stage(c)


@pytest.mark.parametrize("config, make_stage, name", [
    ("tiny_cpu", _imitation_stage, "il"), ("act_critic_tiny", _grpo_stage, "act_critic")])
def test_batch_not_divisible_by_data_shards_fails_before_training(
    config, make_stage, name, tmp_path, monkeypatch):
  c = _config(config)
  c.train.batch_size = 6
  monkeypatch.setattr(sharding, "batch_shard", lambda mesh: (0, 4))  # 4 process row blocks
  with pytest.raises(ValueError, match=rf"{name}: config\.train\.batch_size=6 .* 4 data shards"):
    loop.run(c, str(tmp_path), make_stage(c))
  assert not os.path.exists(tmp_path / "metrics.jsonl")


@pytest.mark.parametrize("config, name", [("tiny_cpu", "pretrain"), ("act_critic_tiny", "act_critic")])
def test_train_entry_runs_the_stage_its_config_names(config, name):
  c = _config(config)
  assert train.make_stage(c).name == name
  c.stage = "nope"
  with pytest.raises(ValueError, match=r"config\.stage: unknown stage 'nope'; known: \[.*'rl'"):
    train.make_stage(c)
  c.data.kind = "env"
  with pytest.raises(ValueError, match=r"config\.data\.kind='env': .*act_jax\.main"):
    train.make_stage(c)


def _fingerprints(c):
  return {s: workflow.fingerprint(pipeline.stage_fingerprint(c, s, 0)) for s in STAGES}


@pytest.mark.parametrize("edit, retrained", [
    (lambda c: c.train.update(dict(accum_steps=2)), set(STAGES)),
    (lambda c: c.data.update(dict(group_by_length=4)), set(STAGES)),
    (lambda c: c.checkpoint.update(dict(keep=1)), set(STAGES)),
    (lambda c: c.model.update(dict(rope_theta=5e5)), set(STAGES)),
    (lambda c: c.stages.il.update(dict(lr=1e-3)), {"il"}),
    (lambda c: c.stages.act.grpo.update(dict(beta=0.1)), {"act"}),
    (lambda c: c.reward.update(dict(malformed=-1.0)), {"act"}),
    (lambda c: c.action_reward.update(dict(expert=2.0)), {"rl"}),
    (lambda c: c.eval.update(dict(episodes_per_game=3)), set()),
    (lambda c: c.pipeline.update(dict(seeds=3, variants="il", export=False)), set()),
])
def test_stage_fingerprint_changes_with_what_training_reads(edit, retrained):
  c = _config("embedded")
  before = _fingerprints(c)
  edit(c)
  after = _fingerprints(c)
  assert {s for s in STAGES if after[s] != before[s]} == retrained


def test_pipeline_steps_are_fingerprinted_by_stage_fingerprint(tmp_path, monkeypatch):
  """The base and training steps pass `stage_fingerprint` as the config a rerun checks."""
  seen = {}

  class Stop(Exception):
    pass

  def run_step(name, directory, deps, fn, summary=None, config=None, **kwargs):
    if "eval" in name:
      raise Stop  # past the first variant's training steps
    seen[name] = config
    return workflow.Step(name, directory)

  monkeypatch.setattr(workflow, "run_step", run_step)
  c = _config("embedded")
  for variants in ("il_w_act", "rl"):
    c.pipeline.variants = variants
    with pytest.raises(Stop):
      pipeline.Pipeline(c, str(tmp_path))._run()
  assert seen["base"] == pipeline.stage_fingerprint(c, "base", c.seed)
  for key, stage in (("s0/act", "act"), ("s0/act_il", "il"), ("s0/rl", "rl")):
    assert seen[key] == pipeline.stage_fingerprint(c, stage, 0), key


def test_a_stage_field_set_to_none_keeps_the_global_value():
  c = _config("embedded")
  c.stages.il.lr = None
  c.stages.il.steps = None
  s = pipeline.stage_config(c, "il", 0)
  assert s.optim.lr == c.optim.lr and s.train.steps == c.train.steps
  fresh = _config("embedded")
  assert pipeline.stage_config(fresh, "il", 0).optim.lr == fresh.stages.il.lr != c.optim.lr


def test_a_cached_evaluation_refuses_episodes_it_would_not_play():
  """The cached evaluation scores states and pairs only: episodes asked of it are an
  error naming the field, not a results file without them."""
  c = _config("smollm2_twx", "cpu")
  c.pipeline.model_dir = ""  # the model is not needed to check the eval fields
  pipeline.validate(c)  # as committed: no episodes
  c.eval.episodes_per_game = 10
  with pytest.raises(ValueError, match=r"config\.eval\.episodes_per_game.*config\.eval\.cached"):
    pipeline.validate(c)
  c.eval.cached = None
  pipeline.validate(c)
