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
one-off weight preparation (`prepare`: the per-layer fused copy, made once per
parameter version by `Sampler.prepare`), decode tok/s with that copy counted
(`decode_incl_prepare_tok_s` = 8 * iterations / (decode + prepare) time: what one
batch pays when the weights change every batch) beside the figure without it,
the public `Sampler.generate` end to end (which prepares weights inside its
program on every call), XLA's memory analysis of each program and the process
peak RSS.

Prefill does not do the same work on both sides. Tunix's prefill projects every
prompt position onto the vocabulary (its transformer returns [8, 64, vocab]
logits, of which sampling uses the last); ours projects only each row's last
position. Prefill tok/s compares wall time for the same 512 prompt tokens; the
weight-matmul FLOPs of each side (`prefill_matmul_flops`) are printed with the
table (small shape: Tunix's are ~1.6x ours). Decode does the same work on both.

Then runs the Tunix script (google-tunix==0.1.7, in its own virtualenv, created on
first use at benchmarks/.venv-tunix by benchmarks/tunix_venv.py) with --skip-train.
The two sides' timings are interleaved as in train_step.py (`machine.interleaved`):
ours, Tunix, ours, so a slow window of a shared machine cannot favour either side;
ours is reported as the mean of the two passes' medians (each time; every rate is
computed from those times) and, as "best", from the minimum over both passes'
repetitions (--no-sandwich: one pass, after Tunix). Prints both side by side and
ends with `ratio_vs_tunix=<our / Tunix greedy decode tok/s, small shape>` (the
lines before give every mode's, with and without prepare). The machine's fp32
matmul peak and read bandwidth (benchmarks/machine.py) are printed with the
table, per pass: decoding streams the weights once per token, so bandwidth sets
its pace.
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
from machine import describe, interleaved, measure_machine, time_call as timed  # noqa: E402
from shapes import SHAPES, matmul_weights, model_config  # noqa: E402  (benchmarks/)
import tunix_venv  # noqa: E402  (benchmarks/)

B, P, G, REPS = 8, 64, 64, 3
TIMES = ("prepare", "prefill", "decode", "e2e")  # the timed regions, seconds each


def rates(t: dict[str, float], iters: int) -> dict[str, float]:
  """Every reported rate from the regions' times (`TIMES`): one formula whether the
  times are one pass's medians, the passes' mean or their best."""
  return {"prefill_tok_s": B * P / t["prefill"], "decode_tok_s": B * iters / t["decode"],
          "decode_incl_prepare_tok_s": B * iters / (t["decode"] + t["prepare"]),
          "decode_ms_per_step": t["decode"] / iters * 1e3, "e2e_gen_tok_s": B * G / t["e2e"]}


def combine(passes: list[dict]) -> dict:
  """Ours over its passes around Tunix: each region's time is the mean of the passes'
  medians (the headline) or the minimum over all their repetitions ("best")."""
  iters = passes[0]["decode_loop_iterations"]
  if any(p["decode_loop_iterations"] != iters for p in passes):
    raise ValueError("combine: the passes ran different numbers of decode steps")
  mean = {k: statistics.mean(p[f"{k}_s_median"] for p in passes) for k in TIMES}
  best = {k: min(min(p[f"{k}_s_all"]) for p in passes) for k in TIMES}
  return {"passes": len(passes), "decode_loop_iterations": iters,
          **{f"{k}_s_mean": v for k, v in mean.items()}, **rates(mean, iters),
          "best": rates(best, iters)}


def prefill_matmul_flops(s: dict, projected_rows: int) -> int:
  """Weight-matmul FLOPs of one B x P prefill projecting `projected_rows` positions
  onto the vocabulary: B*P for Tunix (every position), B for ours (each last one)."""
  layers, head = matmul_weights(s)
  return 2 * (B * P * layers + projected_rows * head)


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
  times = {"prepare": prep, "prefill": pre, "decode": dec, "e2e": e2e_med}
  return {
      "mode": mode, "batch": B, "prompt_len": P, "gen_steps": G, "cache_size": P + G,
      "decode_loop_iterations": iters, "returned_tokens_per_seq": int(out.lengths[0]),
      "cold_call_s": cold_s, "compile_s": cold_s - e2e_med, "cold_call_compile_events": cold,
      "split_cold_compiles": split_cold_compiles,
      "prepare_s_median": prep, "prepare_s_all": prep_ts,
      "prefill_s_median": pre, "prefill_s_all": pre_ts,
      "decode_s_median": dec, "decode_s_all": dec_ts,
      "e2e_s_median": e2e_med, "e2e_s_all": e2e_ts,
      **rates(times, iters),
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


def table(ours: dict, tunix: dict | None) -> str:
  """The side-by-side table (ours: `combine`d figures with `xla_memory_bytes`, by shape and
  mode; tunix: its script's JSON, or None) and what it does not compare like for like."""
  col = lambda x, w, d=0: f"{'-':>{w}}" if x is None else f"{x:{w}.{d}f}"
  hdr = (f"{'shape':6} {'mode':11} | {'prefill':>8} {'tunix':>8} {'x':>5} | {'decode':>7} "
         f"{'+prep':>7} {'tunix':>7} {'x':>5} {'x+prep':>6} | {'ms/step':>7} {'tunix':>7} | "
         f"{'e2e s':>6} {'tunix':>6} | {'prep ms':>7} | {'XLA temp MiB':>12}")
  lines = [hdr, "-" * len(hdr)]
  for name in ours:
    for mode, r in ours[name].items():
      t = tunix["shapes"][name]["sampler"][mode] if tunix else None
      tv = lambda k, w, d=0: col(t[k] if t else None, w, d)
      ratio = lambda k, w, tk=None: col(r[k] / t[tk or k] if t else None, w, 2)
      temp = sum(m["temp_size_in_bytes"] for m in r["xla_memory_bytes"].values()) / 2**20
      lines.append(
          f"{name:6} {mode:11} | {r['prefill_tok_s']:8.0f} {tv('prefill_tok_s', 8)} "
          f"{ratio('prefill_tok_s', 5)} | {r['decode_tok_s']:7.0f} "
          f"{r['decode_incl_prepare_tok_s']:7.0f} {tv('decode_tok_s', 7)} "
          f"{ratio('decode_tok_s', 5)} {ratio('decode_incl_prepare_tok_s', 6, 'decode_tok_s')} | "
          f"{r['decode_ms_per_step']:7.2f} {tv('decode_ms_per_step', 7, 2)} | "
          f"{r['e2e_s_mean']:6.3f} {tv('e2e_s_median', 6, 3)} | "
          f"{r['prepare_s_mean'] * 1e3:7.1f} | {temp:12.1f}")
  lines.append("decode +prep: our decode tok/s with the one-off weight copy counted; x+prep: "
               "it against Tunix's decode (which excludes building its model state)")
  for name in ours:
    theirs, mine = (prefill_matmul_flops(SHAPES[name], rows) for rows in (B * P, B))
    lines.append(f"prefill, {name}: not the same work. Tunix projects all {B}x{P} prompt "
                 f"positions onto the vocabulary, ours each row's last: weight matmuls "
                 f"{theirs / 1e9:.2f} vs {mine / 1e9:.2f} GFLOP ({theirs / mine:.2f}x); the "
                 "tok/s compare wall time for the same prompt tokens")
  return "\n".join(lines)


def measure_ours(shapes: list[str], modes: list[str], label: str) -> dict:
  """One pass of ours: the machine's speeds, then every shape and mode."""
  machine = measure_machine()
  print(f"[ours/{label}] {describe(machine)}", flush=True)
  out: dict = {"machine": machine}
  for name in shapes:
    cfg = model_config(SHAPES[name])
    params = init_params(cfg, seed=0)
    rng = np.random.default_rng(0)
    out[name] = {"params": cfg.num_params(), "sampler": {}}
    for mode in modes:
      r = out[name]["sampler"][mode] = bench_mode(cfg, params, mode, rng)
      print(f"[ours/{label}/{name}/{mode}] compile {r['compile_s']:.2f}s | prepare "
            f"{r['prepare_s_median']*1e3:.1f} ms | prefill {r['prefill_tok_s']:.0f} tok/s "
            f"({r['prefill_s_median']*1e3:.1f} ms) | decode {r['decode_tok_s']:.0f} tok/s "
            f"({r['decode_ms_per_step']:.2f} ms/step), incl. prepare "
            f"{r['decode_incl_prepare_tok_s']:.0f} | e2e {r['e2e_s_median']:.3f}s | "
            f"compiles in timed regions {r['compiles_in_timed_regions']}", flush=True)
      assert r["compiles_in_timed_regions"] == 0
    del params
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--shapes", default="tiny,small", help="of tiny, small (benchmarks/shapes.py)")
  ap.add_argument("--modes", default="greedy,temperature", help="sampling modes")
  ap.add_argument("--tunix-script", type=Path, default=tunix_venv.BASELINE,
                  help="the Tunix baseline script")
  tunix_venv.add_arguments(ap)
  ap.add_argument("--no-sandwich", dest="sandwich", action="store_false",
                  help="measure ours only after Tunix, not before and after (averaged)")
  ap.add_argument("--out", default=None, help="write all results as JSON here")
  args = ap.parse_args()
  shapes, modes = args.shapes.split(","), args.modes.split(",")

  env = {"python": sys.version.split()[0], "platform": platform.platform(),
         "cpu_count": os.cpu_count(), "jax": jax.__version__,
         "devices": [str(d) for d in jax.devices()], "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
  kernel = inference.use_kernel(model_config(SHAPES["small"]), None)
  env["weight_products"] = "act_jax.sampling.cpu_matmul" if kernel else "XLA dot"
  print(f"[env] {env}", flush=True)
  run_theirs = None if args.skip_tunix else lambda: run_tunix(
      tunix_venv.python(args.tunix_venv), args.tunix_script.resolve(), args.shapes, args.modes)
  passes, tunix = interleaved(lambda label: measure_ours(shapes, modes, label), run_theirs,
                              args.sandwich)
  ours = {name: {mode: dict(combine([p[name]["sampler"][mode] for p in passes]),
                           xla_memory_bytes=passes[-1][name]["sampler"][mode]["xla_memory_bytes"])
                 for mode in modes} for name in shapes}
  our_rss = peak_rss()

  how = (f"ours = mean of {len(passes)} passes around Tunix (ours, Tunix, ours), each a median "
         f"of {REPS}" if len(passes) > 1 else f"medians of {REPS}")
  print(f"\nSampler on CPU (fp32, 1 JAX CPU device): act_jax ({env['weight_products']}) vs "
        f"Tunix 0.1.7; tok/s, {how}")
  for p in passes:
    print(f"  machine: {describe(p['machine'])}")
  print(table(ours, tunix))
  print(f"peak RSS: act_jax process {our_rss / 2**20:.0f} MiB"
        + (f", Tunix process {tunix['peak_rss_bytes'] / 2**20:.0f} MiB" if tunix else ""))
  if args.out:
    Path(args.out).write_text(json.dumps({"env": env, "act_jax": ours, "passes": passes,
                                          "act_jax_peak_rss": our_rss, "tunix": tunix},
                                         indent=2, default=str))
  if tunix and "small" in ours:
    theirs = {m: tunix["shapes"]["small"]["sampler"][m]["decode_tok_s"] for m in modes}
    for key, what in (("decode_incl_prepare_tok_s", "incl. prepare "), ("decode_tok_s", "")):
      print(f"small decode {what}vs Tunix (ours mean; best): " + ", ".join(
          f"{m} {ours['small'][m][key] / theirs[m]:.3f}; "
          f"{ours['small'][m]['best'][key] / theirs[m]:.3f}" for m in modes))
    if "greedy" in modes:
      print("ratio_vs_tunix_incl_prepare="
            f"{ours['small']['greedy']['decode_incl_prepare_tok_s'] / theirs['greedy']:.3f}")
      print(f"ratio_vs_tunix={ours['small']['greedy']['decode_tok_s'] / theirs['greedy']:.3f}")


if __name__ == "__main__":
  main()
