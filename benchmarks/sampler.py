#!/usr/bin/env python
"""Sampler throughput on CPU, measured exactly as Tunix's is, side by side with Tunix.

    python benchmarks/sampler.py                 # both shapes, both modes, + Tunix
    python benchmarks/sampler.py --shapes tiny --skip-tunix

Reproduces the SAMPLER part of benchmarks/tunix_baseline.py (read its
docstring): Qwen3 shapes "tiny" and "small" with an untied lm_head, float32, one
JAX CPU device, random weights; 8 prompts x 64 random ids (no padding), 64
single-token decode forwards over a 128-slot KV cache, EOS disabled so every row
runs all 64 steps; modes "greedy" (argmax) and "temperature" (T=1.0, top_p=1,
no top_k). Prefill and decode are timed separately with the jitted functions the
sampler is built from (`core.prefill`, `core.decode`, on weights from
`Sampler.prepare`), after one cold and one warm call, median of 3 repetitions,
every region ending in block_until_ready; compiles inside timed regions are
counted with jax.monitoring and must be 0.

  prefill tok/s = 8*64 / prefill time; decode tok/s = 8 * iterations / decode time
  (iterations = while_loop trips, read back from the state: 64).

We generate max_new_tokens=65: 1 token from the prefill + 64 from the decode loop,
the same 64 decode forwards and 128 cache slots as Tunix. Also reported: the
one-off weight preparation (`prepare`: the per-layer fused copy), the public
`Sampler.generate` end to end (which prepares weights inside its program on every
call), XLA's memory analysis of each program and the process peak RSS.

Then runs the Tunix script (google-tunix==0.1.7, in its own virtualenv, created on
first use at benchmarks/.venv-tunix by benchmarks/tunix_venv.py) with --skip-train, prints both side by side,
and ends with `ratio_vs_tunix=<our / Tunix greedy decode tok/s, small shape>`
(the line before gives every mode's). The machine's fp32 matmul peak and read
bandwidth (benchmarks/machine.py) are printed with the table: decoding streams the
weights once per token, so bandwidth sets its pace.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from act_jax.models import ModelConfig, init_params  # noqa: E402
from act_jax.sampling import CompileCounter, Sampler, SamplingConfig, core, inference  # noqa: E402
from machine import describe, measure_machine, time_call as timed  # noqa: E402  (benchmarks/)
from shapes import SHAPES, model_config  # noqa: E402  (benchmarks/, the script's dir)
import tunix_venv  # noqa: E402  (benchmarks/)

B, P, G, REPS = 8, 64, 64, 3


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  return {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                          "temp_size_in_bytes", "alias_size_in_bytes")}


def sampling_config(mode: str) -> SamplingConfig:
  return SamplingConfig(temperature=0.0 if mode == "greedy" else 1.0, top_p=1.0, top_k=0,
                        eos_ids=())


def programs(cfg: ModelConfig, sampling: SamplingConfig):
  """The jitted pieces `Sampler.generate` is made of: prepare, prefill, decode."""
  statics = dict(cfg=sampling, pad_id=0)
  prepare = jax.jit(lambda p: core.inference_weights(cfg, p))
  prefill = jax.jit(lambda w, t, m, k: core.prefill(cfg, w, t, m, k, n=1, slots=P + G, **statics))
  decode = jax.jit(lambda w, st: core.decode(cfg, w, st, G + 1, **statics), donate_argnums=1)
  return prepare, prefill, decode


def bench_mode(cfg: ModelConfig, params, mode: str, rng: np.random.Generator) -> dict:
  ids = rng.integers(2, cfg.vocab_size, size=(B, P)).astype(np.int32)
  sampling = sampling_config(mode)
  sampler = Sampler(cfg, pad_id=0)
  prompts = ids.tolist()

  # Public API, end to end (weights prepared inside the program on every call).
  e2e = lambda: timed(lambda: sampler.generate(params, prompts, sampling=sampling,
                                               max_new_tokens=G + 1, seed=0))
  c = CompileCounter()
  cold_s, out = e2e()
  cold = {"n_backend_compiles": c.count, "backend_compile_s": c.seconds}
  assert out.lengths.tolist() == [G + 1] * B and out.decode_steps == G, out.lengths
  e2e()
  c = CompileCounter()
  e2e_ts = [e2e()[0] for _ in range(REPS)]
  timed_compiles = c.count

  # Split timing with the jitted pieces `generate` is made of.
  prepare, prefill, decode = programs(cfg, sampling)
  tokens, mask = jax.device_put(ids), jax.device_put(np.ones((B, P), bool))

  def split():
    t_prep, w = timed(prepare, params)
    t_pre, st = timed(prefill, w, tokens, mask, jax.random.key(0))
    start = int(st.step)
    t_dec, st = timed(decode, w, st)
    return t_prep, t_pre, t_dec, int(st.step) - start

  c = CompileCounter()
  split()
  split_cold_compiles = c.count
  split()
  c = CompileCounter()
  res = [split() for _ in range(REPS)]
  timed_compiles += c.count
  prep_ts, pre_ts, dec_ts = ([r[i] for r in res] for i in range(3))
  iters = res[0][3]
  w = prepare(params)
  st = prefill(w, tokens, mask, jax.random.key(0))
  mem = {"prepare": memory(prepare.lower(params).compile()),
         "prefill": memory(prefill.lower(w, tokens, mask, jax.random.key(0)).compile()),
         "decode": memory(decode.lower(w, st).compile())}
  med = statistics.median
  pre, dec, prep, e2e_med = med(pre_ts), med(dec_ts), med(prep_ts), med(e2e_ts)
  return {
      "mode": mode, "batch": B, "prompt_len": P, "gen_steps": G, "cache_size": P + G,
      "decode_loop_iterations": iters, "returned_tokens_per_seq": int(out.lengths[0]),
      "cold_call_s": cold_s, "compile_s": cold_s - e2e_med, "cold_call_compile_events": cold,
      "split_cold_compiles": split_cold_compiles,
      "prepare_s_median": prep, "prepare_s_all": prep_ts,
      "prefill_s_median": pre, "prefill_s_all": pre_ts,
      "decode_s_median": dec, "decode_s_all": dec_ts,
      "e2e_s_median": e2e_med, "e2e_s_all": e2e_ts,
      "prefill_tok_s": B * P / pre, "decode_tok_s": B * iters / dec,
      "prefill_tok_s_best": B * P / min(pre_ts), "decode_tok_s_best": B * iters / min(dec_ts),
      "decode_ms_per_step": dec / iters * 1e3,
      "decode_incl_prepare_tok_s": B * iters / (dec + prep),
      "e2e_gen_tok_s": B * G / e2e_med,
      "compiles_in_timed_regions": timed_compiles,
      "xla_memory_bytes": mem,
  }


def peak_rss() -> int:
  """This process's peak resident set (VmHWM), in bytes.

  Not getrusage's ru_maxrss: a child started by fork + exec would inherit its
  parent's high-water mark there.
  """
  with open("/proc/self/status") as f:
    kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
  return kib * 1024


# Runs the Tunix script unchanged as __main__, then reports its own peak RSS.
_TUNIX_WRAPPER = (
    "import runpy, sys; script = sys.argv[1]; sys.argv = sys.argv[1:]; "
    "runpy.run_path(script, run_name='__main__'); "
    "kib = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')); "
    "print(f'PEAK_RSS_BYTES={kib * 1024}')")


def run_tunix(python: Path, script: Path, shapes: str, modes: str) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "tunix.json"
    cmd = [str(python), "-c", _TUNIX_WRAPPER, str(script), "--skip-train", "--shapes", shapes,
           "--modes", modes, "--out", str(out)]
    print(f"[tunix] {python} {script} --skip-train --shapes {shapes} --modes {modes}",
          flush=True)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(cmd, check=True, env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                          text=True)
    lines = proc.stdout.splitlines()
    print("\n".join(l for l in lines if not l.startswith("PEAK_RSS_BYTES=")), flush=True)
    res = json.loads(out.read_text())
  res["peak_rss_bytes"] = next(int(l.split("=")[1]) for l in lines
                               if l.startswith("PEAK_RSS_BYTES="))
  return res


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--shapes", default="tiny,small", help="of tiny, small (benchmarks/shapes.py)")
  ap.add_argument("--modes", default="greedy,temperature", help="sampling modes")
  ap.add_argument("--tunix-script", type=Path, default=tunix_venv.BASELINE,
                  help="the Tunix baseline script")
  tunix_venv.add_arguments(ap)
  ap.add_argument("--out", default=None, help="write all results as JSON here")
  args = ap.parse_args()

  env = {"python": sys.version.split()[0], "platform": platform.platform(),
         "cpu_count": os.cpu_count(), "jax": jax.__version__,
         "devices": [str(d) for d in jax.devices()], "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
  kernel = inference.use_kernel(model_config(SHAPES["small"]), None)
  env["weight_products"] = "act_jax.sampling.cpu_matmul" if kernel else "XLA dot"
  print(f"[env] {env}", flush=True)
  machine = measure_machine()
  print(f"[machine] {describe(machine)}", flush=True)
  ours = {}
  for name in args.shapes.split(","):
    s = SHAPES[name]
    cfg = model_config(s)
    params = init_params(cfg, seed=0)
    rng = np.random.default_rng(0)
    ours[name] = {"params": cfg.num_params(), "sampler": {}}
    for mode in args.modes.split(","):
      r = bench_mode(cfg, params, mode, rng)
      ours[name]["sampler"][mode] = r
      print(f"[{name}/act_jax/{mode}] compile {r['compile_s']:.2f}s | prepare "
            f"{r['prepare_s_median']*1e3:.1f} ms | prefill {r['prefill_tok_s']:.0f} tok/s "
            f"({r['prefill_s_median']*1e3:.1f} ms) | decode {r['decode_tok_s']:.0f} tok/s "
            f"({r['decode_ms_per_step']:.2f} ms/step) | e2e {r['e2e_s_median']:.3f}s | "
            f"compiles in timed regions {r['compiles_in_timed_regions']}", flush=True)
      assert r["compiles_in_timed_regions"] == 0
    del params
  our_rss = peak_rss()

  tunix = None
  if not args.skip_tunix:
    tunix = run_tunix(tunix_venv.python(args.tunix_venv), args.tunix_script.resolve(),
                      args.shapes, args.modes)

  print(f"\nSampler on CPU (fp32, 1 JAX CPU device): act_jax ({env['weight_products']}) vs "
        "Tunix 0.1.7; "
        f"tok/s, medians of {REPS}; {describe(machine)}")
  hdr = (f"{'shape':6} {'mode':11} | {'prefill':>8} {'tunix':>8} {'x':>5} | {'decode':>7} "
         f"{'tunix':>7} {'x':>5} | {'ms/step':>7} {'tunix':>7} | {'e2e s':>6} {'tunix':>6} | "
         f"{'prep ms':>7} | {'XLA temp MiB':>12}")
  print(hdr)
  print("-" * len(hdr))
  for name, e in ours.items():
    for mode, r in e["sampler"].items():
      t = tunix["shapes"][name]["sampler"][mode] if tunix else None
      tv = lambda k, f: f.format(t[k]) if t else "-"
      ratio = lambda k: f"{r[k] / t[k]:.2f}" if t else "-"
      temp = sum(m["temp_size_in_bytes"] for m in r["xla_memory_bytes"].values()) / 2**20
      print(f"{name:6} {mode:11} | {r['prefill_tok_s']:8.0f} {tv('prefill_tok_s', '{:8.0f}')} "
            f"{ratio('prefill_tok_s'):>5} | {r['decode_tok_s']:7.0f} "
            f"{tv('decode_tok_s', '{:7.0f}')} {ratio('decode_tok_s'):>5} | "
            f"{r['decode_ms_per_step']:7.2f} {tv('decode_ms_per_step', '{:7.2f}')} | "
            f"{r['e2e_s_median']:6.3f} {tv('e2e_s_median', '{:6.3f}')} | "
            f"{r['prepare_s_median'] * 1e3:7.1f} | {temp:12.1f}")
  print(f"peak RSS: act_jax process {our_rss / 2**20:.0f} MiB"
        + (f", Tunix process {tunix['peak_rss_bytes'] / 2**20:.0f} MiB" if tunix else ""))
  if args.out:
    Path(args.out).write_text(json.dumps({"env": env, "machine": machine, "act_jax": ours,
                                          "act_jax_peak_rss": our_rss, "tunix": tunix},
                                         indent=2, default=str))
  if tunix and "small" in ours:
    ratios = {mode: r["decode_tok_s"] / tunix["shapes"]["small"]["sampler"][mode]["decode_tok_s"]
              for mode, r in ours["small"]["sampler"].items()}
    print("small decode vs Tunix: " + ", ".join(f"{m} {x:.3f}" for m, x in ratios.items()))
    if "greedy" in ratios:
      print(f"ratio_vs_tunix={ratios['greedy']:.3f}")


if __name__ == "__main__":
  main()
