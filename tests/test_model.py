"""The decoder against itself (padded vs unpadded, scan vs unrolled, bf16 vs fp32) and its
config checks; the sampler's cached forward is checked against it in test_sampling.py."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import presets
from act_jax.models import (ModelConfig, abstract_params, graphdef, init_params, merge,
                            positions_from_mask)

ARCHS = {
    "llama": ModelConfig(arch="llama", vocab_size=97, hidden_size=48, intermediate_size=80,
                         num_layers=3, num_heads=6, num_kv_heads=2, head_dim=8,
                         rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0),
                                       ("low_freq_factor", 1.0),
                                       ("original_max_position_embeddings", 16),
                                       ("rope_type", "llama3"))),
    "qwen2": ModelConfig(arch="qwen2", vocab_size=97, hidden_size=48, intermediate_size=80,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12,
                         qkv_bias=True, tie_embeddings=False),
    "qwen3": ModelConfig(arch="qwen3", vocab_size=97, hidden_size=48, intermediate_size=80,
                         num_layers=2, num_heads=4, num_kv_heads=1, head_dim=20, qk_norm=True,
                         tie_embeddings=False),
}


def _random_params(cfg, seed=0):
  """Init, then randomise biases/norm scales too so every parameter matters."""
  params = init_params(cfg, seed)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(tree, leaves)


@functools.partial(jax.jit, static_argnums=0)
def _full(cfg, params, tokens, mask):
  return merge(graphdef(cfg), params)(tokens, positions_from_mask(mask), mask)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_left_padding_matches_unpadded(arch):
  cfg = ARCHS[arch]
  params = _random_params(cfg)
  lengths = [7, 4, 1]
  T = max(lengths)
  rng = np.random.default_rng(0)
  seqs = [rng.integers(0, cfg.vocab_size, n) for n in lengths]
  tokens = np.zeros((len(seqs), T), np.int32)
  mask = np.zeros((len(seqs), T), bool)
  for i, s in enumerate(seqs):
    tokens[i, T - len(s):] = s
    mask[i, T - len(s):] = True
  padded = _full(cfg, params, jnp.asarray(tokens), jnp.asarray(mask))
  for i, s in enumerate(seqs):
    alone = _full(cfg, params, jnp.asarray(s)[None], jnp.ones((1, len(s)), bool))
    np.testing.assert_allclose(padded[i, T - len(s):], alone[0], atol=2e-5, rtol=1e-5)


def test_scan_and_unrolled_layers_agree():
  cfg = ARCHS["qwen3"]
  params = _random_params(cfg)
  tokens = jax.random.randint(jax.random.key(0), (2, 6), 0, cfg.vocab_size)
  mask = jnp.ones((2, 6), bool)
  a = _full(cfg, params, tokens, mask)
  b = _full(dataclasses.replace(cfg, scan_layers=False), params, tokens, mask)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_bf16_compute_is_close_to_fp32():
  cfg = ARCHS["llama"]
  params = _random_params(cfg)
  tokens = jax.random.randint(jax.random.key(0), (2, 6), 0, cfg.vocab_size)
  mask = jnp.ones((2, 6), bool)
  a = _full(cfg, params, tokens, mask)
  b = _full(dataclasses.replace(cfg, dtype="bfloat16"), params, tokens, mask)
  assert b.dtype == jnp.float32
  assert float(jnp.abs(a - b).max()) < 0.1 * float(jnp.abs(a).max())


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # GQA 6/2 heads, MQA 4/1
def test_dot_product_attention_matches_xla(arch):
  """`jax.nn.dot_product_attention` gives the einsum path's logits at every real token,
  with left and right padding in one batch."""
  cfg = ARCHS[arch]
  params = _random_params(cfg)
  tokens = jax.random.randint(jax.random.key(0), (3, 7), 0, cfg.vocab_size)
  mask = jnp.asarray([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0], [1] * 7], bool)
  a = _full(cfg, params, tokens, mask)
  b = _full(dataclasses.replace(cfg, attention="dot_product"), params, tokens, mask)
  assert float(jnp.abs(a).max()) > 1.0
  np.testing.assert_allclose(np.asarray(b)[np.asarray(mask)], np.asarray(a)[np.asarray(mask)],
                             atol=2e-5, rtol=1e-5)


def test_splash_attention_refuses_a_packed_mask():
  cfg = dataclasses.replace(ARCHS["qwen3"], attention="splash")
  model = merge(graphdef(cfg), _random_params(cfg))
  packed = jnp.ones((1, 5, 5), bool)
  with pytest.raises(ValueError, match="config.model.attention='splash'"):
    jax.eval_shape(model.hidden, jnp.zeros((1, 5), jnp.int32), jnp.zeros((1, 5), jnp.int32),
                   packed)


# Published parameter counts (HF model cards / safetensors metadata). Qwen3-1.7B ties its
# embeddings; the Hub's 2,031,739,904 also counts the stored lm_head copy.
PUBLISHED = {
    "qwen3-0.6b": 596_049_920,
    "qwen3-1.7b": 2_031_739_904 - 151_936 * 2048,
    "qwen3-4b": 4_022_468_096,
    "qwen3-8b": 8_190_735_360,
    "qwen2.5-7b": 7_615_616_512,
    "llama-3.1-8b": 8_030_261_248,
    "smollm2-135m": 134_515_008,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
  cfg = ModelConfig.from_dict(presets.model(name))
  built = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(cfg)))
  assert built == PUBLISHED[name]
  assert cfg.num_params() == built


@pytest.mark.parametrize("fields, match", [
    (dict(arch="gpt2"), "config.model.arch"),
    (dict(num_heads=6, num_kv_heads=4), "config.model.num_heads"),
    (dict(rope_scaling={"rope_type": "yarn"}), "config.model.rope_scaling"),
    (dict(dtype="float16"), "config.model.dtype"),
    (dict(attention="flash"), "config.model.attention"),
    (dict(logits_chunk=-1), "config.model.logits_chunk"),
    (dict(hidden=3), "config.model: unknown field"),
])
def test_bad_model_config_names_the_field(fields, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig.from_dict(fields)


def test_a_newer_field_is_written_only_when_set():
  """Runs made before `logits_chunk` existed keep their fingerprints and cache keys: the
  field is left out of to_dict at its default, and round-trips when set."""
  assert "logits_chunk" not in ModelConfig().to_dict()
  cfg = ModelConfig(logits_chunk=512)
  assert cfg.to_dict()["logits_chunk"] == 512
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg
