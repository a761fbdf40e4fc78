"""napari-mtmsd: hyperspectral classification with multi-timestep multi-stage diffusion features."""

__version__ = "0.1.0"
