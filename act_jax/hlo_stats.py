"""What a compiled program does, read from its optimised HLO text.

XLA's `cost_analysis()` counts a `while` body once, whatever its trip count, so a
program whose layers are a `lax.scan` reports about 1/L of its matmul FLOPs. This
module walks the HLO's call graph instead: each computation gets a multiplier (how
many times one program run executes it: a while body runs its `known_trip_count`
times, a body of unknown trip count once), and matmuls (`dot`, `convolution`),
collectives and the bytes each instruction reads and writes are counted with it. Pure
text in, numbers out, so tests can feed HLO.

On GPUs XLA puts matmuls inside fusions (Triton GEMM fusions, `kind=kCustom`: the
`dot` sits in the called computation, which the walk reaches) or, when autotuning
picks cuBLAS, into `__cublas$gemm` / `__cublas$lt$matmul` custom calls, counted from
the dot dimensions in their backend config. cuDNN fused attention calls are not
counted (as TPU Pallas kernels are not).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Iterator

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute")
_ASYNC = {f"{c}-start": c for c in COLLECTIVES}

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2,
                "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|[su](?:4|8|16|32|64)|bf16|f16|f32|f64|c64|c128|f8\w*)"
                    r"\[([\d,]*)\](?:\{([\d,]*)(?::T\(([\d,]+)\))?[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) \((.*)\) -> .* \{$")
_INSTR = re.compile(r"^\s*(ROOT )?%([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation|"
                     r"branch_computations)=(\{[^}]*\}|%[\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CUBLAS = re.compile(r'custom_call_target="__cublas\$(?:lt\$matmul|gemm)[^"]*"')
_LHS_CONTRACTING = re.compile(r'"lhs_contracting_dimensions":\[([^\]]*)\]')


@dataclasses.dataclass(frozen=True)
class Array:
  dtype: str
  shape: tuple[int, ...]
  minor_to_major: tuple[int, ...] = ()  # the layout, when the text gives one
  tile: tuple[int, ...] = ()  # its first tile, e.g. (8, 128) on TPU

  @property
  def bytes(self) -> float:
    return math.prod(self.shape) * _DTYPE_BYTES.get(self.dtype, 1)

  @property
  def stored_bytes(self) -> float:
    """Bytes in memory: the most minor dimensions padded to the tile, as the TPU
    stores them (a `f32[40,32]{1,0:T(8,128)}` holds 40 x 128 floats; a scalar with a
    tile, one tile)."""
    if not self.tile:
      return self.bytes
    order = self.minor_to_major or tuple(range(len(self.shape) - 1, -1, -1))
    dims = [self.shape[d] for d in reversed(order)] or [1]
    for i, t in enumerate(reversed(self.tile), start=1):
      if i <= len(dims):
        dims[-i] = -(-dims[-i] // t) * t
    return math.prod(dims) * _DTYPE_BYTES.get(self.dtype, 1)


@dataclasses.dataclass
class Instr:
  name: str
  opcode: str
  out: list[Array]  # the result's arrays (several for a tuple)
  operands: list[str]
  attrs: str
  called: list[tuple[str, str]]  # (role, computation)
  literal: str = ""  # the operand text as written (a constant's value)


@dataclasses.dataclass
class Computation:
  name: str
  entry: bool
  params: dict[str, list[Array]]
  instrs: list[Instr]
  root: str = ""  # the ROOT instruction's name


def arrays(text: str) -> list[Array]:
  """Every array type in `text` (`bf16[4,8]{1,0:T(8,128)}` -> Array('bf16', (4, 8),
  (1, 0), (8, 128)))."""
  ints = lambda g: tuple(int(d) for d in (g or "").split(",") if d)
  return [Array(m.group(1), ints(m.group(2)), ints(m.group(3)), ints(m.group(4)))
          for m in _ARRAY.finditer(text)]


def _split_operands(rest: str) -> tuple[str, str]:
  """`a, b), attr=...` -> ('a, b', 'attr=...'): the operand list up to its closing paren."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ""


