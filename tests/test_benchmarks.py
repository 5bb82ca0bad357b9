"""The benchmarks' shared pieces: the core count on any OS, the interleaved order of
the two sides, and the sampler's figures from its timed regions."""
import math
import os
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import machine  # noqa: E402
import sampler as sampler_bench  # noqa: E402
import shapes  # noqa: E402
from act_jax.models import abstract_params  # noqa: E402


def test_cores_fall_back_to_the_cpu_count_without_an_affinity_mask(monkeypatch):
  """macOS has no os.sched_getaffinity: every core counts."""
  monkeypatch.delattr(os, "sched_getaffinity", raising=False)
  monkeypatch.setattr(os, "cpu_count", lambda: 6)
  assert machine.usable_cores() == 6
  assert machine.cpu()["cores"] == 6
  monkeypatch.setattr(os, "cpu_count", lambda: None)  # undeterminable
  assert machine.usable_cores() == 1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity mask here")
def test_cores_are_the_affinity_mask_where_there_is_one(monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3})
  monkeypatch.setattr(os, "cpu_count", lambda: 64)
  assert machine.usable_cores() == 2


def test_ours_is_measured_on_both_sides_of_theirs():
  calls = []
  ours = lambda label: calls.append(f"ours:{label}") or label
  theirs = lambda: calls.append("theirs") or "T"
  assert machine.interleaved(ours, theirs) == (["before", "after"], "T")
  assert calls == ["ours:before", "theirs", "ours:after"]
  calls.clear()
  assert machine.interleaved(ours, theirs, sandwich=False) == (["ours"], "T")
  assert calls == ["theirs", "ours:ours"]
  calls.clear()
  assert machine.interleaved(ours, None) == (["ours"], None)
  assert calls == ["ours:ours"]


def _pass(medians, all_times, iters=64):
  r = {"decode_loop_iterations": iters}
  for k in sampler_bench.TIMES:
    r[f"{k}_s_median"], r[f"{k}_s_all"] = medians[k], all_times[k]
  return r


def test_ours_is_the_mean_of_the_passes_and_best_their_minimum():
  a = _pass({"prepare": 0.1, "prefill": 0.2, "decode": 0.5, "e2e": 1.0},
            {"prepare": [0.1, 0.09, 0.2], "prefill": [0.2, 0.3, 0.2],
             "decode": [0.5, 0.45, 0.6], "e2e": [1.0, 1.1, 0.9]})
  b = _pass({"prepare": 0.3, "prefill": 0.4, "decode": 0.7, "e2e": 1.2},
            {"prepare": [0.3, 0.3, 0.4], "prefill": [0.4, 0.15, 0.5],
             "decode": [0.7, 0.8, 0.6], "e2e": [1.2, 1.3, 1.2]})
  c = sampler_bench.combine([a, b])
  # 8 rows x 64 steps; 8 x 64 prompt tokens; 8 x 64 generated tokens end to end.
  assert c["passes"] == 2 and c["decode_s_mean"] == pytest.approx(0.6)
  assert c["decode_tok_s"] == pytest.approx(512 / 0.6)
  assert c["decode_incl_prepare_tok_s"] == pytest.approx(512 / (0.6 + 0.2))
  assert c["decode_ms_per_step"] == pytest.approx(600 / 64)
  assert c["prefill_tok_s"] == pytest.approx(512 / 0.3)
  assert c["e2e_gen_tok_s"] == pytest.approx(512 / 1.1)
  best = c["best"]
  assert best["decode_tok_s"] == pytest.approx(512 / 0.45)
  assert best["decode_incl_prepare_tok_s"] == pytest.approx(512 / (0.45 + 0.09))
  assert best["prefill_tok_s"] == pytest.approx(512 / 0.15)
  # One pass: its own medians, the figures bench_mode reports.
  assert sampler_bench.combine([a])["decode_tok_s"] == pytest.approx(512 / 0.5)
  assert sampler_bench.rates({"prepare": 0.1, "prefill": 0.2, "decode": 0.5, "e2e": 1.0},
                             64)["decode_incl_prepare_tok_s"] == pytest.approx(512 / 0.6)
  with pytest.raises(ValueError, match="decode steps"):
    sampler_bench.combine([a, dict(b, decode_loop_iterations=63)])


@pytest.mark.parametrize("name", sorted(shapes.SHAPES))
def test_matmul_weights_are_the_models_matrices(name):
  """Against the parameters the model really has (abstract_params), not the formula."""
  s = shapes.SHAPES[name]
  p = abstract_params(shapes.model_config(s))
  layers = sum(math.prod(v.shape) for k, v in p["layers"].items() if k.startswith("w"))
  assert shapes.matmul_weights(s) == (layers, math.prod(p["lm_head"].shape))


