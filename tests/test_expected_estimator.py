"""The critic's `expected` estimator: its gradient against the enumerated policy gradient
over every completion, a learning check, and the config fields that choose it."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from act_jax import config_lib, loop, models, pipeline, rewards, stages
from act_jax.losses import expected, grpo as grpo_loss
from act_jax.metrics import read_jsonl
from act_jax.stages import critic, grpo, synthetic_critic
import config_files
from test_grpo_stage import one_device_context

CFG = models.ModelConfig(arch="qwen3", vocab_size=8, hidden_size=16, intermediate_size=32,
                         num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, qk_norm=True,
                         tie_embeddings=False)
EOS, C = 1, 3
ANSWERS = {"A": [2, EOS], "B": [3, 4, EOS]}  # of different lengths: one is right-padded
JUDGMENT = rewards.JudgmentConfig(correct=1.0, wrong=0.25, malformed=-0.5)
PROMPTS = ([5, 6, 7], [4, 5, 6, 7, 2])  # of different lengths: one is left-padded
LABELS = ["A", "B"]


def completion_reward(y, label):
  """r of a length-C completion: an answer if it starts with one (tokens after EOS are
  never generated, so all their continuations together have the answer's probability)."""
  for letter, ids in ANSWERS.items():
    if list(y[:len(ids)]) == ids:
      return JUDGMENT.correct if letter == label else JUDGMENT.wrong
  return JUDGMENT.malformed


YS = np.asarray(list(itertools.product(range(CFG.vocab_size), repeat=C)), np.int32)


def enumerated(params, prompt, label):
  """(sum_y p(y) (r(y) - b) log p(y) with p, r, b constants, E[r], answer mass) over
  all V^C completions y, from the plain forward pass of each unpadded sequence."""
  tokens = jnp.asarray(np.concatenate([np.tile(prompt, (len(YS), 1)), YS], axis=1))
  T = tokens.shape[1]
  logits = nnx.merge(models.graphdef(CFG), params)(
      tokens, jnp.broadcast_to(jnp.arange(T), tokens.shape), jnp.ones(tokens.shape, bool))
  logp_all = jax.nn.log_softmax(logits[:, T - C - 1:T - 1], axis=-1)
  logp = jnp.take_along_axis(logp_all, tokens[:, T - C:, None], axis=-1)[..., 0].sum(-1)
  r = np.asarray([completion_reward(y, label) for y in YS])
  p = jax.lax.stop_gradient(jnp.exp(logp))
  b = jnp.sum(p * r)
  std = jnp.sqrt(jnp.sum(p * (r - b) ** 2))
  p_right, p_wrong = (jnp.sum(p * (r == v)) for v in (JUDGMENT.correct, JUDGMENT.wrong))
  return jnp.sum(p * (r - b) * logp), (b, p_right + p_wrong, jnp.sum(p), p_right > p_wrong, std)


def expected_loss_batch():
  P = max(map(len, PROMPTS))
  tokens = np.asarray([[0] * (P - len(x)) + x for x in PROMPTS], np.int32)
  mask = np.asarray([[False] * (P - len(x)) + [True] * len(x) for x in PROMPTS])
  return critic.expected_batch(tokens, mask, LABELS, list(ANSWERS.values()), list(ANSWERS),
                               JUDGMENT, pad_id=0)


@pytest.mark.parametrize("advantage", ["dr_grpo", "grpo"])
def test_gradient_is_the_enumerated_policy_gradient(advantage):
  """grad of the loss = -(1/P) sum_x w_x E_y[(r(y) - E[r]) grad log p(y|x)], y over ALL
  completions, w_x = 1 (dr_grpo) or 1 / (std_y r(y) + 1e-3) (grpo); its metrics are E[r], the
  answers' mass and p(expert's) > p(other)."""
  params = models.init_params(CFG, 3)
  batch = {k: jnp.asarray(v) for k, v in expected_loss_batch().items()}
  cfg = grpo_loss.GRPOConfig(advantage=advantage)

  def loss(p):
    total, denom, metrics = expected.expected_reward_loss(
        nnx.merge(models.graphdef(CFG), p), batch, cfg)
    return total / denom, metrics

  grads, metrics = jax.jit(jax.grad(loss, has_aux=True))(params)

  def reference(p):
    outs = [enumerated(p, x, l) for x, l in zip(PROMPTS, LABELS)]
    w = [1.0 if advantage == "dr_grpo" else 1.0 / (o[1][4] + expected.STD_EPS) for o in outs]
    return sum(wi * o[0] for wi, o in zip(w, outs)) / len(outs), [o[1][:4] for o in outs]

  ref_grads, aux = jax.jit(jax.grad(reference, has_aux=True))(params)
  b, mass, total_p, right = (np.asarray(v) for v in zip(*aux))
  np.testing.assert_allclose(total_p, 1.0, rtol=1e-5)
  np.testing.assert_allclose(metrics["expected_reward"], b.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["answer_mass"], mass.mean(), rtol=1e-5)
  assert metrics["forced_accuracy"] == right.mean()
  g, ref = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (grads, ref_grads))
  scale = np.abs(ref).max()
  assert scale > 1e-4  # a real signal, not two zeros
  np.testing.assert_allclose(g, -ref, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.slow  # the suite's longest test (~14% of the default run's time, measured)
def test_learns_the_synthetic_critic_task(tmp_path):
  """From random init, held-out greedy judgment accuracy goes from chance to > 80%
  (100% at step 100 with seed 0)."""
  c = config_files.load("act_critic_tiny")
  c.grpo.estimator = "expected"
  c.train.update(dict(steps=100, eval_every=100))
  c.checkpoint.every = 1000
  stage = synthetic_critic.make_stage(c)
  ctx = one_device_context(c)
  before = stage.evaluate(ctx, models.init_params(ctx.model_cfg, c.seed, ctx.param_shardings))
  loop.run(c, str(tmp_path), stage, ctx=ctx)
  rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert before["eval_accuracy"] <= 0.6
  assert rows[-1]["eval_accuracy"] > 0.8, rows[-1]
  assert rows[-1]["expected_reward"] > rows[0]["expected_reward"] + 0.2


@pytest.mark.parametrize("field, value, error", [
    ("estimator", "nope", r"config\.grpo\.estimator='nope': must be one of \('grpo', 'expected'\)"),
    ("beta", 0.01, r"config\.grpo\.beta=0\.01: must be 0 with estimator='expected'"),
])
def test_bad_estimator_settings_are_refused(field, value, error):
  c = config_files.load("act_critic_tiny")
  c.grpo.update({"estimator": "expected", field: value})
  with pytest.raises(ValueError, match=error):
    synthetic_critic.make_stage(c)


def test_expected_is_refused_where_completions_cannot_be_enumerated():
  c = config_files.load("embedded")
  c.stages.rl.grpo.estimator = "expected"
  c.stages.act.grpo.update(dict(estimator="expected", beta=0.0))
  config_lib.validate(c)  # the critic and next-action stages may
  sc = pipeline.stage_config(c, "rl", 0)
  with pytest.raises(ValueError, match=r"config\.grpo\.estimator='expected': only the critic "
                                       r"\(act\) and next-action RL \(rl\)"):
    grpo.GRPOStage(sc, train_source=[], reward=rewards.make("action"), detokenize=str)


# --- next-action RL: each state's admissible actions are the paid completions ----------

ACTION_REWARD = rewards.ActionConfig()
# Prompt 0 lists two actions, prompt 1 three (one of a different length): S = 3 pads
# prompt 0's third slot, whose empty completion must not count as probability 1.
CANDIDATES = ([[2, EOS], [3, EOS]], [[4, EOS], [2, 3, EOS], [3, EOS]])
VALUES = ([1.0, 0.1], [0.1, 1.0, 0.1])


def candidate_reward(y, i):
  for ids, r in zip(CANDIDATES[i], VALUES[i]):
    if list(y[:len(ids)]) == ids:
      return r
  return ACTION_REWARD.malformed


def test_action_candidates_gradient_is_the_enumerated_policy_gradient():
  """With a ragged candidate list per prompt, grad = -(1/P) sum_x E_y[(r(y) - E[r]) grad
  log p(y|x)] over ALL completions y, every unlisted one paid r_m; in both layouts (a
  row per candidate, and the candidates packed after one copy of the prompt)."""
  params = models.init_params(CFG, 5)
  P = max(map(len, PROMPTS))
  tokens = np.asarray([[0] * (P - len(x)) + x for x in PROMPTS], np.int32)
  mask = tokens > 0
  reward = np.zeros((2, 3), np.float32)
  for i, v in enumerate(VALUES):
    reward[i, :len(v)] = v
  rows, packed = (build(tokens, mask, CANDIDATES, reward, reward == 1.0,
                        ACTION_REWARD.malformed, pad_id=0, width=C)
                  for build in (grpo.candidate_batch, grpo.packed_candidate_batch))
  assert rows["answer_valid"].tolist() == [[True, True, False], [True, True, True]]
  assert packed["tokens"].shape == (2, P + 3 * C)  # one row per prompt

  def loss(p, batch):
    total, denom, _ = expected.expected_reward_loss(nnx.merge(models.graphdef(CFG), p),
                                                    {k: jnp.asarray(v) for k, v in batch.items()},
                                                    grpo_loss.GRPOConfig(advantage="dr_grpo"))
    return total / denom

  def reference(p):
    outs = []
    for i, x in enumerate(PROMPTS):
      seq = jnp.asarray(np.concatenate([np.tile(x, (len(YS), 1)), YS], axis=1))
      T = seq.shape[1]
      logits = nnx.merge(models.graphdef(CFG), p)(
          seq, jnp.broadcast_to(jnp.arange(T), seq.shape), jnp.ones(seq.shape, bool))
      lp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, T - C - 1:T - 1], -1),
                               seq[:, T - C:, None], -1)[..., 0].sum(-1)
      r = np.asarray([candidate_reward(y, i) for y in YS])
      q = jax.lax.stop_gradient(jnp.exp(lp))
      outs.append(jnp.sum(q * (r - jnp.sum(q * r)) * lp))
    return sum(outs) / len(outs)

  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  ref = flat(jax.jit(jax.grad(reference))(params))
  scale = np.abs(ref).max()
  assert scale > 1e-4
  for batch in (rows, packed):
    np.testing.assert_allclose(flat(jax.grad(loss)(params, batch)), -ref, rtol=1e-4,
                               atol=1e-5 * scale)


