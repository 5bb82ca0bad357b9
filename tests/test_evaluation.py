"""Evaluation that means what it says: judgments scored as the critic stage scores them,
forced choice over both orders, training-identical prompts, clustered intervals, paired
seed deltas, and rank-mode scoring."""
import os
import re

import numpy as np
import pytest

from act_jax import evaluation, policy, results, rewards, stats
from act_jax.data import examples, importers, prompts
from act_jax.data.report import DropLog
from act_jax.data.states import trajectory_states
from act_jax.data.trajectory import Step, Trajectory
from act_jax.envs import rollout

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CFG = prompts.PromptConfig(use_chat_template=False)
JUDGE = rewards.JudgmentConfig()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  from transformers import PreTrainedTokenizerFast
  from act_jax import tokenizer as tok_lib
  texts = [open(os.path.join(FIXTURES, f)).read()
           for f in ("conversations.jsonl", "act_jax_trajectories.jsonl")]
  out = tok_lib.train_tokenizer(texts * 3, 600, str(tmp_path_factory.mktemp("tok")))
  return PreTrainedTokenizerFast.from_pretrained(out)


def _trajectory(n=3, instruction="", fruit="apple"):
  steps = [Step(observation=f"You see an {fruit} and a pear in room {i}.",
                action=f"take {fruit} {i}",
                admissible=[f"take {fruit} {i}", f"take pear {i}", "look"]) for i in range(n)]
  return Trajectory(task="take the apples", steps=steps, instruction=instruction,
                    meta={"id": f"t{instruction[:3]}"})


# --- 1. judgments -----------------------------------------------------------------------


class _Out:
  def __init__(self, seqs):
    self._seqs = seqs

  def sequences(self):
    return self._seqs


class FakeCritic:
  """A stand-in model: reasons at length, then names the expert's letter (greedy); its
  answer log-probs carry a fixed preference for letter A plus `skill` for the expert's.

  Truncates completions to max_new_tokens as a real sampler does.
  """

  def prepare(self, params):  # a real sampler prepares weights once
    return params

  def __init__(self, tok, expert_of, skill, reasoning="I compare both with the task. " * 4):
    self.tok, self.expert_of, self.skill, self.reasoning = tok, expert_of, skill, reasoning
    self.max_new, self.scored = [], []

  def _expert_letter(self, prompt):
    found = dict(re.findall(r"Action ([AB]): (.*)", prompt))
    return next(l for l, a in found.items() if a == self.expert_of[found["A"] + "|" + found["B"]])

  def generate(self, params, ids, sampling, max_new_tokens):
    self.max_new.append(max_new_tokens)
    seqs = []
    for p in ids:
      letter = self._expert_letter(self.tok.decode(p))
      text = f"<think>{self.reasoning}</think>\nAnswer: {letter}"
      seqs.append(self.tok(text, add_special_tokens=False)["input_ids"][:max_new_tokens])
    return _Out(seqs)

  def score_sums(self, params, prompts_, conts):
    out = []
    for p, c in zip(prompts_, conts):
      text = self.tok.decode(p)
      self.scored.append(text)
      letter = re.search(r"Answer: ([AB])", self.tok.decode(c)).group(1)
      out.append((1.0 if letter == "A" else 0.0)
                 + (self.skill if letter == self._expert_letter(text) else 0.0))
    return np.asarray(out, np.float32)


def _pairs(tok, n=6):
  trajs = [_trajectory(3)]
  states = [s for t in trajs for s in trajectory_states(t, "ep0", tok, CFG)]
  alts = [[s.admissible[1]] for s in states][:n]
  recs = [r for _, r in examples.critic_records(states[:n], alts, tok, CFG, 0, "admissible")]
  expert_of = {}
  for r in recs:
    expert_of[r["action_a"] + "|" + r["action_b"]] = r["expert_action"]
    expert_of[r["action_b"] + "|" + r["action_a"]] = r["expert_action"]
  return recs, expert_of


def test_judgment_is_scored_with_the_stage_budget_and_the_reward_parser(tok):
  recs, expert_of = _pairs(tok)
  critic = FakeCritic(tok, expert_of, skill=0.5)
  budget = 64  # the reasoning alone is longer than 16 tokens
  assert len(tok(critic.reasoning)["input_ids"]) > 16
  out = evaluation.judgment_accuracy(critic, None, tok, CFG, recs, JUDGE, max_new_tokens=budget)
  assert set(critic.max_new) == {budget}
  assert out["judgment_accuracy"] == 1.0 and out["judgment_format_error_rate"] == 0.0
  # Forced choice conditions on the greedy reasoning, then compares the two answers.
  assert len(critic.scored) == 2 * 2 * len(recs)  # two orders x two answers
  assert all(s.endswith(critic.reasoning + "</think>\n") for s in critic.scored)
  # The same critic cut at 16 tokens never finishes its reasoning: malformed, as the
  # reward says, not a lenient parse of whatever letter appears.
  cut = evaluation.judgment_accuracy(critic, None, tok, CFG, recs, JUDGE, max_new_tokens=16)
  assert cut["judgment_accuracy"] == 0.0 and cut["judgment_format_error_rate"] == 1.0


