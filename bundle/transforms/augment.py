"""Geometric augmentation of 2D slices with one interpolation, each component drawn with its own probability."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch

from monai.config import KeysCollection
from monai.transforms import Affine, MapTransform, RandomizableTransform
from monai.utils import ensure_tuple_rep

__all__ = ["RandSliceAffine", "RandSliceAffined"]


class RandSliceAffine(RandomizableTransform):
    """Random rotation, shear, shift and scale of a 2D image, each applied with probability ``prob``, in one resampling.

    The paper applies each augmentation with p=0.5. MONAI's ``RandAffine`` draws all its components with a
    single probability, and chaining one ``RandAffine`` per component interpolates up to four times, blurring
    the image; the sharpness of the scan is one of the qualities the QA network judges, so here the drawn
    components are composed into one affine and the image is resampled once (MONAI's ``Affine``).

    Args:
        prob: probability of each component, drawn independently.
        rotate_range: maximal rotation in radians (uniform in +-range).
        shear_range: maximal shear coefficient per axis (a perspective-like distortion).
        translate_range: maximal shift in pixels per axis.
        scale_range: maximal relative zoom per axis (the factor is 1 + uniform(+-range)).
        mode: interpolation mode ("bilinear" for images, "nearest" for masks).
        padding_mode: "zeros", "border" or "reflection".
    """

    backend = Affine.backend

    def __init__(
        self,
        prob: float = 0.5,
        rotate_range: float = 0.26,
        shear_range: float | Sequence[float] = 0.1,
        translate_range: float | Sequence[float] = 10.0,
        scale_range: float | Sequence[float] = 0.1,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        ranges = [rotate_range, *ensure_tuple_rep(shear_range, 2), *ensure_tuple_rep(translate_range, 2),
                  *ensure_tuple_rep(scale_range, 2)]  # fmt: skip
        if any(float(r) < 0 for r in ranges):
            raise ValueError(f"ranges must be >= 0, got {ranges}")
        RandomizableTransform.__init__(self, prob=1.0)
        self.component_prob = float(prob)
        self.rotate_range = float(rotate_range)
        self.shear_range = tuple(float(r) for r in ensure_tuple_rep(shear_range, 2))
        self.translate_range = tuple(float(r) for r in ensure_tuple_rep(translate_range, 2))
        self.scale_range = tuple(float(r) for r in ensure_tuple_rep(scale_range, 2))
        self.mode = mode
        self.padding_mode = padding_mode
        self.params: dict[str, tuple[float, ...]] = {}

    def randomize(self, data=None) -> None:
        """Draw which components apply and their values."""
        r = self.R
        use = r.random_sample(4) < self.component_prob
        uni = lambda rng: tuple(float(r.uniform(-x, x)) for x in rng)  # noqa: E731
        self.params = {}
        if use[0]:
            self.params["rotate_params"] = uni((self.rotate_range,))
        if use[1]:
            self.params["shear_params"] = uni(self.shear_range)
        if use[2]:
            self.params["translate_params"] = uni(self.translate_range)
        if use[3]:
            self.params["scale_params"] = tuple(1.0 + s for s in uni(self.scale_range))

    def __call__(self, img: torch.Tensor | np.ndarray, randomize: bool = True, mode: str | None = None) -> torch.Tensor:
        """
        Args:
            img: channel-first 2D image ``(C, h, w)``.
            randomize: draw new parameters (False reuses the last draw, e.g. for the mask of the same image).
            mode: interpolation mode for this call.

        Returns:
            the transformed image (the input itself when no component was drawn).
        """
        if randomize:
            self.randomize()
        if not self.params:
            return torch.as_tensor(img) if isinstance(img, np.ndarray) else img
        affine = Affine(**self.params, mode=mode or self.mode, padding_mode=self.padding_mode, image_only=True)
        return affine(img)


class RandSliceAffined(RandomizableTransform, MapTransform):
    """Dictionary wrapper of :class:`RandSliceAffine`: one draw per sample, shared by all keys.

    Args:
        keys: keys to transform (an image and its mask).
        prob, rotate_range, shear_range, translate_range, scale_range, padding_mode: see :class:`RandSliceAffine`.
        mode: interpolation mode per key (e.g. ``["bilinear", "nearest"]``).
        allow_missing_keys: skip keys that are absent.
    """

    backend = RandSliceAffine.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        rotate_range: float = 0.26,
        shear_range: float | Sequence[float] = 0.1,
        translate_range: float | Sequence[float] = 10.0,
        scale_range: float | Sequence[float] = 0.1,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str = "zeros",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.affine = RandSliceAffine(prob, rotate_range, shear_range, translate_range, scale_range, "bilinear",
                                      padding_mode)  # fmt: skip

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandSliceAffined:
        super().set_random_state(seed, state)
        self.affine.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.affine.randomize()
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.affine(d[key], randomize=False, mode=mode)
        return d
