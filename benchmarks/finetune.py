#!/usr/bin/env python
"""Fine-tuning cost on CPU: what `train.trainable`, target-only logits and the prefix cache buy.

    python benchmarks/finetune.py                      # every row + Tunix (~10 min)
    python benchmarks/finetune.py --skip-tunix --steps 1 --layers 6   # a quick look

SmolLM2-135M's shape (act_jax.presets "smollm2-135m": Llama, vocab 49152, hidden 576,
30 layers, GQA 9/3 heads of 64, tied embeddings), random weights, float32, one JAX
CPU device; AdamW lr 3e-6 b1 .9 b2 .99 wd .1 after global-norm clipping at 1.0, fp32
state (benchmarks/train_step.OPTIM, Tunix's settings). Each row's step is built and
jitted as `loop.run` builds it (`step.make_train_step(..., trainable=...)`, explicit
shardings, donated state), compiled ahead (`lower().compile()`, XLA's temp memory
reported), then stepped until a step runs with zero XLA compiles (jax.monitoring)
and timed over --steps steps, each ending in block_until_ready on the new state and
metrics; reported: the median. Every row serves the same 16 records of 256 tokens
per step, so

  tokens/s = 16 * 256 / median step time

  il/all      imitation step, loss "action_ce", every parameter trained; the batch is
              `data.pipeline.collate` of 16 records of 256 random ids whose last 16
              are the target (`target_index`: only those 16 positions are projected
              onto the vocabulary)
  il/top:4    the same, `trainable="top:4"`: gradients and AdamW moments for the top 4
              layers and the final norm only; the 26 frozen layers run forward inside
              the step (no backward)
  il/top:4+c  the same with the prefix cache: the records go through
              `data.prefix_cache.attach` once beforehand (its build time is printed),
              so the batch carries `prefix` [16, 256, 576] and the step runs only the
              top 4 layers
  critic/grpo one ACT critic step, top:4: `GRPOStage.prepare` (G=4 samples of 8 new
              tokens for each of the 16 prompts of 256 tokens with the stage's rollout,
              i.e. act_jax.sampling; random 0/1 rewards; group advantages) + the update
              on the 64 sampled rows of 264 tokens (registered `grpo` loss with the
              critic's GRPOSection defaults, eps 0.2/0.28, token-mean, beta 0: no
              reference model; EOS disabled so every row samples 8 tokens). The
              frozen layers run inside the update: sampled rows are new every step,
              so they have no cache.
  critic/exp  the critic's `expected` estimator (config.grpo.estimator, loss
              `expected_reward`: the exact expected reward over the two answer
              strings), top:4 with the prefix cache: `CriticStage.prepare` pairs each of
              the 16 prompts with both answers ("Answer: A"/"Answer: B" + EOS, 4 ids
              each, as SmolLM2 tokenises them), a [16, 2, 260] batch; its frozen prefix
              [16, 2, 260, 576] is computed once beforehand with `decoder.prefix` (time
              printed), then the update is timed alone, as the il rows
  tunix/all   Tunix 0.1.7's full fine-tuning SFT step on the same shape and batch
              (benchmarks/tunix_sft.py, run by the Tunix venv of benchmarks/tunix_venv.py; its
              docstring says exactly what it runs); its loss projects all 256
              positions onto the vocabulary

Layers run unrolled (`scan_layers=False`, not ModelConfig's default scan): measured
on this shape with `--scan both`, see benchmarks/README.md. Printed: the fp32
2048^3 matmul peak (as Tunix's script measures it) and the read bandwidth
(benchmarks/machine.py), the table, `ratio_vs_tunix=<il/all tok/s / Tunix tok/s>` and, last,
`speedup_vs_full=<il/top:4+cache tok/s / il/all tok/s>`.
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
from typing import Any, Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from act_jax import config_lib, loop, models, presets, rewards, sharding, stages  # noqa: E402
from act_jax import params as params_lib, step as step_lib  # noqa: E402
from act_jax.data import pipeline, prefix_cache  # noqa: E402
from act_jax.models import decoder  # noqa: E402
from act_jax.stages import grpo as grpo_stage  # noqa: E402
from act_jax.trainable import Trainable  # noqa: E402
from machine import describe, measure_machine, timed_steps  # noqa: E402  (benchmarks/)
import tunix_venv  # noqa: E402  (benchmarks/)
from train_step import OPTIM, memory_analysis  # noqa: E402  (benchmarks/)

PRESET = "smollm2-135m"
ROWS, SEQ, TARGET = 16, 256, 16  # records per step, tokens per record, target tokens
GROUP, ANSWER_TOKENS = 4, 8  # critic/grpo: samples per prompt, new tokens per sample
TOP = 4
PAD = 0  # random ids are drawn from [3, vocab): no id collides with padding, BOS or EOS


def peak_rss_mib() -> float:
  """This process's peak resident memory (VmHWM), MiB; nan off Linux."""
  try:
    with open("/proc/self/status") as f:
      return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM"))
  except (OSError, StopIteration):
    return float("nan")


