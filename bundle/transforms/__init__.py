from bundle.transforms.augment import BatchRandSliceAffine, RandSliceAffine, RandSliceAffined
from bundle.transforms.intensity import DecodeSlice, DecodeSliced
from bundle.transforms.pipelines import slice_pipeline
from bundle.transforms.slicing import ExtractSlices, ExtractSlicesd, resolve_slice_axis
from bundle.transforms.restore import RestoreSlices, RestoreSlicesd
from bundle.transforms.views import MultiView, MultiViewd
