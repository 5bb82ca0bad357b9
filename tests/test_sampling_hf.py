"""Sampler vs transformers `generate` on a tiny random HF Llama; text-level API and CLI."""
import numpy as np
import pytest
import transformers

from act_jax import generate as generate_cli
from act_jax import tokenizer as toklib
from act_jax import params as params_lib
from act_jax.sampling import Sampler, SamplingConfig
from act_jax.sampling.text import TextSampler, apply_stop_strings, first_stop

torch = pytest.importorskip("torch", reason="PyTorch (CPU) is the generate reference")

CORPUS = ["go to cabinet 1", "open drawer 2", "take apple from table 1", "look around",
          "Observation: you see a desk.", "Action: go to desk 1", "put mug in/on shelf 3"] * 8


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A random Llama (GQA, untied head) and a small BPE tokenizer with a chat template."""
  d = tmp_path_factory.mktemp("hf_llama")
  toklib.train_tokenizer(CORPUS, vocab_size=300, out_dir=str(d))
  tok = transformers.AutoTokenizer.from_pretrained(str(d))
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(
      vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None,
      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
  model = transformers.LlamaForCausalLM(cfg).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g) if "norm" in name
              else 0.3 * torch.randn(p.shape, generator=g))
  model.save_pretrained(d)
  return d


def test_greedy_equals_transformers_generate(hf_dir):
  tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir),
                                                            dtype=torch.float32).eval()
  prompts = [tok.encode(t) for t in ("go to cabinet 1", "Observation: you see", "open")]
  steps = 12
  expected = []
  for p in prompts:  # one row at a time: no padding conventions to reconcile
    out = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p)),
                         max_new_tokens=steps, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_token_id)
    expected.append(out[0, len(p):].tolist())
  params, cfg = params_lib.load(hf_dir, param_dtype="float32")
  got = Sampler(cfg).generate(params, prompts, max_new_tokens=steps,
                              sampling=SamplingConfig(temperature=0.0, eos_ids=()))
  assert got.sequences() == expected
  assert len({t for e in expected for t in e}) > 4  # not a degenerate model


def test_text_sampler_stop_strings_and_chat(hf_dir):
  params, cfg = params_lib.load(hf_dir, param_dtype="float32")
  tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
  ts = TextSampler(Sampler(cfg, pad_id=tok.pad_token_id), tok, chat=True)
  greedy = SamplingConfig(temperature=0.0, eos_ids=())
  free = ts.generate(params, ["look around"], sampling=greedy, max_new_tokens=16)[0][0]
  assert free.finish_reason == "length" and len(free.tokens) == 16
  # Stop at a string that the free completion contains (in the middle of it).
  text = free.text
  stop = text[len(text) // 2:len(text) // 2 + 2]
  assert stop.strip() and first_stop(text, [stop]) >= 0
  cut = ts.generate(params, ["look around"], sampling=greedy, max_new_tokens=16, stop=[stop])[0][0]
  assert cut.finish_reason == "stop"
  assert cut.text == text[:text.find(stop)]
  k = len(cut.tokens)
  assert cut.tokens == free.tokens[:k]
  assert stop in ts.decode(cut.tokens) and stop not in ts.decode(cut.tokens[:k - 1])
  np.testing.assert_allclose(cut.model_logprobs, free.model_logprobs[:k], atol=1e-5)


def test_host_stop_strings_truncate_results():
  class CharTok:  # token i is the character chr(ord("a") + i)
    decode = staticmethod(lambda ids: "".join(chr(ord("a") + i) for i in ids))
  from act_jax.sampling.sampler import Result
  res = Result(tokens=np.array([[0, 1, 2, 3, 4], [2, 2, 2, 9, 9]], np.int32),
               logprobs=np.ones((2, 5), np.float32), model_logprobs=np.ones((2, 5), np.float32),
               lengths=np.array([5, 3]), finish_reasons=["length", "eos"], n=1, pad_id=9)
  texts = apply_stop_strings(res, ["cd", "zz"], CharTok.decode)
  assert texts == ["ab", "ccc"]
  assert res.lengths.tolist() == [4, 3] and res.finish_reasons == ["stop", "eos"]
  assert res.tokens[0].tolist() == [0, 1, 2, 3, 9] and res.logprobs[0].tolist() == [1, 1, 1, 1, 0]


def test_cli_prints_completions(hf_dir, capsys):
  rc = generate_cli.main(["--model", str(hf_dir), "--prompt", "go to", "--prompt", "open",
                          "--chat", "--max-new-tokens", "6", "--temperature", "0.8",
                          "--top-p", "0.9", "--n", "2", "--seed", "3"])
  assert rc == 0
  out = capsys.readouterr().out
  assert out.count("=== prompt") == 4 and "prompt 1 sample 1" in out
