"""Configs are data: experiment files import only `config_lib`, optional fields are None
(still settable from the command line), and a misspelt or bad field in a GRPO or stage
section stops the run at start-up with its full path."""
import ast
import glob
import os
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from act_jax import config_lib, loop, pipeline
from act_jax.stages import grpo as grpo_stage, synthetic_critic
import config_files

CONFIGS = sorted(glob.glob("configs/*.py"))
# Each config with every argument it documents (None: the default).
ARGS = {"pretrained": [None, "qwen3-8b,tpu_v5p_64"], "smollm2_twx": [None, "cpu"],
        "smollm2_scienceworld": [None, "cpu"]}


_config = config_files.load


def _imports(path):
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      yield from (f"{node.module}.{a.name}" for a in node.names)


@pytest.mark.parametrize("path", CONFIGS)
def test_configs_import_only_config_lib(path):
  """Stage modules hold no defaults a config needs: ml_collections, config_lib, stdlib."""
  bad = [m for m in _imports(path) if m not in ("ml_collections", "act_jax.config_lib")
         and m.split(".")[0] not in sys.stdlib_module_names]
  assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("name, arg", [
    (os.path.basename(p)[:-3], a) for p in CONFIGS
    for a in ARGS.get(os.path.basename(p)[:-3], [None])])
def test_every_config_loads_and_validates(name, arg):
  c = _config(name, *([arg] if arg else []))
  config_lib.validate(c)


def _embedded_stage_error(edit, tmp_path):
  """The pipeline's error for `edit` of configs/embedded.py, raised before anything is
  written (the workdir is not even created)."""
  c = _config("embedded")
  edit(c)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError) as err:
    pipeline.Pipeline(c, str(workdir))._run()
  assert not workdir.exists()
  return str(err.value)


def test_misspelt_grpo_field_fails_at_pipeline_start(tmp_path):
  msg = _embedded_stage_error(lambda c: c.stages.act.grpo.update(dict(group_sise=2)), tmp_path)
  assert msg.startswith("config.stages.act.grpo: unknown field(s) ['group_sise']")


@pytest.mark.parametrize("field, value, must", [
    ("group_size", 1, ">= 2"), ("temperature", 0.0, "> 0"), ("max_new_tokens", 0, ">= 1"),
    ("top_k", 5, "0: GRPO needs untruncated sampling"), ("advantage", "ppo", "a registered"),
    ("aggregation", "mean", "one of"), ("eos_ids", (), "None (the model's)")])
def test_bad_grpo_value_names_its_path(field, value, must, tmp_path):
  msg = _embedded_stage_error(lambda c: c.stages.rl.grpo.update({field: value}), tmp_path)
  assert msg.startswith(f"config.stages.rl.grpo.{field}={value!r}: must be {must}")


def test_bad_stage_type_and_value_name_their_path(tmp_path):
  msg = _embedded_stage_error(lambda c: setattr(c.stages, "il", dict(steps=200.0)), tmp_path)
  assert msg == "config.stages.il.steps=200.0: expected int | None"
  msg = _embedded_stage_error(lambda c: c.stages.il.update(dict(batch_size=0)), tmp_path)
  assert msg.startswith("config.stages.il.batch_size=0: must be >= 1")
  msg = _embedded_stage_error(lambda c: c.stages.act.update(dict(schedul="constant")),
                              tmp_path)
  assert msg.startswith("config.stages.act: unknown field(s) ['schedul']")


def test_standalone_run_checks_its_grpo_section(tmp_path):
  """`python -m act_jax.train` builds the stage, then `loop.run`: both refuse."""
  c = _config("act_critic_tiny")
  c.grpo.temperature = -1.0
  with pytest.raises(ValueError, match=r"^config\.grpo\.temperature=-1\.0: must be > 0"):
    synthetic_critic.make_stage(c)
  with pytest.raises(ValueError, match=r"^config\.grpo\.temperature=-1\.0: must be > 0"):
    loop.run(c, str(tmp_path), loop.Stage())
  assert os.listdir(tmp_path) == []


def _grpo_stage(**model):
  c = config_lib.base()
  c.model.update(dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=8, **model))
  c.grpo = config_lib.grpo()
  return c, grpo_stage.GRPOStage(c, train_source=[], reward=None, detokenize=str)


def test_unset_pad_and_eos_ids_are_the_models():
  c, stage = _grpo_stage(pad_token_id=3, eos_token_id=5)
  assert (stage.g.pad_id, stage.g.eos_ids) == (None, None)
  rollout = stage.rollout(loop.build_context(c))
  assert rollout.sampler.pad_id == 3 and rollout.sampling.eos_ids is None  # the sampler's
  c.grpo.update(dict(pad_id=0, eos_ids=[7, 8]))
  stage = grpo_stage.GRPOStage(c, train_source=[], reward=None, detokenize=str)
  rollout = stage.rollout(loop.build_context(c))
  assert rollout.sampler.pad_id == 0 and rollout.sampling.eos_ids == (7, 8)


def test_optional_fields_are_set_from_the_command_line():
  """None fields keep their type, so `--config.x=...` parses as it did with a sentinel."""
  argv = ["prog", "--config=configs/embedded.py", "--config.stages.act.grpo.pad_id=2",
          "--config.stages.act.grpo.eos_ids=(1, 2)", "--config.optim.total_steps=7",
          "--config.train.peak_tflops=459", "--config.checkpoint.best_metric=eval_accuracy",
          "--config.model_preset=qwen3-0.6b"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
  fv(argv)
  c = fv.config
  assert (c.stages.act.grpo.pad_id, c.stages.act.grpo.eos_ids) == (2, (1, 2))
  assert c.stages.rl.grpo.pad_id is None
  assert (c.optim.total_steps, c.train.peak_tflops) == (7, 459.0)
  assert (c.checkpoint.best_metric, c.model_preset) == ("eval_accuracy", "qwen3-0.6b")
  config_lib.validate(c)