def test_both_candidate_layouts_count_the_same_real_tokens_per_second():
  """tokens_per_s counts prompt and candidate tokens, not padding: the packed layout
  (no `mask`) reports the prompt's tokens once, the row layout once per candidate slot
  (S = 3 rows per prompt, an unused slot's prompt included: it is computed)."""
  P = max(map(len, PROMPTS))
  tokens = np.asarray([[0] * (P - len(x)) + x for x in PROMPTS], np.int32)
  reward = np.zeros((2, 3), np.float32)
  rows, packed = (build(tokens, tokens > 0, CANDIDATES, reward, reward == 1.0,
                        ACTION_REWARD.malformed, pad_id=0, width=C)
                  for build in (grpo.candidate_batch, grpo.packed_candidate_batch))
  prompt = sum(map(len, PROMPTS))
  answers = sum(len(y) for cands in CANDIDATES for y in cands)
  per_row = sum(len(x) * 3 for x in PROMPTS)
  tps = lambda b: loop._throughput(b, CFG, 2.0, None)["tokens_per_s"]
  assert tps(packed) == (prompt + answers) / 2.0
  assert tps(rows) == (per_row + answers) / 2.0


def test_action_stage_pays_each_admissible_action_what_sampling_would():
  """The expected next-action batch: the expert's action first, then the other admissible
  ones once each, paid by the action reward on their decoded targets."""
  c = config_files.load("embedded")
  c.stages.rl.grpo.estimator = "expected"
  sc = pipeline.stage_config(c, "rl", 0)
  vocab = ["<pad>", "<eos>", "Action:", "\n", "take", "apple", "pear", "look"]
  encode = lambda a: [2, 3] + [vocab.index(w) for w in a.split()] + [1]
  detok = lambda ids: " ".join(vocab[i] for i in ids if i > 1).replace(": \n ", ":\n")
  recs = [{"state_id": "e/0", "expert_action": "take apple",
           "admissible": ["look", "take apple", "take pear"]},
          {"state_id": "e/1", "expert_action": "look", "admissible": ["look", "take  apple"]}]
  stage = stages.make("rl", sc, train_source=recs, detokenize=detok, action_ids=encode)
  assert stage.shape == (3, 5)
  meta = {k: [r[k] for r in recs] for k in ("expert_action", "admissible")}
  batch, _ = stage.prepare(None, {}, {"tokens": np.full((2, 4), 5, np.int32),
                                      "mask": np.ones((2, 4), bool), "meta": meta})
  assert batch["answer_tokens"].shape == (2, 3, 5)  # 3 candidates: a power of two, capped at S
  assert batch["tokens"].shape == (2, 4 + 3 * 5)  # packed after the prompt
  np.testing.assert_allclose(batch["answer_reward"], [[1.0, 0.1, 0.1], [1.0, 0.1, 0.0]])
  assert batch["answer_valid"].tolist() == [[True] * 3, [True, True, False]]
  assert batch["answer_correct"].tolist() == [[True, False, False], [True, False, False]]
  with pytest.raises(ValueError, match=r"record 0 \('e/0'\) has none"):
    stages.make("rl", sc, train_source=[{**recs[0], "admissible": []}], detokenize=detok,
                action_ids=encode)


