"""Per-image appearance correction: one affine colour transform per training image (train.appearance).

A photo's exposure and white balance are, to first order, an affine map of its colours. Each training
image ``i`` gets a transform ``T_i = [M_i | b_i]`` (a 3 x 3 matrix and an offset, starting at identity and
zero); the loss compares ``render @ M_i^T + b_i`` with the photo, so the Gaussians learn the scene's colours
and the transforms learn each photo's departure from them. Only training sees the transforms: held-out
views, the saved splats, evaluation and meshing use the render as it is.

An L2 penalty pulls every transform towards identity (``reg``): without it, the scene's colours and the
transforms could trade any common change between them (the scene twice as bright, every photo at half
gain), and the saved splats would be off by that change.
"""

from __future__ import annotations

import copy

import torch


def identity_transforms(count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``count`` transforms [M | b] of shape (count, 3, 4) that leave colours unchanged."""
    transforms = torch.zeros((count, 3, 4), device=device)
    transforms[:, :, :3] = torch.eye(3, device=device)
    return transforms


def apply_transform(image: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """``image`` (..., 3) mapped by ``transform`` (3, 4): colour @ M^T + b, per pixel."""
    return image @ transform[:, :3].T + transform[:, 3]


def distance_from_identity(transform: torch.Tensor) -> torch.Tensor:
    """Squared distance of ``transform`` (3, 4) from identity: the sum of (M - I)^2 and b^2."""
    return ((transform - identity_transforms(1, transform.device)[0]) ** 2).sum()


class AppearanceCorrection:
    """The transforms of one patch's training images, and their Adam optimiser.

    Each transform is its own parameter, so a step that trains on image ``i`` gives only ``T_i`` a
    gradient: Adam skips the others (their gradient is None) and their moments do not drift while
    their image is not being trained on.
    """

    def __init__(self, transforms: torch.Tensor, lr: float, reg: float) -> None:
        self.transforms = [torch.nn.Parameter(transform.clone()) for transform in transforms]
        self.reg = reg
        self.optimiser = torch.optim.Adam([{"params": self.transforms, "lr": lr, "name": "appearance"}], eps=1e-15)

    @staticmethod
    def identity(count: int, lr: float, reg: float, device: torch.device) -> AppearanceCorrection:
        return AppearanceCorrection(identity_transforms(count, device), lr, reg)

    def corrected(self, image: torch.Tensor, index: int) -> torch.Tensor:
        """``image`` (..., 3) as training image ``index``'s photo would show it."""
        return apply_transform(image, self.transforms[index])

    def penalty(self, index: int) -> torch.Tensor:
        """The loss term keeping transform ``index`` near identity (only the transform being trained)."""
        return self.reg * distance_from_identity(self.transforms[index])

    def step(self) -> None:
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)

    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The transforms by name, for the health check of their gradients."""
        return {f"appearance[{index}]": transform for index, transform in enumerate(self.transforms)}

    def stacked(self) -> torch.Tensor:
        """Every transform, (count, 3, 4), detached."""
        return torch.stack([transform.detach() for transform in self.transforms])

    def largest_changes(self) -> tuple[float, float]:
        """What the transforms learnt: the largest |M - I| entry and the largest |b| entry over all images."""
        transforms = self.stacked().cpu()
        change = transforms - identity_transforms(len(transforms))
        return float(change[:, :, :3].abs().max()), float(change[:, :, 3].abs().max())

    def snapshot(self) -> dict:
        """A detached CPU copy (tensors, numbers and lists only: loadable with torch.load(weights_only=True))."""
        state = copy.deepcopy(self.optimiser.state_dict())
        state["state"] = {key: {name: value.detach().cpu() if torch.is_tensor(value) else value for name, value in item.items()}
                          for key, item in state["state"].items()}
        return {"transforms": self.stacked().cpu().clone(), "optimiser": state}

    @staticmethod
    def restore(snapshot: dict, lr: float, reg: float, device: torch.device) -> AppearanceCorrection:
        """The transforms and Adam moments of ``snapshot``, at learning rate ``lr`` (a recovery rung may have changed it)."""
        correction = AppearanceCorrection(snapshot["transforms"].to(device), lr, reg)
        correction.optimiser.load_state_dict(copy.deepcopy(snapshot["optimiser"]))
        for group in correction.optimiser.param_groups:
            group["lr"] = lr
        return correction
