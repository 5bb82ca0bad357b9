"""Stage-1 data: trajectory import, states, alternatives, critic/imitation records, TFDS."""
import collections
import importlib.util
import json
import os
import re
import sys
import types

import numpy as np
import pytest

from act_jax import parsing
from act_jax.data import alternatives as alt_lib
from act_jax.data import build, builders, examples, importers, pipeline, prompts
from act_jax.data import states as states_lib
from act_jax.data.report import DropLog
from act_jax.data.trajectory import Step, Trajectory, read_jsonl

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CONVERSATIONS = os.path.join(FIXTURES, "conversations.jsonl")
ACT_JAX = os.path.join(FIXTURES, "act_jax_trajectories.jsonl")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
          "<|im_start|>assistant\n{% endif %}")


def _train_tokenizer(texts, vocab_size, out_dir):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>",
                          chat_template=CHATML).save_pretrained(out_dir)
  return PreTrainedTokenizerFast.from_pretrained(out_dir)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  """A tiny byte-level BPE with a ChatML template, trained on the fixtures."""
  texts = [open(p).read() for p in (CONVERSATIONS, ACT_JAX)]
  out = str(tmp_path_factory.mktemp("tok"))
  _train_tokenizer(texts * 3, 600, out)
  return out


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
  from transformers import PreTrainedTokenizerFast  # AutoTokenizer imports torch.
  return PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)


CFG = prompts.PromptConfig()


# --- Import -------------------------------------------------------------------


def test_import_alfworld_conversation():
  drops = DropLog()
  alf, _, _ = importers.load_trajectories(CONVERSATIONS, drops=drops)
  assert alf.source == "alfworld" and alf.meta["id"] == "alfworld_0"
  assert alf.instruction.startswith("Interact with a household to solve a task.")
  assert alf.task == "Your task is to: put some spraybottle on toilet."
  # The "Here is your task." turn becomes the first observation, minus the task.
  assert alf.steps[0].observation.startswith("You are in the middle of a room.")
  assert alf.steps[0].observation.endswith("and a towelholder 1.")
  assert [s.action for s in alf.steps] == [
      "go to cabinet 1", "go to cabinet 2", "open cabinet 2",
      "take spraybottle 2 from cabinet 2", "go to toilet 1",
      "put spraybottle 2 in/on toilet 1"]
  assert alf.steps[1].observation == (
      "On the cabinet 1, you see a cloth 1, a soapbar 1, and a soapbottle 1.")
  assert alf.steps[1].thought.startswith("There is no spraybottle")
  assert alf.steps[2].thought is None  # "Action: open cabinet 2" alone.
  assert alf.meta["final_observation"] == "You put the spraybottle 2 in/on the toilet 1."
  assert drops.total == 0


def test_import_webshop_action_on_next_line_and_task_from_instruction():
  _, ws, _ = importers.load_trajectories(CONVERSATIONS)
  assert ws.source == "webshop"
  assert ws.task == ("i need a long clip-in hair extension which is natural "
                     "looking, and price lower than 40.00 dollars")
  assert [s.action for s in ws.steps] == [
      "search[long clip-in hair extension natural looking]",
      "click[B09QQLDJ93]", "click[natural black]", "click[Buy Now]"]
  assert ws.steps[0].observation.startswith("WebShop [SEP] Instruction: [SEP] i need")
  assert ws.steps[3].thought == "I think I should buy it now."
  assert "final_observation" not in ws.meta


def test_import_messages_with_system_turn():
  _, _, sw = importers.load_trajectories(CONVERSATIONS)
  assert sw.source == "sciworld"
  assert sw.instruction.startswith("You are a helpful assistant to do some scientific")
  assert sw.task == ("Your task is to find a(n) animal. First, focus on the thing. Then, move it "
                     "to the red box in the kitchen.")
  assert sw.steps[0].observation.startswith("This room is called the hallway.")
  assert sw.steps[-1].action == "focus on blue jay egg"
  assert len(sw.steps) == 5


# Task text as the live environments return it (TWX's info["taskDescription"],
# ScienceWorld's getTaskDescription()), already starting with "Your task is to".
LIVE_TASKS = {
    "twx": "Your task is to search the environment and find the coin.  "
           "Once you find the coin, take it.",
    "sciworld": "Your task is to find a(n) animal. First, focus on the thing. "
                "Then, move it to the red box in the kitchen.",
}


