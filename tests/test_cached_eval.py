"""Evaluation from the frozen-prefix cache against the full model's own answers.

References: greedy generation through the KV-cache sampler (what generate mode runs)
and the sampler's full-model scoring of answer strings (what forced choice runs).
"""
import os

import jax
import numpy as np
import pytest

from act_jax import cached_eval, models, sharding
from act_jax.data import examples, prefix_cache, prompts
from act_jax.sampling import Sampler, SamplingConfig
from act_jax.trainable import Trainable

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CFG = models.ModelConfig(arch="llama", vocab_size=640, hidden_size=32, intermediate_size=64,
                         num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8)
TOP = Trainable.parse("top:1", CFG.num_layers)


@pytest.fixture(scope="module")
def setup():
  params = jax.device_get(models.init_params(CFG, 0))
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  train, frozen = TOP.split(params)
  return params, frozen, TOP.top_model(train, frozen), Sampler(CFG, mesh, pad_id=0)


def test_teacher_forced_exact_match_is_what_greedy_generation_emits(setup, tmp_path):
  params, frozen, top, sampler = setup
  rng = np.random.default_rng(0)
  prompts_ = [rng.integers(3, 600, rng.integers(5, 20)).tolist() for _ in range(12)]
  greedy = sampler.generate(params, prompts_, sampling=SamplingConfig(temperature=0.0,
                                                                      eos_ids=()),
                            max_new_tokens=4).sequences()
  recs = []
  for i, (p, g) in enumerate(zip(prompts_, greedy)):
    target = list(g[:3])
    if i % 2:  # half the targets differ from greedy in one token
      target[i % 3] = (target[i % 3] + 1) % 600 + 3
    recs.append({"input_ids": np.asarray(p + target, np.int32), "state_id": f"g/{i}/0",
                 "loss_mask": np.asarray([0] * len(p) + [1] * 3, np.int32)})
  src = prefix_cache.attach(recs, "input_ids", frozen, CFG, str(tmp_path))
  got = cached_eval.next_action(models.graphdef(CFG), top, src, recs)
  want = np.mean([list(g[:3]) == r["input_ids"][-3:].tolist() for g, r in zip(greedy, recs)])
  assert want == 0.5 and got["next_action_accuracy"] == want
  assert got["heldout_action_loss"] > 0


def test_forced_choice_matches_full_model_answer_scores(setup, tmp_path):
  from transformers import PreTrainedTokenizerFast
  from act_jax import tokenizer as tok_lib
  params, frozen, top, sampler = setup
  texts = [open(os.path.join(FIXTURES, f)).read()
           for f in ("conversations.jsonl", "act_jax_trajectories.jsonl")]
  tok = PreTrainedTokenizerFast.from_pretrained(
      tok_lib.train_tokenizer(texts * 3, 600, str(tmp_path / "tok")))
  pcfg = prompts.PromptConfig(use_chat_template=False)
  pairs = []
  for i in range(8):
    a, b = f"take apple {i}", f"open door {i % 3}"
    text = prompts.critic_prompt(tok, f"room {i}: an apple", a, b, pcfg)
    pairs.append({"state_id": f"g/{i // 2}/{i}", "state": f"room {i}: an apple",
                  "action_a": a, "action_b": b, "label": "AB"[i % 2],
                  "prompt_ids": np.asarray(tok(text, add_special_tokens=False)["input_ids"])})
  got = cached_eval.forced_choice(models.graphdef(CFG), top, frozen, CFG, str(tmp_path), tok,
                                  pcfg, pairs)
  # Reference: the full model's answer log-probs through the sampler, both orders.
  answers = examples.answer_ids(tok, pcfg)
  right, by_order = [], {"A": [], "B": []}
  for r in pairs:
    swapped = tok(prompts.critic_prompt(tok, r["state"], r["action_b"], r["action_a"], pcfg),
                  add_special_tokens=False)["input_ids"]
    lp = sampler.score_sums(params, [r["prompt_ids"].tolist()] * 2 + [swapped] * 2,
                            [answers["A"], answers["B"]] * 2)
    expert_first = r["label"] == "A"
    m1 = lp[0] - lp[1] if expert_first else lp[1] - lp[0]
    m2 = lp[3] - lp[2] if expert_first else lp[2] - lp[3]  # swapped: expert is the other
    right.append(1.0 if m1 + m2 > 0 else 0.0 if m1 + m2 < 0 else 0.5)
    # each order alone, keyed by the letter the expert's action is shown under
    by_order[r["label"]].append(float(m1 > 0))
    by_order["B" if expert_first else "A"].append(float(m2 > 0))
  assert got["judgment_pairs"] == 8
  assert got["judgment_forced_accuracy"] == pytest.approx(np.mean(right))
  assert got["judgment_forced_accuracy_per_unit"] == pytest.approx(right)  # pair by pair
  assert got["judgment_forced_accuracy_unit_cluster"] == [f"g/{i // 2}" for i in range(8)]
  for letter, hits in by_order.items():
    assert got[f"judgment_forced_accuracy_{letter}"] == pytest.approx(np.mean(hits))
