"""The U-Net passes of feature extraction (``features``): noised inputs -> stage maps, a layer
at a time, in passes sized by memory and by time; stage maps -> centre and global features by
separable operators.

How fine the work is cut: a pass pauses after every layer (``UNet.iter_forward_features``) and
holds as many noised images as keep its largest layer near ``UNIT_S`` of work, so that a
progress record, and with it a chance to stop, comes well within a second. The layers' FLOPs are
counted from a tiny pass (``count_layer_flops``); the rates are the slowest layers' FLOP/s on this
project's 2-core CPU at one thread (fp32 for the ``cpu`` preset, bf16 autocast for ``paper``), so
a loaded machine still meets the bound. Accelerators run queued kernels asynchronously and need
no cut.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._progress import run

if TYPE_CHECKING:
    import torch

    from ._feature_spec import FeatureSpec
    from .model import DiffusionModel
    from .unet import UNet

UNIT_S = 0.25
CPU_FLOPS = {False: 35e9, True: 300e9}
ACCEL_FLOPS = 20e12


def effective_bf16(
    model: DiffusionModel, spec: FeatureSpec, device: str | torch.device = "auto"
) -> bool:
    """Whether features are computed under bf16 autocast: allowed by ``spec.bf16`` and paying on
    this device for this network (``device.use_bf16``). Part of the cache key."""
    from .device import resolve_device, use_bf16

    dev = resolve_device(device) if isinstance(device, str) else device
    return bool(spec.bf16 and use_bf16(dev, model.unet.config.model_channels))


def axis_operators(
    n_in: int, n_out: int, served: slice, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of a tile: the rows of the bilinear upsampling ``n_in -> n_out``
    (``F.interpolate``, ``align_corners=False``) at the served pixels, and of the mean of that
    upsampled axis over each served pixel's ``window``: two ``(n_served, n_in)`` matrices.

    Upsampling and box mean are linear and separable, so a stage map ``M (.., n_in, n_in)``
    gives its centre features as ``Rc M Cc^T`` and its global features as ``Rg M Cg^T``: small
    matrix products that never build the full-size upsampled map (most of a tile's work
    otherwise: a 228 x 228 map of every channel, for 145 x 145 served pixels).
    """
    import torch
    import torch.nn.functional as F

    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(0)  # source positions as channels
    up = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T  # (n_out, n_in)
    c = F.pad(up.cumsum(0), (0, 0, 1, 0))
    box = (c[window:] - c[:-window]) / window  # row j: mean of upsampled rows j .. j + window - 1
    start = served.start - window // 2  # a served pixel's window starts window // 2 before it
    glob = box[start : start + served.stop - served.start]
    return up[served].float(), glob.float()


