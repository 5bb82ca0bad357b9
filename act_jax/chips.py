"""Published per-chip figures, and the roofline estimate of a step built from them.

One table, one source per row. `ici_bytes_per_s` is the chip's total (bidirectional)
interchip bandwidth; a collective's bytes are divided by it, which is optimistic for
collectives that use only some of a chip's links.
"""
from __future__ import annotations

import dataclasses

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  bf16_flops: float  # peak dense bf16 FLOP/s
  hbm_bytes_per_s: float
  ici_bytes_per_s: float
  source: str


# Keyed by jax's `device_kind`.
CHIPS: dict[str, Chip] = {
    "TPU v5 lite": Chip("v5e", 16 * GiB, 197e12, 819e9, 1600e9 / 8,
                        "https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GB "
                        "HBM2 at 819 GBps, ICI 1600 Gbps)"),
    "TPU v5": Chip("v5p", 95 * GiB, 459e12, 2765e9, 4800e9 / 8,
                   "https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GB HBM2e at "
                   "2765 GBps, ICI 4800 Gbps)"),
    "TPU v6 lite": Chip("v6e", 32 * GiB, 918e12, 1640e9, 3584e9 / 8,
                        "https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB HBM at "
                        "1640 GBps, ICI 3584 Gbps)"),
    "TPU v4": Chip("v4", 32 * GiB, 275e12, 1200e9, 2400e9 / 8,
                   "https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB HBM2 at "
                   "1200 GBps, ICI 2400 Gbps)"),
    "NVIDIA H100 80GB HBM3": Chip("h100", 80 * GiB, 989e12, 3350e9, 900e9,
                                  "NVIDIA H100 SXM datasheet (989 TFLOP/s dense bf16, 80 GB "
                                  "HBM3 at 3.35 TB/s, NVLink 900 GB/s)"),
}


def chip(device_kind: str) -> Chip:
  if device_kind not in CHIPS:
    raise ValueError(f"no published figures for device kind {device_kind!r}; known: "
                     f"{sorted(CHIPS)} (add a row to act_jax.chips.CHIPS)")
  return CHIPS[device_kind]


def roofline(c: Chip, flops: float, bytes_accessed: float, collective_bytes: float
             ) -> dict[str, float]:
  """Per-chip seconds bound by compute, HBM and ICI; the step takes the largest."""
  t = {"compute_s": flops / c.bf16_flops, "hbm_s": bytes_accessed / c.hbm_bytes_per_s,
       "ici_s": collective_bytes / c.ici_bytes_per_s}
  t["step_s"] = max(t.values())
  t["bound"] = max(("compute_s", "hbm_s", "ici_s"), key=t.get).removesuffix("_s")
  return t
