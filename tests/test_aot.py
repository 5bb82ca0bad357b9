"""Ahead-of-time TPU compiles on this CPU host (`act_jax.aot`), through libtpu.

The paper's pipeline config with a tiny model is compiled for a one-host and a
two-host slice; references are computed here from shapes and the mesh, not from the
compiler's own answers.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("libtpu")

from act_jax import aot, hlo_stats, models, sharding  # noqa: E402
from act_jax.sampling import cpu_matmul  # noqa: E402
from aot_config import CHAIN, scanned_chain, tiny_config  # noqa: E402

PROGRAMS = {"il_step", "critic_update", "critic_ref_logps", "rl_update", "rl_ref_logps",
            "prefill", "decode_step", "eval_score"}


@pytest.fixture(scope="module", params=["v5e:2x2", "v5p:2x2x2"])
def compiled(request):
  """(topology, context, programs) of the tiny pipeline on a slice."""
  config = tiny_config()
  devices = aot.topology_devices(request.param)
  ctx = aot.context(config, devices)
  return request.param, ctx, aot.programs(config, ctx, aot.Lengths.of(config, 8))


def test_every_program_compiles_and_fits(compiled):
  topology, ctx, programs = compiled
  assert {p.name for p in programs} == PROGRAMS
  devices = aot.topology_devices(topology)
  assert ctx.mesh.devices.size == len(devices) == {"v5e:2x2": 4, "v5p:2x2x2": 8}[topology]
  assert len({d.process_index for d in devices}) == {"v5e:2x2": 1, "v5p:2x2x2": 2}[topology]
  chip = aot.chips.chip(devices[0].device_kind)
  for p in programs:
    row = aot.report(p, chip)
    assert row["fits"] and 0 < row["per_chip_bytes"]["total"] < chip.hbm_bytes, p.name
    assert row["flops"] > 0 and row["bytes_accessed"] > 0, p.name
  # A train step over fsdp-sharded params gathers them and reduce-scatters/all-reduces grads.
  step = aot.report(next(p for p in programs if p.name == "il_step"), chip)
  assert step["collectives"]["all-gather"]["count"] > 0


def test_per_chip_param_bytes_equal_the_sharded_size(compiled):
  """The scoring program's parameter arguments, per chip, against the model's
  bytes split over the fsdp axis (every matrix has an `embed` dimension; norm
  scales of the layers have it too; the final norm is replicated... it is [embed])."""
  topology, ctx, programs = compiled
  score = next(p for p in programs if p.name == "eval_score")
  entry = next(c for c in hlo_stats.parse(score.compiled.as_text()) if c.entry)
  leaves = jax.tree.leaves(models.abstract_params(ctx.model_cfg))
  per_chip = sum(a.bytes for arrs in list(entry.params.values())[:len(leaves)] for a in arrs)
  fsdp = ctx.mesh.shape["fsdp"]
  axes = jax.tree.leaves(models.logical_axes(ctx.model_cfg), is_leaf=lambda x: isinstance(x, tuple))
  expected = 0
  for leaf, names in zip(leaves, axes):
    size = math.prod(leaf.shape) * leaf.dtype.itemsize
    split = "embed" in names and leaf.shape[names.index("embed")] % fsdp == 0
    expected += size // fsdp if split else size
  assert per_chip == expected


def test_no_tpu_program_contains_the_cpu_kernel(compiled):
  _, _, programs = compiled
  for p in programs:
    assert cpu_matmul._TARGET not in hlo_stats.custom_calls(p.compiled.as_text()), p.name


def test_one_chip_float32_sampler_leaves_the_cpu_kernel_out():
  """On one chip with a float32 model the CPU sampler would use its kernel; a TPU
  program must not (the layout follows the mesh's platform, not this host's)."""
  config = tiny_config(dtype="float32")
  ctx = aot.context(config, aot.topology_devices("v5e:2x2")[:1])
  for p in aot.programs(config, ctx, aot.Lengths.of(config, 8), only=["prefill", "decode_step"]):
    assert cpu_matmul._TARGET not in hlo_stats.custom_calls(p.compiled.as_text()), p.name


@pytest.mark.parametrize("only, compiled", [
    (["critic_update"], ["critic_update"]),
    (["rl_ref_logps"], ["rl_ref_logps"]),
    (["critic_update", "rl_ref_logps"], ["critic_update", "rl_ref_logps"]),
    (["critic_update", "rl_update"], ["critic_update"]),  # the RL update equals the critic's
])
def test_only_the_requested_grpo_programs_are_compiled(monkeypatch, only, compiled):
  """`--programs` names what is compiled: an 8B reference pass is minutes of compile."""
  names = []

  def record(fn, args, *, name="program", **kwargs):
    names.append(name)
    return aot.Program(name, None, 0.0, 0.0, "", 1)

  monkeypatch.setattr(aot, "compile_program", record)
  config = tiny_config()
  ctx = aot.context(config, aot.topology_devices("v5e:2x2"))
  got = aot.programs(config, ctx, aot.Lengths.of(config, 8), only=only)
  assert sorted(p.name for p in got) == sorted(only)
  assert names == compiled


def test_splash_attention_compiles_for_tpu_per_chip():
  """The Pallas splash kernel (`model.attention="splash"`) compiles through libtpu in the
  train step and the scoring forward, run per chip (rows over fsdp, heads over tensor):
  the kernel is in the program (and not in the XLA attention's)."""
  config = tiny_config(attention="splash")
  config.mesh = dict(data=1, fsdp=2, tensor=2)
  ctx = aot.context(config, aot.topology_devices("v5e:2x2"))
  xla = aot.programs(tiny_config(), aot.context(tiny_config(), ctx.mesh.devices.flat),
                     aot.Lengths.of(config, 8), only=["il_step"])
  for p in aot.programs(config, ctx, aot.Lengths.of(config, 8), only=["il_step", "eval_score"]):
    calls = hlo_stats.custom_calls(p.compiled.as_text())
    assert "tpu_custom_call" in calls, (p.name, calls)
    assert aot.report(p, aot.chips.chip("TPU v5 lite"))["fits"]
  assert not any("tpu_custom_call" in hlo_stats.custom_calls(p.compiled.as_text()) for p in xla)


def test_an_oversized_program_is_refused_with_what_would_help():
  # ~26 GB of float32 embedding and head per chip over a 4-chip fsdp axis, > 16 GiB.
  config = tiny_config(hidden_size=32768, vocab_size=393216, num_heads=4, num_kv_heads=2,
                       head_dim=128)
  ctx = aot.context(config, aot.topology_devices("v5e:2x2"))
  with pytest.raises(aot.DoesNotFit) as e:  # refused by XLA, or by our check after it
    (score,) = aot.programs(config, ctx, aot.Lengths.of(config, 8), only=["eval_score"])
    aot.check_fits(score.compiled, score.name)
  msg = str(e.value)
  assert msg.startswith("program eval_score does not fit")
  capacity = re.search(r"([\d.]+) ?GiB per chip > ([\d.]+) GiB HBM|\(([\d.]+)G\) exceeds "
                       r"available HBM \(([\d.]+)G\)", msg)
  needed, hbm = [float(x) for x in capacity.groups() if x is not None]
  assert needed > hbm > 15
  buffers = msg.split("Largest buffers")[1].split(". Config")[0]
  assert buffers.count(" GiB") == 3 and "embed" in buffers  # the 12 GiB tables lead
  for field in ("mesh.fsdp", "model.remat", "batch_size", "max_state_tokens"):
    assert field in msg


def test_hlo_flops_count_every_iteration_of_a_scanned_loop():
  """XLA's cost analysis counts a loop body once; ours counts its trip count, and a
  scanned chain of matmuls costs what the analytic count says (fwd + both grads)."""
  loss, args, per_chip = scanned_chain(aot.topology_devices("v5e:2x2"), (2, 2))
  p = aot.compile_program(jax.grad(loss, argnums=(0, 1)), args)
  assert hlo_stats.flops(p.compiled.as_text()) == pytest.approx(per_chip, rel=1e-6)
  assert p.compiled.cost_analysis()["flops"] < per_chip / 2  # XLA: the body once
  coll = aot.collectives(p.compiled)
  L = CHAIN["L"]
  assert coll["all-gather"]["count"] % L == 0 and coll["all-gather"]["count"] >= L


# MaxText 0.2.5's utils/accelerator_to_spec_map.py, `wrap` of v5p-128, v5p-768, v4-256,
# v5p-64, v5p-16, v5e-256, v6e-64 and v5e-4.
@pytest.mark.parametrize("name, wrap", [
    ("v5p:4x4x4", (True,) * 3), ("v5p:4x8x12", (True,) * 3), ("v4:4x4x8", (True,) * 3),
    ("v5p:2x4x4", (False,) * 3), ("v5p:2x2x2", (False,) * 3),
    ("v5e:16x16", (True, True, False)), ("v6e:8x8", (False,) * 3), ("v5e:2x2", (False,) * 3)])
def test_slices_have_the_wraparound_links_of_real_ones(name, wrap):
  assert aot.wraparound(name) == wrap


def test_weights_split_over_a_whole_cube_are_all_gathered():
  """fsdp over all 64 chips of v5p:4x4x4: a scanned two-layer stack gathers each layer's
  weights with all-gathers (2 weights x 2 layers) and all-reduces only the loss; libtpu
  compiled the gathers as all-reduces of zero-padded buffers before the slice had its
  wraparound links (docs/tpu_aot.md, Anchor)."""
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1},
                            aot.topology_devices("v5p:4x4x4"))  # in ICI order, as a run's
  sh = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  L, T, D, F = 2, 512, 1024, 4096
  w = (jax.ShapeDtypeStruct((L, D, F), jnp.float32, sharding=sh(None, "fsdp")),
       jax.ShapeDtypeStruct((L, F, D), jnp.float32, sharding=sh(None, None, "fsdp")))
  x = jax.ShapeDtypeStruct((64, T, D), jnp.bfloat16, sharding=sh("fsdp"))

  def loss(w, x):
    def layer(x, w):
      h = jnp.einsum("btd,df->btf", x, w[0].astype(jnp.bfloat16))
      y = x + jnp.einsum("btf,fd->btd", jax.nn.silu(h), w[1].astype(jnp.bfloat16))
      return jax.lax.with_sharding_constraint(y, sh("fsdp")), None
    return jnp.mean(jnp.square(jax.lax.scan(layer, x, w)[0].astype(jnp.float32)))

  coll = aot.collectives(aot.compile_program(loss, (w, x)).compiled)
  assert (coll["all-gather"]["count"], coll["all-reduce"]["count"]) == (2 * L, 1)


