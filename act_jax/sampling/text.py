"""Text in, text out: a tokenizer (and chat template) around `Sampler`, plus stop strings.

Stop strings end a completion at their first occurrence. They are enforced twice:
on device, their tokenisations join `SamplingConfig.stop_token_ids` so the loop
stops early when the model emits them verbatim; on host, every completion is
decoded and cut at the first occurrence however it was tokenised. The cut keeps
the tokens up to and including the one that completed the stop string (so their
log-probs match what was sampled) and marks the row "stop"; the text excludes
the stop string.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from jax.sharding import Mesh

from act_jax.sampling.config import SamplingConfig
from act_jax.sampling.sampler import Params, Result, Sampler

Prompt = str | Sequence[Mapping[str, str]]  # text, or chat messages [{"role", "content"}]


@dataclasses.dataclass
class TextCompletion:
  text: str
  tokens: list[int]
  logprobs: np.ndarray  # under the sampling distribution
  model_logprobs: np.ndarray  # under the model (T=1)
  finish_reason: str  # "eos" | "stop" | "length"


def first_stop(text: str, stops: Sequence[str]) -> int:
  """Index of the earliest occurrence of any stop string in text, or -1."""
  hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
  return min(hits) if hits else -1


def apply_stop_strings(result: Result, stops: Sequence[str],
                       decode: Callable[[list[int]], str]) -> list[str]:
  """Cuts `result` rows at their first stop string (in place); returns the texts."""
  texts = []
  for r, seq in enumerate(result.sequences()):
    text = decode(seq)
    cut = first_stop(text, stops)
    if cut >= 0:
      # Fewest tokens whose text already contains a stop string (monotone in length).
      lo, hi = 1, len(seq)
      while lo < hi:
        mid = (lo + hi) // 2
        if first_stop(decode(seq[:mid]), stops) >= 0:
          hi = mid
        else:
          lo = mid + 1
      result.truncate(r, lo, "stop")
      text = text[:cut]
    texts.append(text)
  return texts


class TextSampler:
  """A `Sampler` plus a HF tokenizer: prompts and completions as strings.

  Example:
    ts = TextSampler(Sampler(cfg, mesh), tokenizer, chat=True)
    groups = ts.generate(params, ["Say hi"], n=4, stop=["\\n"])
    groups[0][0].text, groups[0][0].finish_reason
  """

  def __init__(self, sampler: Sampler, tokenizer: Any, *, chat: bool = False,
               chat_template_kwargs: Mapping[str, Any] | None = None):
    self.sampler = sampler
    self.tokenizer = tokenizer
    self.chat = chat
    self.chat_template_kwargs = dict(chat_template_kwargs or {})

  def encode(self, prompt: Prompt) -> list[int]:
    """Text (or messages) -> ids; with chat=True a string becomes one user turn."""
    if self.chat:
      messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
      ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                               tokenize=True, **self.chat_template_kwargs)
      if isinstance(ids, Mapping):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
      return [int(i) for i in ids]
    if not isinstance(prompt, str):
      raise ValueError("chat messages need TextSampler(chat=True)")
    return [int(i) for i in self.tokenizer.encode(prompt)]

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)

  def stop_token_ids(self, stops: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    seqs = (tuple(self.tokenizer.encode(s, add_special_tokens=False)) for s in stops if s)
    return tuple(s for s in seqs if s)

  def generate(self, params: Params, prompts: Sequence[Prompt], *,
               sampling: SamplingConfig | None = None, max_new_tokens: int = 256, n: int = 1,
               seed: int = 0, stop: Sequence[str] = ()) -> list[list[TextCompletion]]:
    """n completions per prompt, grouped per prompt."""
    sampling = sampling or SamplingConfig()
    stop = tuple(stop)
    if stop:
      extra = tuple(s for s in self.stop_token_ids(stop) if s not in sampling.stop_token_ids)
      sampling = dataclasses.replace(sampling,
                                     stop_token_ids=sampling.stop_token_ids + extra)
    res = self.sampler.generate(params, [self.encode(p) for p in prompts], sampling=sampling,
                                max_new_tokens=max_new_tokens, n=n, seed=seed)
    texts = apply_stop_strings(res, stop, self.decode)
    out = [TextCompletion(t, s, res.logprobs[i, :len(s)], res.model_logprobs[i, :len(s)],
                          res.finish_reasons[i])
           for i, (t, s) in enumerate(zip(texts, res.sequences()))]
    return [out[i * n:(i + 1) * n] for i in range(len(prompts))]


def load_model(path: str | Path, mesh: Mesh | None = None) -> tuple[Params, Any, Any]:
  """Any `act_jax.params` source -> (params, ModelConfig, tokenizer or None)."""
  from act_jax import params as params_lib  # heavy imports only for callers that load from disk
  from act_jax.hf.tokenizer import load_tokenizer
  params, cfg = params_lib.load(path, mesh)
  tok_dir = params_lib.tokenizer_dir(path)
  return params, cfg, load_tokenizer(tok_dir) if tok_dir else None


def make_sample_fn(model_dir: str | Path, *, max_new_tokens: int = 256,
                   stop: Sequence[str] = (), mesh: Mesh | None = None
                   ) -> Callable[..., list[list[str]]]:
  """`SampleFn` for the data builder: rendered prompt strings -> n texts each."""
  params, cfg, tokenizer = load_model(model_dir, mesh)
  if tokenizer is None:
    raise FileNotFoundError(f"{model_dir}: no tokenizer files next to the weights")
  ts = TextSampler(Sampler(cfg, mesh, pad_id=tokenizer.pad_token_id), tokenizer)
  weights = ts.sampler.prepare(params)  # one copy, reused by every call

  def sample_fn(prompts: list[str], n: int, temperature: float, seed: int) -> list[list[str]]:
    groups = ts.generate(weights, prompts, sampling=SamplingConfig(temperature=temperature),
                         max_new_tokens=max_new_tokens, n=n, seed=seed, stop=stop)
    return [[c.text for c in g] for g in groups]

  return sample_fn
