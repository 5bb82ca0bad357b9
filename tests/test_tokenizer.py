"""The embedded byte-level BPE: trains, saves, loads with AutoTokenizer, renders chats."""
import pytest
from transformers import AutoTokenizer

from act_jax import tokenizer as toklib
from act_jax.data.trajectory import Step, Trajectory, write_jsonl

CORPUS = [
    "You are in the kitchen. In one part of the room you see a stove. There is also an oven.",
    "You take the coin.", "move east", "open fridge", "take red hot pepper",
    "Your task is to search the environment and find the coin.  Once you find the coin, take it.",
    "Inventory (maximum capacity is 2 items): \n  Your inventory is currently empty.\n",
] * 20


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  return toklib.train_tokenizer(CORPUS, vocab_size=400, out_dir=str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def tok(tok_dir):
  return AutoTokenizer.from_pretrained(tok_dir)


def test_special_tokens(tok):
  assert tok.convert_tokens_to_ids(list(toklib.SPECIAL_TOKENS)) == [0, 1, 2, 3]
  assert tok.pad_token == "<|pad|>" and tok.pad_token_id == 0
  assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 3
  assert set(toklib.SPECIAL_TOKENS) <= set(tok.all_special_tokens)
  assert 256 + 4 < len(tok) <= 400


@pytest.mark.parametrize("text", [
    "You are in the kitchen.", "take 25g of oak\n\tmove  west  ", "café ✓ 数字 🙂",
    "<|im_start|>user\nhi<|im_end|>\n", "", " leading space"])
def test_round_trip(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_bpe_merges_frequent_words(tok):
  text = "You are in the kitchen."
  assert len(tok.encode(text)) < len(text.encode()) // 2


def test_chat_template_renders(tok):
  msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Find the coin."},
          {"role": "assistant", "content": "Action: take coin"}]
  assert tok.apply_chat_template(msgs, tokenize=False) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nFind the coin.<|im_end|>\n"
      "<|im_start|>assistant\nAction: take coin<|im_end|>\n")
  prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
  assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
  ids = tok(prompt, add_special_tokens=False)["input_ids"]
  assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
  assert ids.count(tok.eos_token_id) == 2
  assert tok.decode(ids, skip_special_tokens=True) == (
      "system\nBe brief.\nuser\nFind the coin.\nassistant\n")


def test_role_names_are_single_tokens(tok):
  for role in ("system", "user", "assistant"):
    assert len(tok.encode(role)) == 1, role


def test_vocab_size_too_small(tmp_path):
  with pytest.raises(ValueError, match="vocab_size"):
    toklib.train_tokenizer(CORPUS, vocab_size=100, out_dir=str(tmp_path))


def test_cli_trains_on_trajectories(tmp_path):
  traj = Trajectory(task="Find the coin.", steps=[
      Step(observation="You are in the kitchen.", action="move east",
           admissible=["move east", "look around"]),
      Step(observation="You see a coin.", action="take coin")])
  texts = list(toklib.trajectory_texts([traj]))
  assert texts == ["Find the coin.\n\n",
                   "Observation: You are in the kitchen.\nAction: move east\n",
                   "Action: move east\nAction: look around",
                   "Observation: You see a coin.\nAction: take coin\n"]
  path = tmp_path / "t.jsonl"
  write_jsonl(str(path), [traj] * 10)
  out = tmp_path / "tok"
  assert toklib.main(["--trajectories", str(path), "--vocab-size", "600", "--out", str(out)]) == 0
  loaded = AutoTokenizer.from_pretrained(str(out))
  assert loaded.decode(loaded.encode("take coin")) == "take coin"
  assert len(loaded.encode(" kitchen")) <= 2
  # Actions are learnt as the prompts show them: after "Action: ", with their space.
  assert len(loaded.encode("Action: take coin")) <= 4