class LetterCritic(FakeCritic):
  """Always answers "A" greedily; its scores prefer A by 1 nat and know nothing else."""

  def generate(self, params, ids, sampling, max_new_tokens):
    return _Out([self.tok("Answer: A", add_special_tokens=False)["input_ids"] for _ in ids])


def test_greedy_judgment_is_scored_in_both_orders_so_a_letter_earns_half(tok):
  """On pairs whose stored order puts the expert at A, a critic that always says A
  scored 100% when only the stored order counted; over both orders it scores 50%, and
  its letter bias is reported (greedy: always A; by the answers' scores sigmoid(1))."""
  recs, expert_of = _pairs(tok, n=12)
  recs = [r for r in recs if r["label"] == "A"]
  assert recs
  out = evaluation.judgment_accuracy(LetterCritic(tok, expert_of, 0.0), None, tok, CFG, recs,
                                     JUDGE, max_new_tokens=16)
  assert out["judgment_accuracy"] == 0.5
  assert out["judgment_greedy_first_letter_rate"] == 1.0
  assert out["first_letter_rate"] == pytest.approx(1 / (1 + np.exp(-1.0)))


@pytest.mark.parametrize("skill, expected", [(0.5, 1.0), (0.0, 0.5), (-0.5, 0.0)])
def test_forced_choice_averages_both_orders_so_letter_bias_cancels(tok, skill, expected):
  # Letter A is preferred by 1 nat everywhere. Per order, the expert's margin is
  # +1 + skill with the expert at A and -1 + skill at B: their mean is `skill`.
  recs, expert_of = _pairs(tok)
  out = evaluation.judgment_accuracy(FakeCritic(tok, expert_of, skill), None, tok, CFG, recs,
                                     JUDGE, max_new_tokens=64)
  assert out["judgment_forced_accuracy"] == expected
  # Each pair's outcome, in record order, with its episode.
  assert out["judgment_forced_accuracy_per_unit"] == [expected] * len(recs)
  assert out["judgment_forced_accuracy_unit_cluster"] == ["ep0"] * len(recs)
  lo, hi = out["judgment_forced_accuracy_ci95"]
  assert lo <= expected <= hi


def test_reasoning_prefix():
  assert evaluation.reasoning_prefix("<think>x</think>\nAnswer: B", JUDGE) == "<think>x</think>\n"
  assert evaluation.reasoning_prefix("<think>x</think>", JUDGE) == "<think>x</think>\n"
  assert evaluation.reasoning_prefix("<think>x y ", JUDGE) == "<think>x y</think>\n"  # cut off
  assert evaluation.reasoning_prefix("B", JUDGE) == ""


def test_held_out_pairs_are_spread_over_the_split():
  assert evaluation.evenly_spaced(280, 140)[-1] == 279
  assert len(evaluation.evenly_spaced(280, 140)) == 140
  assert evaluation.evenly_spaced(5, 140) == [0, 1, 2, 3, 4]


# --- 3. evaluation prompts equal training prompts ---------------------------------------


@pytest.mark.parametrize("source", ["built-in", "imported"])
def test_evaluation_renders_states_byte_identical_to_training(tok, source):
  if source == "imported":
    trajs = importers.load_trajectories(os.path.join(FIXTURES, "conversations.jsonl"))[:1]
    assert all(t.instruction for t in trajs)
  else:
    trajs = [_trajectory(4)]
  budget = 200
  instruction = evaluation.training_instruction(trajs)
  pol = policy.ModelPolicy(None, None, tok, CFG, max_state_tokens=budget, instruction=instruction)
  train_states = [s for i, t in enumerate(trajs)
                  for s in trajectory_states(t, f"t{i}", tok, CFG, budget, DropLog(), DropLog())]
  held = rollout.expert_states(trajs)
  assert len(held) == len(train_states)
  for s, (x, gold, _) in zip(train_states, held):
    assert gold.strip() == s.expert_action
    assert pol.state_text(x) == s.text
    # A live episode carries no instruction of its own: the policy supplies training's.
    live = rollout.PolicyInput(task=x.task, history=x.history, observation=x.observation,
                               admissible=x.admissible)
    assert pol.state_text(live) == s.text
    assert (prompts.action_prompt(tok, pol.state_text(live), CFG)
            == prompts.action_prompt(tok, s.text, CFG))


# --- 5. statistics ----------------------------------------------------------------------


