"""The results figures hold what results.json holds: read from the matplotlib figures'
axes (titles, tick labels, legends, plotted values), not from pixels."""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from act_jax import results  # noqa: E402

ORDER = ["prompt", "il", "act", "il_w_act", "il_w_replay"]  # il_w_replay: a name no code knows


def _per_seed():
  """Three seeds (θ0 once); `il` and `il_w_replay` never answer the critic prompt."""
  def ev(succ, acc, greedy, forced, fmt):
    split = {"success_rate": succ, "next_action_accuracy": acc, "judgment_accuracy": greedy,
             "judgment_forced_accuracy": forced, "judgment_format_error_rate": fmt}
    return {"id": split, "ood_test_fold": {k: v / 2 for k, v in split.items()}}
  out = {"prompt": {0: ev(0.0, 0.25, 0.5, 0.47, 0.0)}}
  for v, base in (("il", 0.8), ("act", 0.1), ("il_w_act", 0.85), ("il_w_replay", 0.78)):
    critic = v in ("act", "il_w_act")
    out[v] = {s: ev(base, base + 0.01 * s, 0.7 + 0.01 * s if critic else 0.0,
                    0.6 + 0.02 * s, 0.0 if critic else 1.0) for s in range(3)}
  return out


@pytest.fixture
def figures_of(monkeypatch):
  """Every figure saved while the test runs, by file name."""
  saved = {}
  original = matplotlib.figure.Figure.savefig

  def savefig(self, path, *args, **kwargs):
    saved[os.path.basename(str(getattr(path, "name", path)))] = self  # a path or a file
    return original(self, path, *args, **kwargs)
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
  return saved


