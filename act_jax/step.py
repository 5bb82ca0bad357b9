"""The train state, the optimiser, and the one pure train step every stage shares.

`make_train_step` returns `step(state, batch) -> (state, metrics)`: gradient
accumulation over microbatches with the loss normalised by the global denominator, an
optax update, and guards that skip (and count) any update whose loss or gradient is
not finite (`skipped`) or whose loss has no tokens (`no_signal`: e.g. every GRPO group
filtered). Stages differ only in the registered loss they pass in.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from act_jax import losses
from act_jax.config_lib import SCHEDULES
from act_jax.data import replay
from act_jax.models import Params, decoder, positions_from_mask
from act_jax.trainable import Trainable

TrainState = dict[str, Any]  # {"params", "opt_state", "step", "rng"}


def make_schedule(c: Mapping[str, Any]) -> optax.Schedule:
  """Learning rate per optimiser update: linear warmup, then cosine or constant.

  `warmup_steps` and `total_steps` count optimiser updates, not batches: a stage with
  mu updates per batch advances the schedule mu times per step.
  """
  warmup = int(c.get("warmup_steps", 0))
  total = max(int(c.get("total_steps", 1)), warmup + 1)
  lr = float(c["lr"])
  kind = c.get("schedule", "cosine")
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), total,
                                              end_value=lr * float(c.get("final_lr_frac", 0.1)))
  if kind == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)),
                                 optax.constant_schedule(lr)], [max(warmup, 1)])
  raise ValueError(f"config.optim.schedule: {kind!r} is not one of {SCHEDULES}")


def make_optimizer(c: Mapping[str, Any]) -> optax.GradientTransformation:
  """AdamW on `make_schedule(c)`, global-norm clipping.

  Norm scales and biases are not decayed (weight decay on them only shrinks the
  residual stream's gains).
  """
  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any("norm" in str(k) or str(getattr(k, "key", "")).startswith("b")
                                for k in path), params)

  return optax.chain(
      optax.clip_by_global_norm(float(c.get("grad_clip", 1.0))),
      optax.adamw(make_schedule(c), b1=float(c.get("b1", 0.9)), b2=float(c.get("b2", 0.95)),
                  eps=float(c.get("eps", 1e-8)), weight_decay=float(c.get("weight_decay", 0.0)),
                  mask=decay_mask))


def init_state(params: Params, optimizer: optax.GradientTransformation, seed: int,
               trainable: Trainable = Trainable()) -> TrainState:
  """The full params, and optimiser moments for the trainable ones only."""
  return {"params": params, "opt_state": optimizer.init(trainable.split(params)[0]),
          "step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(seed))}


Terms = dict[str, jax.Array]  # the objective's terms by name: their sums, or denominators


def make_terms_fn(gdef: nnx.GraphDef, loss_name: str, loss_cfg: Any = None,
                  trainable: Trainable = Trainable()) -> Callable:
  """`(train, frozen, batch) -> (sums, (denominators, metrics))`, one entry per term of
  the objective sum_k sums[k] / denominators[k]: the registered loss's own ("loss"),
  each extra term it returns (e.g. GRPO's KL over every real completion token, "kl"),
  and, for a batch with `replay_*` fields (`act_jax.data.replay`), weight x the
  replayed records' action cross-entropy over their target tokens ("replay").

  Each term is a mean over its own tokens, so none vanishes or is rescaled when
  another has none: a step whose GRPO groups were all filtered still takes its KL
  anchor and its replay. With a frozen prefix the loss sees a model of the layers
  above it, fed the prefix's output as `batch["prefix"]`: from the batch when a stage
  cached it (`act_jax.data.prefix_cache`), else computed here from `frozen`, which is
  not differentiated, so no gradient flows below the first trainable layer.
  """
  loss_fn = losses.get(loss_name)

  def terms(train, frozen, mb):
    mb, rep = replay.split(mb)
    if rep is not None and trainable.frozen_prefix:
      raise ValueError("config.train.replay_batch_size > 0 needs config.train.trainable="
                       "'all': replayed records carry no frozen-prefix activations")
    if "prefix" in mb and not trainable.frozen_prefix:
      raise ValueError("the batch carries cached prefix activations, but "
                       "config.train.trainable='all' trains every layer under them")
    model = nnx.merge(gdef, trainable.top_model(train, frozen))
    if trainable.frozen_prefix and "prefix" not in mb and "attention" in mb:  # packed rows
      mb = {**mb, "prefix": jax.lax.stop_gradient(decoder.prefix(
          model.cfg, frozen, mb["tokens"], mb["positions"], mb["attention"]))}
    if trainable.frozen_prefix and "prefix" not in mb:
      shape = mb["tokens"].shape  # [B, T] or grouped [B, S, T] (losses.expected)
      tokens = mb["tokens"].reshape(-1, shape[-1])
      mask = mb["mask"].reshape(-1, shape[-1]).astype(bool)
      x = decoder.prefix(model.cfg, frozen, tokens, positions_from_mask(mask), mask)
      mb = {**mb, "prefix": jax.lax.stop_gradient(x.reshape(*shape, -1))}
    total, denom, metrics, *extra = loss_fn(model, mb, loss_cfg)
    sums, denoms = {"loss": total}, {"loss": denom}
    for name, (t, d) in (extra[0] if extra else {}).items():
      sums[name], denoms[name] = t, d
    if rep is not None:
      r_total, r_denom, _ = losses.get("action_ce")(model, rep)
      sums["replay"], denoms["replay"] = rep["weight"][0] * r_total, r_denom
      metrics = {**metrics, "replay_loss": jax.lax.stop_gradient(
          r_total / jnp.maximum(r_denom, 1.0))}
    return sums, (denoms, metrics)

  return terms


def objective(sums: Terms, denoms: Terms) -> jax.Array:
  """sum_k sums[k] / denominators[k] (a term without tokens counts 0)."""
  return sum(sums[k] / jnp.maximum(jax.lax.stop_gradient(denoms[k]), 1.0) for k in sums)


def make_grad_fn(gdef: nnx.GraphDef, loss_name: str, loss_cfg: Any = None,
                 trainable: Trainable = Trainable()) -> Callable:
  """`(train, frozen, batch) -> ((objective, (sums, denominators, metrics)), grads)`:
  `make_terms_fn`'s objective over this batch alone, and its gradient (of `train`)."""
  terms = make_terms_fn(gdef, loss_name, loss_cfg, trainable)

  def fn(train, frozen, mb):
    sums, (denoms, metrics) = terms(train, frozen, mb)
    return objective(sums, denoms), (sums, denoms, metrics)

  return jax.value_and_grad(fn, has_aux=True)


def make_train_step(gdef: nnx.GraphDef, loss_name: str, optimizer: optax.GradientTransformation,
                    loss_cfg: Any = None, accum_steps: int = 1,
                    updates_per_batch: int = 1, trainable: Trainable = Trainable()
                    ) -> Callable:
  """Builds the pure step for the registered loss `loss_name`.

  Gradients and optimiser moments cover `trainable`'s part of the params only
  (`make_terms_fn`); the frozen part is carried over bitwise. The batch is split into
  `updates_per_batch` minibatches (GRPO's mu), each one an optimiser update made of
  `accum_steps` accumulated microbatches; under accumulation each term's gradient is
  accumulated apart and divided by its global denominator, so the update equals the
  one-microbatch update. An update none of whose terms has a token (e.g. every GRPO
  group filtered, no KL, no replay) leaves params and optimiser state untouched: AdamW
  would otherwise move the params on stale moments and advance the schedule.
  """
  grad_fn = make_grad_fn(gdef, loss_name, loss_cfg, trainable)
  terms = make_terms_fn(gdef, loss_name, loss_cfg, trainable)

  def accumulated(params, frozen, batch):
    """Each term's summed gradient over the microbatches (one backward pass per term),
    then divided by that term's global denominator."""
    def one(mb):
      sums, pull, (denoms, m) = jax.vjp(lambda t: terms(t, frozen, mb), params, has_aux=True)
      unit = lambda k: {j: jnp.asarray(float(j == k), v.dtype) for j, v in sums.items()}
      return sums, denoms, m, {k: pull(unit(k))[0] for k in sums}

    mbs = microbatches(batch, accum_steps)
    first = jax.tree.map(lambda x: x[0], mbs)
    shapes = jax.eval_shape(one, first)

    def body(carry, mb):
      sums, denoms, m, grads = one(mb)
      return jax.tree.map(jnp.add, carry, (sums, denoms, grads)), m

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         (shapes[0], shapes[1], shapes[3]))
    (sums, denoms, grads), per_mb = jax.lax.scan(body, zeros, mbs)
    metrics = {k: (v.sum() if k.startswith("n_") else v.mean()) for k, v in per_mb.items()}
    scaled = [jax.tree.map(lambda g, k=k: g / jnp.maximum(denoms[k], 1.0), grads[k])
              for k in grads]
    return objective(sums, denoms), denoms, metrics, jax.tree.map(lambda *g: sum(g), *scaled)

  def update(state: TrainState, batch: dict[str, jax.Array]):
    params, frozen = trainable.split(state["params"])
    if accum_steps == 1:
      (loss, (_, denoms, metrics)), grads = grad_fn(params, frozen, batch)
    else:
      loss, denoms, metrics, grads = accumulated(params, frozen, batch)
    signal = sum(denoms.values()) > 0
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # Zeroed grads keep NaNs out of the (discarded) update's arithmetic.
    safe = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, opt_state = optimizer.update(safe, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    apply = finite & signal
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)
    new_state = {"params": trainable.join(state["params"], keep(new_params, params)),
                 "opt_state": keep(opt_state, state["opt_state"]),
                 "step": state["step"], "rng": state["rng"]}
    out = {"loss": loss, "grad_norm": grad_norm, "skipped": (~finite).astype(jnp.int32),
           "no_signal": (~signal).astype(jnp.int32), **metrics}
    return new_state, out

  def step(state: TrainState, batch: dict[str, jax.Array]):
    if updates_per_batch == 1:
      state, metrics = update(state, batch)
      return {**state, "step": state["step"] + 1}, metrics
    state, per = jax.lax.scan(update, state, microbatches(batch, updates_per_batch))
    state = {**state, "step": state["step"] + 1}
    metrics = {k: (v.sum() if k in ("skipped", "no_signal") or k.startswith("n_")
                   else v.mean()) for k, v in per.items()}
    return state, metrics

  return step


def microbatches(batch: Any, k: int) -> Any:
  """[B, ...] -> [k, B/k, ...]; part i takes rows i, i+k, ... so each part stays split
  over the batch mesh axes without moving data between devices."""
  return jax.tree.map(lambda x: x.reshape(-1, k, *x.shape[1:]).swapaxes(0, 1), batch)
