#!/usr/bin/env python
"""Tunix 0.1.7's full fine-tuning SFT step on SmolLM2-135M's shape, for benchmarks/finetune.py.

Runs in its own virtualenv (benchmarks/.venv-tunix: google-tunix==0.1.7 jax==0.10.2
flax==0.12.8); finetune.py starts it with that interpreter and reads the JSON it writes:

    benchmarks/.venv-tunix/bin/python benchmarks/tunix_sft.py --out /tmp/tunix_sft.json

Measured as benchmarks/tunix_baseline.py measures Tunix's train step (its
docstring is the specification), with Tunix's SFT loss instead of GRPO's:

  model   tunix.models.llama3.model.Llama3 with llama3.model.ModelConfig(num_layers=30,
          vocab_size=49152, embed_dim=576, hidden_dim=1536, num_heads=9, head_dim=64,
          num_kv_heads=3, rope_theta=100000, norm_eps=1e-5, weight_tying=True): SmolLM2's
          architecture exactly (Llama, GQA 9/3 heads, head_dim 64, tied embeddings,
          rotate-half RoPE without scaling); float32 weights and compute (Llama3 has
          no dtype setting: its parameters are created float32). Random weights from
          nnx.Rngs(0); Tunix zero-initialises the MLP kernels, so they are overwritten
          with N(0, 0.02), as tunix_baseline does (no FLOP changes).
  trainer tunix.sft.peft_trainer.PeftTrainer, full-parameter (no LoRA), its default
          loss (`_default_loss_fn`: logits at every position, log_softmax, one-hot
          cross-entropy masked by `input_mask`, mean over mask tokens), fed by the
          gen_model_input_fn of Tunix's own SFT entry point (tunix/cli/peft_main.py:
          positions and a causal attention mask from `input_tokens != 0`), jitted by
          jit_train_and_eval_step(cache_nnx_graph=True), the function train() calls.
  optim   optax.chain(clip_by_global_norm(1.0), adamw(lr=3e-6, b1=0.9, b2=0.99,
          weight_decay=0.1)), fp32 state: the settings finetune.py gives our step.
  batch   TrainingInput: 16 rows x 256 random ids in [3, vocab) (no padding),
          input_mask true on each row's last 16 tokens (the SFT target).
  timing  warm-up steps until one runs with zero XLA backend compiles
          (jax.monitoring), then --steps timed steps, each ending in
          block_until_ready on the loss, grad norm and the model's parameters;
          reported: the median; tokens/s = rows * seq / median step time.

Shape difference from ours: none in the weights. Tunix's step projects all 256
positions onto the 49152-word vocabulary (a [16, 256, 49152] fp32 logits tensor and
its log-softmax); ours projects the 16 target positions only. That is the work each
framework's SFT loss chooses to do for the same model and batch, so it is part of
what is compared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from tunix.models.llama3 import model as llama3_lib  # noqa: E402
from tunix.sft import peft_trainer  # noqa: E402
from tunix.sft import utils as sft_utils  # noqa: E402

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_events: list[float] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: _events.append(duration) if event == BACKEND_COMPILE else None)


def peak_rss_mib() -> float:
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM"))


def build_model(layers: int, seed: int = 0) -> llama3_lib.Llama3:
  cfg = llama3_lib.ModelConfig(num_layers=layers, vocab_size=49152, embed_dim=576,
                               hidden_dim=1536, num_heads=9, head_dim=64, num_kv_heads=3,
                               rope_theta=100000, norm_eps=1e-5, weight_tying=True)
  model = llama3_lib.Llama3(cfg, rngs=nnx.Rngs(seed))
  key = jax.random.PRNGKey(seed + 1)
  for layer in model.layers:  # zero-initialised MLP kernels -> random, as tunix_baseline
    for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
      key, sub = jax.random.split(key)
      lin.kernel[...] = 0.02 * jax.random.normal(sub, lin.kernel.shape, lin.kernel.dtype)
  jax.block_until_ready(nnx.state(model))
  return model


def gen_model_input_fn(x: peft_trainer.TrainingInput) -> dict:
  """As tunix/cli/peft_main.py."""
  pad_mask = x.input_tokens != 0
  return {"input_tokens": x.input_tokens, "input_mask": x.input_mask,
          "positions": sft_utils.build_positions_from_mask(pad_mask),
          "attention_mask": sft_utils.make_causal_attn_mask(pad_mask)}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
  ap.add_argument("--layers", type=int, default=30)
  ap.add_argument("--rows", type=int, default=16)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--target", type=int, default=16)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--out", required=True)
  args = ap.parse_args()

  model = build_model(args.layers)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(learning_rate=3e-6, b1=0.9, b2=0.99, weight_decay=0.1))
  trainer = peft_trainer.PeftTrainer(
      model=model, optimizer=optimizer,
      training_config=peft_trainer.TrainingConfig(eval_every_n_steps=10**9, max_steps=1000))
  trainer.with_gen_model_input_fn(gen_model_input_fn)
  train_step, _ = trainer.jit_train_and_eval_step(skip_jit=False, cache_nnx_graph=True)

  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 49152, (args.rows, args.seq)).astype(np.int32)
  loss_mask = np.zeros((args.rows, args.seq), bool)
  loss_mask[:, -args.target:] = True
  batch = peft_trainer.TrainingInput(input_tokens=jnp.asarray(tokens),
                                     input_mask=jnp.asarray(loss_mask))
  jax.block_until_ready(batch)

  def step():
    t0 = time.perf_counter()
    loss, _, gnorm = train_step(batch)
    jax.block_until_ready((loss, gnorm))
    jax.block_until_ready(nnx.state(model, nnx.Param))
    return time.perf_counter() - t0, float(loss)

  warm = []
  for _ in range(4):
    mark = len(_events)
    dt, loss = step()
    warm.append({"s": dt, "compiles": len(_events) - mark, "loss": loss})
    if len(_events) == mark:
      break
  mark = len(_events)
  ts, losses = [], []
  for _ in range(args.steps):
    dt, loss = step()
    ts.append(dt)
    losses.append(loss)
  t = statistics.median(ts)
  tokens_per_step = args.rows * args.seq
  out = {"api": "tunix.sft.peft_trainer.PeftTrainer.jit_train_and_eval_step + "
                "_default_loss_fn (full parameters)",
         "model": "tunix.models.llama3.model.Llama3", "layers": args.layers,
         "params": n_params, "rows": args.rows, "seq": args.seq, "target": args.target,
         "tokens_per_step": tokens_per_step, "first_step_s": warm[0]["s"],
         "warmup": warm, "step_s_median": t, "step_s_all": ts,
         "tokens_per_s": tokens_per_step / t, "losses": losses,
         "compiles_in_timed_regions": len(_events) - mark,
         "jax": jax.__version__, "peak_rss_mib": peak_rss_mib()}
  with open(args.out, "w") as f:
    json.dump(out, f, indent=2)
  print(f"[tunix] step {t:.3f}s {tokens_per_step / t:.0f} tok/s (first step "
        f"{warm[0]['s']:.1f}s, compiles in timed steps {out['compiles_in_timed_regions']})",
        flush=True)


if __name__ == "__main__":
  main()
