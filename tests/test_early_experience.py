"""The Early Experience baselines: branching rollouts, IWM and SR records, the policy that
reflects before it acts, and their place in the pipeline."""
import numpy as np
import pytest

from act_jax import parsing, pipeline, policy
from act_jax.data import alternatives as alt_lib, branches, early_experience as ee, prompts
from act_jax.data.build import build_states
from act_jax.data.report import DropLog
from act_jax.data.states import trajectory_ids
from act_jax.envs import expert, rollout
from act_jax.envs.base import EpisodeSpec

CFG = prompts.PromptConfig(use_chat_template=False)
# The embedded config's action format: the marker on its own line.
EMBEDDED = prompts.PromptConfig(use_chat_template=False, action_target="Action:\n{action}")


class WordTokenizer:
  """One id per whitespace-separated word, the vocabulary grown as words come; EOS = 0."""
  chat_template = None
  eos_token = "<eos>"

  def __init__(self):
    self.vocab = {"<eos>": 0}

  def convert_tokens_to_ids(self, token):
    return self.vocab[token]

  def _ids(self, text):
    return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]

  def __call__(self, texts, add_special_tokens=False):
    return {"input_ids": [self._ids(t) for t in texts] if isinstance(texts, list)
            else self._ids(texts)}

  def decode(self, ids, skip_special_tokens=True):
    words = {i: w for w, i in self.vocab.items()}
    return " ".join(words[int(i)] for i in ids if not (skip_special_tokens and i == 0))


# --- branching rollouts (the real TextWorldExpress) ------------------------------------


@pytest.fixture(scope="module")
def simonsays(twx_pool):
  specs = [EpisodeSpec("twx", "simonsays", "train", seed) for seed in (0, 1)]
  trajs, failures, _ = expert.generate(twx_pool, specs, progress=False)
  assert len(trajs) == 2 and not failures
  states = build_states(trajs, WordTokenizer(), CFG, None, DropLog(), DropLog())
  alts = alt_lib.admissible_alternatives(states, alt_lib.AlternativesConfig(k=2), DropLog(),
                                         DropLog())
  return trajs, states, {s.state_id: a for s, a in zip(states, alts)}


def test_branches_replay_the_gold_prefix_and_reproduce_its_observations(twx_pool, simonsays):
  trajs, states, alts = simonsays
  records, report = branches.make_branches(twx_pool, trajs, trajectory_ids(trajs), states, alts)
  assert (report["failed_replays"], report["states_skipped"]) == (0, 0)
  assert report["branched_states"] == len(states) == len(records)
  assert report["branches"] == sum(map(len, alts.values())) > 0
  by_id = {r["state_id"]: r for r in records}
  env = twx_pool.envs[0]
  for traj, ident in zip(trajs, trajectory_ids(trajs)):
    spec = EpisodeSpec.from_meta(traj.meta)
    actions = [s.action for s in traj.steps]
    for t, step in enumerate(traj.steps):
      # A reset (without gold) and the gold prefix reach the recorded state exactly.
      assert branches.replay_prefix(env, spec, actions[:t]).observation == step.observation
      r = by_id[f"{ident}/{t}"]
      assert r["state"] == states[[s.state_id for s in states].index(r["state_id"])].text
      if t + 1 < len(traj.steps):
        assert r["expert_observation"] == traj.steps[t + 1].observation
      assert [a["action"] for a in r["alternatives"]] == alts[r["state_id"]]
      for a in r["alternatives"]:
        replay_prefix_then = branches.replay_prefix(env, spec, actions[:t] + [a["action"]])
        assert a["observation"] == replay_prefix_then.observation and a["valid"]
        if t + 1 < len(traj.steps):  # simonsays: a wrong move says "Incorrect!"; at the
          assert a["observation"] != r["expert_observation"]  # last step every move "wins"


def test_a_trajectory_the_env_does_not_reproduce_is_a_counted_failed_replay(twx_pool, simonsays):
  trajs, states, alts = simonsays
  bad = trajs[1].from_dict(__import__("json").loads(trajs[1].to_json()))
  bad.steps[1].observation += " (edited)"
  records, report = branches.make_branches(twx_pool, [trajs[0], bad], trajectory_ids(trajs),
                                           states, alts)
  assert report["failed_replays"] == 1
  assert report["states_skipped"] == len(bad.steps) == len(states) - len(records)
  assert report["failures"][0]["reason"].startswith("step 1: the replayed observation")


# --- records ---------------------------------------------------------------------------


def _branches():
  return [{"state_id": "simonsays/0/0", "source": "expert:twx", "step": 0,
           "state": "Your task is to: obey Simon\nObservation: Simon says take the key",
           "expert_action": "take key", "expert_observation": "You take the key. Well done.",
           "alternatives": [{"action": "take lamp", "observation": "Simon did not say that.",
                             "valid": True},
                            {"action": "eat apple", "observation": "You lose the game.",
                             "valid": True}]}]