def test_expected_needs_answers_that_parse_as_their_letters():
  c = config_files.load("act_critic_tiny")
  c.grpo.estimator = "expected"
  inputs = synthetic_critic.inputs(c)
  inputs.pop("answers")
  with pytest.raises(ValueError, match=r"needs the token ids of the answer"):
    stages.make("act", c, **inputs)
  with pytest.raises(ValueError, match=r"do not all parse as their letters"):
    stages.make("act", c, **inputs, answers={"A": [2, 4, EOS], "B": [2, 4, EOS]})


class Bigram:
  """A model whose logits at a position are a row of `w` picked by the token there:
  a critic whose answers can be set to any saturation."""

  def __init__(self, w):
    self.w, self.cfg = w, CFG  # cfg: the decoder's settings the losses read

  def hidden(self, tokens, positions, mask, x=None):
    return jax.nn.one_hot(tokens, self.w.shape[0], dtype=self.w.dtype)

  def logits(self, h):
    return h @ self.w


def saturated_bigram():
  """Prompt 1 (label A) ends in token 7, whose row puts A's first token 20 nats above
  every other; prompt 2 (label B) ends in 6, saturated on A too: one critic agreeing
  with its letter bias, one confidently wrong. Row 2 (after A's letter) saturates EOS."""
  w = np.random.default_rng(0).normal(0, 0.5, (CFG.vocab_size, CFG.vocab_size))
  for row, tok in ((7, 2), (6, 2), (2, EOS)):
    w[row] = 0.0
    w[row, tok] = 20.0
  return w


