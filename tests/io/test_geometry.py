import numpy as np
import pytest
from monai.transforms import LoadImage

from bundle.io.geometry import Geometry, read_geometry, same_geometry, slice_axis_from_affine
from tests.conftest import write_nifti


def test_nifti_header_geometry_matches_monai_loader(tmp_path):
    affine = np.array([[0, 0, 2.5, 10], [0.7, 0, 0, -3], [0, 0.7, 0, 5], [0, 0, 0, 1]], float)
    path = write_nifti(str(tmp_path / "x.nii.gz"), np.zeros((5, 6, 7), np.uint8), affine)
    geo = read_geometry(path)
    img = LoadImage(image_only=True)(path)
    assert geo.shape == (5, 6, 7)
    np.testing.assert_allclose(geo.affine, np.asarray(img.affine), atol=1e-5)


def test_nrrd_read_through_monai(tmp_path):
    itk = pytest.importorskip("itk")
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # itk order z, y, x
    image = itk.image_from_array(arr)
    image.SetSpacing([0.5, 0.6, 2.0])
    path = str(tmp_path / "x.nrrd")
    itk.imwrite(image, path)
    geo = read_geometry(path)
    assert geo.shape == (4, 5, 6)
    np.testing.assert_allclose(np.abs(np.diag(geo.affine)[:3]), [0.5, 0.6, 2.0], atol=1e-6)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_geometry(str(tmp_path / "nope.nii.gz"))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.nii.gz"):
        read_geometry(str(bad))


@pytest.mark.parametrize(
    "affine, axis",
    [
        (np.diag([1, 1, 2.5, 1]), 2),  # axial stack along the last axis
        (np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]]), 1),  # z runs along voxel axis 1
        (np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-3, 0, 0, 0], [0, 0, 0, 1]]), 0),  # flipped z on axis 0
        (np.array([[1, 0, 0, 0], [0, 0.94, 0.34, 0], [0, -0.34, 0.94, 0], [0, 0, 0, 1]]), 2),  # oblique, near axial
    ],
)
def test_slice_axis_from_affine(affine, axis):
    assert slice_axis_from_affine(affine) == axis


def test_same_geometry():
    a = Geometry((2, 3, 4), np.eye(4))
    assert same_geometry(a, Geometry((2, 3, 4), np.eye(4) + 1e-5))
    assert not same_geometry(a, Geometry((2, 3, 5), np.eye(4)))
    shifted = np.eye(4)
    shifted[0, 3] = 1.0
    assert not same_geometry(a, Geometry((2, 3, 4), shifted))
