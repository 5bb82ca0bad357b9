"""The embedded default tokenizer for models trained from scratch.

A small byte-level BPE trained with `tokenizers` on environment text, saved as a
Hugging Face tokenizer directory with a ChatML-like chat template, so the rest of the
code treats it exactly like a pretrained model's tokenizer:

  tok = transformers.AutoTokenizer.from_pretrained(out_dir)
  tok.apply_chat_template([{"role": "user", "content": "..."}], add_generation_prompt=True)

Special tokens (ids 0-3, in this order): `<|pad|>` (pad), `<|endoftext|>` (document
end), `<|im_start|>`, `<|im_end|>`. As in Qwen's chat models, `eos_token` is
`<|im_end|>`: a turn ends there, so generation stops on `eos_token_id`.

  python -m act_jax.tokenizer --trajectories data/twx_train.jsonl --vocab-size 2048 --out tok/
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Iterable, Iterator, Sequence

from act_jax import cli
from act_jax.data import prompts
from act_jax.data.trajectory import Trajectory, read_jsonl

PAD, ENDOFTEXT, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, ENDOFTEXT, IM_START, IM_END)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Chat scaffolding the corpus should cover even if no trajectory mentions it.
_SCAFFOLD = ("system\nuser\nassistant\n", "Action: ", "Answer: ",
             "Which action is better for the task?", "Action 1: ", "Action 2: ", "<think>\n",
             "\n</think>\n\n")


def trajectory_texts(trajectories: Iterable[Trajectory], admissible: bool = True,
                     prompt_cfg: prompts.PromptConfig | None = None) -> Iterator[str]:
  """The text of trajectories as the prompts render it (act_jax.data.prompts).

  Merges are learnt on the rendered turns, so `Observation:` and an action after
  `Action: ` (with its leading space) become the same few tokens the model sees;
  trained on bare observations and actions, " smell" split into three tokens.
  """
  cfg = prompt_cfg or prompts.PromptConfig()
  for t in trajectories:
    yield prompts.state_head(t.instruction, t.task, cfg)
    for s in t.steps:
      yield prompts.history_turn(s.observation, s.action, s.thought, cfg)
      if admissible and s.admissible:
        yield "\n".join(prompts.action_target(a, cfg) for a in s.admissible)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, out_dir: str = "tokenizer",
                    min_frequency: int = 2) -> str:
  """Trains a byte-level BPE on texts and saves it as a HF tokenizer directory; returns out_dir.

  Every byte is in the base alphabet, so any text encodes and decodes losslessly.
  vocab_size is an upper bound: training stops early when no pair occurs
  min_frequency times, so size models by `len(tokenizer)`.
  """
  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast

  alphabet = pre_tokenizers.ByteLevel.alphabet()
  if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
    raise ValueError(f"vocab_size must be at least {len(alphabet) + len(SPECIAL_TOKENS)} "
                     f"(256 bytes + {len(SPECIAL_TOKENS)} specials), got {vocab_size}")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
                                show_progress=False)
  tok.train_from_iterator(_with_scaffold(texts), trainer=trainer)
  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token=PAD, eos_token=IM_END,
      additional_special_tokens=[ENDOFTEXT, IM_START], clean_up_tokenization_spaces=False,
      model_max_length=1 << 20)
  fast.chat_template = CHAT_TEMPLATE
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(out_dir)
  return out_dir


def _with_scaffold(texts: Iterable[str], repeats: int = 64) -> Iterator[str]:
  # Repeated so the role names and answer prefixes become whole tokens.
  for _ in range(repeats):
    yield from _SCAFFOLD
  yield from texts


def parser() -> argparse.ArgumentParser:
  p = cli.parser("tokenizer", "Train the embedded byte-level BPE tokenizer on trajectory text.")
  p.add_argument("--trajectories", nargs="+", required=True, help="JSONL trajectory files")
  p.add_argument("--vocab-size", type=int, default=2048, help="tokens in the vocabulary")
  p.add_argument("--min-frequency", type=int, default=2, help="merges seen fewer times are dropped")
  p.add_argument("--no-admissible", action="store_true", help="skip admissible-action lists")
  p.add_argument("--out", required=True, help="HF tokenizer directory to write")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)

  def texts():
    for path in args.trajectories:
      yield from trajectory_texts(read_jsonl(path), admissible=not args.no_admissible)

  out = train_tokenizer(texts(), args.vocab_size, args.out, args.min_frequency)
  print(out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