@functools.lru_cache(maxsize=8)
def parse(hlo: str) -> list[Computation]:
  """The computations of an HLO module's text, in textual order (callees first).
  Cached: a report asks several questions of one text (do not mutate the result)."""
  comps: list[Computation] = []
  cur = None
  for line in hlo.splitlines():
    h = _HEADER.match(line)
    if h:
      params = {}
      for p in re.split(r",\s*(?=[\w.\-]+: )", h.group(3)):
        name, _, typ = p.partition(": ")
        params[name.strip()] = arrays(typ)
      cur = Computation(h.group(2), bool(h.group(1)), params, [])
      comps.append(cur)
      continue
    m = _INSTR.match(line) if cur is not None else None
    if not m:
      continue
    ops, attrs = _split_operands(m.group(5))
    called = []
    for role, target in _CALLED.findall(attrs):
      called += [(role, t) for t in re.findall(r"%([\w.\-]+)", target)]
    cur.instrs.append(Instr(m.group(2), m.group(4), arrays(m.group(3)),
                            re.findall(r"%([\w.\-]+)", ops), attrs, called, ops))
    if m.group(1):
      cur.root = m.group(2)
  return comps


def trip_count(ins: Instr, comps: dict[str, Computation]) -> int | None:
  """A while loop's trip count: XLA's `known_trip_count`, or a condition that is
  `counter < constant` (how a `lax.scan` counting from 0 compiles); None if unknown."""
  known = _TRIP.search(ins.attrs)
  if known:
    return int(known.group(1))
  cond = comps.get(dict((r, c) for r, c in ins.called).get("condition", ""))
  if cond is None or not cond.instrs:
    return None
  root, consts = cond.instrs[-1], {i.name: i for i in cond.instrs if i.opcode == "constant"}
  if root.opcode != "compare" or "direction=LT" not in root.attrs or len(root.operands) != 2:
    return None
  bound = consts.get(root.operands[1])
  if bound is None:
    return None
  literal = re.match(r"\s*(-?\d+)\s*$", bound.literal)
  return int(literal.group(1)) if literal else None


def multipliers(comps: list[Computation]) -> dict[str, int]:
  """How many times one run of the entry computation runs each computation (a loop
  of unknown trip count counts once)."""
  by_name = {c.name: c for c in comps}
  mult = {c.name: 0 for c in comps}
  for c in comps:
    if c.entry:
      mult[c.name] = 1
  for c in reversed(comps):  # callers are printed after their callees
    for ins in c.instrs:
      n = (trip_count(ins, by_name) or 1) if ins.opcode == "while" else 1
      for role, callee in ins.called:
        if callee in mult:
          mult[callee] += mult[c.name] * (n if role in ("body", "condition") else 1)
  return mult


def _walk(comps: list[Computation]) -> Iterator[tuple[Computation, Instr, int, dict]]:
  mult = multipliers(comps)
  for c in comps:
    shapes = {k: v for k, v in c.params.items()}
    for ins in c.instrs:
      shapes[ins.name] = ins.out
      if mult[c.name]:
        yield c, ins, mult[c.name], shapes


def _dims(attrs: str, key: str) -> list[int]:
  m = re.search(key + r"=\{([\d,]*)\}", attrs)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def _window_taps(in_size: int, out_size: int, size: int, stride: int, lo: int,
                 lhs_dilate: int, rhs_dilate: int) -> int:
  """Kernel taps of one spatial dimension that land on a real input element, summed
  over its outputs: padding and lhs dilation (holes) contribute nothing."""
  o = np.arange(out_size)[:, None]
  k = np.arange(size)[None, :]
  pos = o * stride + k * rhs_dilate - lo
  real = (pos >= 0) & (pos <= (in_size - 1) * lhs_dilate) & (pos % lhs_dilate == 0)
  return int(real.sum())


