from bundle.transforms.augment import RandSliceAffine, RandSliceAffined
from bundle.transforms.slicing import ExtractSlices, ExtractSlicesd, resolve_slice_axis
from bundle.transforms.views import MultiView, MultiViewd
