#!/usr/bin/env bash
# The SmolLM2 critic's setting, chosen on the validation split (docs/smollm2.md, "The
# second run"): one workdir per (learning rate, trainable depth) cell, each training the
# critic of seed 0 for STEPS steps and evaluating it on every validation pair (forced
# choice, both A/B orders) every 16 steps (`val_*` in its s0/<variant>/metrics.jsonl).
# The cells share DATA's finished data steps and prefix cache through symlinks, so this
# runs on a local disk; run it after DATA has its datasets (any run of the same config).
# A control variant (act_blind, act_shuffled) goes on to its IL stage after the critic;
# stop it there if only the critic is wanted. `python` is the project's virtualenv's.
#
#   PATH=.venv/bin:$PATH docs/smollm2_twx/sweep.sh DATA OUT STEPS "3e-5 1e-4 3e-4" "4 8" [act|act_blind|...]
set -euo pipefail
data=$(realpath "$1"); out=$2; steps=$3; lrs=$4; depths=$5; variant=${6:-act}
for depth in $depths; do
  for lr in $lrs; do
    cell="$out/${variant}_lr${lr}_top${depth}"
    mkdir -p "$cell"
    for d in trajectories tokenizer datasets base prefix_cache; do
      [ -e "$cell/$d" ] || ln -s "$data/$d" "$cell/$d"
    done
    python -m act_jax.main --config configs/smollm2_twx.py:cpu --workdir "$cell" \
      --config.pipeline.seeds=1 --config.pipeline.variants="$variant" \
      --config.pipeline.evaluate=False \
      --config.stages.act.steps="$steps" --config.stages.act.eval_every=16 \
      --config.stages.act.lr="$lr" --config.stages.act.trainable="top:$depth"
  done
done
