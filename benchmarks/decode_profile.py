#!/usr/bin/env python
"""Where a decode step's time goes: XLA profiler trace of one 64-step decode call,
op time per step summed by op kind and output shape (small shape, 8 rows, as
benchmarks/sampler.py).

    python benchmarks/decode_profile.py                     # ours, greedy
    python benchmarks/decode_profile.py --mode temperature
    python benchmarks/decode_profile.py --side tunix        # reruns itself in the Tunix venv

Ops that run on other threads at the same time are each counted in full, and the
profiler adds its own overhead, so the total exceeds the timed step a little.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
import tunix_venv  # noqa: E402  (benchmarks/, the script's dir)
B, P, G = 8, 64, 64  # as sampler.py (which the Tunix venv cannot import) and Tunix


def ours(mode: str):
  """(decode fn, its arguments) for act_jax on the small shape, as benchmarks/sampler.py."""
  sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
  from act_jax.models import init_params
  from sampler import programs, sampling_config
  from shapes import SHAPES, model_config
  cfg = model_config(SHAPES["small"])
  prepare, prefill, decode = programs(cfg, sampling_config(mode))
  w = prepare(init_params(cfg, seed=0))
  ids = np.random.default_rng(0).integers(2, cfg.vocab_size, size=(B, P)).astype(np.int32)
  return decode, lambda: (w, prefill(w, ids, np.ones((B, P), bool), jax.random.key(0)))


def tunix(mode: str):
  """(decode fn, its arguments) for Tunix 0.1.7, built as benchmarks/tunix_baseline.py."""
  import jax.numpy as jnp
  import tunix_baseline as tb
  s = tb.SHAPES["small"]
  cache = tb.sampler_lib.CacheConfig(cache_size=P + G, num_layers=s["layers"],
                                     num_kv_heads=s["kv_heads"], head_dim=s["head_dim"])
  sampler = tb.sampler_lib.Sampler(tb.build_model(s), tb.IdTokenizer(), cache)
  ids = np.random.default_rng(0).integers(2, s["vocab"], size=(B, P)).astype(np.int32)
  skw = (dict(temperature=0.0, top_p=None, top_k=None) if mode == "greedy"
         else dict(temperature=1.0, top_p=1.0, top_k=None))
  sampler([" ".join(map(str, r)) for r in ids], max_generation_steps=G, max_prompt_length=P,
          echo=False, eos_tokens=[tb.NEVER_EOS], seed=0, **skw)  # compiles both functions
  params = sampler._flattened_transformer_state

  def args():
    st = sampler.init_sample_state(
        jnp.asarray(ids), total_sampling_steps=P + G, include_logits=False,
        forbidden_token_ids=None, seed=jax.random.PRNGKey(0), beam_size=None,
        include_logprobs=False, **skw)
    return params, sampler._compiled_prefill_fn(params, st, None, echo=False)
  return sampler._compiled_decode_fn, args


def op_times(fn, args) -> collections.Counter:
  """ms per decode step by (op kind, output shape), from a perfetto trace of one call."""
  jax.block_until_ready(fn(*args()))  # warm
  shapes = {}
  for line in fn.lower(*args()).compile().as_text().splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+)", line)
    if m:
      shapes[m.group(1)] = m.group(2)
  a = jax.block_until_ready(args())
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      jax.block_until_ready(fn(*a))
    trace = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]
    events = json.load(gzip.open(trace))["traceEvents"]
  times = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e["name"] in shapes:
      times[(re.sub(r"[.\d]+$", "", e["name"]), shapes[e["name"]])] += e["dur"] / 1e3 / G
  return times


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--side", choices=("ours", "tunix"), default="ours", help="whose decode step")
  ap.add_argument("--mode", choices=("greedy", "temperature"), default="greedy",
                  help="sampling mode")
  ap.add_argument("--top", type=int, default=20, help="op kinds listed")
  ap.add_argument("--tunix-venv", type=Path, default=tunix_venv.VENV,
                  help="Tunix virtualenv (--side tunix), created if missing")
  args = ap.parse_args()
  if args.side == "tunix" and not tunix_venv.running_in(args.tunix_venv):
    python = str(tunix_venv.python(args.tunix_venv))
    os.execv(python, [python, __file__, *sys.argv[1:]])
  times = op_times(*(ours if args.side == "ours" else tunix)(args.mode))
  print(f"{args.side}, {args.mode}: ms per decode step by op (small shape, {B} rows)")
  for (kind, shape), ms in times.most_common(args.top):
    print(f"{ms:7.3f}  {kind:36s} {shape[:60]}")
  print(f"{sum(times.values()):7.3f}  total (all ops)")


if __name__ == "__main__":
  main()
