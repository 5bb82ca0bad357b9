"""The ACT pipeline end to end on a micro budget, its resumability, and the IL loss."""
import copy
import json
import os
import shutil

import jax
import numpy as np
import pytest

from act_jax import losses, params as params_lib, sharding, workflow
from act_jax.models import ModelConfig, graphdef, init_params
import config_files


_config = config_files.load


def micro_config():
  """configs/embedded.py with every budget cut to a few steps and episodes."""
  c = _config("embedded")
  c.model.update(dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=16))
  c.env.update(dict(train_per_game=3, heldout_per_game=1, max_steps=3, pool_size=2))
  c.tokenizer.vocab_size = 400
  c.data.max_state_tokens = 96
  for name in ("base", "il", "act", "rl"):
    c.stages[name].update(dict(steps=2, batch_size=8))
  c.stages.base.rollouts_per_game = 1
  c.stages.act.replay_batch_size = 8  # one row per device, from two random-play records
  for name in ("act", "rl"):
    c.stages[name].grpo.update(dict(group_size=2, max_new_tokens=4))
  c.eval.update(dict(modes=["rank"], episodes_per_game=1, heldout_states=4, critic_pairs=4))
  return c


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  from act_jax.pipeline import Pipeline, variants
  workdir = str(tmp_path_factory.mktemp("pipeline"))
  Pipeline(micro_config(), workdir).run()
  return workdir, variants(micro_config())