def test_find_batch_bisects_to_the_largest_fitting_batch_of_the_named_programs(monkeypatch):
  """The search over stub programs that fit up to 5 rows per batch shard (a limit the
  compiler is not asked about): 5 for il, no other stage searched or compiled."""
  config = tiny_config()
  shards = 4  # v5e:2x2 under fsdp=-1
  asked = []

  def programs(config, ctx, lengths, only=None, batch_size=None):
    asked.append((tuple(only), batch_size))
    return [aot.Program(n, None, 0.0, 0.0, "", 4) for n in only]

  monkeypatch.setattr(aot, "programs", programs)
  monkeypatch.setattr(aot, "report", lambda p, chip: {"fits": asked[-1][1] <= 5 * shards})
  assert aot.find_batch(config, "v5e:2x2", 8, only=["il_step"]) == {"il": 5}
  assert {names for names, _ in asked} == {("il_step",)}
  assert sorted(b // shards for _, b in asked) == [1, 2, 4, 5, 6, 8]


def test_hlo_bytes_count_each_instruction_as_xla_and_every_iteration():
  """A scanned chain of matmuls on one v5e chip. Counted with each loop body once, as
  XLA's cost analysis counts, our per-instruction bytes equal XLA's own figure (to
  0.1%: XLA adds a few KB per asynchronous copy); with the trip count, each of the
  L - 1 further iterations reads at least its layer's weight on top of that."""
  chip = jax.sharding.SingleDeviceSharding(aot.topology_devices("v5e:2x2")[0])
  L, D = 8, 1024
  w = jax.ShapeDtypeStruct((L, D, D), jnp.bfloat16, sharding=chip)
  x = jax.ShapeDtypeStruct((D, D), jnp.bfloat16, sharding=chip)
  p = aot.compile_program(
      lambda w, x: jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), x, w)[0], (w, x))
  text, xla = p.compiled.as_text(), p.compiled.cost_analysis()["bytes accessed"]
  assert hlo_stats.bytes_accessed(text, each_loop_once=True) == pytest.approx(xla, rel=1e-3)
  assert hlo_stats.bytes_accessed(text) >= xla + (L - 1) * D * D * 2


