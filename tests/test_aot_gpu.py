"""Ahead-of-time GPU compiles on this host, which has no GPU (`act_jax.aot --topology
h100:1x1x8`), through jax's CUDA plugin. The plugin is no project dependency: these
tests run when `benchmarks/cuda_plugin.sh`'s folder is on PYTHONPATH, e.g.

    benchmarks/cuda_plugin.sh .venv/bin/python
    PYTHONPATH=benchmarks/.cuda-plugin/site python -m pytest tests/test_aot_gpu.py

and are skipped otherwise. References come from shapes, not from the compiler.
"""
import jax
import pytest

from act_jax import aot, chips, gpu_target, hlo_stats
from aot_config import scanned_chain, tiny_config

PROGRAMS = {"il_step", "critic_update", "critic_ref_logps", "rl_update", "rl_ref_logps",
            "prefill", "decode_step", "eval_score"}
needs_plugin = pytest.mark.skipif(
    not gpu_target.plugin_available(),
    reason="jax's CUDA plugin is not on PYTHONPATH (run benchmarks/cuda_plugin.sh and put "
           "benchmarks/.cuda-plugin/site on PYTHONPATH)")


def test_gpu_topology_names_are_checked_before_the_plugin(monkeypatch):
  with pytest.raises(ValueError, match=r"SLICESxHOSTSxGPUS, e\.g\. h100:1x1x8"):
    aot.topology("h100:8")
  monkeypatch.setattr(gpu_target, "plugin_available", lambda: False)
  with pytest.raises(ValueError, match="benchmarks/cuda_plugin.sh"):
    aot.gpu_topology("h100", "1x1x8")
  with pytest.raises(ValueError, match="no GPU target 'a100'"):
    gpu_target.target("a100")


@pytest.fixture(scope="module")
def compiled():
  config = tiny_config()
  devices = aot.topology_devices("h100:1x1x8")
  ctx = aot.context(config, devices)
  return devices, ctx, aot.programs(config, ctx, aot.Lengths.of(config, 8))


@needs_plugin
def test_every_program_compiles_for_one_8_gpu_host_and_fits(compiled):
  devices, ctx, programs = compiled
  assert {p.name for p in programs} == PROGRAMS
  assert len(devices) == 8 and {d.device_kind for d in devices} == {"NVIDIA H100 80GB HBM3"}
  assert dict(ctx.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  chip = chips.chip(devices[0].device_kind)
  for p in programs:
    row = aot.report(p, chip)
    assert row["fits"] and 0 < row["per_chip_bytes"]["total"] < chip.hbm_bytes, p.name
    assert row["flops"] > 0, p.name
    assert row["bytes_accessed"] is None  # XLA:GPU has no cost analysis without a GPU
  rows = {p.name: aot.report(p, chip) for p in programs}
  for name in ("il_step", "critic_update"):  # the HLO count against act_jax.flops
    assert 0.95 < rows[name]["flops_ratio"] < 1.25, (name, rows[name]["flops_ratio"])
  assert rows["il_step"]["collectives"]["all-gather"]["count"] > 0  # fsdp gathers weights


@needs_plugin
@pytest.mark.parametrize("triton", [True, False])
def test_hlo_flops_count_gpu_matmuls(triton):
  """On GPU the matmuls of a scanned chain are no plain `dot`s of the loop body: they
  sit in Triton GEMM fusions (the default without a device to autotune on) or, with
  Triton GEMMs off, are cuBLAS custom calls. Either way the count equals the analytic
  one (fwd + both grads, every iteration)."""
  loss, args, per_chip = scanned_chain(aot.topology_devices("h100:1x1x8"), (2, 4))
  text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile(
      compiler_options={"xla_gpu_enable_triton_gemm": triton}).as_text()
  assert hlo_stats.flops(text) == pytest.approx(per_chip, rel=1e-6)
  comps = hlo_stats.parse(text)
  fused = {callee for c in comps for i in c.instrs if i.opcode == "fusion"
           and "kind=kCustom" in i.attrs for _, callee in i.called}
  with_dots = {c.name for c in comps if any(i.opcode == "dot" for i in c.instrs)}
  cublas = [c for c in hlo_stats.custom_calls(text) if c.startswith("__cublas")]
  if triton:
    assert with_dots and with_dots <= fused and not cublas
  else:
    assert not with_dots and cublas


def test_hlo_flops_count_cublas_gemm_custom_calls():
  """A cuBLAS GEMM is a custom call, not a `dot`: counted from its backend config's
  contracting dimensions, in a loop of 3 iterations (no plugin needed)."""
  hlo = """
%body (p: (s32[], bf16[64,32], bf16[32,16])) -> (s32[], bf16[64,32], bf16[32,16]) {
  %p = (s32[], bf16[64,32]{1,0}, bf16[32,16]{1,0}) parameter(0)
  %a = bf16[64,32]{1,0} get-tuple-element(%p), index=1
  %b = bf16[32,16]{1,0} get-tuple-element(%p), index=2
  %g = (bf16[64,16]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"alpha_real":1,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  ROOT %t = (s32[], bf16[64,32]{1,0}, bf16[32,16]{1,0}) tuple(%i, %a, %b)
}

ENTRY %main (x: bf16[64,32], y: bf16[32,16]) -> bf16[64,32] {
  %x = bf16[64,32]{1,0} parameter(0)
  %w = (s32[], bf16[64,32]{1,0}, bf16[32,16]{1,0}) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %c = (bf16[64,16]{1,0}, s8[1024]{0}) custom-call(%x, %y), custom_call_target="__cudnn$fmha", backend_config={"lhs_contracting_dimensions":["1"]}
}
"""
  assert hlo_stats.flops(hlo) == 3 * 2 * 64 * 16 * 32
