"""The GRPO loss and advantages against a straightforward NumPy implementation, and
its gradient on an 8-device mesh against one device."""
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
import optax

from act_jax import config_lib, loop, losses, params as params_lib, sharding, step as step_lib
from act_jax.losses import grpo
from act_jax.models import ModelConfig, graphdef, init_params, positions_from_mask
from act_jax.sampling import Result
from act_jax.stages import grpo as grpo_stage

CFG = ModelConfig(arch="qwen3", vocab_size=32, hidden_size=32, intermediate_size=64,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True,
                  tie_embeddings=False)
PROMPTS, G, P, C = 2, 4, 5, 6


# --- NumPy reference -------------------------------------------------------------------


def np_advantages(rewards, std):
  out = np.zeros_like(rewards, dtype=np.float64)
  for i, group in enumerate(rewards):
    mean = sum(group) / len(group)
    sd = (sum((r - mean) ** 2 for r in group) / len(group)) ** 0.5
    for j, r in enumerate(group):
      out[i, j] = (r - mean) / (sd + 1e-6) if std else r - mean
  return out


def np_token_loss(logp, old, adv, eps_low, eps_high):
  ratio = np.exp(logp - old)
  unclipped = -adv * ratio
  clipped = -adv * min(max(ratio, 1 - eps_low), 1 + eps_high)
  return max(unclipped, clipped), clipped > unclipped


def np_grpo(logp, old, adv, ref, w, cfg, real):
  """Returns (loss, clip fraction) by loops over rows and tokens: the aggregated policy
  gradient over the tokens that count (w), + beta x the mean k3 KL over every real one."""
  per_seq, n_tok, total, clips = [], 0, 0.0, 0
  for i in range(logp.shape[0]):
    s, n = 0.0, 0
    for t in range(logp.shape[1]):
      if w[i, t]:
        l, c = np_token_loss(logp[i, t], old[i, t], adv[i], cfg.eps_low, cfg.eps_high)
        s, n, clips = s + l, n + 1, clips + c
    total, n_tok = total + s, n_tok + n
    if n:
      per_seq.append(s / n if cfg.aggregation == "sequence-mean-token-mean"
                     else s / logp.shape[1])
  kl = [np.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
        for i in range(logp.shape[0]) for t in range(logp.shape[1]) if real[i, t]]
  anchor = cfg.beta * sum(kl) / len(kl) if cfg.beta else 0.0
  if cfg.aggregation == "token-mean":
    return total / n_tok + anchor, clips / n_tok
  return sum(per_seq) / len(per_seq) + anchor, clips / n_tok


@jax.jit
def _full_logits(params, tokens, mask):
  return nnx.merge(graphdef(CFG), params)(tokens, positions_from_mask(mask), mask)


def np_completion_logps(params, tokens, mask):
  """From the plain full forward: log_softmax of every position, gathered."""
  logits = np.asarray(_full_logits(params, tokens, mask), np.float64)
  T = tokens.shape[1]
  out = np.zeros((tokens.shape[0], C))
  for i in range(tokens.shape[0]):
    for j in range(C):
      row = logits[i, T - C - 1 + j]
      out[i, j] = row[tokens[i, T - C + j]] - (row.max() + np.log(np.exp(row - row.max()).sum()))
  return out


# --- A random batch ----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _params():
  return init_params(CFG, 0)


def random_batch(seed=0, filter_zero_variance=True, estimator="grpo"):
  """2 prompts x 4 samples; the second group's rewards all agree (zero variance).

  Returns (params, batch, logp of the completions under params, rewards).
  """
  rng = np.random.default_rng(seed)
  prompt_len = np.array([5, 3])
  prompt_tokens = np.zeros((PROMPTS, P), np.int32)
  prompt_mask = np.zeros((PROMPTS, P), bool)
  for i, n in enumerate(prompt_len):
    prompt_tokens[i, P - n:] = rng.integers(1, CFG.vocab_size, n)
    prompt_mask[i, P - n:] = True
  lengths = np.array([6, 1, 5, 3, 6, 5, 3, 6], np.int32)
  comp_tokens = rng.integers(1, CFG.vocab_size, (PROMPTS * G, C)).astype(np.int32)
  comp_tokens[np.arange(C)[None] >= lengths[:, None]] = 0
  rewards = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0], np.float32)
  adv, keep, n_zero = grpo_stage.group_advantages(rewards, G, estimator, filter_zero_variance)
  assert n_zero == 1
  zeros = np.zeros((PROMPTS * G, C), np.float32)
  comp = Result(comp_tokens, zeros, zeros, lengths, ["eos"] * (PROMPTS * G), n=G)
  batch = grpo_stage.build_loss_batch(prompt_tokens, prompt_mask, comp, adv, keep)
  params = _params()
  logp = np_completion_logps(params, batch["tokens"], batch["mask"])
  # Behaviour log-probs off by up to +-1 so ratios land on both sides of the clip.
  real = np.arange(C)[None] < lengths[:, None]
  batch["old_logps"] = np.where(real, logp + rng.uniform(-1.0, 1.0, logp.shape), 0.0
                                ).astype(np.float32)
  batch["ref_logps"] = np.where(real, logp + rng.normal(0, 0.3, logp.shape), 0.0
                                ).astype(np.float32)
  return params, batch, logp, rewards