def test_tunix_prefill_projects_every_position_ours_the_last():
  s = shapes.SHAPES["small"]
  layers, head = shapes.matmul_weights(s)
  B, P = sampler_bench.B, sampler_bench.P
  ours, theirs = (sampler_bench.prefill_matmul_flops(s, rows) for rows in (B, B * P))
  assert theirs - ours == 2 * (B * P - B) * head
  assert ours == 2 * B * P * layers + 2 * B * head
  np.testing.assert_allclose(theirs / ours, 1.63, atol=0.01)  # the docstring's "~1.6x"


def test_the_table_sets_decode_with_and_without_prepare_against_tunix():
  times = {"prepare": 0.2, "prefill": 0.25, "decode": 0.6, "e2e": 1.0}
  ours = dict(sampler_bench.combine([_pass(times, {k: [v] for k, v in times.items()})]),
              xla_memory_bytes={"decode": {"temp_size_in_bytes": 3 * 2**20}})
  tunix = {"shapes": {"small": {"sampler": {"greedy": {
      "prefill_tok_s": 1024.0, "decode_tok_s": 512 / 1.2, "decode_ms_per_step": 1200 / 64,
      "e2e_s_median": 2.0}}}}}
  out = sampler_bench.table({"small": {"greedy": ours}}, tunix)
  row = next(l for l in out.splitlines() if l.startswith("small"))
  cells = row.replace("|", " ").split()
  # prefill 2048 vs 1024 (2.00x); decode 853, incl. prepare 640, vs 427 (2.00x, 1.50x).
  assert cells[2:10] == ["2048", "1024", "2.00", "853", "640", "427", "2.00", "1.50"]
  assert "Tunix projects all 8x64 prompt positions" in out and "(1.63x)" in out
  no_tunix = sampler_bench.table({"small": {"greedy": ours}}, None)
  assert next(l for l in no_tunix.splitlines() if l.startswith("small")).count(" - ") >= 5


def test_aot_price_sums_the_paper_stages_from_roofline_rows():
  """The paper config: act once, il and rl twice per seed (act shared by its chains);
  a GRPO step is update + reference pass + prefill + max_new_tokens decode steps, and
  rl reuses the critic's rows (same GRPO settings)."""
  import runpy
  import aot_price
  c = runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1]
                         / "configs" / "paper_qwen3_8b.py"))["get_config"]()
  assert aot_price.stage_runs(c) == {"act": 1, "il": 2, "rl": 2}
  step = {"il_step": 0.5, "critic_update": 2.0, "critic_ref_logps": 1.0, "prefill": 0.25,
          "decode_step": 0.01}
  rows = {k: {"roofline": {"step_s": v}} for k, v in step.items()}
  out = {r[0]: r[3] for r in aot_price.price(c, rows)}
  grpo = 2.0 + 1.0 + 0.25 + 1024 * 0.01
  assert out["il"] == pytest.approx(640 * 0.5)
  assert out["act"] == out["rl"] == pytest.approx(320 * grpo)
  seed = 2 * 640 * 0.5 + 3 * 320 * grpo
  assert out["one seed (act x1, il x2, rl x2)"] == pytest.approx(seed)
  assert out["3 seeds"] == pytest.approx(3 * seed)


def test_aot_depth_extends_each_program_linearly_in_the_layers():
  """Two compiles at depth 2 and 4 -> depth 36: intercept + 34/2 x the per-2-layer
  step; a program only one report has is left out; no HBM term without bytes."""
  import aot_depth
  from act_jax import chips
  h100 = chips.CHIPS["NVIDIA H100 80GB HBM3"]
  row = lambda name, gib, tflop, coll: {
      "program": name, "chip": "h100", "hbm_bytes": h100.hbm_bytes, "bytes_accessed": None,
      "per_chip_bytes": {"total": gib * 2**30}, "flops": tflop * 1e12,
      "collective_bytes": coll * 1e9}
  shallow = [row("il_step", 20.0, 50.0, 3.0), row("decode_step", 1.0, 0.1, 0.0)]
  deeper = [row("il_step", 22.0, 100.0, 4.0)]
  (out,) = aot_depth.extrapolate(shallow, 2, deeper, 4, 36)
  assert out["program"] == "il_step"
  assert out["gib"] == pytest.approx(20 + 17 * 2) and out["fits"]
  assert out["tflop"] == pytest.approx(50 + 17 * 50)
  assert out["coll_gb"] == pytest.approx(3 + 17 * 1)
  assert out["roofline"]["hbm_s"] == 0
  assert out["roofline"]["step_s"] == pytest.approx(900e12 / h100.bf16_flops)