def _window(attrs: str, n: int) -> dict[str, list[int]]:
  w = re.search(r"window=\{([^}]*)\}", attrs)
  fields = dict(f.split("=", 1) for f in w.group(1).split()) if w else {}
  ints = lambda key, default: ([int(v) for v in fields[key].split("x")] if key in fields
                               else [default] * n)
  pads = ([[int(v) for v in p.split("_")] for p in fields["pad"].split("x")]
          if "pad" in fields else [[0, 0]] * n)
  return {"size": ints("size", 1), "stride": ints("stride", 1), "lo": [p[0] for p in pads],
          "lhs_dilate": ints("lhs_dilate", 1), "rhs_dilate": ints("rhs_dilate", 1)}


def matmul_flops(ins: Instr, shapes: dict[str, list[Array]]) -> float:
  """2 x multiply-adds of one `dot`, `convolution` (the TPU compiler writes most
  matmuls as convolutions: batch dimensions as windows, transposes as padding) or
  cuBLAS GEMM custom call (0 for any other custom call).

  A convolution does 2 x (output batch x output features x input features per
  group) x (kernel taps on real input, summed over each spatial dimension's outputs).
  """
  operand = lambda i: ((shapes.get(ins.operands[i]) or [None])[0]
                       if len(ins.operands) > i else None)
  lhs, rhs = operand(0), operand(1)
  if lhs is None or not ins.out:
    return 0.0
  if ins.opcode == "dot":
    contracted = math.prod(lhs.shape[d] for d in _dims(ins.attrs, "lhs_contracting_dims"))
    return 2.0 * math.prod(ins.out[0].shape) * contracted
  if ins.opcode == "custom-call":  # a cuBLAS GEMM: out[0] is the product (then workspace)
    dims = _LHS_CONTRACTING.search(ins.attrs)
    if not _CUBLAS.search(ins.attrs) or not dims:
      return 0.0
    contracted = math.prod(lhs.shape[int(d.strip('" '))] for d in dims.group(1).split(",")
                           if d.strip())
    return 2.0 * math.prod(ins.out[0].shape) * contracted
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.attrs)
  if rhs is None or not labels:
    return 0.0
  lhs_l, rhs_l, out_l = labels.groups()
  out = ins.out[0].shape
  if not (len(lhs_l) == len(lhs.shape) and len(rhs_l) == len(rhs.shape) == len(out)):
    return 0.0
  spatial = sorted(c for c in lhs_l if c.isdigit())
  w = _window(ins.attrs, len(spatial))
  taps = 1
  for j, d in enumerate(spatial):
    taps *= _window_taps(lhs.shape[lhs_l.index(d)], out[out_l.index(d)], w["size"][j],
                         w["stride"][j], w["lo"][j], w["lhs_dilate"][j], w["rhs_dilate"][j])
  return 2.0 * out[out_l.index("b")] * out[out_l.index("f")] * rhs.shape[rhs_l.index("i")] * taps


def flops(hlo: str) -> float:
  """Matmul FLOPs of one run, per chip, loop trip counts included."""
  return sum(n * matmul_flops(ins, shapes) for _, ins, n, shapes in _walk(parse(hlo))
             if ins.opcode in ("dot", "convolution", "custom-call"))


def collectives(hlo: str) -> dict[str, dict[str, float]]:
  """{kind: {"count", "bytes"}} per run, per chip; each op's bytes are the larger of its
  input and output (a reduce-scatter's input, an all-gather's output)."""
  out = {k: {"count": 0, "bytes": 0.0} for k in COLLECTIVES}
  for _, ins, n, shapes in _walk(parse(hlo)):
    kind = _ASYNC.get(ins.opcode, ins.opcode if ins.opcode in COLLECTIVES else None)
    if kind is None:
      continue
    sizes = [a.bytes for a in ins.out]
    sizes += [a.bytes for op in ins.operands for a in shapes.get(op, [])]
    out[kind]["count"] += n
    out[kind]["bytes"] += n * max(sizes, default=0.0)
  return out