def test_next_action_interval_is_a_bootstrap_over_episodes():
  # Two episodes of ten states: the policy is right on every state of the first and
  # wrong on every state of the second. Resampling episodes gives both-first (1.0),
  # both-second (0.0) or one each (0.5), so the 95% interval is [0, 1]; a binomial
  # interval over 20 "independent" states would claim about [0.30, 0.70].
  trajs = [_trajectory(10), _trajectory(10, fruit="plum")]
  first = {s.action for s in trajs[0].steps}
  out = rollout.next_action_accuracy(
      lambda b: [x.admissible[0] if x.admissible[0] in first else "look" for x in b], trajs)
  assert out["accuracy"] == 0.5 and out["episodes"] == 2
  assert out["accuracy_ci95"] == [0.0, 1.0]


def test_cluster_bootstrap_matches_enumeration():
  # Three clusters (sizes 1, 1, 2); exact distribution of the resampled mean by
  # enumerating all 27 ordered draws; the bootstrap percentiles must sit inside it.
  y = [1, 0, 1, 1]
  cl = ["a", "b", "c", "c"]
  sums, counts = {"a": 1, "b": 0, "c": 2}, {"a": 1, "b": 1, "c": 2}
  means = sorted(sum(sums[k] for k in d) / sum(counts[k] for k in d)
                 for d in __import__("itertools").product("abc", repeat=3))
  lo, hi = stats.cluster_bootstrap_ci(y, cl, n_boot=20000)
  assert means[0] <= lo <= means[1] and hi == means[-1] == 1.0


def test_paired_deltas_per_seed_with_t_interval():
  ev = lambda x: {"id": {"success_rate": x, "next_action_accuracy": x}}
  per_seed = {"il": {0: ev(0.8), 1: ev(0.0), 2: ev(0.05)},
              "il_w_act": {0: ev(0.9), 1: ev(0.2), 2: ev(0.05)},
              "prompt": {0: {"id": {"judgment_accuracy": 0.5}}},
              "act": {0: {"id": {"judgment_accuracy": 0.7}}, 1: {"id": {"judgment_accuracy": 0.6}}}}
  d = results.deltas(per_seed)
  got = d["il_w_act - il"]["id"]["success_rate"]
  assert got["per_seed"] == pytest.approx([0.1, 0.2, 0.0])
  # Hand-computed: mean 0.1, sd 0.1, t(2) = 4.303 -> half-width 0.24843.
  assert got["mean"] == pytest.approx(0.1)
  assert got["ci95"] == pytest.approx([0.1 - 0.24843, 0.1 + 0.24843], abs=1e-4)
  # θ0 is evaluated once: every seed of act is paired with it.
  assert d["act - prompt"]["id"]["judgment_accuracy"]["per_seed"] == pytest.approx([0.2, 0.1])
  assert "rl_w_act - rl" not in d


def test_delta_against_theta0_is_paired_per_pair_with_its_own_noise():
  import itertools
  # θ0 and act judged on the same 4 held-out pairs of 3 episodes; act has two seeds.
  items, episodes = ["p0", "p1", "p2", "p3"], ["a", "b", "c", "c"]
  theta0 = [1.0, 0.0, 0.0, 1.0]
  act = {0: [1.0, 1.0, 1.0, 1.0], 1: [1.0, 1.0, 0.0, 1.0]}
  ev = lambda y: {"id": {"judgment_accuracy": float(np.mean(y)),
                         "judgment_accuracy_per_unit": y,
                         "judgment_accuracy_unit_cluster": episodes}}
  per_seed = {"prompt": {0: ev(theta0)}, "act": {s: ev(y) for s, y in act.items()}}
  d = results.deltas(per_seed)["act - prompt"]["id"]["judgment_accuracy"]
  # Independent computation: per-seed paired differences, and the exact bootstrap
  # distribution by enumerating every draw of seeds (2^2) and of episodes (3^3).
  diff = {s: dict(zip(items, np.subtract(y, theta0))) for s, y in act.items()}
  assert d["per_seed"] == pytest.approx([0.5, 0.25])
  assert d["mean"] == pytest.approx(0.375)
  members = {"a": ["p0"], "b": ["p1"], "c": ["p2", "p3"]}
  means = sorted(
      np.mean([sum(diff[s][k] for e in es for k in members[e])
               / sum(len(members[e]) for e in es) for s in ss])
      for ss in itertools.product(act, repeat=2) for es in itertools.product("abc", repeat=3))
  q = lambda p: np.quantile(means, p)
  lo, hi = d["ci95"]
  assert q(0.01) - 1e-9 <= lo <= q(0.05) + 1e-9 and q(0.95) - 1e-9 <= hi <= q(0.99) + 1e-9
  # θ0's sampling noise is in the interval: seeds that agree exactly still get one.
  same = {"prompt": {0: ev(theta0)}, "act": {0: ev(act[0]), 1: ev(act[0])}}
  lo, hi = results.deltas(same)["act - prompt"]["id"]["judgment_accuracy"]["ci95"]
  assert hi - lo > 0.2