def model_config(scan_layers: bool, layers: int | None = None) -> models.ModelConfig:
  fields = {**presets.model(PRESET), "param_dtype": "float32", "dtype": "float32",
            "scan_layers": scan_layers}
  if layers:
    fields["num_layers"] = layers
  return models.ModelConfig.from_dict(fields)


class Setup:
  """The model, mesh, optimiser and state shardings of one trainable spec, as `loop.run`
  builds them (train_step.Setup's counterpart for `train.trainable`)."""

  def __init__(self, cfg: models.ModelConfig, trainable: str):
    self.cfg = cfg
    self.trainable = Trainable.parse(trainable, cfg.num_layers)
    self.mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    self.ctx = loop.Context(cfg, self.mesh, models.graphdef(cfg),
                            params_lib.shardings(cfg, self.mesh))
    self.optimizer = step_lib.make_optimizer(OPTIM)
    self.state_sh = loop.state_shardings(self.ctx, self.optimizer, self.trainable)
    self.init = jax.jit(lambda p: step_lib.init_state(p, self.optimizer, 0, self.trainable),
                        out_shardings=self.state_sh)

  def params(self, seed: int = 0):
    return models.init_params(self.cfg, seed, self.ctx.param_shardings)

  def jit_step(self, loss: str, loss_cfg: Any, batch: dict[str, np.ndarray]) -> Callable:
    batch_sh = {k: sharding.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}
    return sharding.jit_step(
        step_lib.make_train_step(self.ctx.gdef, loss, self.optimizer, loss_cfg,
                                 trainable=self.trainable),
        self.state_sh, batch_sh, sharding.replicated(self.mesh))


def timed(step: Callable, state: Any, steps: int) -> tuple[dict, Any]:
  """`machine.timed_steps` (at most 4 warm-up steps) and the tokens per second."""
  out, state = timed_steps(step, state, steps, max_warmup=4)
  return {**out, "tokens_per_s": ROWS * SEQ / out["step_s_median"]}, state


def il_records(cfg: models.ModelConfig, seed: int = 0) -> list[dict]:
  """16 imitation records: 256 random ids, the last 16 of them the target."""
  rng = np.random.default_rng(seed)
  loss_mask = np.zeros(SEQ, np.int32)
  loss_mask[-TARGET:] = 1
  return [{"input_ids": rng.integers(3, cfg.vocab_size, SEQ).astype(np.int32),
           "loss_mask": loss_mask} for _ in range(ROWS)]


def bench_update(setup: Setup, params, loss: str, loss_cfg: Any, batch: dict[str, np.ndarray],
                 steps: int) -> dict:
  """A precomputed batch, the update step alone (rows il/*)."""
  state = setup.init(params)
  dev = sharding.shard_batch(batch, setup.mesh)
  t0 = time.perf_counter()
  step = setup.jit_step(loss, loss_cfg, batch).lower(state, dev).compile()
  compile_s = time.perf_counter() - t0

  out, _ = timed(lambda st: step(st, dev), state, steps)
  return {**out, "compile_s": compile_s, "memory": memory_analysis(step)}