# Instructions that move no data: views, bookkeeping, and control flow (whose bodies
# are counted as computations of their own).
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
         "while", "call", "conditional"}
# libtpu 0.0.52's asynchronous slices (into on-chip memory), each with its `-done`.
_ASYNC_SLICES = ("slice-start", "dynamic-slice-start", "dynamic-update-slice-start")
_ASYNC_SLICES_DONE = tuple(op.replace("-start", "-done") for op in _ASYNC_SLICES)
_CONTROL = ("body", "condition", "true_computation", "false_computation",
            "branch_computations")


def _stored(arrs: list[Array]) -> float:
  return sum(a.stored_bytes for a in arrs)


def _shapes(c: Computation) -> dict[str, list[Array]]:
  return {**c.params, **{i.name: i.out for i in c.instrs}}


def _executed(comps: list[Computation]) -> set[str]:
  """Computations run instruction by instruction (the entry, loop bodies and conditions,
  branches, calls), not fused or applied per element: the ones whose instructions
  touch memory."""
  out = {c.name for c in comps if c.entry}
  for c in reversed(comps):  # callers are printed after their callees
    if c.name in out:
      for ins in c.instrs:
        out.update(callee for role, callee in ins.called
                   if role in _CONTROL or ins.opcode == "call")
  return out


def _param_reads(comp: Computation, name: str, comps: dict[str, Computation]) -> float:
  """Bytes a fusion reads of one parameter (XLA's `FusionParameterReadBytes`): a slice
  reads what it keeps, a dynamic-update-slice does not read the operand it writes
  into, a broadcast or reshape reads it all each time, other users share one read. A
  fusion with a tuple root that only carries a parameter through to its outputs, or
  into a collective, does not read it: that is how the fusion overlapping an
  asynchronous collective carries the collective's buffers (the collective inside it
  marks the transfer in flight)."""
  root = next((i for i in comp.instrs if i.name == comp.root), None)
  carries = root is not None and root.opcode == "tuple"
  full = _stored(_shapes(comp)[name])
  total, shared = 0.0, False
  for u in comp.instrs:
    if name not in u.operands:
      continue
    if u.opcode == "slice" or (u.opcode == "dynamic-slice" and u.operands[0] == name):
      total += _stored(u.out)
    elif u.opcode == "dynamic-update-slice" and u.operands[0] == name:
      continue
    elif u.opcode == "fusion":
      inner = comps[dict(u.called)["calls"]]
      params = _fusion_params(inner)
      total += sum(_param_reads(inner, params[k], comps)
                   for k, op in enumerate(u.operands) if op == name)
    elif u.opcode in ("broadcast", "reshape"):
      total += full
    elif carries and (u is root or u.opcode in COLLECTIVES):
      continue
    elif not shared:
      shared, total = True, total + full
  return total


def _fusion_params(comp: Computation) -> dict[int, str]:
  return {int(i.literal): i.name for i in comp.instrs if i.opcode == "parameter"}


def _fusion_bytes(ins: Instr, comps: dict[str, Computation]) -> float:
  """What a fusion reads from and writes to memory (XLA's `HandleFusion`): its
  parameters' reads, and its outputs, a dynamic-update-slice root writing only its
  update; an output that is a parameter or a collective's result passed through is
  not written by the fusion."""
  comp = comps[dict(ins.called)["calls"]]
  shapes, by_name = _shapes(comp), {i.name: i for i in comp.instrs}
  reads = sum(_param_reads(comp, p, comps) for p in _fusion_params(comp).values())
  root = by_name[comp.root]
  outs = [by_name[o] for o in root.operands] if root.opcode == "tuple" else [root]
  writes = 0.0
  for o in outs:
    if o.opcode == "dynamic-update-slice":
      writes += _stored(shapes[o.operands[1]])
    elif o.opcode != "parameter" and o.opcode not in COLLECTIVES:
      writes += _stored(o.out)
  return reads + writes


