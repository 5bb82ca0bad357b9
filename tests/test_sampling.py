"""The sampler against full (uncached) forward passes of the training decoder."""
import dataclasses
import functools
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import params as params_lib, sharding as shd
from act_jax.models import ModelConfig, abstract_params, graphdef, merge, positions_from_mask
from act_jax.sampling import CompileCounter, Sampler, SamplingConfig
from act_jax.sampling import core, cpu_matmul, inference
from act_jax.sampling.config import Buckets, round_up_geometric
from act_jax.sampling.sampler import left_pad

ARCHS = {
    "llama": ModelConfig(arch="llama", vocab_size=97, hidden_size=48, intermediate_size=80,
                         num_layers=2, num_heads=6, num_kv_heads=2, head_dim=8,
                         rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0),
                                       ("low_freq_factor", 1.0),
                                       ("original_max_position_embeddings", 16),
                                       ("rope_type", "llama3"))),
    "qwen2": ModelConfig(arch="qwen2", vocab_size=97, hidden_size=48, intermediate_size=80,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12,
                         qkv_bias=True, tie_embeddings=False),
    "qwen3": ModelConfig(arch="qwen3", vocab_size=97, hidden_size=48, intermediate_size=80,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, qk_norm=True,
                         tie_embeddings=False),
}
CFG = ARCHS["qwen3"]
PROMPTS = [[5, 17, 60, 3, 42, 8, 77], [31, 9], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]
NO_EOS = SamplingConfig(temperature=0.0, eos_ids=())


def _random_params(cfg, seed=0):
  """Random values everywhere (norm scales around 1) so outputs vary and every parameter
  matters; drawn with NumPy, since compiling JAX's RNG costs seconds per test."""
  rng = np.random.default_rng(seed)
  draw = lambda path, a: jnp.asarray(
      (1.0 if "norm" in jax.tree_util.keystr(path) else 0.0)
      + 0.3 * rng.standard_normal(a.shape), a.dtype)
  return jax.tree_util.tree_map_with_path(draw, abstract_params(cfg))


@functools.lru_cache(maxsize=None)
def _params(arch):
  return _random_params(ARCHS[arch])


@functools.lru_cache(maxsize=None)
def _forward(cfg):
  gdef = graphdef(cfg)
  return jax.jit(lambda p, t, m: merge(gdef, p)(t, positions_from_mask(m), m))


def _seq_logits(cfg, params, seq, width=40):
  """Logits after each token of seq [T, V]: one uncached forward, left-padded to `width`
  (one compile per config; padding is masked and positions start at the first token)."""
  tokens, mask = left_pad([seq], width, 1, pad_id=0)
  return np.asarray(_forward(cfg)(params, tokens, mask))[0, width - len(seq):]


def _full_logits(cfg, params, prompt, completion):
  """Logits predicting each completion token [C, V]."""
  logits = _seq_logits(cfg, params, list(prompt) + list(completion))
  return logits[len(prompt) - 1:len(prompt) - 1 + len(completion)]


def _greedy_reference(cfg, params, prompt, steps):
  seq = list(prompt)
  for _ in range(steps):
    seq.append(int(_seq_logits(cfg, params, seq)[-1].argmax()))
  return seq[len(prompt):]


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ------------------------------------------------------------------------------ greedy


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_greedy_equals_argmax_of_full_forward(arch):
  cfg, params = ARCHS[arch], _params(arch)
  out = Sampler(cfg).generate(params, PROMPTS, sampling=NO_EOS, max_new_tokens=12)
  assert out.tokens.shape == (3, 12) and out.finish_reasons == ["length"] * 3
  assert len(set(out.tokens.ravel().tolist())) > 6  # the random model is not degenerate
  for i, p in enumerate(PROMPTS):
    ref = _greedy_reference(cfg, params, p, 12)
    assert out.sequences()[i] == ref, (i, out.sequences()[i], ref)
    np.testing.assert_allclose(out.logprobs[i], 0.0)  # greedy: a point mass
    want = [_log_softmax(_full_logits(cfg, params, p, ref))[j, t] for j, t in enumerate(ref)]
    np.testing.assert_allclose(out.model_logprobs[i], want, atol=2e-5)


def test_prepared_weights_give_the_same_result():
  params = _params("qwen3")
  s = Sampler(CFG)
  a = s.generate(params, PROMPTS, sampling=NO_EOS, max_new_tokens=8)
  b = s.generate(s.prepare(params), PROMPTS, sampling=NO_EOS, max_new_tokens=8)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.model_logprobs, b.model_logprobs)


