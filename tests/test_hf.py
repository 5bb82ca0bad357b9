"""HF import/export against transformers + PyTorch on tiny random models (and SmolLM2, slow)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import transformers
from safetensors import safe_open

from act_jax import params as params_lib
from act_jax.hf import CheckpointError, save_pretrained
from act_jax.hf.__main__ import main as cli
from act_jax.hf.verify import jax_logits, left_pad, max_logit_diff, torch_logits
from act_jax.hf.weights import INDEX_FILE, SINGLE_FILE, weight_files
from act_jax.models import graphdef, merge, positions_from_mask
from act_jax.sampling import Sampler, SamplingConfig
from act_jax.sharding import make_mesh

torch = pytest.importorskip("torch", reason="PyTorch (CPU) is the parity reference")

ROOT = Path(__file__).resolve().parents[1]
VOCAB, PAD, BOS, EOS = 128, 0, 1, 2
ROWS = [[BOS, 5, 17, 99, 3, 42, 8, 77, 64, 23, 11], [BOS, 31, 9, 120, 4]]  # 2nd left-padded


def _tiny_tokenizer():
  """A word-level tokenizer over VOCAB ids: enough to check files travel and load."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, **{f"w{i}": i for i in range(3, VOCAB)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, rms_norm_eps=1e-6)
FAMILIES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **COMMON, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **COMMON, tie_word_embeddings=False, rope_theta=10000.0)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **{**COMMON, "hidden_size": 48}, head_dim=32, tie_word_embeddings=False,
        rope_theta=1e6)),
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
  """HF inits norms to 1 and biases to 0; random values make a wrong mapping visible."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      p.copy_(1 + 0.2 * noise if "norm" in name else 0.15 * noise)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def hf_dir(request, tmp_path_factory):
  torch.manual_seed(0)
  model = FAMILIES[request.param]().eval()
  _randomize(model, seed=len(request.param))
  d = tmp_path_factory.mktemp(f"hf_{request.param}")
  model.save_pretrained(d)
  _tiny_tokenizer().save_pretrained(d)
  return d


def _batch():
  return left_pad(ROWS, PAD)


def _hf_tensors(d: Path) -> dict[str, np.ndarray]:
  out = {}
  for name, path in weight_files(d).items():
    with safe_open(str(path), framework="numpy") as f:
      out[name] = f.get_tensor(name)
  return out


def greedy(params, cfg, tokens, mask, steps: int) -> np.ndarray:
  """Plain greedy decoding with full forwards over a fixed-width buffer (one compile).

  Later slots are masked out until written, and causality is by slot, so the
  logits at the last written slot are those of the unpadded prefix. Finished rows
  continue with pad ids, as transformers does.
  """
  gdef = graphdef(cfg)
  fwd = jax.jit(lambda p, t, m: merge(gdef, p)(t, positions_from_mask(m), m))
  B, T = tokens.shape
  buf = np.concatenate([tokens, np.full((B, steps), cfg.pad_token_id, np.int32)], 1)
  m = np.concatenate([mask, np.zeros((B, steps), bool)], 1)
  done = np.zeros(B, bool)
  for i in range(steps):
    nxt = np.asarray(fwd(params, buf, m))[:, T + i - 1].argmax(-1)
    nxt = np.where(done, cfg.pad_token_id, nxt)
    buf[:, T + i], m[:, T + i] = nxt, True
    done |= np.isin(nxt, cfg.eos_ids)
  return buf[:, T:]


def hf_greedy(model, tokens, mask, steps: int) -> np.ndarray:
  """transformers' greedy generate; stops once every row hit EOS, so pad to `steps`."""
  out = model.generate(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                       attention_mask=torch.from_numpy(mask.astype(np.int64)),
                       max_new_tokens=steps, do_sample=False)
  out = out[:, tokens.shape[1]:].numpy()
  pad = model.generation_config.pad_token_id
  return np.pad(out, ((0, 0), (0, steps - out.shape[1])), constant_values=pad)


def _hf_model(d):
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      str(d), dtype=torch.float32, output_loading_info=True)
  assert not any(info.values()), info  # no missing/unexpected/mismatched keys
  return model.eval()


# ------------------------------------------------------------------------------ tests


def test_logits_match_torch(hf_dir):
  params, cfg = params_lib.load(hf_dir, param_dtype="float32")
  tokens, mask = _batch()
  diff = max_logit_diff(jax_logits(params, cfg, tokens, mask),
                        torch_logits(_hf_model(hf_dir), tokens, mask), mask)
  assert diff <= 1e-4