@pytest.mark.parametrize("cfg", [CFG, EMBEDDED])
def test_world_model_targets_are_exactly_the_next_observation_tokens(cfg):
  tok = WordTokenizer()
  recs = ee.world_model_records(_branches(), tok, cfg)
  b = _branches()[0]
  taken = [(b["expert_action"], b["expert_observation"])] + [
      (a["action"], a["observation"]) for a in b["alternatives"]]
  assert [(r["action"], r["target"]) for r in recs] == taken
  for r, (action, obs) in zip(recs, taken):
    mask = r["loss_mask"].astype(bool)
    assert r["input_ids"][mask].tolist() == tok(obs)["input_ids"] + [0]  # + EOS
    assert r["input_ids"][~mask].tolist() == tok(r["prompt"])["input_ids"]
    assert mask[-len(r["target_ids"]):].all() and mask.sum() == len(r["target_ids"])
    assert b["state"] in r["prompt"] and f"Action: {action}" in r["prompt"]


@pytest.mark.parametrize("cfg", [CFG, EMBEDDED])
def test_self_reflection_targets_end_with_the_expert_action_in_the_action_format(cfg):
  tok = WordTokenizer()
  recs = ee.reflection_records(_branches(), tok, cfg)
  assert [r["alternative_action"] for r in recs] == ["take lamp", "eat apple"]
  for r in recs:
    assert parsing.parse_action(r["target"], cfg.action_pattern) == "take key"
    assert r["target"].endswith(prompts.action_target("take key", cfg))
    assert "Simon did not say that." in r["reflection"] or "You lose" in r["reflection"]
    # The reflection and the action target are encoded apart, as the policy scores them.
    assert r["target_ids"].tolist() == (tok(r["reflection"] + "\n")["input_ids"]
                                        + tok(prompts.action_target("take key", cfg))
                                        ["input_ids"] + [0])
    mask = r["loss_mask"].astype(bool)
    assert r["input_ids"][mask].tolist() == r["target_ids"].tolist()
    assert r["prompt"] == prompts.action_prompt(tok, _branches()[0]["state"], cfg)


def test_a_pretrained_model_writes_its_own_reflections():
  """θ0's reflections through the real sampler (a tiny random model), shown both outcomes."""
  from act_jax.models import ModelConfig, init_params
  from act_jax.sampling import Sampler
  tok = WordTokenizer()
  tok(["Simon did not say that. You lose the game. well done because"])
  cfg = ModelConfig(arch="llama", vocab_size=256, hidden_size=32, intermediate_size=64,
                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, eos_token_id=0)
  params, sampler = init_params(cfg, 0), Sampler(cfg)
  seen = []

  def generate(ids):
    seen.extend(tok.decode(p) for p in ids)
    res = sampler.generate(params, ids, sampling=policy.GREEDY, max_new_tokens=6)
    return [tok.decode(s) for s in res.sequences()]

  recs = ee.reflection_records(_branches(), tok, CFG, generate=generate)
  assert len(seen) == len(recs) == 2
  assert "You take the key. Well done." in seen[0] and "Simon did not say that." in seen[0]
  for r in recs:
    assert r["target"] == r["reflection"] + "\n" + "Action: take key"
    assert parsing.parse_action(r["target"]) == "take key"


# --- a policy that reflects before it acts ---------------------------------------------


class FakeModel:
  """Generates a fixed completion; scores what it is asked, preferring `favourite`."""

  def prepare(self, params):  # a real sampler prepares weights once
    return params

  def __init__(self, tok, completion, favourite):
    self.tok, self.completion, self.favourite = tok, completion, favourite
    self.budgets, self.scored = [], []

  def generate(self, params, ids, sampling, max_new_tokens):
    self.budgets.append(max_new_tokens)
    seq = self.tok(self.completion)["input_ids"]
    return type("R", (), {"sequences": lambda _: [seq for _ in ids],
                         "finish_reasons": ["eos"] * len(ids)})()

  def score(self, params, prompts_, conts):
    self.scored.extend(prompts_)
    good = self.tok(prompts.action_target(self.favourite, EMBEDDED))["input_ids"]
    return [np.full(len(c), -1.0 if list(c[:-1]) == good else -2.0) for c in conts]


@pytest.mark.parametrize("mode", ["generate", "rank"])
def test_a_reflecting_policy_acts_after_its_reflection(mode):
  tok = WordTokenizer()
  reflection = "Taking 'take lamp' leads to: Simon did not say that.\n"
  model = FakeModel(tok, reflection + "Action:\ntake key", favourite="take key")
  x = rollout.PolicyInput(task="obey", history=(), observation="Simon says take the key",
                          admissible=("take lamp", "take key"))
  pol = policy.ModelPolicy(model, None, tok, EMBEDDED, mode=mode, reflection_tokens=100)
  assert pol([x]) == ["take key"]
  assert model.budgets == [24 + 100]
  if mode == "rank":  # the actions are scored after the prompt and the reflection
    prompt = pol.prompt_ids([x])[0]
    assert model.scored == [prompt + tok(reflection)["input_ids"]] * 2