@functools.partial(jax.jit, static_argnums=0)
def _grpo_loss(cfg, params, batch):
  return losses.get("grpo")(nnx.merge(graphdef(CFG), params), batch, cfg)


CASES = [(agg, est, beta, filt) for agg, beta in itertools.product(grpo.AGGREGATIONS, [0.0, 0.1])
         for est, filt in (("grpo", True), ("dr_grpo", False))]


@pytest.mark.parametrize("aggregation, estimator, beta, filt", CASES)
def test_loss_matches_numpy(aggregation, estimator, beta, filt):
  params, batch, logp, rewards = random_batch(filter_zero_variance=filt, estimator=estimator)
  np.testing.assert_allclose(batch["advantages"],
                             np_advantages(rewards.reshape(PROMPTS, G),
                                           estimator == "grpo").reshape(-1), rtol=1e-5,
                             atol=1e-6)
  cfg = grpo.GRPOConfig(eps_low=0.2, eps_high=0.28, beta=beta, aggregation=aggregation)
  total, denom, m, extra = _grpo_loss(cfg, params, batch)
  w = batch["completion_mask"]
  # The zero-variance group: no weight when filtered, zero advantage when kept.
  assert w[G:].any() != filt and not batch["advantages"][G:].any()
  want, want_clip = np_grpo(logp, batch["old_logps"].astype(np.float64),
                            batch["advantages"].astype(np.float64),
                            batch["ref_logps"].astype(np.float64), w, cfg,
                            batch["mask"][:, -C:])
  got = total / denom + sum(t / d for t, d in extra.values())
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(m["clip_frac"], want_clip, rtol=1e-6)
  assert m["clip_frac_low"] > 0 and m["clip_frac_high"] > 0  # both sides exercised
  assert int(m["n_loss_tokens"]) == w.sum()
  assert ("kl" in m) == (beta > 0)


@pytest.mark.parametrize("aggregation, beta", itertools.product(grpo.AGGREGATIONS, [0.0, 0.1]))
def test_gradient_wrt_logprobs_matches_numpy(aggregation, beta):
  """d loss / d logp: -A r where the unclipped branch is active, 0 where clipped, plus
  beta (1 - exp(ref - logp)) for k3; then the aggregation's weights."""
  _, batch, logp, _ = random_batch(filter_zero_variance=False)
  cfg = grpo.GRPOConfig(beta=beta, aggregation=aggregation)
  b = jax.tree.map(jnp.asarray, batch)
  def loss(lp):
    t, d, _, extra = grpo.policy_objective(lp, b, cfg)
    return t / d + sum(s / n for s, n in extra.values())

  grad = jax.grad(loss)(jnp.asarray(logp, jnp.float32))
  old, ref = batch["old_logps"], batch["ref_logps"]
  adv, w = batch["advantages"][:, None], batch["completion_mask"].astype(np.float64)
  real = batch["mask"][:, -C:].astype(np.float64)
  ratio = np.exp(logp - old)
  clipped = (-adv * np.clip(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high)) > (-adv * ratio)
  g = np.where(clipped, 0.0, -adv * ratio)
  if aggregation == "token-mean":
    weights = w / w.sum()
  else:
    n = w.sum(1, keepdims=True)
    per_seq = 1 / np.maximum(n, 1) if aggregation == "sequence-mean-token-mean" else 1 / C
    weights = w * per_seq / (n > 0).sum()
  kl_grad = beta * (1 - np.exp(ref - logp)) * real / real.sum()
  np.testing.assert_allclose(grad, g * weights + kl_grad, rtol=1e-4, atol=1e-7)


def test_all_groups_filtered_gives_zero_loss_and_weight():
  rewards = np.ones(8, np.float32)
  adv, keep, n_zero = grpo_stage.group_advantages(rewards, 4, "grpo", True)
  assert n_zero == 2 and not keep.any() and not adv.any()
  _, batch, _, _ = random_batch()
  batch["completion_mask"][:] = False
  total, denom, m, extra = grpo.policy_objective(jnp.zeros((PROMPTS * G, C)),
                                                 jax.tree.map(jnp.asarray, batch),
                                                 grpo.GRPOConfig(beta=0.1))
  assert float(total) == 0.0 and float(denom) == 0.0 and int(m["n_seqs"]) == 0
  # The KL anchor keeps every real token (kl = 0 here: logp = ref = 0 on them).
  assert float(extra["kl"][1]) == batch["mask"][:, -C:].sum() > 0