def _step_ids(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    if "done.json" in files:
      with open(os.path.join(root, "done.json")) as f:
        out[os.path.relpath(root, workdir)] = json.load(f)["id"]
  return out


def test_micro_run_produces_results_plots_and_exports(finished_run):
  workdir, variants = finished_run
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  assert set(res["variants"]) == set(variants)
  for v in variants:
    splits = res["variants"][v]
    assert "id" in splits and any(s.startswith("ood") for s in splits)
    m = splits["id"]["success_rate"]
    assert 0.0 <= m["mean"] <= 1.0 and len(m["per_seed"]) == 1
    assert 0.0 <= splits["id"]["next_action_accuracy"]["mean"] <= 1.0
  # Each evaluation keeps its per-episode / state / pair outcomes, whose mean is its
  # metric, for deltas paired by unit (against θ0's single evaluation too).
  with open(os.path.join(workdir, "s0", "eval_il_w_act", "eval.json")) as f:
    ev = json.load(f)["splits"]
  for split in ("id", "ood_test_fold"):
    for metric in ("success_rate", "next_action_accuracy", "judgment_accuracy",
                   "judgment_forced_accuracy"):
      units = ev[split][metric + "_per_unit"]
      assert len(units) == len(ev[split][metric + "_unit_cluster"]) > 0
      assert np.mean(units) == pytest.approx(ev[split][metric])
  for png in ("variants.png", "curves.png"):
    with open(os.path.join(workdir, png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # The exported IL-after-ACT model loads in transformers and matches our logits.
  import torch
  from transformers import AutoModelForCausalLM
  from act_jax.models import merge, positions_from_mask
  export = os.path.join(workdir, "export", "il_w_act")
  hf = AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch.float32)
  params, cfg = params_lib.load(export)
  ids = np.array([[5, 9, 13, 2, 7]])
  ours = merge(graphdef(cfg), params)(ids, positions_from_mask(np.ones_like(ids, bool)),
                                      np.ones_like(ids, bool))
  with torch.no_grad():
    theirs = hf(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


def test_rerun_retrains_nothing_and_deleting_a_stage_redoes_its_dependents(finished_run):
  from act_jax.pipeline import Pipeline
  workdir, _ = finished_run
  before = _step_ids(workdir)
  Pipeline(micro_config(), workdir).run()
  assert _step_ids(workdir) == before  # nothing was redone
  shutil.rmtree(os.path.join(workdir, "s0", "act"))
  Pipeline(micro_config(), workdir).run()
  after = _step_ids(workdir)
  redone = {k for k in before if after[k] != before[k]}
  assert redone == {"s0/act", "s0/act_il", "s0/act_rl", "s0/eval_act", "s0/eval_il_w_act",
                    "s0/eval_rl_w_act"}


def test_a_run_restored_from_its_small_files_rebuilds_its_data_and_redoes_nothing(
    finished_run, tmp_path):
  """Another machine, the run directory copied without its data or any checkpoint: the
  data steps are rebuilt as the same steps (their ids are their inputs' fingerprint),
  so no finished stage or evaluation is redone."""
  from act_jax.pipeline import Pipeline
  workdir = str(tmp_path / "restored")
  big = lambda d, names: [n for n in names if n in ("checkpoints", "params", "export")]
  shutil.copytree(finished_run[0], workdir, ignore=big)
  before = _step_ids(workdir)
  for step in ("trajectories", "tokenizer", "datasets"):
    shutil.rmtree(os.path.join(workdir, step))
  c = micro_config()
  c.pipeline.export = False
  Pipeline(c, workdir).run()
  assert _step_ids(workdir) == before


def test_more_seeds_or_a_seed_slice_train_only_the_new_seeds_and_evaluate_theta0_once(finished_run, tmp_path):
  from act_jax.pipeline import Pipeline
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished_run[0], workdir)
  before = _step_ids(workdir)
  c = micro_config()
  c.pipeline.update(dict(seeds=2, variants="prompt,il", export=False))
  res = Pipeline(c, workdir).run()
  after = _step_ids(workdir)
  assert {k: after[k] for k in before} == before  # seed 0 reused as it was
  assert set(after) - set(before) == {"s1/il", "s1/eval_il"}
  per_seed = lambda v: res["variants"][v]["id"]["success_rate"]["per_seed"]
  assert len(per_seed("il")) == 2 and len(per_seed("prompt")) == 1
  # A slice of the seeds (another process): seed 2 alone, into the same run directory;
  # θ0 is not evaluated again, and the whole run then reads all three seeds. Its
  # export is its own seed's model (seed 0's is there, but not this process's).
  shutil.rmtree(os.path.join(workdir, "export"))
  c.pipeline.update(dict(seeds=1, first_seed=2, export=True))
  res = Pipeline(c, workdir).run()
  assert set(_step_ids(workdir)) - set(after) == {"s2/il", "s2/eval_il"}
  assert set(res["variants"]) == {"il"} and len(per_seed("il")) == 1
  exported = params_lib.load(os.path.join(workdir, "export", "il"))[0]
  for x, y in zip(jax.tree.leaves(exported),
                  jax.tree.leaves(params_lib.load(os.path.join(workdir, "s2", "il"))[0])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  c.pipeline.export = False
  c.pipeline.update(dict(seeds=3, first_seed=0))
  res = Pipeline(c, workdir).run()
  assert len(per_seed("il")) == 3 and len(per_seed("prompt")) == 1


def test_workflow_config_change_redoes_step(tmp_path):
  calls = []
  run = lambda cfg: workflow.run_step("a", str(tmp_path / "a"), {}, calls.append, config=cfg,
                                      redo=("a",))
  a1 = run({"lr": 1}).id
  assert run({"lr": 1}).id == a1 and len(calls) == 1
  b1 = workflow.run_step("b", str(tmp_path / "b"), {"a": workflow.Step("a", str(tmp_path / "a"))},
                         calls.append).id
  a2 = run({"lr": 2})
  assert a2.id != a1 and len(calls) == 3
  b2 = workflow.run_step("b", str(tmp_path / "b"), {"a": a2}, calls.append)
  assert b2.id != b1 and len(calls) == 4


def _numpy_action_ce(logits, tokens, mask, loss_mask):
  """Independent reference: per-position log-softmax and a masked token mean."""
  x = logits[:, :-1].astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
  tgt = tokens[:, 1:]
  picked = np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  w = (loss_mask[:, 1:] & mask[:, 1:]).astype(np.float64)
  return -(picked * w).sum(), w.sum()


def test_action_loss_matches_numpy_with_masks_and_sharding():
  cfg = ModelConfig(arch="llama", vocab_size=50, hidden_size=32, intermediate_size=48,
                    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
  rng = np.random.default_rng(0)
  B, T = 8, 12
  tokens = rng.integers(0, 50, (B, T)).astype(np.int32)
  mask = np.ones((B, T), bool)
  mask[:3, 9:] = False  # right padding
  loss_mask = np.zeros((B, T), bool)
  loss_mask[:, 6:] = True  # action tokens only
  batch = {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}
  fn = losses.get("action_ce")
  params = init_params(cfg, 0)
  model = __import__("act_jax.models", fromlist=["merge"]).merge(graphdef(cfg), params)
  from act_jax.models import positions_from_mask
  logits = model(tokens, positions_from_mask(mask), mask)
  total, denom, _ = fn(model, batch, None)
  ref_total, ref_denom = _numpy_action_ce(np.asarray(logits), tokens, mask, loss_mask)
  assert float(denom) == ref_denom == 3 * 3 + 5 * 6 - 0  # masked positions excluded
  np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)

  def mean_loss(p, b):
    from flax import nnx
    t, d, _ = fn(nnx.merge(graphdef(cfg), p), b, None)
    return t / d

  g1 = jax.jit(jax.grad(mean_loss))(params, batch)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shard = params_lib.shardings(cfg, mesh)
  g8 = jax.jit(jax.grad(mean_loss))(jax.device_put(params, shard),
                                    sharding.shard_batch(batch, mesh))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               jax.device_get(g8), jax.device_get(g1))


def test_seed_aggregate_is_a_t_interval_clipped_to_rates():
  from act_jax import results
  ev = lambda x: {"id": {"success_rate": x}}
  out = results.aggregate({"il": {0: ev(0.8), 1: ev(0.0), 2: ev(0.05)}})["il"]["id"]["success_rate"]
  # Hand-computed: mean 0.2833, sd 0.4481, t(2) = 4.303 -> half-width 1.1133.
  assert out["mean"] == pytest.approx(0.28333, abs=1e-4)
  assert out["ci95"] == [0.0, 1.0] and out["per_seed"] == [0.8, 0.0, 0.05]
  # Inside [0, 1] nothing is clipped: sd 0.014142, t(4) = 2.776, half-width 0.017557.
  vals = [0.5, 0.52, 0.48, 0.5, 0.5]
  narrow = results.aggregate({"il": {i: ev(v) for i, v in enumerate(vals)}})
  assert narrow["il"]["id"]["success_rate"]["ci95"] == pytest.approx([0.48244, 0.51756],
                                                                     abs=1e-4)


@pytest.mark.parametrize("arg", ["cpu", "gpu"])
def test_scienceworld_is_evaluated_by_generation_only(arg):
  from act_jax.evaluation import eval_modes
  c = _config("smollm2_scienceworld", arg)
  assert eval_modes(c) == ["generate"]
  # Ranking would pick from admissible lists the expert action was appended to.
  for modes in (["generate", "rank"], ["rank_mean"]):
    c.eval.modes = modes
    with pytest.raises(ValueError, match=r"config\.eval\.modes.*ScienceWorld"):
      eval_modes(c)
  c.eval.modes = ["generate", "nope"]
  with pytest.raises(ValueError, match=r"config\.eval\.modes: unknown \['nope'\]"):
    eval_modes(c)
  assert eval_modes(_config("smollm2_twx", "gpu")) == ["generate", "rank"]  # TWX may rank