def test_a_reflecting_policy_scores_its_long_rows_in_bounded_batches():
  """Every state's admissible actions are scored after its reflection: one program for
  all of them holds [rows, heads, T, T] attention scores, gigabytes for a tiny model."""
  tok = WordTokenizer()
  model = FakeModel(tok, "Simon did not say that.\nAction:\ntake key", favourite="take key")
  sizes = []
  score = model.score
  model.score = lambda params, p, c: sizes.append(len(p)) or score(params, p, c)
  xs = [rollout.PolicyInput(task="obey", history=(), observation=f"Simon says take key {i}",
                            admissible=("take lamp", "take key", f"look {i}")) for i in range(3)]
  pol = policy.ModelPolicy(model, None, tok, EMBEDDED, mode="rank", reflection_tokens=100,
                           batch_size=4)
  assert pol(xs) == ["take key"] * 3
  assert sum(sizes) == 9 and max(sizes) <= 4


# --- the pipeline ----------------------------------------------------------------------


def test_the_variants_chain_their_stages_with_the_il_budget():
  from tests.config_files import load
  c = load("embedded")
  assert "ee_iwm" not in pipeline.variants(c)  # not run by default
  c.pipeline.variants = "il,ee_iwm,ee_sr,il_w_act"
  assert pipeline.variants(c) == ["il", "ee_iwm", "ee_sr", "il_w_act"]
  assert pipeline.CHAINS["ee_iwm"] == ("ee_iwm", "il") and pipeline.CHAINS["ee_sr"] == ("ee_sr",)
  il = pipeline.stage_config(c, "il", 0).to_dict()
  for stage in ("ee_iwm", "ee_sr"):
    assert pipeline.stage_config(c, stage, 0).to_dict() == il
  prints = [pipeline.stage_fingerprint(c, s, 0) for s in ("il", "ee_iwm", "ee_sr")]
  assert prints[0] != prints[1] != prints[2] != prints[0]
  assert prints[1]["stages"] == prints[0]["stages"]
  assert pipeline.REFLECTING == ("ee_sr",)
  from act_jax import results
  pairs = {(t, b) for t, b, _ in results.DELTAS}
  assert {("ee_iwm", "il"), ("ee_sr", "il"), ("il_w_act", "ee_iwm"),
          ("il_w_act", "ee_sr")} <= pairs
  c.eval.cached = "top:1"
  with pytest.raises(ValueError, match=r"config\.eval\.cached.*ee_sr"):
    pipeline.variants(c)


def test_the_data_steps_feed_both_stages_on_a_micro_config(tmp_path):
  """trajectories -> tokenizer -> datasets -> branches on the real env, then the records
  `Pipeline.train_stage` gives each Early Experience stage (from scratch: template SR)."""
  from act_jax.data import steps
  from test_pipeline import micro_config
  c = micro_config()
  c.pipeline.variants = "il,ee_iwm,ee_sr"
  c.env.train_per_game = 2
  d = lambda name: str(tmp_path / name)
  for name in ("trajectories", "tokenizer", "datasets", "branches", "ee_sr"):
    (tmp_path / name).mkdir()
  steps.make_trajectories(c, d("trajectories"))
  steps.make_tokenizer(c, d("tokenizer"), d("trajectories"))
  steps.make_datasets(c, d("datasets"), d("trajectories"), d("tokenizer"))
  report = steps.make_branches(c, d("branches"), d("trajectories"), d("datasets"), d("tokenizer"))
  assert report["episodes"] == 4 and report["failed_replays"] == 0
  assert report["states_skipped"] == 0 and report["branches"] > 0
  p = pipeline.Pipeline(c, str(tmp_path))
  iwm = p.early_experience_records("ee_iwm", None, d("ee_iwm"))
  sr = p.early_experience_records("ee_sr", None, d("ee_sr"))
  assert len(iwm) == report["branched_states"] + report["branches"]
  assert len(sr) == report["branches"]
  pcfg = steps.prompt_config(c)
  for r in iwm[:5]:
    assert p.tok.decode(r["target_ids"], skip_special_tokens=True) == r["target"]
  for r in sr[:5]:
    text = p.tok.decode(r["target_ids"], skip_special_tokens=True)
    assert parsing.parse_action(text, pcfg.action_pattern) == r["expert_action"]
  assert (tmp_path / "ee_sr" / "reflections.jsonl").read_text().count("\n") == len(sr)