def test_build_loss_batch_layout():
  _, batch, _, _ = random_batch()
  assert batch["tokens"].shape == (PROMPTS * G, P + C)
  # Row 1 = prompt 0 (5 tokens) + a 1-token completion; row 4 = prompt 1 (3 tokens) + 6.
  np.testing.assert_array_equal(batch["mask"][1], [1] * 6 + [0] * 5)
  np.testing.assert_array_equal(batch["mask"][4], [0, 0] + [1] * 9)
  assert not batch["completion_mask"][G:].any()  # the zero-variance group, filtered


def test_invalid_config_names_the_field():
  with pytest.raises(ValueError, match="config.grpo.aggregation"):
    grpo.GRPOConfig(aggregation="mean")
  with pytest.raises(ValueError, match="config.grpo.advantage"):
    grpo.get_advantage("ppo")


def _loss_and_grads(mesh, batch, cfg):
  pshard = params_lib.shardings(CFG, mesh)
  params = init_params(CFG, 0, pshard)

  def loss(p, b):
    total, denom, _, extra = losses.get("grpo")(nnx.merge(graphdef(CFG), p), b, cfg)
    return total / denom + sum(t / d for t, d in extra.values())

  return jax.device_get(jax.jit(jax.value_and_grad(loss))(params,
                                                          sharding.shard_batch(batch, mesh)))


def test_mesh_gradient_equals_single_device():
  _, batch, _, _ = random_batch(filter_zero_variance=False)
  cfg = grpo.GRPOConfig(beta=0.04)
  l1, g1 = _loss_and_grads(sharding.make_mesh({"data": 1}, jax.devices()[:1]), batch, cfg)
  l8, g8 = _loss_and_grads(sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), batch,
                           cfg)
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g8, g1)
  assert max(float(np.abs(x).max()) for x in jax.tree.leaves(g1)) > 0


# --- The shared step on GRPO batches ---------------------------------------------------


def _tree_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def _update_counts(opt_state) -> list[int]:
  """AdamW's and the learning-rate schedule's update counters."""
  return [int(x) for path, x in jax.tree_util.tree_leaves_with_path(opt_state)
          if jax.tree_util.keystr(path).endswith(".count")]


def _grpo_step(accum_steps=1, updates_per_batch=1, beta=0.0):
  opt = step_lib.make_optimizer({"lr": 1e-2, "warmup_steps": 0, "total_steps": 10})
  fn = step_lib.make_train_step(graphdef(CFG), "grpo", opt, grpo.GRPOConfig(beta=beta),
                                accum_steps, updates_per_batch)
  return opt, jax.jit(fn)


def test_kl_anchor_holds_when_every_group_is_filtered():
  """Every group agreeing (all filtered) is when a collapsing policy needs its anchor:
  the step still takes the KL term's gradient, exactly beta x grad mean k3 over the
  real completion tokens (under accumulation: test_accumulated_terms_equal_one_microbatch)."""
  params, batch, _, _ = random_batch()
  empty = {**batch, "completion_mask": np.zeros_like(batch["completion_mask"])}
  beta = 0.1
  real = jnp.asarray(batch["mask"][:, -C:], jnp.float32)

  def kl_mean(p):
    lp, _ = grpo.completion_logprobs(nnx.merge(graphdef(CFG), p), jnp.asarray(batch["tokens"]),
                                     jnp.asarray(batch["mask"]), C)
    kl = grpo.kl_penalty(lp, jnp.asarray(batch["ref_logps"]))
    return beta * jnp.sum(kl * real) / jnp.sum(real)

  want = jax.grad(kl_mean)(params)
  opt = optax.sgd(1.0)  # the update is minus the gradient
  fn = jax.jit(step_lib.make_train_step(graphdef(CFG), "grpo", opt, grpo.GRPOConfig(beta=beta)))
  state, m = fn(step_lib.init_state(params, opt, 0), empty)
  assert int(m["no_signal"]) == 0
  for new, old, g in zip(*(jax.tree.leaves(x) for x in (state["params"], params, want))):
    np.testing.assert_allclose(np.asarray(old) - np.asarray(new), g, rtol=2e-4, atol=1e-7)