@pytest.mark.parametrize("env", sorted(LIVE_TASKS))
def test_imported_and_live_prompts_are_byte_identical(tok, env):
  task, obs = LIVE_TASKS[env], "You are in the kitchen."
  rec = {"messages": [{"role": "system", "content": "Be good."},
                      {"role": "user", "content": f"{task}\n{obs}"},
                      {"role": "assistant", "content": "Action: take coin"}]}
  imported = importers.conversation_to_trajectory(rec)
  live = Trajectory(task=task, instruction="Be good.", steps=[Step(obs, "take coin")])
  [got] = states_lib.trajectory_states(imported, "t", tok, CFG)
  [want] = states_lib.trajectory_states(live, "t", tok, CFG)
  assert got.text == want.text
  # The task phrase appears once, verbatim.
  assert want.text == f"Be good.\n\n{task}\n\nObservation: {obs}"


def test_task_in_first_turn_and_unmarked_second_turn():
  one_turn = {"conversations": [
      {"from": "human", "value": "Solve it.\nYour task is to: heat some egg.\n"
                                 "You are in the kitchen."},
      {"from": "gpt", "value": "Action: go to microwave 1"}]}
  t = importers.conversation_to_trajectory(one_turn)
  assert (t.instruction, t.task) == ("Solve it.", "Your task is to: heat some egg.")
  assert t.steps[0].observation == "You are in the kitchen."
  unmarked = {"messages": [
      {"role": "user", "content": "Instructions."},
      {"role": "assistant", "content": "OK"},
      {"role": "user", "content": "Cool a pan and put it on the stove."},
      {"role": "assistant", "content": "Thought: hm\nAction: go to fridge 1"}]}
  t = importers.conversation_to_trajectory(unmarked)
  assert (t.instruction, t.task) == ("Instructions.", "Cool a pan and put it on the stove.")
  assert t.steps == [Step(observation="", action="go to fridge 1", thought="hm")]


def test_assistant_turn_without_action_mid_episode_is_counted():
  rec = {"conversations": [
      {"from": "human", "value": "Your task is to: find x."},
      {"from": "gpt", "value": "Action: look"},
      {"from": "human", "value": "You see x."},
      {"from": "gpt", "value": "I am thinking."},
      {"from": "human", "value": "Nothing happens."},
      {"from": "gpt", "value": "Action: take x"}]}
  drops = DropLog()
  t = importers.conversation_to_trajectory(rec, where="f:1", drops=drops)
  assert [s.action for s in t.steps] == ["look", "take x"]
  assert t.steps[1].observation == "You see x.\nNothing happens."
  assert drops.to_dict() == {"turn/assistant_without_action": 1}


def test_auto_format_reads_act_jax_schema_like_read_jsonl():
  got = importers.load_trajectories(ACT_JAX, format="auto")
  want = list(read_jsonl(ACT_JAX))
  assert [t.steps for t in got] == [t.steps for t in want]
  assert [t.task for t in got] == [t.task for t in want]


@pytest.mark.parametrize("content, match", [
    ('{"conversations": []}\n{"conversations": [', r"bad\.jsonl:2: bad JSON"),
    ('\n{"conversations": [{"from": "human"}]}', r"bad\.jsonl:2: turn 0: missing"),
    ('{"steps": [{"observation": "o", "action": "a"}]}', r"bad\.jsonl:1: .*task"),
    ('{"steps": [{"observation": "o"}]}\n', r"bad\.jsonl:1: .*action"),
    ('{"foo": 1}', r"bad\.jsonl:1: cannot detect"),
    ('{"conversations": [{"from": "wizard", "value": "x"}]}', r"bad\.jsonl:1: .*role"),
])
def test_malformed_input_names_file_and_line(tmp_path, content, match):
  path = tmp_path / "bad.jsonl"
  path.write_text(content)
  with pytest.raises(ValueError, match=match):
    importers.load_trajectories(str(path))