def _run_dir(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  doc = results.write(str(run), _per_seed(), ORDER)
  # A metric and a pair this code has no entry for still get drawn.
  doc["variants"]["act"]["id"]["first_letter_rate"] = {"mean": 0.55, "ci95": [0.5, 0.6],
                                                       "per_seed": [0.5, 0.55, 0.6]}
  doc["deltas"]["il_w_act - il_w_replay"] = {"id": {"next_action_accuracy": {
      "mean": 0.07, "ci95": [0.01, 0.13], "per_seed": [0.06, 0.07, 0.08], "seeds": [0, 1, 2]}}}
  (run / "results.json").write_text(json.dumps(doc))
  rows = {"base": [{"step": i, "loss": 3.0 / i} for i in range(1, 31)],
          "s0/il": [{"step": i, "loss": 2.0 / i} for i in range(1, 31)],
          "s0/act": [{"step": i, "loss": -float(i), "expected_reward": 0.5 + i / 100,
                      "forced_accuracy": 0.5 + i / 100} for i in range(1, 21)]}
  for name, rs in rows.items():
    (run / name).mkdir(parents=True)
    (run / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    (run / name / "done.json").write_text("{}")
  return run, doc


def _panels(fig):
  return {ax.get_title(): ax for ax in fig.axes}


def _points(ax):
  """{legend label: (x values, y values)} of the errorbar series in a panel."""
  out = {}
  for c in ax.containers:
    x, y = c.lines[0].get_data()
    out[c.get_label()] = (np.asarray(x, float), np.asarray(y, float))
  return out


def test_replot_draws_every_metric_split_pair_and_curve_kind(tmp_path, figures_of):
  run, doc = _run_dir(tmp_path)
  out = tmp_path / "published"
  written = results.replot(str(run), str(out))
  assert {"results.md", "variants.png", "deltas.png", "curves.png", "results.json",
          "curves.json"} == set(written)
  assert "| first-letter rate |" in (out / "results.md").read_text()  # a metric the table names

  variants = _panels(figures_of["variants.png"])
  held = {m for v in doc["variants"].values() for s in v.values() for m in s}
  assert set(variants) == {results.SHORT.get(m, m) for m in held}
  legend = [t.get_text() for t in figures_of["variants.png"].legends[0].get_texts()]
  assert legend == ["id", "ood_test_fold"]
  for metric, ax in variants.items():
    assert [t.get_text() for t in ax.get_yticklabels()] == ORDER
  # Next-action accuracy: every variant, both splits, at its mean (percent).
  pts = _points(variants["next-action acc"])
  for split in ("id", "ood_test_fold"):
    want = [100 * doc["variants"][v][split]["next_action_accuracy"]["mean"] for v in ORDER]
    np.testing.assert_allclose(pts[split][0], want)
  # Greedy judgment: no point for the two variants that never answered, and a note instead.
  greedy = variants["judgment acc (greedy)"]
  rows = np.round(_points(greedy)["id"][1]).astype(int)
  assert [ORDER[r] for r in rows] == ["prompt", "act", "il_w_act"]
  assert sum("never answered" in t.get_text() for t in greedy.texts) == 2

  deltas = _panels(figures_of["deltas.png"])
  assert set(deltas) == {results.SHORT[m] for p in doc["deltas"].values()
                         for s in p.values() for m in s}
  labels = [t.get_text() for t in deltas["next-action acc"].get_yticklabels()]
  assert labels == [p for p in doc["deltas"] if "next_action_accuracy" in
                    doc["deltas"][p].get("id", {})]
  assert "il_w_act - il_w_replay" in labels
  assert any(np.allclose(l.get_xdata(), 0.0) for l in deltas["next-action acc"].lines)

  curves_fig = figures_of["curves.png"]
  curves = _panels(curves_fig)
  assert "imitation loss (cross-entropy)" in curves and "GRPO loss" in curves
  assert all(ax.lines for ax in curves.values())  # no empty panel
  ce_max = max(l.get_ydata().max() for l in curves["imitation loss (cross-entropy)"].lines)
  assert ce_max <= 3.0 and curves["GRPO loss"].lines[0].get_ydata().min() < -10
  assert len({ax.get_xlim() for ax in curves.values()}) == 1  # one step axis
  # The legend sits outside every panel.
  curves_fig.canvas.draw()
  box = curves_fig.legends[0].get_window_extent()
  assert not any(box.overlaps(ax.get_window_extent()) for ax in curves_fig.axes)

  # The published copy redraws alone, curves included.
  figures_of.clear()
  assert "curves.png" in results.replot(str(out))
  assert set(_panels(figures_of["curves.png"])) == set(curves)


def test_tables_show_a_dash_for_a_judgment_never_given(tmp_path):
  run, _ = _run_dir(tmp_path)
  md = (run / "results.md").read_text()
  il = next(l for l in md.splitlines() if l.startswith("| il |"))
  act = next(l for l in md.splitlines() if l.startswith("| act |"))
  header = next(l for l in md.splitlines() if l.startswith("| variant |")).split(" | ")
  col = header.index("judgment acc (greedy)")
  assert il.split(" | ")[col] == "—" and act.split(" | ")[col].startswith("71.0 [")
  # Older results files without the format-error rate: all-zero greedy judgment.
  assert results.no_answer({"judgment_accuracy": {"per_seed": [0.0, 0.0]}})
  assert not results.no_answer({"judgment_accuracy": {"per_seed": [0.0, 0.01]}})


def test_replot_names_a_missing_results_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="results.json"):
    results.replot(str(tmp_path))


def test_results_keep_each_critic_stage_at_the_end_of_its_training(tmp_path):
  """The letter bias over a critic's last steps and its last validation evaluation, per
  stage over seeds, from the stages' own rows; a published copy redraws the same."""
  run, _ = _run_dir(tmp_path)
  rng = np.random.default_rng(0)
  letters, val = {}, {}
  for seed in (0, 1, 2):
    rows = []
    for step in range(1, 41):
      r = {"step": step, "loss": -1.0, "first_letter_rate": float(rng.uniform())}
      if step % 16 == 0:  # the last one (step 32) is the end state's
        r.update(val_judgment_forced_accuracy=0.7 + 0.05 * seed + step / 1000,
                 val_judgment_forced_accuracy_A=0.8, val_judgment_forced_accuracy_B=0.6,
                 val_first_letter_rate=0.5)
      rows.append(r)
    letters[seed] = np.mean([r["first_letter_rate"] for r in rows[-16:]])
    val[seed] = 0.7 + 0.05 * seed + 0.032
    (run / f"s{seed}" / "act_blind").mkdir(parents=True)
    (run / f"s{seed}" / "act_blind" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    (run / f"s{seed}" / "act_blind" / "done.json").write_text("{}")
  # A critic stage still running (no done.json) is not at the end of its training.
  (run / "s0" / "act_shuffled").mkdir()
  (run / "s0" / "act_shuffled" / "metrics.jsonl").write_text(
      json.dumps({"step": 1, "first_letter_rate": 0.9}) + "\n")
  out = tmp_path / "published"
  results.replot(str(run), str(out))
  doc = json.loads((out / "results.json").read_text())
  assert set(doc["critic_training"]) == {"act_blind"}  # s0/act: no letters; act_shuffled: running
  got = doc["critic_training"]["act_blind"]
  want = [letters[s] for s in (0, 1, 2)]
  np.testing.assert_allclose(got["first_letter_rate"]["per_seed"], want)
  half = 4.302653 * np.std(want, ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
  np.testing.assert_allclose(got["first_letter_rate"]["ci95"],
                             [np.mean(want) - half, np.mean(want) + half], rtol=1e-5)
  np.testing.assert_allclose(got["val_judgment_forced_accuracy"]["per_seed"],
                             [val[s] for s in (0, 1, 2)])
  assert got["validation_step"]["per_seed"] == [32, 32, 32]
  md = (out / "results.md").read_text()
  assert "## Critic stages at the end of training" in md
  assert f"| act_blind | {100 * np.mean(want):.1f} [" in md
  results.replot(str(out), str(tmp_path / "again"))  # from the copy's curves.json alone
  again = json.loads((tmp_path / "again" / "results.json").read_text())
  assert again["critic_training"] == doc["critic_training"]