def test_results_files_carry_the_deltas(tmp_path):
  ev = lambda x: {"id": {"success_rate": x}}
  doc = results.write(str(tmp_path), {"il": {0: ev(0.5), 1: ev(0.5)},
                                      "il_w_act": {0: ev(0.7), 1: ev(0.6)}}, ["il", "il_w_act"])
  assert doc["deltas"]["il_w_act - il"]["id"]["success_rate"]["mean"] == pytest.approx(0.15)
  md = open(tmp_path / "results.md").read()
  assert "| il_w_act - il | id | success | 15.0 [" in md and "+20.0 / +10.0" in md


class FakeScorer:
  """Per-token log-probs: -2 each for continuations up to `short` tokens, else -1 each."""

  def prepare(self, params):  # a real sampler prepares weights once
    return params

  def __init__(self, short):
    self.short = short

  def score(self, params, prompts_, conts):
    return [np.full(len(c), -2.0 if len(c) <= self.short else -1.0, np.float32)
            for c in conts]


def test_rank_modes_sum_or_length_normalise(tok):
  x = rollout.PolicyInput(task="t", history=(), observation="o",
                          admissible=("go", "take the big red apple"))
  lens = [len(tok(prompts.action_target(a, CFG))["input_ids"]) + 1 for a in x.admissible]
  assert 2 * lens[0] < lens[1]  # so the long action's sum is the lower one
  summed = policy.ModelPolicy(FakeScorer(lens[0]), None, tok, CFG, mode="rank")
  mean = policy.ModelPolicy(FakeScorer(lens[0]), None, tok, CFG, mode="rank_mean")
  assert summed([x]) == ["go"]  # the sum favours the short action
  assert mean([x]) == ["take the big red apple"]


# --- generated actions: budget and truncation ------------------------------------------


class FakeActor:
  """Greedy completions "Action: <text>" + EOS, cut at max_new_tokens as a sampler does,
  with its finish reason ("length" when cut)."""

  def prepare(self, params):  # a real sampler prepares weights once
    return params

  def __init__(self, tok, eos, text):
    self.tok, self.eos, self.text = tok, eos, text

  def generate(self, params, ids, sampling, max_new_tokens):
    full = self.tok(f"Action: {self.text}", add_special_tokens=False)["input_ids"] + [self.eos]
    cut = len(full) > max_new_tokens
    return type("R", (), {"sequences": lambda _: [full[:max_new_tokens] for _ in ids],
                          "finish_reasons": ["length" if cut else "eos"] * len(ids)})()


def test_cut_actions_are_counted_per_episode(tok):
  long = "take the blue jay egg from the fire pit in the outside"
  n = len(tok(f"Action: {long}", add_special_tokens=False)["input_ids"]) + 1
  spec = rollout.EpisodeSpec("scienceworld", "find-animal", "dev", 3)
  xs = [rollout.PolicyInput(task="t", history=(), observation="o", admissible=(), spec=s)
        for s in (spec, None)]
  eos = examples.eos_id(tok, CFG)
  for budget, cut in ((n, 0), (n - 3, 1)):  # n - 3: the action loses words
    pol = policy.ModelPolicy(FakeActor(tok, eos, long), None, tok, CFG, mode="generate",
                             max_new_tokens=budget)
    got = pol(xs)
    assert (got[0] == long) == (cut == 0)
    counts = pol.take_counts()
    assert (counts[spec.key]["generated"], counts[spec.key]["truncated"]) == (1, cut)
    assert counts[None]["truncated"] == cut
    assert pol.take_counts() == {}
    fields = evaluation.generation_counts(counts.values())
    assert (fields["truncated_actions"], fields["truncated_action_rate"]) == (2 * cut, cut)


def test_action_budget_is_sized_from_the_data(tok):
  import ml_collections
  trajs = [_trajectory(2), Trajectory(task="t", steps=[Step("o", "focus on the blue jay egg")])]
  longest = max(len(tok(f"Action: {s.action}", add_special_tokens=False)["input_ids"]) + 1
                for t in trajs for s in t.steps)
  cfg = lambda **kw: ml_collections.ConfigDict({"eval": kw})
  assert evaluation.action_budget(cfg(), trajs, tok, CFG) == longest + evaluation.ACTION_MARGIN
  assert evaluation.action_budget(cfg(action_max_new_tokens=longest), trajs, tok, CFG) == longest
  with pytest.raises(ValueError, match=r"config\.eval\.action_max_new_tokens=.*blue jay"):
    evaluation.action_budget(cfg(action_max_new_tokens=longest - 1), trajs, tok, CFG)