ASYNC_SLICE_HLO = """HloModule m

ENTRY %main.1 (p.1: s8[16777216], k.1: f32[4096,4,4], i.1: s32[]) -> (s8[4194304], f32[128,4,4]) {
  %p.1 = s8[16777216]{0:T(1024)(128)(4,1)} parameter(0)
  %k.1 = f32[4096,4,4]{0,2,1:T(4,128)} parameter(1)
  %i.1 = s32[] parameter(2)
  %slice-start.1 = ((s8[16777216]{0:T(1024)(128)(4,1)}), s8[4194304]{0:T(1024)(128)(4,1)S(1)}, s32[]{:S(2)}) slice-start(%p.1), slice={[0:4194304]}, backend_config={"dma_priority":1}
  %slice-done.1 = s8[4194304]{0:T(1024)(128)(4,1)S(1)} slice-done(%slice-start.1), backend_config={"dma_priority":1}
  %ds.call-start = ((f32[4096,4,4]{0,2,1:T(4,128)}, s32[], s32[], s32[]), f32[128,4,4]{0,2,1:T(4,128)S(1)}, s32[]{:S(2)}) dynamic-slice-start(%k.1, %i.1, %i.1, %i.1), dynamic_slice_sizes={128,4,4}
  %ds.call-done = f32[128,4,4]{0,2,1:T(4,128)S(1)} dynamic-slice-done(%ds.call-start)
  ROOT %t = (s8[4194304]{0:T(1024)(128)(4,1)S(1)}, f32[128,4,4]{0,2,1:T(4,128)S(1)}) tuple(%slice-done.1, %ds.call-done)
}
"""