def test_config_mapping(hf_dir):
  _, cfg = params_lib.load(hf_dir)
  want = {"llama": (True, False, False, 16), "qwen2": (False, True, False, 16),
          "qwen3": (False, False, True, 32)}[cfg.arch]
  assert (cfg.tie_embeddings, cfg.qkv_bias, cfg.qk_norm, cfg.head_dim) == want
  assert (cfg.rope_scaling is not None) == (cfg.arch == "llama")
  assert cfg.param_dtype == "float32"
  assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (BOS, EOS, PAD)


def test_cli_round_trip_is_bitwise_and_generates(hf_dir, tmp_path):
  ckpt, out = tmp_path / "ckpt", tmp_path / "hf_out"
  assert cli(["import", str(hf_dir), str(ckpt)]) == 0
  assert cli(["export", str(ckpt), str(out)]) == 0
  original, exported = _hf_tensors(hf_dir), _hf_tensors(out)
  assert sorted(original) == sorted(exported)
  for name, x in original.items():
    assert x.dtype == exported[name].dtype and np.array_equal(x, exported[name]), name
  src_cfg, out_cfg = (json.loads((d / "config.json").read_text()) for d in (hf_dir, out))
  assert out_cfg["architectures"] == src_cfg["architectures"]
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (out / name).read_bytes() == (hf_dir / name).read_bytes()
  tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert tok.convert_tokens_to_ids(["<s>", "w5", "w77"]) == [BOS, 5, 77]

  params, cfg = params_lib.load(ckpt)
  tokens, mask = _batch()
  ours = greedy(params, cfg, tokens, mask, steps=8)
  theirs = hf_greedy(_hf_model(out), tokens, mask, steps=8)
  np.testing.assert_array_equal(ours, theirs)


def test_sharded_import_matches_unsharded(hf_dir):
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  ref, cfg = params_lib.load(hf_dir, param_dtype="float32")
  sharded, _ = params_lib.load(hf_dir, mesh, param_dtype="float32")
  wq = sharded["layers"]["wq"]
  assert wq.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert len({str(s.index) for s in wq.addressable_shards}) == 4
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(sharded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  tokens, mask = _batch()
  np.testing.assert_allclose(jax_logits(sharded, cfg, tokens, mask)[mask],
                             jax_logits(ref, cfg, tokens, mask)[mask], atol=1e-5)


def test_multi_shard_export_and_bf16(hf_dir, tmp_path):
  params, cfg = params_lib.load(hf_dir, param_dtype="bfloat16")
  out = save_pretrained(tmp_path / "bf16", params, cfg, max_shard_size=20_000)
  index = json.loads((out / INDEX_FILE).read_text())
  files = sorted(set(index["weight_map"].values()))
  assert len(files) > 2 and not (out / SINGLE_FILE).exists()
  assert all((out / f).stat().st_size <= 20_000 + 1_000 for f in files)  # + header
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
  again, cfg2 = params_lib.load(out)  # bf16 checkpoint -> bf16 params by default
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  original = _hf_tensors(hf_dir)  # float32 -> bfloat16 rounds like torch does
  for name, x in _hf_tensors(out).items():
    want = torch.from_numpy(original[name]).to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(x.view(np.int16), want, err_msg=name)
  _hf_model(out)  # transformers reads the sharded index


def test_params_checkpoint_round_trip_on_mesh(hf_dir, tmp_path):
  mesh = make_mesh({"fsdp": 4, "tensor": 2})
  params, cfg = params_lib.load(hf_dir, mesh)
  params_lib.save(tmp_path / "c", params, cfg, tokenizer_dir=hf_dir)
  assert params_lib.kind(tmp_path / "c") == params_lib.PARAMS_CHECKPOINT
  assert params_lib.tokenizer_dir(tmp_path / "c") == tmp_path / "c" / "tokenizer"
  assert params_lib.tokenizer_dir(hf_dir) == hf_dir
  back, cfg2 = params_lib.load(tmp_path / "c", mesh)
  assert cfg2 == cfg == params_lib.model_config(tmp_path / "c")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    assert a.sharding == b.sharding
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="apply to Hugging Face dirs"):
    params_lib.load(tmp_path / "c", param_dtype="float32")
  with pytest.raises(FileNotFoundError, match="neither a Hugging Face dir"):
    params_lib.load(tmp_path)


def test_export_refuses_to_clobber(hf_dir, tmp_path):
  params, cfg = params_lib.load(hf_dir)
  save_pretrained(tmp_path, params, cfg)
  with pytest.raises(FileExistsError, match=SINGLE_FILE):
    save_pretrained(tmp_path, params, cfg)
  save_pretrained(tmp_path, params, cfg, overwrite=True)


# ------------------------------------------------------------------------ bad files


