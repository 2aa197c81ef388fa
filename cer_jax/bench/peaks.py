"""Peak dense FLOP/s per chip, for model-FLOPs utilisation (MFU).

MFU = (FLOPs the step does, as XLA counts them) x (steps/s) / (the chip's peak FLOP/s). Peaks
are the vendors' dense (no structured sparsity) figures for one chip:

* TPU: Google Cloud's system-architecture pages, "Peak compute per chip (bf16)":
  v4 275 TFLOP/s (https://cloud.google.com/tpu/docs/v4), v5e 197
  (https://cloud.google.com/tpu/docs/v5e), v5p 459 (https://cloud.google.com/tpu/docs/v5p),
  v6e (Trillium) 918 (https://cloud.google.com/tpu/docs/v6e). TPUs have no separate float32
  matrix peak: at JAX's default matmul precision a float32 dot runs on the MXU from bfloat16
  passes, so float32 MFU is taken against the same bf16 peak (an upper bound on what float32
  can reach; HIGHEST precision costs several passes).
* NVIDIA GPUs: the data sheets' tensor-core figures "without sparsity" (the sheets print the
  sparse figure, twice the dense one, with an asterisk). BF16 / TF32:
  A100 (SXM and PCIe) 312 / 156 TFLOP/s (NVIDIA A100 Tensor Core GPU data sheet,
  https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf);
  H100 SXM 989 / 495, H100 PCIe 756 / 378 (NVIDIA H100 Tensor Core GPU data sheet,
  https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet);
  H200 SXM 989 / 495 (NVIDIA H200 Tensor Core GPU data sheet,
  https://www.nvidia.com/en-us/data-center/h200/); the GH200's GPU has the H200 SXM's figures.
  The NVL cards (H100 NVL, H200 NVL: lower clocks, lower peaks) and MIG slices of any card
  (a fraction of its SMs) are not listed: no MFU is printed for them rather than one against
  the whole SXM chip's peak.
  float32 MFU on these GPUs is taken against the TF32 peak because XLA:GPU runs float32 dots
  and convolutions on TF32 tensor cores at JAX's default precision.

CPUs have no entry: their peak depends on the core count, clock and vector units, and no MFU
is printed for them.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Peak:
    name: str
    bfloat16: float  # FLOP/s
    float32: float  # FLOP/s at JAX's default matmul precision (TPU: bf16 passes; GPU: TF32)
    source: str


T = 1e12
TPU_DOCS = "https://cloud.google.com/tpu/docs/"
A100_SHEET = "NVIDIA A100 data sheet (dense)"
H100_SHEET = "NVIDIA H100 data sheet (dense)"
H200_SHEET = "NVIDIA H200 data sheet (dense)"

# (substring of jax.Device.device_kind, lower case) -> peak. First match wins, so more specific
# names come first ("tpu v5 lite" before "tpu v5", "h100 pcie" before "h100").
PEAKS: tuple[tuple[str, Peak | None], ...] = (
    # A MIG slice ("NVIDIA H100 80GB HBM3 MIG 1g.10gb") has a fraction of the chip's SMs: no
    # MFU rather than one against the whole chip's peak (up to 7x too low).
    (" mig", None),
    ("tpu v4", Peak("TPU v4", 275 * T, 275 * T, TPU_DOCS + "v4")),
    ("tpu v5 lite", Peak("TPU v5e", 197 * T, 197 * T, TPU_DOCS + "v5e")),
    ("tpu v5e", Peak("TPU v5e", 197 * T, 197 * T, TPU_DOCS + "v5e")),
    ("tpu v5p", Peak("TPU v5p", 459 * T, 459 * T, TPU_DOCS + "v5p")),
    ("tpu v5", Peak("TPU v5p", 459 * T, 459 * T, TPU_DOCS + "v5p")),
    ("tpu v6 lite", Peak("TPU v6e", 918 * T, 918 * T, TPU_DOCS + "v6e")),
    ("tpu v6e", Peak("TPU v6e", 918 * T, 918 * T, TPU_DOCS + "v6e")),
    ("a100", Peak("A100", 312 * T, 156 * T, A100_SHEET)),
    ("nvl", None),  # H100 NVL / H200 NVL: not listed (above)
    ("h100 pcie", Peak("H100 PCIe", 756 * T, 378 * T, H100_SHEET)),
    ("h100", Peak("H100 SXM", 989 * T, 495 * T, H100_SHEET)),
    ("gh200", Peak("GH200", 989 * T, 495 * T, H200_SHEET)),
    ("h200", Peak("H200 SXM", 989 * T, 495 * T, H200_SHEET)),
)


def lookup(device_kind: str) -> Peak | None:
    """The peak of a device by its `device_kind` ("TPU v5 lite", "NVIDIA H100 80GB HBM3"...)."""
    kind = device_kind.lower()
    for key, peak in PEAKS:
        # A key followed by a digit is another product: "a100" in "RTX A1000" (a laptop GPU).
        if re.search(re.escape(key) + r"(?!\d)", kind):
            return peak
    return None


def peak_flops(device_kind: str, precision: str) -> float | None:
    peak = lookup(device_kind)
    if peak is None:
        return None
    return peak.bfloat16 if precision == "bfloat16" else peak.float32
