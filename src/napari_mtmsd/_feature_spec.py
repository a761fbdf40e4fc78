"""What a diffusion feature is: the timesteps, decoder stages, mode, tiling and noise of
``FeatureSpec`` (re-exported by ``features``, where it is documented with the features)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from .errors import InputError

if TYPE_CHECKING:
    from .model import DiffusionModel

DEFAULT_TIMESTEPS: tuple[int, ...] = tuple(range(50, 1000, 50))
DEFAULT_STAGES: tuple[int, ...] = (0, 1, 2, 3, 5)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What a feature is and how it is computed. Everything here enters the cache key.

    ``tile`` is the dense U-Net input size (pixels, rounded up to the U-Net's stride); ``margin``
    the context kept beyond each pixel's window inside a tile; ``bf16`` allows bf16 autocast
    where it pays (see ``device.use_bf16``; features then differ from fp32 in the third digit).
    ``noise_draws`` noise fields are averaged, at that many U-Net passes: the paper draws one;
    three gave 0.1-0.25 points more OA on Indian Pines (docs/features.md, "Noise draws").
    """

    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    stages: tuple[int, ...] = DEFAULT_STAGES
    mode: Literal["dense", "patch"] = "dense"
    tile: int = 256
    margin: int = 16
    noise_seed: int = 0
    bf16: bool = True
    noise_draws: int = 3

    def __post_init__(self) -> None:
        if self.mode not in ("dense", "patch"):
            raise InputError(f"feature mode must be 'dense' or 'patch', not {self.mode!r}")
        if not self.timesteps or not self.stages:
            raise InputError("at least one timestep and one stage are needed")
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        if int(self.noise_draws) < 1:
            raise InputError(f"noise_draws must be at least 1, got {self.noise_draws}")
        object.__setattr__(self, "noise_draws", int(self.noise_draws))
        if self.tile < 16 or self.margin < 0:
            raise InputError(
                f"tile must be >= 16 and margin >= 0 (got tile={self.tile}, margin={self.margin})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        d = {"noise_draws": 1, **d}  # written before noise_draws existed: one draw
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def validate(self, model: DiffusionModel) -> None:
        T = model.schedule.T
        bad_t = [t for t in self.timesteps if not 0 <= t < T]
        if bad_t:
            raise InputError(f"timesteps {bad_t} are outside the schedule's range 0..{T - 1}")
        n_blocks = len(model.unet.output_blocks)
        bad_s = [s for s in self.stages if not 0 <= s < n_blocks]
        if bad_s:
            raise InputError(
                f"stages {bad_s} do not exist: this U-Net has decoder blocks 0..{n_blocks - 1}"
            )