def test_hlo_bytes_count_an_asynchronous_slice_once():
  """libtpu 0.0.52 moves weight, cache and activation slices into on-chip memory with
  `slice-start` / `dynamic-slice-start` (and update) pairs (the instructions above are
  copied from the paper config's v6e:8x8 sampler programs, where there are ~1,000 per
  program). A pair moves its slice once: 4 MiB of the 16 MiB operand, and 128 x 4 x 4
  float32 (its layout puts the 128 rows minor, so the (4, 128) tiles fit). Counted as
  generic instructions (every operand + the start's tuple, which holds the operand),
  the v6e decode step came to 150.7 GB per step against XLA's 34.4 GB (34.5 now)."""
  assert hlo_stats.bytes_accessed(ASYNC_SLICE_HLO) == 4 * 2**20 + 128 * 4 * 4 * 4


def test_hlo_bytes_of_scanned_layers_match_the_unrolled_program():
  """The tiny model's scoring forward (4 layers) compiled scanned and unrolled for
  v5e:2x2: our count of the scanned program is within 5% of the unrolled program's,
  where XLA's counts one layer of four (< 60%). On the unrolled program, which has no
  loop, ours is within 10% of XLA's: we count as XLA's generic cost analysis does, and
  XLA:TPU's own accounts of a few instructions differ (docs/tpu_aot.md, finding 4)."""
  counts = {}
  for scan in (True, False):
    config = tiny_config(num_layers=4, scan_layers=scan)
    ctx = aot.context(config, aot.topology_devices("v5e:2x2"))
    (score,) = aot.programs(config, ctx, aot.Lengths.of(config, 8), only=["eval_score"])
    row = aot.report(score, aot.chips.chip("TPU v5 lite"))
    counts[scan] = row["bytes_accessed"], row["xla_cost_bytes_accessed"]
  (scanned, xla_scanned), (unrolled, xla_unrolled) = counts[True], counts[False]
  assert scanned == pytest.approx(unrolled, rel=0.05)
  assert xla_scanned < 0.6 * unrolled
  assert unrolled == pytest.approx(xla_unrolled, rel=0.10)