def instr_bytes(ins: Instr, shapes: dict[str, list[Array]],
                comps: dict[str, Computation]) -> float:
  """Bytes one top-level instruction reads and writes, counted as XLA's cost analysis
  counts them (`HloCostAnalysis`, TPU tile padding included): operands + outputs, less
  for slices (what they keep), dynamic updates (the update) and fusions (what they
  read and write, not their internals); an asynchronous copy (`copy-start` /
  `copy-done`, e.g. a prefetch into on-chip memory) twice its array at each end; an
  asynchronous slice (`slice-start`, `dynamic-slice-start`, `dynamic-update-slice-start`
  and their `-done`) the slice or update once."""
  operands = lambda idx: sum(_stored(shapes.get(ins.operands[i], [])) for i in idx)
  if ins.opcode in _FREE:
    return 0.0
  if ins.opcode == "fusion":
    return _fusion_bytes(ins, comps)
  if ins.opcode == "copy-start":
    return 2 * operands([0])
  if ins.opcode == "copy-done":
    return 2 * _stored(ins.out)
  if ins.opcode in _ASYNC_SLICES:  # out: (operands, result, context)
    n = len(ins.operands)
    moved = ins.out[1:2] if ins.opcode == "dynamic-update-slice-start" else ins.out[n:-1]
    return _stored(moved)
  if ins.opcode in _ASYNC_SLICES_DONE:
    return 0.0
  rest = range(1, len(ins.operands))
  if ins.opcode in ("slice", "dynamic-slice"):
    return 2 * _stored(ins.out) + operands(rest)
  if ins.opcode == "dynamic-update-slice":
    return 2 * operands([1]) + operands(range(2, len(ins.operands)))
  return _stored(ins.out) + operands(range(len(ins.operands)))


def bytes_accessed(hlo: str, each_loop_once: bool = False) -> float:
  """Bytes read and written per run, per chip, loop trip counts included: the HBM
  roofline's numerator. XLA's `cost_analysis()["bytes accessed"]` counts a loop body
  once, so a scanned layer stack reports one layer's traffic; `each_loop_once` counts
  as it does (to check the per-instruction counts against it)."""
  comps = parse(hlo)
  by_name, executed = {c.name: c for c in comps}, _executed(comps)
  return sum((1 if each_loop_once else n) * instr_bytes(ins, shapes, by_name)
             for c, ins, n, shapes in _walk(comps) if c.name in executed)


def custom_calls(hlo: str) -> list[str]:
  """The custom-call targets a program contains (e.g. a CPU-only FFI kernel)."""
  return sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))


def largest_buffers(hlo: str, k: int = 3) -> list[tuple[str, float]]:
  """The k largest per-chip arrays the entry takes or any instruction makes, as
  (what, bytes); instructions are named by their JAX op_name."""
  found: dict[str, float] = {}
  for c in parse(hlo):
    if c.entry:
      for name, arrs in c.params.items():
        for a in arrs:
          key = f"argument {name} {a.dtype}{list(a.shape)}"
          found[key] = max(found.get(key, 0.0), a.bytes)
  for c in parse(hlo):
    for ins in c.instrs:
      if ins.opcode in ("parameter", "get-tuple-element", "tuple", "bitcast"):
        continue
      for a in ins.out:
        op = _OP_NAME.search(ins.attrs)
        key = f"{ins.opcode} {a.dtype}{list(a.shape)} ({op.group(1) if op else ins.name})"
        found[key] = max(found.get(key, 0.0), a.bytes)
  return sorted(found.items(), key=lambda kv: -kv[1])[:k]
