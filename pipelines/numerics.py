"""One sample's numbers must not depend on what else is in its batch: a linear layer with few rows, made row-exact.

A matrix product's rows are computed by different CPU kernels depending on how many rows there are: measured with
torch 2.13's MKL on this project's CPUs, `F.linear` gives each row the same bits for 4, 8 and any 12 or more rows,
but other bits for 1-3, 5-7 and 9-11 rows. The layers that see few rows are the ones that take one vector per
sample: the UNet's timestep and added-condition embeddings and every resnet's time projection (rows = the batch
under guidance), CLIP's projections (rows = images), the FaceID projection. So a text-only render (2 rows: uncond
and cond) and the strength-0 cell of a 5-strength sweep (10 rows) drew pixels one level apart, and a reference
embedding encoded beside another image differed in its last bits from one encoded alone (which a cache then kept).

`row_exact_linear()` routes `torch.nn.functional.linear` (which every `nn.Linear` calls) through one function that
pads a CPU input of fewer than `MIN_ROWS` rows with zero rows, so every row goes through the many-rows kernel, and
drops the padding from the result. It costs a Python call per linear layer and, for the few small ones, a product
of `MIN_ROWS` rows instead of 2-10: `python -m bench.numerics` found no difference beyond this machine's noise (one
image 1.06x, a 5-cell sweep 0.98x of stock, tiny family). GPUs are left alone: their kernels are chosen
differently, and a cell there equals its single render within 1/255, not bit for bit. (The VAE's convolutions
differ between one image and several too: the engine decodes one image at a time.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_ROWS = 16  # rows below which the kernel differs (measured: up to 11) with a margin for other CPUs
_stock_linear = F.linear


def _linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # One vector per sample is (batch, channels) or (batch, 1, channels); sequences have enough rows as they are.
    shape = input.shape
    rows = shape[0] if len(shape) == 2 else shape[0] * shape[1] if len(shape) == 3 else MIN_ROWS
    if 0 < rows < MIN_ROWS and input.device.type == "cpu":
        flat = input.reshape(rows, shape[-1])
        padded = torch.cat((flat, flat.new_zeros(MIN_ROWS - rows, shape[-1])))
        return _stock_linear(padded, weight, bias)[:rows].reshape(*shape[:-1], weight.shape[0])
    return _stock_linear(input, weight, bias)


def row_exact_linear() -> None:
    """Install the row-exact `F.linear` (once per process; harmless when called again)."""
    if F.linear is not _linear:
        F.linear = _linear