def test_prepare_is_made_once_per_parameter_version():
  """The same arrays give the same copy; other arrays a new one; the copy dies with them."""
  params = _random_params(CFG)
  s = Sampler(CFG)
  w = s.prepare(params)
  assert s.prepare(params) is w
  other = jax.tree.map(jnp.copy, params)
  assert s.prepare(other) is not w
  ref = weakref.ref(s.prepare(other))
  del w, other
  gc.collect()
  assert ref() is None  # no stale copy outlives its parameters


LAYOUTS = {  # F, head and w_gu shapes; the kernel's columns pad to whole panels
    "plain": (80, (48, 300), (48, 2, 80)),
    "kernel": (80, (10, 48, 32), (2, 3, 48, 32)),
    "kernel_narrow": (12, (10, 48, 32), (2, 1, 48, 32)),  # 12 columns: one padded panel
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_matrix_layouts_equal_the_full_forward(layout):
  """Matrices plain [D_in, ..., N] (off CPU, and the fallback), or as 32-wide panels run
  by `cpu_matmul` (the default on CPU where it builds)."""
  kernel = layout.startswith("kernel")
  if kernel and not cpu_matmul.available():
    pytest.skip("CPU kernel not built")
  F, head_shape, gu_shape = LAYOUTS[layout]
  cfg = dataclasses.replace(CFG, vocab_size=300, intermediate_size=F)
  params = _random_params(cfg)
  w = inference.prepare(cfg, params, kernel=kernel)
  assert w.kernel == kernel
  assert w.head.shape == head_shape and w.layers[0]["w_gu"].shape == gu_shape
  out = Sampler(cfg).generate(w, PROMPTS, sampling=NO_EOS, max_new_tokens=6)
  for i, p in enumerate(PROMPTS):
    ref = _greedy_reference(cfg, params, p, 6)
    assert out.sequences()[i] == ref, (i, out.sequences()[i], ref)
    want = [_log_softmax(_full_logits(cfg, params, p, ref))[j, t] for j, t in enumerate(ref)]
    np.testing.assert_allclose(out.model_logprobs[i], want, atol=2e-5)


def test_top_k_1_equals_greedy():
  params = _params("llama")
  s = Sampler(ARCHS["llama"])
  greedy = s.generate(params, PROMPTS, sampling=NO_EOS, max_new_tokens=10)
  top1 = s.generate(params, PROMPTS, sampling=SamplingConfig(temperature=1.3, top_k=1,
                                                             eos_ids=()),
                    max_new_tokens=10, seed=7)
  np.testing.assert_array_equal(greedy.tokens, top1.tokens)
  np.testing.assert_allclose(top1.logprobs, 0.0, atol=1e-6)  # one candidate: log 1


# ------------------------------------------------------------------------------ log-probs


@pytest.mark.parametrize("sampling", [
    SamplingConfig(temperature=0.7, eos_ids=()),
    SamplingConfig(temperature=1.0, top_k=5, eos_ids=()),
])
def test_logprobs_match_recomputed_forward(sampling):
  cfg, params = ARCHS["qwen2"], _params("qwen2")
  n = 3
  out = Sampler(cfg).generate(params, PROMPTS, sampling=sampling, max_new_tokens=10, n=n,
                              seed=3)
  assert out.tokens.shape == (len(PROMPTS) * n, 10)
  for r, comp in enumerate(out.sequences()):
    logits = _full_logits(cfg, params, PROMPTS[r // n], comp)  # row r is prompt r // n
    model_lp = _log_softmax(logits)[np.arange(len(comp)), comp]
    np.testing.assert_allclose(out.model_logprobs[r], model_lp, atol=2e-5)
    x = logits / sampling.temperature
    if sampling.top_k:
      kth = np.sort(x, -1)[:, -sampling.top_k][:, None]
      x = np.where(x >= kth, x, -np.inf)
    np.testing.assert_allclose(out.logprobs[r], _log_softmax(x)[np.arange(len(comp)), comp],
                               atol=2e-5)


def test_n_samples_are_grouped_per_prompt():
  params = _params("qwen3")
  s = Sampler(CFG)
  out = s.generate(params, PROMPTS, sampling=SamplingConfig(temperature=1.0, eos_ids=()),
                   max_new_tokens=8, n=4, seed=1)
  np.testing.assert_array_equal(out.prompt_index, np.repeat(np.arange(3), 4))
  # Independent samples within a group (same prompt, different tokens)...
  assert all(len({tuple(out.sequences()[i * 4 + j]) for j in range(4)}) > 1 for i in range(3))
  # ...and greedy groups are n copies of that prompt's greedy completion.
  g = s.generate(params, PROMPTS, sampling=NO_EOS, max_new_tokens=8, n=4)
  for r, seq in enumerate(g.sequences()):
    assert seq == _greedy_reference(CFG, params, PROMPTS[r // 4], 8)


# ------------------------------------------------------------------------------ stopping


def test_eos_and_length_end_rows_and_padding_never_leaks():
  params = _params("qwen3")
  s = Sampler(CFG, pad_id=0)
  free = s.generate(params, PROMPTS, sampling=NO_EOS, max_new_tokens=12).sequences()
  eos = free[0][4]  # row 0 emits this at step 4 (maybe earlier too)
  k = free[0].index(eos)
  out = s.generate(params, PROMPTS, sampling=SamplingConfig(temperature=0.0, eos_ids=(eos,)),
                   max_new_tokens=12)
  for i, ref in enumerate(free):
    end = ref.index(eos) + 1 if eos in ref else len(ref)
    assert out.sequences()[i] == ref[:end]
    assert out.finish_reasons[i] == ("eos" if eos in ref else "length")
    assert (out.tokens[i, end:] == 0).all()
    assert (out.logprobs[i, end:] == 0).all() and (out.model_logprobs[i, end:] == 0).all()
  assert out.lengths[0] == k + 1 and out.finish_reasons[0] == "eos"


def test_stop_token_sequences_end_rows_on_device():
  params = _params("qwen3")
  s = Sampler(CFG)
  free = s.generate(params, PROMPTS, sampling=NO_EOS, max_new_tokens=12).sequences()
  stop = tuple(free[2][5:7])
  out = s.generate(params, PROMPTS, sampling=dataclasses.replace(NO_EOS, stop_token_ids=(stop,)),
                   max_new_tokens=12)
  for i, ref in enumerate(free):
    ends = [j + 2 for j in range(len(ref) - 1) if tuple(ref[j:j + 2]) == stop]
    end = ends[0] if ends else len(ref)
    assert out.sequences()[i] == ref[:end]
    assert out.finish_reasons[i] == ("stop" if ends else "length")
  assert out.finish_reasons[2] == "stop"


def test_loop_exits_early_when_all_rows_are_done():
  params = _params("qwen3")
  s = Sampler(CFG)
  free = s.generate(params, PROMPTS[:1], sampling=NO_EOS, max_new_tokens=12)
  eos = free.sequences()[0][2]
  out = s.generate(params, PROMPTS[:1], sampling=SamplingConfig(temperature=0.0, eos_ids=(eos,)),
                   max_new_tokens=12)
  assert out.lengths[0] <= 3 and out.decode_steps == out.lengths[0] - 1


# ------------------------------------------------------------------------------ top-p


def test_top_p_support_matches_numpy_reference():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 50)).astype(np.float32) * 3
  for top_p, top_k, temp in [(0.5, 0, 1.0), (0.9, 0, 0.7), (0.8, 10, 1.0), (0.05, 0, 1.0)]:
    cfg = SamplingConfig(temperature=temp, top_p=top_p, top_k=top_k)
    values, ids = core.sampling_logits(jnp.asarray(logits), cfg)
    got = [set(np.asarray(i)[np.isfinite(np.asarray(v))].tolist()) for v, i in zip(values, ids)]
    for row, kept in zip(logits / temp, got):
      order = np.argsort(-row, kind="stable")[:top_k or None]
      p = np.exp(row[order] - row[order].max())
      p /= p.sum()
      before = np.cumsum(p) - p
      assert kept == set(order[before < top_p].tolist())
  # Sampling never leaves the nucleus, and covers it.
  row = logits[:1].repeat(4000, 0)
  cfg = SamplingConfig(temperature=1.0, top_p=0.6)
  tok, logp, _ = core.choose_tokens(jnp.asarray(row), jax.random.key(0), cfg)
  values, ids = core.sampling_logits(jnp.asarray(row[:1]), cfg)
  nucleus = set(np.asarray(ids[0])[np.isfinite(np.asarray(values[0]))].tolist())
  assert set(np.asarray(tok).tolist()) == nucleus
  probs = np.exp(_log_softmax(np.asarray(values[0])))
  freq = np.bincount(np.asarray(tok), minlength=50)[np.asarray(ids[0])] / len(row)
  np.testing.assert_allclose(freq, probs, atol=0.03)


# ------------------------------------------------------------------------------ sharding


MODEL = ("fsdp", "tensor")


@pytest.mark.parametrize("kv_heads,tp", [(4, MODEL), (2, "tensor")])
def test_sharded_generation_equals_unsharded(kv_heads, tp):
  """Generation's layout: tensor parallel over fsdp x tensor when the kv heads divide
  (no weight's input dim split, so decoding gathers none), else over tensor alone."""
  cfg = dataclasses.replace(CFG, num_heads=2 * kv_heads, num_kv_heads=kv_heads, vocab_size=96)
  params = _random_params(cfg)
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = jax.device_put(params, params_lib.shardings(cfg, mesh))
  prompts = PROMPTS + [[7, 8, 9]]
  ref = Sampler(cfg).generate(params, prompts, sampling=NO_EOS, max_new_tokens=10, n=2)
  s = Sampler(cfg, mesh)
  w = s.prepare(sharded)
  out = s.generate(w, prompts, sampling=NO_EOS, max_new_tokens=10, n=2)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.model_logprobs, ref.model_logprobs, atol=2e-5)
  spec = lambda x: tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
  layer = w.layers[0]
  assert spec(layer["wqkv"]) == (None, tp, None)  # [D, K, (G+2)*Hd]
  assert spec(layer["wo"]) == (tp, None)  # [H*Hd, D]
  assert spec(layer["w_gu"]) == (None, None, tp)  # [D, 2, F]
  assert spec(layer["w_down"]) == (tp, None)  # [F, D]
  assert spec(w.head) == (None, tp)  # [D, V]
  # Training's layout splits the input dim over fsdp; generation's never does.
  assert params_lib.shardings(cfg, mesh)["layers"]["wq"].spec[1] == "fsdp"


# ------------------------------------------------------------------------------ scoring


def test_score_matches_full_forward():
  cfg, params = ARCHS["llama"], _params("llama")
  prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[2]]
  conts = [[4, 5, 6], [7], [50, 51, 52, 53, 54, 55], [9, 9]]
  got = Sampler(cfg).score(params, prompts, conts)
  for p, c, g in zip(prompts, conts, got):
    want = _log_softmax(_full_logits(cfg, params, p, c))[np.arange(len(c)), c]
    np.testing.assert_allclose(g, want, atol=2e-5)
  sums = Sampler(cfg).score_sums(params, prompts, conts)
  np.testing.assert_allclose(sums, [w.sum() for w in got], rtol=1e-6)


# ------------------------------------------------------------------------------ buckets


def test_buckets():
  assert [round_up_geometric(n) for n in (1, 3, 5, 7, 9, 13, 17, 33, 65, 100, 200)] == \
      [1, 3, 6, 8, 12, 16, 24, 48, 96, 128, 256]
  b = Buckets()
  assert b.length(5) == 16 and b.length(40) == 48 and b.slots(64, 65) == 128
  assert b.batch(3, 4) == 4 and b.batch(5, 4) == 8 and b.batch(1, 1) == 1
  tokens, mask = left_pad([[1, 2], [3]], 4, 3, pad_id=0)
  np.testing.assert_array_equal(tokens, [[0, 0, 1, 2], [0, 0, 0, 3], [0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])


def test_one_compile_per_bucket():
  params = _params("qwen3")
  s = Sampler(CFG)
  sampling = SamplingConfig(temperature=1.0, eos_ids=())
  s.generate(params, [[1, 2, 3]], sampling=sampling, max_new_tokens=20)  # warm: jit + helpers
  c = CompileCounter()
  s.generate(params, [[1, 2, 3, 4, 5]], sampling=sampling, max_new_tokens=20, seed=1)
  s.generate(params, [[1] * 16], sampling=sampling, max_new_tokens=30, seed=2)  # same bucket
  assert c.count == 0, c.names()
  s.generate(params, [[1] * 17, [2]], sampling=sampling, max_new_tokens=20)  # P=24, B=2
  assert c.count == 1, c.names()


def test_gumbel_noise_uses_jax_random_bits():
  key = jax.random.key(5)
  hi, lo = jnp.zeros((3, 70), jnp.uint32), jnp.arange(210, dtype=jnp.uint32).reshape(3, 70)
  b1, b2 = core._threefry2x32(*jax.random.key_data(key), hi, lo)
  np.testing.assert_array_equal(b1 ^ b2, jax.random.bits(key, (3, 70)))
  g = np.asarray(core.gumbel_noise(key, 2, (16, 5000)))
  assert abs(g.mean() - np.euler_gamma) < 0.01 and abs(g.std() - np.pi / np.sqrt(6)) < 0.01
  assert not np.allclose(g, np.asarray(core.gumbel_noise(key, 3, (16, 5000))))