def test_saturated_gradient_equals_the_float64_reference():
  """At letter-logit gaps of 20 (answer probabilities within 1e-8 of 1) the float32
  loss's gradient equals the textbook formula's in float64: it used to round the
  answer's probability to 1 and its reward std to 0, weighting a rounding residual by
  1e6 (hundreds of times the exact update, pushed further into the bias)."""
  batch = expected_loss_batch()
  cfg = grpo_loss.GRPOConfig(advantage="grpo")
  w = saturated_bigram()

  def ours(w32):
    total, denom, _ = expected.expected_reward_loss(Bigram(w32), batch, cfg)
    return total / denom

  got = np.asarray(jax.grad(ours)(jnp.asarray(w, jnp.float32)))

  with jax.enable_x64(True):
    def reference(w64):
      b = {k: jnp.asarray(v) for k, v in batch.items()}
      logits = Bigram(w64).hidden(b["tokens"], None, None) @ w64  # [P, S, T, V]
      logp = jax.nn.log_softmax(logits, axis=-1)
      T = b["tokens"].shape[-1]
      tok = jnp.take_along_axis(logp[:, :, T - C - 1:T - 1], b["tokens"][:, :, T - C:, None],
                                axis=-1)[..., 0]
      p = jnp.exp(jnp.sum(tok * b["completion_mask"], axis=-1))  # [P, S]
      r, r_m = b["answer_reward"], b["malformed_reward"]
      mean = jnp.sum(p * r, -1) + (1 - jnp.sum(p, -1)) * r_m
      second = jnp.sum(p * r * r, -1) + (1 - jnp.sum(p, -1)) * r_m * r_m
      std = jax.lax.stop_gradient(jnp.sqrt(second - mean ** 2))
      return -jnp.mean((mean - r_m) / (std + expected.STD_EPS))

    want = np.asarray(jax.grad(reference)(jnp.asarray(w, jnp.float64)))
  assert np.abs(want).max() > 1e-7  # a real (if small: saturated) signal
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6 * np.abs(want).max())