def bench_il(cfg: models.ModelConfig, trainable: str, cache: bool, steps: int,
             params_seed: int = 0) -> dict:
  setup = Setup(cfg, trainable)
  params = setup.params(params_seed)
  records = il_records(cfg)
  extra = {}
  if cache:
    with tempfile.TemporaryDirectory() as tmp:
      t0 = time.perf_counter()
      frozen = setup.trainable.split(params)[1]
      source = prefix_cache.attach(records, "input_ids", frozen, cfg, tmp, log=False)
      records = [source[i] for i in range(len(source))]  # read before tmp goes
      extra["cache_build_s"] = time.perf_counter() - t0
  batch = pipeline.collate(records, SEQ, PAD, "supervised")
  return {**bench_update(setup, params, "action_ce", None, batch, steps), **extra,
          "batch_shapes": {k: list(np.shape(v)) for k, v in batch.items()}}


def bench_critic_grpo(cfg: models.ModelConfig, steps: int) -> dict:
  """`GRPOStage.prepare` + the update, as train_step.bench_end_to_end times them."""
  setup = Setup(cfg, f"top:{TOP}")
  c = ml_collections.ConfigDict({"seed": 0, "train": {"batch_size": ROWS}})
  c.grpo = config_lib.grpo(group_size=GROUP, max_new_tokens=ANSWER_TOKENS, beta=0.0,
                           pad_id=PAD)

  def random_reward(texts, meta):
    r = np.random.default_rng(len(texts)).integers(0, 2, len(texts)).astype(np.float32)
    return rewards.Scores(r, r > 0, np.zeros(len(texts), bool))

  stage = grpo_stage.GRPOStage(c, train_source=None, reward=random_reward,
                               detokenize=lambda ids: " ".join(map(str, ids)))
  rollout = stage.rollout(setup.ctx)
  rollout.sampling = dataclasses.replace(rollout.sampling, eos_ids=())  # always 8 tokens
  rng = np.random.default_rng(1)
  data = {"tokens": rng.integers(3, cfg.vocab_size, (ROWS, SEQ)).astype(np.int32),
          "mask": np.ones((ROWS, SEQ), bool), "meta": {"label": ["A"] * ROWS}}
  state = setup.init(setup.params())
  jitted = {}

  def run(state):
    batch, host = stage.prepare(setup.ctx, state, data)
    dev = sharding.shard_batch(batch, setup.mesh)
    if "step" not in jitted:  # compiled ahead, as the il rows, for its memory analysis
      jitted["step"] = setup.jit_step(stage.loss, stage.loss_cfg, batch).lower(
          state, dev).compile()
    run.gen_s.append(host["gen_s"])
    run.rows = batch["tokens"].shape
    return jitted["step"](state, dev)

  run.gen_s = []
  out, _ = timed(run, state, steps)
  return {**out, "generation_s_median": statistics.median(run.gen_s[-steps:]),
          "update_rows": list(run.rows), "memory": memory_analysis(jitted["step"])}


ANSWERS = {"A": [10, 11, 12, 2], "B": [10, 11, 13, 2]}  # "Answer", ":", " A"/" B", EOS
WORDS = {10: "Answer", 11: ":", 12: " A", 13: " B", 2: ""}