def test_malformed_json_array_names_line(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text('[\n{"conversations": []},\n{"conversations": ]\n]')
  with pytest.raises(ValueError, match=r"bad\.json:3: bad JSON"):
    importers.load_trajectories(str(path))


def test_empty_and_skipped_records_are_counted(tmp_path):
  good = open(CONVERSATIONS).read().splitlines()[0]
  path = tmp_path / "mixed.jsonl"
  path.write_text("\n".join([
      good,
      '{"task": "t", "steps": []}',  # empty trajectory
      '{"conversations": [{"from": "human", "value": "only instructions"}]}',
      '{"steps": [{"observation": "o"}]}',  # malformed
      good]))
  drops = DropLog()
  got = importers.load_trajectories(str(path), drops=drops, errors="skip")
  assert len(got) == 2
  assert drops.to_dict() == {"trajectory/empty": 2, "trajectory/malformed": 1}
  assert drops.examples["trajectory/empty"] == [f"{path}:2", f"{path}:3"]
  # Every record is either loaded or counted.
  assert len(got) + drops.total == 5


# --- States and truncation -------------------------------------------------------


def test_kept_turns_is_the_longest_suffix_within_budget():
  assert states_lib.kept_turns(10, [5, 5, 5], 2, 25) == 3  # fits, no marker
  assert states_lib.kept_turns(10, [5, 5, 5], 2, 24) == 2  # 10 + 2 + 5 + 5
  assert states_lib.kept_turns(10, [9, 1, 1], 2, 15) == 2
  assert states_lib.kept_turns(10, [5], 2, 12) == 0
  assert states_lib.kept_turns(30, [5], 2, 12) == 0


def test_state_text_without_budget(tok):
  t = Trajectory(task="find x", instruction="Be good.", steps=[
      Step("o0", "a0"), Step("o1", "a1"), Step("o2", "a2")])
  s = states_lib.trajectory_states(t, "t", tok, CFG)
  assert [x.state_id for x in s] == ["t/0", "t/1", "t/2"]
  assert s[2].text == ("Be good.\n\nfind x\n\n"
                       "Observation: o0\nAction: a0\nObservation: o1\nAction: a1\n"
                       "Observation: o2")
  assert s[2].expert_action == "a2" and s[2].omitted_turns == 0
  assert s[0].num_tokens == len(tok(s[0].text, add_special_tokens=False)["input_ids"])


def test_current_state_is_the_last_of_all_states_rendered_alone(tok):
  """What a policy is shown: the last step's state, truncated as when every state is
  rendered (the reference), for every prefix of an episode and a tight budget."""
  alf = importers.load_trajectories(CONVERSATIONS)[0]
  budget = states_lib.trajectory_states(alf, "a", tok, CFG)[2].num_tokens + 5
  for t in range(1, len(alf.steps) + 1):
    prefix = Trajectory(task=alf.task, instruction=alf.instruction, steps=alf.steps[:t])
    assert (states_lib.current_state(prefix, "a", tok, CFG, budget)
            == states_lib.trajectory_states(prefix, "a", tok, CFG, budget)[-1])
  unset = Trajectory(task="x", instruction="", steps=[Step("o0", "a0"), Step("o1", " ")])
  with pytest.raises(ValueError, match="u: the current step.s action must be set"):
    states_lib.current_state(unset, "u", tok, CFG)


def test_truncation_keeps_instruction_task_and_most_recent_turns(tok):
  alf = importers.load_trajectories(CONVERSATIONS)[0]
  full = states_lib.trajectory_states(alf, "a", tok, CFG)
  budget = full[2].num_tokens + 5  # Later states must drop old turns.
  notes = DropLog()
  cut = states_lib.trajectory_states(alf, "a", tok, CFG, budget, notes=notes)
  head = prompts.state_head(alf.instruction, alf.task, CFG)
  assert notes.total == 0
  assert any(s.omitted_turns for s in cut)
  for s, f in zip(cut, full):
    assert s.num_tokens <= budget
    assert s.text.startswith(head)
    assert s.text.endswith(prompts.current_turn(alf.steps[s.step].observation, CFG))
    kept = s.step - s.omitted_turns
    turns = [prompts.history_turn(x.observation, x.action, x.thought, CFG)
             for x in alf.steps[:s.step]]
    # Exactly the most recent `kept` turns, in order, after the marker.
    assert s.text == prompts.render_state(
        head, turns[s.omitted_turns:], s.omitted_turns,
        prompts.current_turn(alf.steps[s.step].observation, CFG), CFG)
    if s.omitted_turns:
      assert f"[{s.omitted_turns} earlier steps omitted]" in s.text
      one_more = prompts.render_state(
          head, turns[s.omitted_turns - 1:], s.omitted_turns - 1,
          prompts.current_turn(alf.steps[s.step].observation, CFG), CFG)
      assert len(tok(one_more, add_special_tokens=False)["input_ids"]) > budget
    else:
      assert s.text == f.text and kept == s.step


def test_over_budget_state_is_kept_and_noted(tok):
  t = Trajectory(task="x " * 50, steps=[Step("o", "a"), Step("p", "b")])
  notes = DropLog()
  s = states_lib.trajectory_states(t, "t", tok, CFG, max_state_tokens=10, notes=notes)
  assert len(s) == 2 and s[1].omitted_turns == 1
  assert notes.to_dict() == {"state/over_budget_kept": 2}


# --- Alternatives -----------------------------------------------------------------


def _act_jax_states(tok):
  trajs = importers.load_trajectories(ACT_JAX)
  return trajs, build.build_states(trajs, tok, CFG, None, DropLog(), DropLog())


def test_admissible_alternatives_filter_sample_and_count(tok):
  trajs, states = _act_jax_states(tok)
  cfg = alt_lib.AlternativesConfig(k=3, seed=1)
  drops, notes = DropLog(), DropLog()
  alts = alt_lib.admissible_alternatives(states, cfg, drops, notes)
  by_id = dict(zip([s.state_id for s in states], alts))
  # "Go to  BED 1" is the expert action up to case and spaces; "go to desk 1" twice.
  assert sorted(by_id["alf-book-2/0"]) == ["go to desk 1", "go to sidetable 1", "look"]
  assert by_id["alf-book-2/1"] == [] and by_id["alf-book-2/2"] == []
  for s, a in zip(states, alts):
    assert len(a) <= 3 and len(set(a)) == len(a)
    assert all(parsing.normalize_action(x) != parsing.normalize_action(s.expert_action)
               for x in a)
    assert all(x in s.admissible for x in a)
  # Dropped: only what is lost. The expert's own action and a repeated one lose nothing.
  assert drops.to_dict() == {
      "state/no_admissible_list": 1,  # alf-book-2/1
      "state/no_alternatives": 1,  # alf-book-2/2: only expert variants
  }
  assert notes.to_dict() == {
      "candidate/duplicate": 1,  # the second "go to desk 1"
      "candidate/equals_expert": 11,  # one per list, plus 2 case/space variants
  }
  # Nothing vanishes: every listed action is kept, noted, or not drawn (> K).
  valid = [len(alt_lib.filter_candidates(s.admissible, s.expert_action, cfg, "",
                                         DropLog(), DropLog())) if s.admissible else 0
           for s in states]
  listed = sum(len(s.admissible or ()) for s in states)
  assert listed == sum(valid) + notes.total
  assert [len(a) for a in alts] == [min(3, v) for v in valid]
  # Seeded: same seed, same draw; another seed, another draw somewhere.
  assert alt_lib.admissible_alternatives(states, cfg, DropLog(), DropLog()) == alts
  other = alt_lib.admissible_alternatives(
      states, alt_lib.AlternativesConfig(k=3, seed=2), DropLog(), DropLog())
  assert other != alts


def test_policy_alternatives_parse_normalise_dedupe_and_count(tok):
  _, states = _act_jax_states(tok)
  states = states[:3]
  expert_of = {prompts.imitation_prompt(tok, s.text, CFG): s.expert_action
               for s in states}
  seen = {"prompts": []}

  def sample_fn(batch_prompts, n, temperature, seed):
    seen["prompts"].extend(batch_prompts)
    seen["n"], seen["temperature"] = n, temperature
    return [[f"<think>hmm</think>\nAction: {expert_of[p].upper()}",  # = expert
             "Thought: go\nAction:   go   to  cabinet 1 ",
             "Action: Go to cabinet 1",  # duplicate up to case
             "I have no idea",  # unparseable
             "Action: inventory"] for p in batch_prompts]

  cfg = alt_lib.AlternativesConfig(source="policy", k=5, temperature=0.7,
                                   sample_batch_size=2)
  drops, notes = DropLog(), DropLog()
  alts = alt_lib.policy_alternatives(states, sample_fn, tok, CFG, cfg, drops, notes)
  assert seen["prompts"] == [prompts.imitation_prompt(tok, s.text, CFG) for s in states]
  assert (seen["n"], seen["temperature"]) == (5, 0.7)
  assert alts[0] == ["go to cabinet 1", "inventory"]  # expert is "go to countertop 1"
  assert drops.to_dict() == {"candidate/unparseable": 3}
  assert notes.to_dict() == {"candidate/equals_expert": 3, "candidate/duplicate": 3}
  # Every sample is a pair, a counted drop, or a noted repeat.
  assert len(states) * cfg.k == sum(map(len, alts)) + drops.total + notes.total
  # Case-sensitive environments keep case variants apart.
  sensitive = alt_lib.policy_alternatives(
      states[:1], sample_fn, tok, CFG,
      alt_lib.AlternativesConfig(source="policy", k=5, case_insensitive=False),
      DropLog(), DropLog())
  assert "Go to cabinet 1" in sensitive[0]


def test_policy_sampler_with_wrong_shape_is_an_error(tok):
  _, states = _act_jax_states(tok)
  cfg = alt_lib.AlternativesConfig(source="policy", k=2)
  with pytest.raises(ValueError, match="expected 2"):
    alt_lib.policy_alternatives(states[:1], lambda p, n, temperature, seed: [["x"]],
                                tok, CFG, cfg, DropLog(), DropLog())


def test_policy_hook_is_clear_when_the_sampler_is_missing(monkeypatch):
  monkeypatch.setitem(sys.modules, "act_jax.sampling", None)
  with pytest.raises(RuntimeError, match="act_jax.sampling"):
    build.policy_sample_fn("model")
  monkeypatch.setitem(sys.modules, "act_jax.sampling", types.ModuleType("x"))
  with pytest.raises(RuntimeError, match="make_sample_fn"):
    build.policy_sample_fn("model")
  fake = types.ModuleType("x")
  fake.make_sample_fn = lambda model_dir: ("sampler for", model_dir)
  monkeypatch.setitem(sys.modules, "act_jax.sampling", fake)
  assert build.policy_sample_fn("m") == ("sampler for", "m")


# --- Prompts and records -----------------------------------------------------------


def test_chat_template_and_plain_fallback(tok):
  p = prompts.imitation_prompt(tok, "STATE", CFG)
  assert p.startswith("<|im_start|>user\nSTATE\n\nWhat is your next action?")
  assert p.endswith("<|im_end|>\n<|im_start|>assistant\n")
  plain = prompts.imitation_prompt(tok, "STATE",
                                   prompts.PromptConfig(use_chat_template=False))
  assert plain == "STATE\n\n" + CFG.action_user.format(state="")[2:] + "\n"
  assert prompts.rl_action_prompt is prompts.imitation_prompt


def test_chat_template_arguments_per_prompt_kind():
  class Recorder:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kw):
      assert not tokenize and add_generation_prompt
      return f"{[m['role'] for m in messages]}|{sorted(kw.items())}"

  cfg = prompts.PromptConfig(system="sys", chat_template_kwargs={"a": 1},
                             action_chat_template_kwargs={"enable_thinking": False})
  assert prompts.action_prompt(Recorder(), "s", cfg) == (
      "['system', 'user']|[('a', 1), ('enable_thinking', False)]")
  assert prompts.critic_prompt(Recorder(), "s", "x", "y", cfg) == (
      "['system', 'user']|[('a', 1)]")


