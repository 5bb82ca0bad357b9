"""Fast batched generation for GRPO and environment rollouts.

`Sampler` (token ids) and `TextSampler` (strings, chat templates, stop strings)
are the entry points; `core` holds the pure jittable functions they compile.
"""
from act_jax.sampling.config import FINISH_REASONS, Buckets, SamplingConfig
from act_jax.sampling.inference import InferenceWeights
from act_jax.sampling.sampler import CompileCounter, Result, Sampler

__all__ = ["FINISH_REASONS", "Buckets", "CompileCounter", "InferenceWeights", "Result",
           "Sampler", "SamplingConfig"]