def bench_critic_expected(cfg: models.ModelConfig, steps: int) -> dict:
  """The `expected` estimator's update on `CriticStage.prepare`'s batch, prefix cached."""
  setup = Setup(cfg, f"top:{TOP}")
  c = ml_collections.ConfigDict({"seed": 0, "train": {"batch_size": ROWS}})
  c.grpo = config_lib.grpo(estimator="expected", beta=0.0, pad_id=PAD)
  c.reward = config_lib.judgment_reward()
  stage = stages.make("act", c, answers=ANSWERS,
                      detokenize=lambda ids: "".join(WORDS.get(i, f" {i}") for i in ids))
  rng = np.random.default_rng(2)
  data = {"tokens": rng.integers(3, cfg.vocab_size, (ROWS, SEQ)).astype(np.int32),
          "mask": np.ones((ROWS, SEQ), bool),
          "meta": {"label": list(rng.choice(["A", "B"], ROWS))}}
  params = setup.params()
  batch, _ = stage.prepare(setup.ctx, None, data)
  t0 = time.perf_counter()
  frozen = setup.trainable.split(params)[1]
  # [P, S, T] rows flattened for the decoder, as the train step does for this loss.
  prefix = jax.jit(lambda f, t, m: decoder.prefix(
      cfg, f, t.reshape(-1, t.shape[-1]), models.positions_from_mask(m.reshape(-1, m.shape[-1])),
      m.reshape(-1, m.shape[-1])).reshape(*t.shape, -1))
  batch["prefix"] = np.asarray(prefix(frozen, batch["tokens"], batch["mask"]))
  cache_s = time.perf_counter() - t0
  return {**bench_update(setup, params, stage.loss, stage.loss_cfg, batch, steps),
          "cache_build_s": cache_s,
          "batch_shapes": {k: list(np.shape(v)) for k, v in batch.items()}}