def test_parsers_round_trip_the_templates():
  answer = "I think...\n" + prompts.answer_text("B", CFG)
  assert parsing.parse_judgment(answer, CFG.letters, CFG.answer_pattern) == ("B", parsing.OK)
  target = prompts.action_target("go to desk 1", CFG)
  assert parsing.parse_action("<think>Action: x</think>\n" + target,
                              CFG.action_pattern) == "go to desk 1"
  assert parsing.parse_action("nothing", CFG.action_pattern) is None
  cfg = prompts.PromptConfig.from_dict(json.loads(json.dumps(CFG.to_dict())))
  assert cfg == CFG
  with pytest.raises(ValueError, match="unknown"):
    prompts.PromptConfig.from_dict({"nope": 1})


def test_critic_labels_are_balanced_and_point_at_the_expert(tok):
  _, states = _act_jax_states(tok)
  alts = alt_lib.admissible_alternatives(states, alt_lib.AlternativesConfig(k=4),
                                         DropLog(), DropLog())
  recs = [r for _, r in examples.critic_records(states, alts, tok, CFG, 0, "admissible")]
  assert len(recs) == sum(map(len, alts)) > 10
  letters = collections.Counter(r["label"] for r in recs)
  assert abs(letters["A"] - letters["B"]) <= 1
  for r in recs:
    shown = {"A": r["action_a"], "B": r["action_b"]}
    assert shown[r["label"]] == r["expert_action"]
    assert shown["B" if r["label"] == "A" else "A"] == r["alternative_action"]
    assert f"Action A: {r['action_a']}\nAction B: {r['action_b']}" in r["prompt"]
    assert tok.decode(r["prompt_ids"]) == r["prompt"]
  for n in (1, 7, 100, 101):
    pos = examples.expert_positions(n, seed=3)
    assert abs(int(pos.sum()) * 2 - n) <= 1
  assert not np.array_equal(examples.expert_positions(100, 0),
                            examples.expert_positions(100, 1))


