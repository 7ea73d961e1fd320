"""Augmentation of 2D slices: geometry with one interpolation (each component drawn with its own probability), and a
label-guided contrast change (a dark blood pool with a bright wall)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Affine, MapTransform, RandomizableTransform
from monai.utils import ensure_tuple_rep

__all__ = ["BatchRandSliceAffine", "RandLabelContrastd", "RandSliceAffine", "RandSliceAffined"]


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
        ranges = [
            rotate_range,
            *ensure_tuple_rep(shear_range, 2),
            *ensure_tuple_rep(translate_range, 2),
            *ensure_tuple_rep(scale_range, 2),
        ]
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
        self.affine = RandSliceAffine(
            prob, rotate_range, shear_range, translate_range, scale_range, "bilinear", padding_mode
        )

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


class RandLabelContrastd(RandomizableTransform, MapTransform):
    """With probability ``prob``, scale the image inside the label by a factor drawn from ``pool_factor`` and in a
    ring of ``wall_px`` pixels around it by one drawn from ``wall_factor`` (clipped to the image's maximum).

    An LGE scan with an unusually dark blood pool and a bright wall (another inversion time, late imaging) is what
    the issue's unseen patient showed and what la2018 lacks; MONAI's intensity transforms change the whole image
    alike and cannot make the pool darker than its wall. Every channel (a 2.5D slice and its neighbours) gets the
    centre slice's mask. Nothing changes on a slice without label.

    Args:
        keys: the image key(s).
        label_key: the mask deciding pool and wall.
        pool_factor: range of the factor inside the label (e.g. ``(0.3, 1.0)``: down to 30 %).
        wall_factor: range of the factor in the ring (e.g. ``(1.0, 1.8)``).
        wall_px: the ring's width in pixels (a square neighbourhood).
        prob: probability of changing a sample.
        allow_missing_keys: skip keys that are absent.

    Raises:
        ValueError: for factor ranges that are not ``0 <= low <= high`` or a negative ``wall_px``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        pool_factor: Sequence[float] = (0.3, 1.0),
        wall_factor: Sequence[float] = (1.0, 1.8),
        wall_px: int = 3,
        prob: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=prob)
        for name, r in (("pool_factor", pool_factor), ("wall_factor", wall_factor)):
            if len(r) != 2 or not 0 <= float(r[0]) <= float(r[1]):
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {r}")
        if int(wall_px) < 0:
            raise ValueError(f"wall_px must be >= 0, got {wall_px}")
        self.label_key = label_key
        self.pool_factor = (float(pool_factor[0]), float(pool_factor[1]))
        self.wall_factor = (float(wall_factor[0]), float(wall_factor[1]))
        self.wall_px = int(wall_px)
        self._pool = self._wall = 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._pool = float(self.R.uniform(*self.pool_factor))
        self._wall = float(self.R.uniform(*self.wall_factor))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        label = d.get(self.label_key)
        if not self._do_transform or label is None:
            return d
        inside = torch.as_tensor(label)[:1] > 0
        if not bool(inside.any()):
            return d
        k = 2 * self.wall_px + 1
        grown = torch.nn.functional.max_pool2d(inside[None].float(), k, stride=1, padding=self.wall_px)[0] > 0
        ring = grown & ~inside
        for key in self.key_iterator(d):
            img = d[key]
            top = img.max()
            pool = img * self._pool
            wall = torch.minimum(img * self._wall, top)
            d[key] = torch.where(inside, pool, torch.where(ring, wall, img))
        return d


class BatchRandSliceAffine:
    """:class:`RandSliceAffine` for a whole batch on its device (GPU): a flip and rotation, shear, shift and scale,
    each drawn per slice with probability ``prob``, applied to image and mask in one ``grid_sample``.

    Per-sample augmentation in loader workers costs CPU time that a fast GPU outruns; here one batched grid
    sample does the work on the device. Parameters have the meaning of :class:`RandSliceAffine` (rotation in
    radians, shift in pixels, relative scale); the drawn affine maps output to input coordinates.

    Args:
        prob: probability of each component (and of the flip), drawn independently per slice.
        rotate_range, shear_range, translate_range, scale_range: as :class:`RandSliceAffine`.
        flip: also flip along a random in-plane axis with probability ``prob``.
        seed: seed of the generator (on the batch's device).
    """

    def __init__(
        self,
        prob: float = 0.5,
        rotate_range: float = 0.26,
        shear_range: float = 0.1,
        translate_range: float = 10.0,
        scale_range: float = 0.1,
        flip: bool = True,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if min(rotate_range, shear_range, translate_range, scale_range) < 0:
            raise ValueError("ranges must be >= 0")
        self.prob, self.flip, self.seed = float(prob), bool(flip), seed
        self.rotate_range, self.shear_range = float(rotate_range), float(shear_range)
        self.translate_range, self.scale_range = float(translate_range), float(scale_range)
        self._gen: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._gen:
            self._gen[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen[key]

    def theta(self, n: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Draw ``n`` affine matrices ``(n, 2, 3)`` in the normalised coordinates of ``torch.affine_grid``."""
        g = self._generator(device)
        rand = lambda *shape: torch.rand(*shape, device=device, generator=g)  # noqa: E731
        uni = lambda r, *shape: (2 * rand(*shape) - 1) * r  # noqa: E731
        on = lambda: (rand(n) < self.prob).float()  # noqa: E731
        angle = uni(self.rotate_range, n) * on()
        shear = uni(self.shear_range, n, 2) * on()[:, None]
        shift = uni(self.translate_range, n, 2) * on()[:, None] * 2.0 / torch.tensor(size[::-1], device=device)
        scale = 1.0 + uni(self.scale_range, n, 2) * on()[:, None]
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        sh = torch.eye(2, device=device).repeat(n, 1, 1)
        sh[:, 0, 1], sh[:, 1, 0] = shear[:, 0], shear[:, 1]
        mat = rot @ sh @ torch.diag_embed(scale)
        if self.flip:
            flips = torch.ones(n, 2, device=device)
            axis = (rand(n) < 0.5).long()
            flips[torch.arange(n, device=device), axis] = torch.where(rand(n) < self.prob, -1.0, 1.0)
            mat = mat * flips[:, None, :]
        return torch.cat([mat, shift[..., None]], dim=2)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            image: ``(N, C, h, w)`` float batch.
            label: optional ``(N, C', h, w)`` mask batch, resampled with nearest interpolation.

        Returns:
            the augmented image and label.
        """
        theta = self.theta(image.shape[0], tuple(image.shape[-2:]), image.device).to(image.dtype)
        grid = torch.nn.functional.affine_grid(theta, list(image.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if label is not None:
            label = torch.nn.functional.grid_sample(
                label.to(grid.dtype), grid.to(grid.dtype), mode="nearest", padding_mode="zeros", align_corners=False
            ).to(label.dtype)
        return out, label
