#!/usr/bin/env python
"""GRPO train-step throughput on CPU, measured exactly as Tunix's is, side by side.

    python benchmarks/train_step.py              # both shapes + end-to-end + Tunix
    python benchmarks/train_step.py --shapes tiny --skip-tunix --skip-e2e

Reproduces the TRAIN STEP part of benchmarks/tunix_baseline.py (read its
docstring) with our one shared step (`step.make_train_step` + the registered
`grpo` loss, jitted the way `loop.run` jits it: explicit shardings, donated
state): Qwen3 shapes "tiny" and "small", untied lm_head, float32, one JAX CPU
device, random weights; 8 prompts x 4 samples = 32 sequences of 64 prompt + 64
completion random ids (no padding); advantages group-normalised from random
rewards; GRPO clip eps=0.2 (both sides), beta=0.04 with Tunix's "kl" estimator
(logp - ref) against precomputed reference log-probs, loss aggregation
"sequence-mean-token-mean", entropy metric; AdamW lr 3e-6 b1 .9 b2 .99 wd .1
after global-norm clipping at 1.0, fp32 state; one update per step (mu=1).
Warm-up steps until one runs with zero XLA compiles (jax.monitoring), then N
timed steps (tiny 5, small 3), each ending in block_until_ready on the new state
and metrics; reported: the median.

  tokens/s = 32 * 128 / median step time
  MFU      = tokens * (6 * N_matmul + 12 * L * H * Dh * T) / time / matmul peak
  (Tunix's formula: lm_head counted on all 128 positions; our loss projects only
  the 64 completion positions onto the vocabulary, so it does less work for the
  same model FLOPs; the peak is a median fp32 2048^3 jnp.matmul, as Tunix's.)

Differences that do not change the work: our behaviour log-probs are an input
array (Tunix passes None and uses stop_gradient(logp), as num_iterations=1);
our AdamW does not decay norm scales.

Also measured (ours only, Tunix's script has no equivalent): the end-to-end ACT
step on the small shape, `GRPOStage.prepare` (sampling 4 x 64 new tokens for each
of 8 prompts with the KV-cache sampler at temperature 1, scoring, advantages, the
jitted reference forward) + the update step, as tokens/s over the same 32 x 128.

Layers: both ways the model can run them, `lax.scan` over the stacked weights
(ModelConfig's default, flat compile time in depth) and unrolled
(`config.model.scan_layers=False`); on CPU the scan's per-layer weight slices and
gradient re-stacking cost more than they save, so the unrolled figure is the
headline and both are printed.

The Tunix script runs in its own virtualenv (google-tunix==0.1.7, shared with
benchmarks/sampler.py), with --modes greedy (its sampler part cannot be skipped).
On a shared machine the load drifts over the minutes a run takes, so ours is
measured before and after it and the two medians are averaged (--no-sandwich:
after only). The last line printed is `ratio_vs_tunix=<ours / Tunix update-step
tokens/s, small shape>`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from act_jax import config_lib, loop, models, rewards, sharding, step as step_lib  # noqa: E402
from act_jax import params as params_lib  # noqa: E402
from act_jax.losses import grpo  # noqa: E402
from act_jax.sampling import CompileCounter  # noqa: E402
from act_jax.stages import grpo as grpo_stage  # noqa: E402
from machine import describe, interleaved, measure_machine, timed_steps  # noqa: E402  (benchmarks/)
from shapes import SHAPES, matmul_weights, model_config  # noqa: E402  (benchmarks/, the script's dir)
import tunix_venv  # noqa: E402  (benchmarks/)

PROMPTS, GROUP, PROMPT_LEN, COMPLETION_LEN = 8, 4, 64, 64
TIMED_STEPS = {"tiny": 5, "small": 3}
OPTIM = dict(lr=3e-6, warmup_steps=0, schedule="constant", b1=0.9, b2=0.99, eps=1e-8,
             weight_decay=0.1, grad_clip=1.0)
LOSS = grpo.GRPOConfig(eps_low=0.2, eps_high=0.2, beta=0.04, kl_estimator="k1",
                       aggregation="sequence-mean-token-mean", temperature=1.0)


def flops_per_token(s: dict, T: int) -> int:
  """Tunix's model-FLOPs formula (see the module docstring)."""
  n_matmul = sum(matmul_weights(s))
  return 6 * n_matmul + 12 * s["layers"] * s["heads"] * s["head_dim"] * T


