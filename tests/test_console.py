"""What a user sees: a few progress lines per step in a log, warnings only when wrong."""
import io
import logging
import os
import pathlib
import re
import subprocess
import sys

from act_jax import console

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_in_a_log_prints_a_line_per_quarter_not_per_update():
  out = io.StringIO()
  with console.Progress(200, "s0/il", stream=out) as bar:
    for step in range(1, 201):
      bar.update_to(step, {"loss": 1.0 / step})
  assert out.getvalue().splitlines() == [
      "  [s0/il] 50/200 loss=0.02", "  [s0/il] 100/200 loss=0.01",
      "  [s0/il] 150/200 loss=0.006667", "  [s0/il] 200/200 loss=0.005"]
  # Resumed at step 120: only the quarters still ahead.
  out = io.StringIO()
  with console.Progress(200, "il", initial=120, stream=out) as bar:
    for _ in range(80):
      bar.update()
  assert [l.split()[1] for l in out.getvalue().splitlines()] == ["150/200", "200/200"]


def test_progress_on_a_terminal_is_one_redrawn_bar():
  out = _Terminal()
  with console.Progress(200, "il", stream=out) as bar:
    for step in range(1, 201):
      bar.update_to(step)
  text = out.getvalue()
  assert "\r" in text and "200/200" in text and "[il]" not in text


def test_quiet_libraries_drops_orbax_read_only_notice_only():
  console.quiet_libraries()
  from absl import logging as absl_logging
  seen = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = lambda record: seen.append(record.getMessage())
  absl = logging.getLogger("absl")
  absl.addHandler(handler)
  try:
    absl_logging.warning("Given directory is read only=%s", "/run/base/checkpoints")
    absl_logging.warning("step %d cannot be restored", 7)
    absl_logging.info("chatter")
  finally:
    absl.removeHandler(handler)
  assert seen == ["step 7 cannot be restored"]


MICRO = [
    "--config.pipeline.variants=prompt,il", "--config.pipeline.export=False",
    "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
    "--config.model.num_layers=1", "--config.model.num_heads=2",
    "--config.model.num_kv_heads=1", "--config.model.head_dim=16",
    "--config.env.train_per_game=3", "--config.env.heldout_per_game=1",
    "--config.env.max_steps=3", "--config.env.pool_size=2",
    "--config.tokenizer.vocab_size=400", "--config.data.max_state_tokens=96",
    "--config.stages.base.steps=8", "--config.stages.base.batch_size=8",
    "--config.stages.base.rollouts_per_game=1", '--config.eval.modes=("rank",)',
    "--config.eval.episodes_per_game=1", "--config.eval.heldout_states=4",
    "--config.eval.critic_pairs=4", "--config.stages.il.steps=4",
    "--config.stages.il.batch_size=8",
]
STEPS = ["trajectories", "tokenizer", "datasets", "random_play", "base", "s0/eval_prompt",
         "s0/il", "s0/eval_il"]


def _main(workdir):
  """`python -m act_jax.main` as a user runs it into a log: stdout and stderr together."""
  env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as on a user's machine
  proc = subprocess.run(
      [sys.executable, "-m", "act_jax.main", "--config", "configs/embedded.py",
       "--workdir", str(workdir), *MICRO], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:]
  return [l for l in proc.stdout.splitlines() if l.strip() and not l.startswith("|")]


def test_main_prints_a_line_per_step_and_no_library_chatter(tmp_path):
  lines = _main(tmp_path)
  steps = [m.group(1) for l in lines if (m := re.match(r"\[(\S+)\] done in ", l))]
  assert steps == STEPS, lines
  progress = [l for l in lines if l.startswith("  [")]
  assert 0 < len([l for l in progress if l.startswith("  [base] ")]) <= console.LOG_LINES
  assert 0 < len([l for l in progress if l.startswith("  [s0/eval_prompt] ")]) <= console.LOG_LINES
  # A seed's stage is tagged with its step, not only its stage's name.
  assert 0 < len([l for l in progress if l.startswith("  [s0/il] ")]) <= console.LOG_LINES
  others = [l for l in lines if not re.match(r"\[\S+\] done in |  \[|#|Percentages", l)]
  assert others == [], others  # no TFDS, Orbax, absl or XLA lines
  # The expert's own action among the admissible ones is not counted as dropped.
  datasets = next(l for l in lines if l.startswith("[datasets]"))
  assert re.findall(r"dropped=(\d+)", datasets) == ["0", "0", "0"], datasets
  # A rerun: one line per step, each skipped.
  assert _main(tmp_path)[:len(STEPS)] == [f"[{s}] skipped (up to date)" for s in STEPS]
