"""A compact re-implementation of the improved/guided-diffusion U-Net (Nichol & Dhariwal).

The block layout (``input_blocks``, ``middle_block``, ``output_blocks``) follows the reference
so that decoder block ``i`` means the same thing as in the MTMSD paper (which reads
``output_blocks`` 0, 1, 2, 3, 5). The network is fully convolutional apart from self-attention,
which is global over the input, so it runs on any input whose sides are divisible by
``2 ** (len(channel_mult) - 1)``; dense feature extraction relies on that.

Presets (``PRESETS``, from the table in ``config``):

* ``paper``: the paper's network, 128 channels, mult (1, 2, 2), 2 res blocks, 4-head attention
  in the middle, learned variance, 48x48 patches, C = 25: 26.5 M parameters.
* ``cpu``: sized so that pretraining on Indian Pines fits in 5 minutes on 2 CPU cores. It keeps
  mult (1, 2, 2) and 2 res blocks, so decoder indices 0..8 keep their meaning and resolutions
  (blocks 0-2 at 1/4, 3-5 at 1/2, 6-8 at full size), but uses 32 base channels (GroupNorm(32)
  then normalises per channel) and 32x32 patches: about 16x less arithmetic per pixel than the
  paper's network, so a few thousand steps fit in the budget. See docs/pretraining.md for the
  measured throughput that fixed these numbers.
* ``tiny``: for tests; seconds on a CPU. Same decoder layout as the paper (blocks 0..8).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import PRESETS as _PRESET_TABLE
from .errors import InputError


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net plus the patch size it is trained on."""

    in_channels: int = 25
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = ()  # downsample factors with attention; middle always
    num_heads: int = 4
    learn_sigma: bool = True
    patch_size: int = 48
    norm_groups: int = 32

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def size_multiple(self) -> int:
        """Input sides must be divisible by this."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        d = dict(d)
        for key in ("channel_mult", "attention_resolutions"):
            if key in d:
                d[key] = tuple(d[key])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown U-Net settings {sorted(unknown)}")
        return cls(**d)


#: The architectures of ``config.PRESETS`` (one table for architecture and training defaults).
PRESETS: dict[str, UNetConfig] = {
    name: UNetConfig(**preset["unet"]) for name, preset in _PRESET_TABLE.items()
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps, as in guided diffusion: [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer (residual branches start as identity, as in the reference)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with scale-shift conditioning on the time embedding (no dropout)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_norm = nn.GroupNorm(groups, out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(), _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions (scaled_dot_product_attention: no L x L
    matrix is kept for the backward pass, so large tiles fit in memory)."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (N, heads, L, d)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepBlock(nn.ModuleList):
    """A sequence of layers; those that take the time embedding get it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x

    def iter_forward(
        self, x: torch.Tensor, emb: torch.Tensor
    ) -> Generator[None, None, torch.Tensor]:
        """``forward``, pausing after each layer."""
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
            yield
        return x


class UNet(nn.Module):
    """Noise-prediction U-Net; ``output_blocks[i]`` are the decoder stages read as features."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        mc, groups = cfg.model_channels, cfg.norm_groups
        emb_ch = 4 * mc
        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
        )

        self.input_blocks = nn.ModuleList(
            [TimestepBlock([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])]
        )
        skip_chans = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, mult * mc, groups)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads, groups))
                self.input_blocks.append(TimestepBlock(layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepBlock([Downsample(ch)]))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepBlock(
            [
                ResBlock(ch, emb_ch, ch, groups),
                AttentionBlock(ch, cfg.num_heads, groups),
                ResBlock(ch, emb_ch, ch, groups),
            ]
        )

        self.output_blocks = nn.ModuleList()
        self._stage_channels: list[int] = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_ch, mc * mult, groups)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads, groups))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepBlock(layers))
                self._stage_channels.append(ch)

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch),
            nn.SiLU(),
            _zero(nn.Conv2d(mc, cfg.out_channels, 3, padding=1)),
        )

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def stage_channels(self, stages: Sequence[int]) -> list[int]:
        """Channels of ``output_blocks[i]`` for each requested stage."""
        self._check_stages(stages)
        return [self._stage_channels[i] for i in stages]

    def _check_stages(self, stages: Sequence[int]) -> None:
        n = len(self.output_blocks)
        bad = [s for s in stages if not 0 <= int(s) < n]
        if bad or not len(stages):
            raise InputError(
                f"stages must be a non-empty list of decoder blocks 0..{n - 1}, got {list(stages)}"
            )

    def _check_input(self, x: torch.Tensor) -> None:
        m = self.config.size_multiple
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"U-Net input must be (N, {self.config.in_channels}, h, w), got {tuple(x.shape)}"
            )
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"U-Net input sides must be divisible by {m}, got {tuple(x.shape[-2:])}"
            )

    def _encode(self, x: torch.Tensor, t: torch.Tensor):
        self._check_input(x)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        return self.middle_block(h, emb), emb, skips

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict the noise (and the variance interpolation when ``learn_sigma``)."""
        h, emb, skips = self._encode(x, t)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def forward_features(
        self, x: torch.Tensor, t: torch.Tensor, stages: Sequence[int]
    ) -> list[torch.Tensor]:
        """Outputs of ``output_blocks[i]`` for ``i`` in ``stages`` (in that order); the decoder
        stops after the last block asked for."""
        self._check_stages(stages)
        wanted = {int(s) for s in stages}
        h, emb, skips = self._encode(x, t)
        found = {}
        for i, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i in wanted:
                found[i] = h
                if len(found) == len(wanted):
                    break
        return [found[int(s)] for s in stages]

    def iter_forward_features(
        self, x: torch.Tensor, t: torch.Tensor, stages: Sequence[int]
    ) -> Generator[None, None, list[torch.Tensor]]:
        """``forward_features`` one layer at a time: it pauses after each layer of each block, so
        that feature extraction can report progress and stop within a pass (a ``paper`` pass
        over a 228 x 228 tile takes seconds on a CPU). The same operations in the same order, but
        module hooks do not fire."""
        self._check_stages(stages)
        self._check_input(x)
        wanted = {int(s) for s in stages}
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        skips = []
        h = x
        for block in self.input_blocks:
            h = yield from block.iter_forward(h, emb)
            skips.append(h)
        h = yield from self.middle_block.iter_forward(h, emb)
        found = {}
        for i, block in enumerate(self.output_blocks):
            h = yield from block.iter_forward(torch.cat([h, skips.pop()], dim=1), emb)
            if i in wanted:
                found[i] = h
                if len(found) == len(wanted):
                    break
        return [found[int(s)] for s in stages]