def separable(m: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows M cols^T`` for every map of ``m (nt, Cs, hs, ws)``, as an ``(h, w, nt, Cs)`` view
    (the caller's one copy into the feature array does the transpose).

    Computed channels-last (the U-Net's own layout), rows first: one large matmul per
    timestep, then a batched one; 1.6x faster than along the contiguous layout here.
    """
    import torch

    nt, cs, hs, ws = m.shape
    m = m.permute(0, 2, 3, 1).float()  # (nt, hs, ws, Cs): contiguous for a channels-last map
    t = torch.stack([rows @ m[i].reshape(hs, ws * cs) for i in range(nt)])  # (nt, h, ws * Cs)
    t = t.view(nt, rows.shape[0], ws, cs)
    return torch.matmul(cols, t).permute(1, 2, 0, 3)  # (nt, h, w, Cs) -> (h, w, nt, Cs)


class Runner:
    """Runs the U-Net for one spec on one device: timesteps batched under a memory budget and
    a time budget per layer, bf16 autocast where it pays, channels-last."""

    def __init__(
        self,
        model: DiffusionModel,
        spec: FeatureSpec,
        device: str | torch.device,
        memory_mb: float = 2048,
    ):
        import torch

        from .device import ThreadTuner, resolve_device

        spec.validate(model)
        self.model, self.spec, self.memory_mb = model, spec, memory_mb
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.bf16 = effective_bf16(model, spec, self.device)
        self.unet = model.unet.to(self.device).eval()
        self.window = int(model.patch_size)
        ab = torch.as_tensor(np.asarray(model.schedule.alphas_cumprod), dtype=torch.float64)
        t = torch.as_tensor(spec.timesteps)
        self.sqrt_ab = ab[t].sqrt().float().to(self.device)
        self.sqrt_1mab = (1 - ab[t]).sqrt().float().to(self.device)
        self.t = t.to(self.device)
        self.channels = list(model.unet.stage_channels(spec.stages))
        self.D = sum(self.channels)
        self.multiple = 2 ** (len(model.unet.config.channel_mult) - 1)
        cpu = self.device.type == "cpu"
        self.unit_flops = UNIT_S * (CPU_FLOPS[self.bf16] if cpu else ACCEL_FLOPS)
        self._probes: dict[tuple[int, int], tuple[list[float], list[tuple[int, ...]]]] = {}
        self.tuner = ThreadTuner.for_device(self.device, probe=1, warmup=0)  # steps are long

    def batch(self, n_images: int, h: int, w: int) -> int:
        """Timesteps per forward pass so that activations and one upsampled stage fit the budget.

        Per noised image: the U-Net keeps ~3 skip tensors per resolution level plus a few working
        ones (~16 maps of ``model_channels`` at full size, in bf16 or fp32), and the float32
        upsampled stage with its box-mean temporaries (~3 maps of the widest stage).
        """
        mc = self.model.unet.config.model_channels
        per_image = h * w * 4 * (16 * mc + 3 * max(self.channels))
        fit = int(self.memory_mb * 2**20 // max(per_image * n_images, 1))
        return max(1, min(len(self.spec.timesteps), fit))

    def probe(self, h: int, w: int) -> tuple[list[float], list[tuple[int, ...]]]:
        """FLOPs of each layer of one image's pass at ``h x w``, in the order the pass pauses,
        and the (Cs, hs, ws) of its stage maps."""
        if (h, w) not in self._probes:
            self._probes[h, w] = count_layer_flops(self.unet, h, w, self.spec.stages)
        return self._probes[h, w]

    def images_per_pass(self, h: int, w: int) -> int:
        """How many noised ``h x w`` images keep a pass's largest layer within the time unit."""
        return max(1, int(self.unit_flops // max(max(self.probe(h, w)[0]), 1)))

    def iter_stage_maps(
        self, x0: torch.Tensor, noise: torch.Tensor, ti: slice
    ) -> Generator[float, None, list[torch.Tensor]]:
        """x0, noise (n, C, h, w); timesteps ``ti`` -> raw stage outputs, (n * nt, Cs, hs, ws)
        each. Yields the FLOPs of each layer as it completes."""
        import torch

        from .device import autocast

        n = x0.shape[0]
        nt = ti.stop - ti.start
        self.tuner.tick(n * nt * x0.shape[-2] * x0.shape[-1])
        a = self.sqrt_ab[ti].view(1, nt, 1, 1, 1)
        b = self.sqrt_1mab[ti].view(1, nt, 1, 1, 1)
        xt = (a * x0[:, None] + b * noise[:, None]).flatten(0, 1)
        t = self.t[ti].repeat(n)
        xt = xt.contiguous(memory_format=torch.channels_last)
        gen = self.unet.iter_forward_features(xt, t, self.spec.stages)
        for layer_flops in self.probe(*xt.shape[-2:])[0]:
            # the modes are entered around each layer, not held across a pause: the caller's
            # own code between records must not run under them
            with torch.inference_mode(), autocast(self.device, enabled=self.bf16):
                next(gen)
            yield layer_flops * n * nt
        return run(gen)  # the stage maps, gathered after the last layer


def count_layer_flops(
    unet: UNet, h: int, w: int, stages: Sequence[int]
) -> tuple[list[float], list[tuple[int, ...]]]:
    """``Runner.probe``: every convolution and attention of a pass over a small zero input,
    counted from their outputs' shapes (2 FLOPs a multiply-add, as torch's FlopCounterMode,
    which takes seconds to start) and scaled to ``h x w``: a convolution's work grows with the
    area, an attention's with its square. The time embedding's small linear layers are left out.
    """
    import torch
    from torch import nn

    from .unet import AttentionBlock

    side = 2 * unet.config.size_multiple
    area = h * w / side**2
    counted = [0.0]

    def count(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        if isinstance(module, AttentionBlock):  # q k^T and the weighted sum of v
            counted[0] += 4.0 * out.shape[1] * (out.shape[2] * out.shape[3] * area) ** 2
        else:  # a multiply-add per output value and weight of its input slice
            counted[0] += 2.0 * out.numel() * area * module.weight.shape[1:].numel()

    kinds = (nn.Conv2d, AttentionBlock)
    hooks = [m.register_forward_hook(count) for m in unet.modules() if isinstance(m, kinds)]
    device = next(unet.parameters()).device
    x = torch.zeros((1, unet.config.in_channels, side, side), device=device)
    flops: list[float] = []
    try:
        with torch.inference_mode():
            gen = unet.iter_forward_features(
                x, torch.zeros(1, dtype=torch.long, device=device), stages
            )
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    maps = stop.value
                    break
                flops.append(counted[0] - sum(flops))
    finally:
        for hook in hooks:
            hook.remove()
    return flops, [(m.shape[1], m.shape[2] * h // side, m.shape[3] * w // side) for m in maps]


def sum_draws(m: torch.Tensor, draws: int, into: torch.Tensor | None = None) -> torch.Tensor:
    """Stage maps of ``draws`` noise draws, draw-major ``(draws * k, Cs, hs, ws)`` -> their sum
    ``(k, Cs, hs, ws)`` in float32 and the maps' memory format (channels-last), added to
    ``into`` when given (the sum of earlier draws)."""
    import torch

    parts = m.view(draws, -1, *m.shape[1:])
    if into is None:
        into, parts = parts[0].to(torch.float32, copy=True), parts[1:]
    for part in parts:
        into.add_(part)
    return into


def mean_over_draws(m: torch.Tensor, draws: int) -> torch.Tensor:
    """Stage maps of ``draws`` noise draws, draw-major -> their mean (float32 when averaged)."""
    return m if draws == 1 else sum_draws(m, draws).div_(draws)


def post_flops(stage_shapes: Sequence[tuple[int, ...]], h: int, w: int) -> float:
    """FLOPs of turning one timestep's stage maps into the centre and global features of
    ``h x w`` served pixels (two separable products per stage, see ``separable``)."""
    return float(sum(4 * cs * ws * h * (hs + w) for cs, hs, ws in stage_shapes))


def upsample(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    import torch.nn.functional as F

    return F.interpolate(m.float(), size=(h, w), mode="bilinear", align_corners=False)
