"""Several independently augmented views of one sample, for contrastive pretraining."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["MultiView", "MultiViewd"]


class MultiView(Transform):
    """Apply a random transform ``views`` times to the same image and stack the results: ``(V, C, ...)``.

    Args:
        transform: a (random) array transform.
        views: number of views.
    """

    def __init__(self, transform: Callable, views: int = 2) -> None:
        if int(views) < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.transform, self.views = transform, int(views)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.as_tensor(self.transform(img)) for _ in range(self.views)])


class MultiViewd(MapTransform):
    """Dictionary form of :class:`MultiView`: ``transform`` (a dictionary transform, e.g. the bundle's geometric
    augmentation) is applied ``views`` times to copies of the sample, and ``keys`` are stacked to ``(V, C, ...)``.

    A dictionary transform is taken (rather than wrapping :class:`MultiView` per key) so that an image and its
    mask in one view share the same random draw, as in training.

    Args:
        keys: keys to stack (other keys are kept from the input).
        transform: a (random) dictionary transform.
        views: number of views.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(
        self, keys: KeysCollection, transform: Callable, views: int = 2, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(views) < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.transform, self.views = transform, int(views)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        outs = [self.transform(dict(data)) for _ in range(self.views)]
        for key in self.key_iterator(d):
            d[key] = torch.stack([torch.as_tensor(o[key]) for o in outs])
        return d