def run_tunix(python: Path, layers: int, steps: int) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "tunix_sft.json"
    cmd = [str(python), str(ROOT / "benchmarks" / "tunix_sft.py"), "--layers", str(layers),
           "--rows", str(ROWS), "--seq", str(SEQ), "--target", str(TARGET),
           "--steps", str(steps), "--out", str(out)]
    print(f"[tunix] {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=str(ROOT))
    return json.loads(out.read_text())


ROW_NAMES = {"il_all": "il/all", "il_top": f"il/top:{TOP}", "il_cache": f"il/top:{TOP}+cache",
             "grpo": f"critic/grpo top:{TOP}", "expected": f"critic/expected top:{TOP}+cache"}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--steps", type=int, default=1,
                  help="timed steps per row, after the warm-up (1 keeps a full run near 10-15 "
                       "minutes on 2 cores; each more adds ~7)")
  ap.add_argument("--layers", type=int, default=0,
                  help="decoder layers (0: SmolLM2's 30); fewer for a quick trial")
  ap.add_argument("--scan", default="false", choices=["true", "false", "both"],
                  help="layers under lax.scan (ModelConfig's default) or unrolled (false, "
                       "measured faster here); both: the il rows twice")
  ap.add_argument("--rows", default=",".join(ROW_NAMES),
                  help=f"which of our rows to run, of {','.join(ROW_NAMES)}")
  tunix_venv.add_arguments(ap)
  ap.add_argument("--out", default="", help="write all results as JSON here")
  args = ap.parse_args()
  wanted = args.rows.split(",")
  unknown = sorted(set(wanted) - set(ROW_NAMES))
  if unknown:
    sys.exit(f"--rows: unknown {unknown}; known: {list(ROW_NAMES)}")
  if args.layers and args.layers <= TOP:
    sys.exit(f"--layers {args.layers}: the top:{TOP} rows need at least {TOP + 1} layers")
  scans = {"true": [True], "false": [False], "both": [False, True]}[args.scan]
  cfg = model_config(scans[0], args.layers or None)
  env = {"python": sys.version.split()[0], "platform": platform.platform(),
         "cpu_count": os.cpu_count(), "jax": jax.__version__,
         "load_avg_start": os.getloadavg(), "layers": cfg.num_layers}
  t_start = time.perf_counter()
  machine = measure_machine()
  peak = machine["matmul_peak"]
  print(describe(machine), flush=True)

  results: dict[str, dict] = {}

  def report(key: str, r: dict) -> None:
    results[key] = r
    print(f"[{key}] step {r['step_s_median']:.3f}s {r['tokens_per_s']:.0f} tok/s"
          + (f" (compile {r['compile_s']:.1f}s)" if "compile_s" in r else "")
          + (f" (cache build {r['cache_build_s']:.1f}s)" if "cache_build_s" in r else "")
          + f", compiles in timed steps {r['compiles_in_timed_regions']}", flush=True)

  # Run order: Tunix first, so its process (~13 GB at 30 layers, as our il/all) has exited
  # before ours grows; then each headline ratio's two rows back to back, since a shared
  # machine's load drifts over the minutes a run takes. The table keeps the docstring's order.
  tunix = None
  for key in ("tunix", "il_all", "il_cache", "il_top", "expected", "grpo"):
    if key == "tunix":
      tunix = None if args.skip_tunix else run_tunix(tunix_venv.python(args.tunix_venv),
                                                     cfg.num_layers, args.steps)
      continue
    if key not in wanted:
      continue
    for scan in scans if key.startswith("il_") else scans[:1]:
      c = model_config(scan, args.layers or None)
      tag = "" if len(scans) == 1 or not key.startswith("il_") else (
          "/scan" if scan else "/unrolled")
      bench = {"il_all": lambda: bench_il(c, "all", False, args.steps),
               "il_top": lambda: bench_il(c, f"top:{TOP}", False, args.steps),
               "il_cache": lambda: bench_il(c, f"top:{TOP}", True, args.steps),
               "expected": lambda: bench_critic_expected(c, args.steps),
               "grpo": lambda: bench_critic_grpo(c, args.steps)}[key]
      report(key + tag, bench())

  base = results.get("il_all") or results.get("il_all/unrolled")
  print(f"\nFine-tuning step, SmolLM2-135M shape ({cfg.num_layers} layers), {ROWS} x {SEQ} "
        f"tokens ({TARGET}-token targets), fp32, 1 CPU device ({env['cpu_count']} cores), "
        f"layers {'unrolled' if not scans[0] else 'scanned'}; {describe(machine)}; "
        f"load average {os.getloadavg()[0]:.1f}")
  hdr = f"{'row':32} {'step s':>8} {'tok/s':>8} {'x il/all':>9} {'XLA temp MiB':>13}"
  print(hdr)
  print("-" * len(hdr))
  order = list(ROW_NAMES)
  rows = [(ROW_NAMES[k.split("/")[0]] + ("/" + k.split("/")[1] if "/" in k else ""), r)
          for k, r in sorted(results.items(), key=lambda kv: (order.index(kv[0].split("/")[0]),
                                                              kv[0]))]
  if tunix:
    rows.append(("tunix/all (PeftTrainer SFT)", tunix))
  for name, r in rows:
    x = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
    temp = r.get("memory", {}).get("temp_size_in_bytes")
    print(f"{name:32} {r['step_s_median']:8.3f} {r['tokens_per_s']:8.0f} {x:9.2f} "
          f"{temp / 2**20 if temp else float('nan'):13.0f}")
  wall = time.perf_counter() - t_start
  env["peak_rss_mib"] = peak_rss_mib()
  print(f"peak RSS: ours {env['peak_rss_mib']:.0f} MiB"
        + (f", Tunix {tunix['peak_rss_mib']:.0f} MiB" if tunix else "")
        + f"; wall time {wall:.0f}s")
  if args.out:
    Path(args.out).write_text(json.dumps({"env": env, **machine, "ours": results,
                                          "tunix": tunix, "wall_s": wall},
                                         indent=2, default=str))
  if tunix and base:
    print(f"ratio_vs_tunix={base['tokens_per_s'] / tunix['tokens_per_s']:.3f}")
  cached = results.get("il_cache") or results.get("il_cache/unrolled")
  if base and cached:
    print(f"speedup_vs_full={cached['tokens_per_s'] / base['tokens_per_s']:.3f}")


if __name__ == "__main__":
  main()
