"""Fast batched generation for GRPO and environment rollouts.

`Sampler` (token ids in, completions with log-probs out) and `TextSampler`
(strings, chat templates, stop strings) are the entry points; `core` holds the
pure jittable functions they compile, `inference` the generation-specialised
forward pass they run.
"""
from act_jax.sampling.config import FINISH_REASONS, Buckets, SamplingConfig
from act_jax.sampling.inference import InferenceWeights
from act_jax.sampling.sampler import CompileCounter, Result, Sampler
from act_jax.sampling.text import TextCompletion, TextSampler, load_model, make_sample_fn

__all__ = ["FINISH_REASONS", "Buckets", "CompileCounter", "InferenceWeights", "Result",
           "Sampler", "SamplingConfig", "TextCompletion", "TextSampler", "load_model",
           "make_sample_fn"]