def test_logits_in_chunks_give_the_same_log_probs_entropies_and_update():
  """model.logits_chunk=4 over C=6 completion positions (two chunks, the last padded):
  log-probs against the NumPy reference, entropies and one GRPO update against the
  model computing all positions at once."""
  params, batch, want, _ = random_batch()
  chunked = dataclasses.replace(CFG, logits_chunk=4)
  tokens, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["mask"])
  (lp, ent), (lp0, ent0) = (
      grpo.completion_logprobs(nnx.merge(graphdef(cfg), params), tokens, mask, C,
                               with_entropy=True) for cfg in (chunked, CFG))
  np.testing.assert_allclose(lp, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ent, ent0, rtol=1e-5, atol=1e-6)
  opt = optax.sgd(1.0)
  out = [jax.jit(step_lib.make_train_step(graphdef(cfg), "grpo", opt,
                                          grpo.GRPOConfig(beta=0.1)))(
      step_lib.init_state(params, opt, 0), batch) for cfg in (chunked, CFG)]
  (a, ma), (b, mb) = out
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("accum", [2, 4])
def test_reference_pass_in_microbatches_keeps_every_row_in_place(accum):
  """The reference log-probs computed in `train.accum_steps` microbatches (rows i, i+k,
  ... each, as the train step splits them) are the one-pass ones, row for row."""
  params, batch, want, _ = random_batch()
  tokens, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["mask"])
  got = jax.jit(grpo_stage.reference_fn(graphdef(CFG), C, 1.0, accum))(params, tokens, mask)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_accumulated_terms_equal_one_microbatch():
  """Policy gradient and KL, each over its own global token count: two microbatches
  give the one-microbatch update, though the terms' counts differ per microbatch."""
  params, batch, _, _ = random_batch(filter_zero_variance=True)
  opt = optax.sgd(1.0)
  out = []
  for accum in (1, 2):
    fn = jax.jit(step_lib.make_train_step(graphdef(CFG), "grpo", opt,
                                          grpo.GRPOConfig(beta=0.1), accum))
    out.append(fn(step_lib.init_state(params, opt, 0), batch))
  (a, ma), (b, mb) = out
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("accum_steps, mu", [(1, 1), (2, 2)])
def test_batch_without_loss_tokens_leaves_params_and_optimizer_untouched(accum_steps, mu):
  """Every group filtered: no update at all (no AdamW moment drift, no schedule
  advance), but the step counts, reported as no_signal once per skipped update."""
  params, batch, _, _ = random_batch()
  opt, step = _grpo_step(accum_steps, mu)
  # Real updates first (the first at warmup's lr 0), so AdamW holds moments that a
  # zero-gradient update would still apply.
  state = step_lib.init_state(params, opt, 0)
  for _ in range(2):
    state, m = step(state, batch)
    assert int(m["no_signal"]) == 0 and int(m["skipped"]) == 0
  assert not _tree_equal(state["params"], params)
  assert _update_counts(state["opt_state"]) == [2 * mu] * 2
  empty = {**batch, "completion_mask": np.zeros_like(batch["completion_mask"])}
  after, m = step(state, empty)
  assert _tree_equal(after["params"], state["params"])
  assert _tree_equal(after["opt_state"], state["opt_state"])
  assert int(after["step"]) == int(state["step"]) + 1 == 3
  assert int(m["no_signal"]) == mu and int(m["skipped"]) == 0


def test_mu_minibatch_without_loss_tokens_is_the_only_one_skipped():
  params, batch, _, _ = random_batch()
  opt, step = _grpo_step(updates_per_batch=2)
  # Minibatch 1 takes the odd rows (see step._split): no loss tokens there.
  half = {**batch, "completion_mask": batch["completion_mask"].copy()}
  half["completion_mask"][1::2] = False
  state, m = step(step_lib.init_state(params, opt, 0), batch)
  state, m = step(state, half)
  assert int(m["no_signal"]) == 1 and _update_counts(state["opt_state"]) == [3, 3]


def test_schedule_counts_the_mu_updates_of_each_step():
  """The learning-rate schedule advances once per optimiser update, mu per step, so the
  run's schedule is train.steps x mu updates long and ends at the last one."""
  params, batch, _, _ = random_batch()
  opt, step = _grpo_step(updates_per_batch=2)
  state, _ = step(step_lib.init_state(params, opt, 0), batch)
  assert _update_counts(state["opt_state"]) == [2, 2]
  c = config_lib.base()
  c.train.steps = 10
  c.grpo = config_lib.grpo(updates_per_batch=2)
  stage = grpo_stage.GRPOStage(c, train_source=[], reward=None, detokenize=str)
  optim = loop.optimizer_config(c, stage)
  assert optim["total_steps"] == 20 and optim["warmup_steps"] == c.optim.warmup_steps
  sched = step_lib.make_schedule(optim)
  end = c.optim.lr * c.optim.final_lr_frac
  assert float(sched(20)) == pytest.approx(end) and float(sched(10)) > 2 * end