class Setup:
  """One shape's model, mesh, optimiser and compiled step, as `loop.run` builds them."""

  def __init__(self, s: dict, scan_layers: bool):
    self.cfg = model_config(s, scan_layers)
    self.mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    pshard = params_lib.shardings(self.cfg, self.mesh)
    self.ctx = loop.Context(self.cfg, self.mesh, models.graphdef(self.cfg), pshard)
    self.optimizer = step_lib.make_optimizer(OPTIM)
    self.state_sh = loop.state_shardings(self.ctx, self.optimizer)
    self.init = jax.jit(lambda p: step_lib.init_state(p, self.optimizer, 0),
                        out_shardings=self.state_sh)
    self._step = None

  def state(self, seed: int = 0):
    return self.init(models.init_params(self.cfg, seed, self.ctx.param_shardings))

  def step(self, batch: dict[str, np.ndarray]):
    if self._step is None:
      batch_sh = {k: sharding.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}
      self._step = sharding.jit_step(
          step_lib.make_train_step(self.ctx.gdef, "grpo", self.optimizer, LOSS),
          self.state_sh, batch_sh, sharding.replicated(self.mesh))
    return self._step


def random_batch(s: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """As tunix_baseline.make_grpo_batch, in our loss batch layout."""
  n, T = PROMPTS * GROUP, PROMPT_LEN + COMPLETION_LEN
  rewards_ = rng.normal(size=(PROMPTS, GROUP)).astype(np.float32)
  adv = grpo.get_advantage("grpo")(rewards_).reshape(-1)
  ref = (-np.log(s["vocab"]) + 0.1 * rng.normal(size=(n, COMPLETION_LEN))).astype(np.float32)
  return {"tokens": rng.integers(2, s["vocab"], size=(n, T)).astype(np.int32),
          "mask": np.ones((n, T), bool),
          "completion_mask": np.ones((n, COMPLETION_LEN), bool),
          "old_logps": ref.copy(), "ref_logps": ref, "advantages": adv}


def bench_update(s: dict, name: str, scan_layers: bool, peak_gflops: float) -> dict:
  setup = Setup(s, scan_layers)
  state = setup.state()
  batch = sharding.shard_batch(random_batch(s, np.random.default_rng(0)), setup.mesh)
  t0 = time.perf_counter()
  step = setup.step(batch).lower(state, batch).compile()  # as loop.run: compile, then log memory
  compile_s = time.perf_counter() - t0

  r, _ = timed_steps(lambda st: step(st, batch), state, TIMED_STEPS[name], max_warmup=3)
  ts, losses, warm = r["step_s_all"], r["losses"], r["warmup"]
  t = statistics.median(ts)
  T = PROMPT_LEN + COMPLETION_LEN
  tokens = PROMPTS * GROUP * T
  flops = tokens * flops_per_token(s, T)
  return {"scan_layers": scan_layers, "step_s_median": t, "step_s_all": ts,
          "tokens_per_s": tokens / t, "tokens_per_s_best": tokens / min(ts),
          "achieved_gflops": flops / t / 1e9, "mfu_vs_measured_matmul_peak":
          flops / t / 1e9 / peak_gflops, "first_step_s": warm[0]["s"],
          "compile_s": compile_s, "warmup_steps": len(warm), "losses": losses,
          "compiles_in_timed_regions": r["compiles_in_timed_regions"],
          "memory": memory_analysis(step)}


def memory_analysis(compiled) -> dict:
  m = compiled.memory_analysis()
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
  return {k: int(getattr(m, k)) for k in keys if m is not None and hasattr(m, k)}


def bench_end_to_end(s: dict, scan_layers: bool, reps: int = 3) -> dict:
  """Generation + scoring + advantages + reference forward + update: one ACT step."""
  setup = Setup(s, scan_layers)
  c = ml_collections.ConfigDict({"seed": 0, "train": {"batch_size": PROMPTS}})
  c.grpo = config_lib.grpo(group_size=GROUP, max_new_tokens=COMPLETION_LEN, beta=LOSS.beta,
                           eps_low=LOSS.eps_low, eps_high=LOSS.eps_high,
                           kl_estimator=LOSS.kl_estimator, aggregation=LOSS.aggregation,
                           pad_id=0)

  def random_reward(texts, meta):
    r = np.random.default_rng(len(texts)).integers(0, 2, len(texts)).astype(np.float32)
    return rewards.Scores(r, r > 0, np.zeros(len(texts), bool))

  stage = grpo_stage.GRPOStage(c, train_source=None, reward=random_reward,
                               detokenize=lambda ids: " ".join(map(str, ids)))
  # No EOS: every row samples all 64 tokens, as in the sampler benchmark.
  stage.rollout(setup.ctx).sampling = dataclasses.replace(stage.rollout(setup.ctx).sampling,
                                                          eos_ids=())
  rng = np.random.default_rng(1)
  data = {"tokens": rng.integers(2, s["vocab"], (PROMPTS, PROMPT_LEN)).astype(np.int32),
          "mask": np.ones((PROMPTS, PROMPT_LEN), bool),
          "meta": {"label": ["A"] * PROMPTS}}
  state = setup.state()

  def run(state):
    t0 = time.perf_counter()
    batch, host = stage.prepare(setup.ctx, state, data)
    step = setup.step(batch)
    state, m = step(state, sharding.shard_batch(batch, setup.mesh))
    jax.block_until_ready((state, m))
    return time.perf_counter() - t0, state, host, batch

  warm = 0
  while warm < 4:
    counter = CompileCounter()
    _, state, _, _ = run(state)
    warm += 1
    if counter.count == 0:
      break
  counter = CompileCounter()
  ts, gen, ref = [], [], []
  for _ in range(reps):
    dt, state, host, batch = run(state)
    ts.append(dt)
    gen.append(host["gen_s"])
    ref.append(host["ref_s"])
  t = statistics.median(ts)
  tokens = int(batch["mask"].sum())
  return {"step_s_median": t, "step_s_all": ts, "tokens_per_s": tokens / t,
          "generation_s_median": statistics.median(gen),
          "generated_tokens_per_s": PROMPTS * GROUP * COMPLETION_LEN / statistics.median(gen),
          "reference_s_median": statistics.median(ref), "tokens_per_step": tokens,
          "warmup_steps": warm, "compiles_in_timed_regions": counter.count}


def combine(passes: list[dict]) -> dict:
  """One figure from the passes: the mean of their median step times."""
  t = statistics.mean(p["step_s_median"] for p in passes)
  return {"step_s_median": t, "tokens_per_s": passes[0]["tokens_per_s"] * passes[0][
      "step_s_median"] / t, "mfu_vs_measured_matmul_peak": statistics.mean(
          p["mfu_vs_measured_matmul_peak"] for p in passes)}


def run_tunix(python: Path, script: Path, shapes: str) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "tunix.json"
    cmd = [str(python), str(script), "--shapes", shapes, "--modes", "greedy", "--out", str(out)]
    print(f"[tunix] {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=str(ROOT))
    return json.loads(out.read_text())


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--shapes", default="tiny,small", help="of tiny, small (benchmarks/shapes.py)")
  ap.add_argument("--scan", default="both", choices=["true", "false", "both"],
                  help="layers under lax.scan (true, ModelConfig's default) or unrolled "
                       "(false); with both, the unrolled figure is the headline")
  ap.add_argument("--tunix-script", type=Path, default=tunix_venv.BASELINE,
                  help="the Tunix baseline script")
  tunix_venv.add_arguments(ap)
  ap.add_argument("--skip-e2e", action="store_true",
                  help="skip the end-to-end ACT step (generation + reference + update)")
  ap.add_argument("--no-sandwich", dest="sandwich", action="store_false",
                  help="measure ours only after Tunix, not before and after (averaged)")
  ap.add_argument("--out", default="", help="write all results as JSON here")
  args = ap.parse_args()
  shapes = args.shapes.split(",")
  scans = {"true": [True], "false": [False], "both": [False, True]}[args.scan]
  env = {"python": sys.version.split()[0], "platform": platform.platform(),
         "cpu_count": os.cpu_count(), "jax": jax.__version__,
         "devices": [str(d) for d in jax.devices()]}

  def measure_ours(label: str) -> dict:
    machine = measure_machine()
    peak = machine["matmul_peak"]
    print(f"[ours/{label}] {describe(machine)}", flush=True)
    out: dict = dict(machine)
    for name in shapes:
      for scan in scans:
        kind = "scan" if scan else "unrolled"
        r = out.setdefault(name, {})[kind] = bench_update(SHAPES[name], name, scan,
                                                          peak["gflops"])
        print(f"[ours/{label}/{name}/{kind}] step {r['step_s_median']:.3f}s "
              f"{r['tokens_per_s']:.0f} tok/s MFU {100 * r['mfu_vs_measured_matmul_peak']:.1f}%"
              f" (compile {r['compile_s']:.1f}s, compiles in timed steps "
              f"{r['compiles_in_timed_regions']})", flush=True)
    return out

  run_theirs = None if args.skip_tunix else lambda: run_tunix(
      tunix_venv.python(args.tunix_venv), args.tunix_script.resolve(), args.shapes)
  passes, tunix = interleaved(measure_ours, run_theirs, args.sandwich)  # averaged below
  ours = {name: {kind: combine([p[name][kind] for p in passes]) for kind in passes[0][name]}
          for name in shapes}
  e2e = None
  if not args.skip_e2e and "small" in shapes:
    e2e = bench_end_to_end(SHAPES["small"], scans[0])
    print(f"[ours/small/end-to-end] {e2e['step_s_median']:.2f}s/step "
          f"{e2e['tokens_per_s']:.0f} tok/s (generation {e2e['generation_s_median']:.2f}s, "
          f"reference {e2e['reference_s_median']:.2f}s)", flush=True)

  peaks = " / ".join(f"{p['matmul_peak']['gflops']:.1f}" for p in passes)
  bandwidth = " / ".join(f"{p['bandwidth']['read_gb_s']:.1f}" for p in passes)
  print(f"\nGRPO update step, 32 x 128 tokens, fp32, 1 CPU device ({env['cpu_count']} cores); "
        f"read bandwidth {bandwidth} GB/s; matmul peak ours {peaks}"
        + (f", Tunix {tunix['matmul_peak']['gflops']:.1f}" if tunix else "") + " GFLOP/s"
        + (f"; ours = mean of {len(passes)} passes around Tunix" if len(passes) > 1 else ""))
  hdr = (f"{'shape':6} {'layers':9} {'step s':>7} {'tok/s':>8} {'MFU':>6} | {'Tunix s':>7} "
         f"{'tok/s':>8} {'MFU':>6} | {'x':>5}")
  print(hdr)
  print("-" * len(hdr))
  headline = {}
  for name in shapes:
    t = tunix["shapes"][name]["grpo_train"] if tunix else None
    for kind, r in ours[name].items():
      x = r["tokens_per_s"] / t["tokens_per_s"] if t else float("nan")
      headline.setdefault(name, x)
      tcols = (f"{t['step_s_median']:7.3f} {t['tokens_per_s']:8.0f} "
               f"{100 * t['mfu_vs_measured_matmul_peak']:5.1f}%" if t else f"{'-':>24}")
      print(f"{name:6} {kind:9} {r['step_s_median']:7.3f} {r['tokens_per_s']:8.0f} "
            f"{100 * r['mfu_vs_measured_matmul_peak']:5.1f}% | {tcols} | {x:5.2f}")
  if e2e:
    print(f"\nEnd-to-end ACT step (small, 8 prompts x 4 samples, 64 + 64 tokens, beta "
          f"{LOSS.beta}): {e2e['step_s_median']:.2f}s = generation "
          f"{e2e['generation_s_median']:.2f}s ({e2e['generated_tokens_per_s']:.0f} new tok/s) "
          f"+ reference {e2e['reference_s_median']:.2f}s + update; "
          f"{e2e['tokens_per_s']:.0f} tok/s")
  if args.out:
    Path(args.out).write_text(json.dumps({"env": env, "ours": ours, "passes": passes,
                                          "end_to_end": e2e, "tunix": tunix},
                                         indent=2, default=str))
  if tunix and "small" in headline:
    print(f"ratio_vs_tunix={headline['small']:.3f}")


if __name__ == "__main__":
  main()