def test_entropy_bonus_is_the_exact_answer_entropy():
  """entropy_coef adds coef x H over the outcomes (each answer and "malformed") to the
  per-prompt objective: H equals the entropy of the outcomes enumerated over every
  completion, and the loss moves by exactly -coef x mean H."""
  batch = {k: jnp.asarray(v) for k, v in expected_loss_batch().items()}
  params = models.init_params(CFG, 5)
  gdef = models.graphdef(CFG)

  def loss(p, coef):
    cfg = grpo_loss.GRPOConfig(advantage="dr_grpo", entropy_coef=coef)
    total, denom, m = expected.expected_reward_loss(nnx.merge(gdef, p), batch, cfg)
    return total / denom, m

  (l0, m0), (l1, _) = loss(params, 0.0), loss(params, 0.3)
  # The outcome distribution from the enumeration: the two answers and the rest.
  h = []
  for x, l in zip(PROMPTS, LABELS):
    tokens = jnp.asarray(np.concatenate([np.tile(x, (len(YS), 1)), YS], axis=1))
    T = tokens.shape[1]
    logits = nnx.merge(gdef, params)(tokens, jnp.broadcast_to(jnp.arange(T), tokens.shape),
                                     jnp.ones(tokens.shape, bool))
    lp = jax.nn.log_softmax(logits[:, T - C - 1:T - 1], -1)
    p = np.exp(np.asarray(jnp.take_along_axis(lp, tokens[:, T - C:, None], -1)[..., 0].sum(-1)))
    kind = np.asarray([0 if list(y[:2]) == ANSWERS["A"] else 1 if list(y[:3]) == ANSWERS["B"]
                       else 2 for y in YS])
    q = np.asarray([p[kind == k].sum() for k in range(3)])
    h.append(-(q * np.log(q)).sum())
  np.testing.assert_allclose(m0["answer_entropy"], np.mean(h), rtol=1e-4)
  np.testing.assert_allclose(l0 - l1, 0.3 * np.mean(h), rtol=1e-4)