@pytest.fixture
def bad_dir(tmp_path):
  """A copy of a tiny Qwen2 checkpoint, sharded over several files, to damage."""
  torch.manual_seed(0)
  model = FAMILIES["qwen2"]()
  d = tmp_path / "bad"
  model.save_pretrained(d, max_shard_size="50KB")
  assert (d / INDEX_FILE).exists()
  return d


def test_truncated_file_names_file_and_tensor(bad_dir):
  shard = sorted(bad_dir.glob("model-*.safetensors"))[0]
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) - 100])
  with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated: tensor 'model\."):
    params_lib.load(bad_dir)


def test_corrupt_header_names_file(bad_dir):
  shard = sorted(bad_dir.glob("model-*.safetensors"))[1]
  data = bytearray(shard.read_bytes())
  data[8:40] = b"\xff" * 32
  shard.write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt safetensors"):
    params_lib.load(bad_dir)


def test_missing_shard_names_file(bad_dir):
  shard = sorted(bad_dir.glob("model-*.safetensors"))[-1]
  shard.unlink()
  with pytest.raises(CheckpointError, match=rf"{shard.name}: missing shard; .* e\.g\. '\w+\."):
    params_lib.load(bad_dir)


def test_shape_mismatch_names_file_and_tensor(bad_dir):
  cfg = json.loads((bad_dir / "config.json").read_text())
  cfg["intermediate_size"] = 80
  (bad_dir / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"model-\d+-of-\d+\.safetensors: tensor "
                     r"'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \(96, 64\), "
                     r"config.json implies \(80, 64\)"):
    params_lib.load(bad_dir)


def test_missing_and_stray_tensors_are_named(bad_dir, tmp_path):
  from safetensors.numpy import save_file
  index = json.loads((bad_dir / INDEX_FILE).read_text())
  extra = bad_dir / "extra.safetensors"
  save_file({"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}, str(extra))
  index["weight_map"]["model.layers.0.self_attn.o_proj.bias"] = extra.name
  (bad_dir / INDEX_FILE).write_text(json.dumps(index))
  with pytest.raises(CheckpointError, match="o_proj.bias"):
    params_lib.load(bad_dir)
  del index["weight_map"]["model.layers.0.self_attn.o_proj.bias"]
  del index["weight_map"]["model.norm.weight"]
  (bad_dir / INDEX_FILE).write_text(json.dumps(index))
  with pytest.raises(CheckpointError, match=r"'model\.norm\.weight'"):
    params_lib.load(bad_dir)


def test_pickles_are_never_loaded(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
  with pytest.raises(CheckpointError, match="never loaded"):
    weight_files(tmp_path)


# ------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_matches_transformers(tmp_path):
  from act_jax.hf import smollm2
  try:
    smollm2.gguf_path()
  except (ModuleNotFoundError, FileNotFoundError) as e:
    pytest.skip(f"SmolLM2 GGUF unavailable ({e}); install with `{smollm2.INSTALL_HINT}`")
  d = tmp_path / "smollm2"
  assert cli(["smollm2", str(d)]) == 0
  # Logit parity via the CLI in a fresh process: `verify` sets the XLA flags it needs.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # 1 device, as users run it
  run = subprocess.run([sys.executable, "-m", "act_jax.hf", "verify", str(d)], cwd=ROOT,
                       capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)})
  result = json.loads(run.stdout.splitlines()[0])
  assert run.returncode == 0 and result["max_abs_logit_diff"] <= 1e-4, run.stdout + run.stderr

  tok = transformers.AutoTokenizer.from_pretrained(str(d))
  chat = [{"role": "user", "content": "What is the capital of France?"}]
  prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
  rows = [tok(prompt)["input_ids"], tok("The three primary colors are")["input_ids"]]
  tokens, mask = left_pad(rows, tok.pad_token_id)
  params, cfg = params_lib.load(d, param_dtype="float32")
  ours = greedy(params, cfg, tokens, mask, steps=24)
  theirs = hf_greedy(_hf_model(d), tokens, mask, steps=24)
  np.testing.assert_array_equal(ours, theirs)
  assert "Paris" in tok.decode(ours[0])
  # The KV-cache sampler (on CPU: the `cpu_matmul` kernel) decodes the same tokens.
  out = Sampler(cfg).generate(params, rows, max_new_tokens=24,
                              sampling=SamplingConfig(temperature=0.0, eos_ids=cfg.eos_ids))
  for i, seq in enumerate(out.sequences()):
    assert seq == theirs[i, :len(seq)].tolist() and (
        len(seq) == 24 or seq[-1] in cfg.eos_ids), (i, seq, theirs[i])