def test_imitation_loss_mask_covers_exactly_the_action(tok):
  _, states = _act_jax_states(tok)
  recs = [r for _, r in examples.imitation_records(states, tok, CFG)]
  assert len(recs) == len(states)
  for r, s in zip(recs, states):
    ids, mask = r["input_ids"], r["loss_mask"]
    assert len(ids) == len(mask) == len(r["prompt_ids"]) + len(r["target_ids"])
    assert tok.decode(ids[mask == 0]) == r["prompt"]
    assert tok.decode(ids[mask == 1]) == f"Action: {s.expert_action}<|im_end|>"
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert mask[len(r["prompt_ids"]):].all() and not mask[:len(r["prompt_ids"])].any()


# --- Build: TFDS array_record without TensorFlow, read back through grain ---------


def test_build_writes_array_record_without_tensorflow(tok, tmp_path):
  assert importlib.util.find_spec("tensorflow") is None
  trajs = importers.load_trajectories(ACT_JAX)
  report = build.build_datasets(
      trajs, tok, str(tmp_path), alt_cfg=alt_lib.AlternativesConfig(k=2),
      max_state_tokens=120, config={"note": "test"})
  assert "tensorflow" not in sys.modules
  assert (report.trajectories, report.states) == (2, 10)
  files = os.listdir(builders.dataset_dir(str(tmp_path), "critic_pairs"))
  assert any(".array_record-" in f for f in files)
  critic = builders.load_source(str(tmp_path), "critic_pairs")
  imitation = builders.load_source(str(tmp_path), "imitation_pairs")
  assert (len(critic), len(imitation)) == (report.pairs, report.states)
  rec = critic[0]
  assert set(rec) == set(builders.CriticPairs.FEATURES)
  assert rec["label"] in (b"A", b"B") and rec["prompt_ids"].dtype == np.int32
  assert tok.decode(rec["prompt_ids"]) == rec["prompt"].decode()
  meta = builders.load_metadata(str(tmp_path), "critic_pairs")
  assert meta["note"] == "test" and meta["max_state_tokens"] == 120
  assert meta["alternatives"]["k"] == 2
  assert meta["counts"]["pairs"] == report.pairs
  assert prompts.PromptConfig.from_dict(meta["prompts"]) == CFG
  saved = json.load(open(tmp_path / "build_report.json"))
  assert saved["dropped"] == report.drops.total and saved["pairs"] == report.pairs

  # Lengths for bucketing were cached by the build.
  ds_dir = builders.dataset_dir(str(tmp_path), "imitation_pairs")
  assert os.path.exists(os.path.join(ds_dir, "lengths-train-input_ids.npy"))
  lengths = builders.load_lengths(str(tmp_path), "imitation_pairs", "input_ids")
  np.testing.assert_array_equal(lengths,
                                pipeline.record_lengths(imitation, "input_ids"))

  # Imitation batches: right-padded, loss only on action tokens.
  it = pipeline.make_batches(imitation, batch_size=4, seed=0, pad_id=tok.pad_token_id,
                             shard_index=0, shard_count=1, num_epochs=1,
                             lengths=lengths)
  batches = list(it)
  assert len(batches) == report.states // 4
  buckets = pipeline.power_of_two_buckets(-(-int(lengths.max()) // 32) * 32)
  for b in batches:
    width, longest = b["tokens"].shape[1], b["mask"].sum(1).max()
    assert width == min(x for x in buckets if x >= longest)
    assert (b["tokens"][~b["mask"]] == tok.pad_token_id).all()
    for row, lm in zip(b["tokens"], b["loss_mask"]):
      assert re.fullmatch(r"Action: .+<\|im_end\|>", tok.decode(row[lm]))
  # Critic prompts for generation: left-padded, labels alongside.
  b = next(pipeline.make_batches(critic, batch_size=3, seed=0, mode="generation",
                                 pad_id=tok.pad_token_id, shard_index=0,
                                 shard_count=1))
  assert b["mask"][:, -1].all()
  for row, m, prompt in zip(b["tokens"], b["mask"], b["meta"]["prompt"]):
    assert tok.decode(row[m]) == prompt
  assert set(b["meta"]["label"]) <= {"A", "B"}


def test_command_line(tokenizer_dir, tmp_path, capsys, monkeypatch):
  out = tmp_path / "out"
  report = build.main(["--trajectories", ACT_JAX, "--tokenizer", tokenizer_dir,
                       "--k", "2", "--max-state-tokens", "200", "--seed", "3",
                       "--out", str(out)])
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1] == report.line()
  m = re.fullmatch(r"trajectories=(\d+) states=(\d+) pairs=(\d+) dropped=(\d+)",
                   lines[-1])
  assert m and m.groups() == ("2", "10", str(report.pairs), str(report.drops.total))
  assert any("state/no_admissible_list: 1" in l for l in lines)
  assert len(builders.load_source(str(out), "critic_pairs")) == report.pairs
  # Conversation data has no admissible lists: every state is counted, no pairs.
  report = build.main(["--trajectories", CONVERSATIONS, "--tokenizer", tokenizer_dir,
                       "--format", "conversations", "--out", str(tmp_path / "c")])
  assert report.pairs == 0 and report.states == 15
  assert report.drops.to_dict() == {"state/no_admissible_list": 15}
  assert len(builders.load_source(str(tmp_path / "c"), "imitation_pairs")) == 15
  monkeypatch.setitem(sys.modules, "act_jax.sampling", None)
  with pytest.raises(RuntimeError, match="act_jax.sampling"):
    build.main(["--trajectories", ACT_JAX, "--alternatives", "policy", "--model",
                tokenizer_dir, "--out", str(tmp_path / "p")])


def test_build_with_policy_alternatives(tok, tmp_path):
  trajs = importers.load_trajectories(CONVERSATIONS)
  calls = []

  def sample_fn(batch_prompts, n, temperature, seed):
    calls.append(seed)
    return [[f"Thought: try\nAction: look {i % 2}" for i in range(n)]
            for _ in batch_prompts]

  report = build.build_datasets(
      trajs, tok, str(tmp_path), sample_fn=sample_fn,
      alt_cfg=alt_lib.AlternativesConfig(source="policy", k=3, sample_batch_size=4))
  assert len(calls) == 4 and len(set(calls)) == 4  # 15 states, a seed per batch
  assert (report.states, report.pairs) == (15, 30)
  assert report.drops.total == 0  # a repeated sample loses nothing
  assert report.notes.to_dict() == {"candidate/duplicate": 15}
  critic = builders.load_source(str(tmp_path), "critic_pairs")
  assert len(critic) == 30
  assert {critic[i]["alternative_source"] for i in range(30)} == {b"policy"}
  assert {critic[i]["alternative_action"] for i in range(30)} == {b"look 0", b"look 1"}


def test_imported_data_needs_live_observations_without_look_inventory():
  import ml_collections
  from act_jax.data import steps
  cfg = lambda kw: ml_collections.ConfigDict(
      {"pipeline": {"trajectories": CONVERSATIONS}, "env": {"env_kwargs": kw}})
  with pytest.raises(ValueError, match=r"config\.env\.env_kwargs\.observe_look_inventory"):
    steps.check_imported_observations(cfg({}))
  steps.check_imported_observations(cfg({"observe_look_inventory": False}))
  steps.check_imported_observations(ml_collections.ConfigDict(
      {"pipeline": {"trajectories": ""}, "env": {"env_kwargs": {}}}))
