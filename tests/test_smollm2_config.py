"""A smoke run of the evidence config (configs/smollm2_twx.py:cpu) on a tiny stand-in model.

The real run imports SmolLM2-135M-Instruct (docs/smollm2.md); here a 6-layer model with a
ChatML tokenizer takes its place, so the whole pipeline runs as configured — top:K
training over the frozen-prefix cache, the `expected` critic, both controls, the cached
evaluation — in about a minute.
"""
import json
import os

import numpy as np
import pytest

from act_jax import models, params as params_lib
from act_jax.hf import save_pretrained
from act_jax.pipeline import Pipeline
from tests.config_files import load
from tests.test_data import ACT_JAX, CONVERSATIONS, _train_tokenizer


def tiny_model_dir(tmp_path) -> str:
  tok_dir = str(tmp_path / "tok")
  texts = [open(p).read() for p in (CONVERSATIONS, ACT_JAX)]
  tok = _train_tokenizer(texts * 3, 600, tok_dir)
  cfg = models.ModelConfig(arch="llama", vocab_size=640, hidden_size=32, intermediate_size=64,
                           num_layers=6, num_heads=4, num_kv_heads=2, head_dim=8,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
  out = tmp_path / "model"
  save_pretrained(out, models.init_params(cfg, 0), cfg, tokenizer_dir=tok_dir)
  return str(out)


@pytest.mark.slow  # 100 s of the default run's 797 s (quiet 2-core VM, --durations)
def test_smollm2_cpu_config_runs_end_to_end_on_a_tiny_model(tmp_path):
  c = load("smollm2_twx", "cpu")
  c.pipeline.update(dict(model_dir=tiny_model_dir(tmp_path), seeds=1))
  c.env.update(dict(train_per_game=2, heldout_per_game=1, validation_per_game=1))
  for name in ("act", "il"):
    c.stages[name].update(dict(steps=2, batch_size=8))  # one row per fake device
  c.stages.act.eval_every = 1
  c.eval.update(dict(heldout_states=6, critic_pairs=4))
  workdir = tmp_path / "run"
  Pipeline(c, str(workdir)).run()
  res = json.loads((workdir / "results.json").read_text())
  assert set(res["variants"]) == {"prompt", "il", "act", "il_w_act", "act_shuffled",
                                  "act_blind"}
  assert {"act_shuffled - il", "il_w_act - act_blind"} <= set(res["deltas"])
  ev = json.loads((workdir / "s0" / "eval_il_w_act" / "eval.json").read_text())["splits"]
  assert "validation" not in ev  # chosen on, never reported as a result
  gen = ev["id[generate]"]  # what the model writes, beside the teacher-forced match
  assert gen["next_action_states"] == 6 and gen["generated_actions"] == 6
  assert gen["next_action_accuracy"] == np.mean(gen["next_action_accuracy_per_unit"])
  # Every critic step is evaluated on the validation pairs (both orders, forced choice).
  val = json.loads((workdir / "trajectories" / "report.json").read_text())["validation"]
  assert val["trajectories"] == 2  # one episode per game
  rows = [json.loads(l) for l in open(workdir / "s0" / "act" / "metrics.jsonl")]
  for r in rows:
    assert 0 <= r["val_judgment_forced_accuracy"] <= 1 and 0 < r["val_first_letter_rate"] < 1
    assert r["val_judgment_pairs"] > 0
  assert ev["id"]["next_action_states"] == 6 and ev["id"]["judgment_pairs"] == 4
  # The critic alone is judged, not asked to act: teacher-forced metrics, no generation.
  judge = json.loads((workdir / "s0" / "eval_act" / "eval.json").read_text())["splits"]
  assert judge["id"]["judgment_pairs"] == 4 and judge["id"]["next_action_states"] == 6
  assert not [s for s in judge if s.endswith("[generate]")]
  assert "id[generate]" in json.loads(
      (workdir / "s0" / "eval_act_blind" / "eval.json").read_text())["splits"]
  # The chain act -> il trained the top 4 layers only: the bottom 2 and the embeddings
  # are the imported model's, bit for bit.
  base, _ = params_lib.load(str(workdir / "base"))
  final, _ = params_lib.load(str(workdir / "s0" / "act_il"))
  assert np.array_equal(final["embed"], base["embed"])
  assert np.array_equal(final["layers"]["wq"][:2], base["layers"]["wq"][:2])
  assert not np.array_equal(final["layers"]["wq"][2:], base["layers"]["wq"][2:])
