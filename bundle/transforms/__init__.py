from bundle.transforms.augment import BatchRandSliceAffine, RandLabelContrastd, RandSliceAffine, RandSliceAffined
from bundle.transforms.intensity import (
    DecodeSlice,
    DecodeSliced,
    ScaleForegroundPercentiles,
    ScaleForegroundPercentilesd,
)
from bundle.transforms.pipelines import random_crop, slice_pipeline
from bundle.transforms.restore import RestoreSlices, RestoreSlicesd
from bundle.transforms.slicing import (
    ExtractSlices,
    ExtractSlicesd,
    in_plane_spacing,
    resolve_slice_axis,
    slice_spacing,
    voxel_spacing,
)
from bundle.transforms.views import MultiView, MultiViewd
