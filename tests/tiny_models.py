"""Small networks shared by the tests (imported as ``from tiny_models import ...``)."""

import torch

from corrseg3d.model import ModelOutput, ResidualUNet3D


class LocalConvModel(ResidualUNet3D):
    """An embedding network whose output depends on a 3x3x3 neighbourhood only (context radius 1),
    so blockwise prediction with any halo >= 1 must equal a whole-volume pass exactly."""

    def __init__(self) -> None:
        super().__init__(filters=(1, 1, 1, 1, 1), embedding_dim=8, pyramid_heads=False)
        self.local = torch.nn.Conv3d(1, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.local(x), ())
