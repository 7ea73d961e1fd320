"""DICOM series as exported: sorted by position, RAS affine as ITK gives it, RLE, enhanced multi-frame, bad files."""

import locale
import os

import numpy as np
import pydicom
import pytest
from monai.data import ITKReader
from monai.transforms import LoadImage

from bundle.io.dicom import DicomSeriesReader, DicomVolumeError, Frame, NotAVolume, volume_geometry
from bundle.io.loader import LoadVolume, LoadVolumed
from tests.conftest import LA2018
from tests.dicom_helpers import phantom, truncate, write_enhanced, write_series

OBLIQUE = {"row": (0.96, 0.28, 0.0), "col": (0.0, 0.0, -1.0)}  # a coronal-oblique stack, z running down the columns


def _itk(folder):
    return LoadImage(reader=ITKReader(), image_only=True, ensure_channel_first=True)(folder)


@pytest.mark.parametrize("geometry", [{}, OBLIQUE], ids=["axial", "oblique"])
def test_shuffled_series_matches_itk(tmp_path, geometry):
    vol = phantom((20, 18, 12))
    files, affine = write_series(str(tmp_path / "s"), vol, spacing=(0.7, 0.8, 1.5), **geometry)
    assert sorted(os.listdir(tmp_path / "s")) != [os.path.basename(f) for f in files]  # names do not give the order
    img = LoadVolume(min_slices=5, ensure_channel_first=True)(files[::-1])
    ref = _itk(str(tmp_path / "s"))
    assert tuple(img.shape) == tuple(ref.shape) == (1, 20, 18, 12)
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=1e-4)
    np.testing.assert_allclose(np.asarray(img.affine), affine, atol=1e-4)
    np.testing.assert_array_equal(img[0].numpy(), ref[0].numpy())
    np.testing.assert_array_equal(img[0].numpy(), vol.astype(np.float32))
    assert img.meta["series_uid"] and img.meta["modality"] == "MR"


def test_folder_with_one_volume_and_rle(tmp_path):
    vol = phantom((20, 18, 12))
    write_series(str(tmp_path / "plain"), vol)
    write_series(str(tmp_path / "rle" / "nested"), vol, rle=True)
    first = pydicom.dcmread(next((tmp_path / "rle" / "nested").iterdir()))
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    a = LoadVolume(min_slices=5)(str(tmp_path / "plain"))
    b = LoadVolume(min_slices=5)(str(tmp_path / "rle"))  # a folder: searched recursively
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine))


def test_enhanced_multiframe_matches_classic_series(tmp_path):
    vol = phantom((20, 18, 12))
    files, affine = write_series(str(tmp_path / "classic"), vol, slope=2.0, intercept=-10.0, **OBLIQUE)
    path, affine_mf = write_enhanced(str(tmp_path / "mf" / "IM0001"), vol, slope=2.0, intercept=-10.0, **OBLIQUE)
    classic = LoadVolumed(keys="image", min_slices=5, ensure_channel_first=True)({"image": files})["image"]
    enhanced = LoadVolume(min_slices=5, ensure_channel_first=True)(path)
    np.testing.assert_allclose(affine, affine_mf)
    np.testing.assert_allclose(np.asarray(enhanced.affine), affine, atol=1e-4)
    np.testing.assert_allclose(np.asarray(classic.affine), affine, atol=1e-4)
    np.testing.assert_array_equal(enhanced.numpy(), classic.numpy())
    np.testing.assert_array_equal(enhanced[0].numpy(), vol.astype(np.float32) * 2 - 10)  # rescale applied


def test_compressed_syntax_pydicom_cannot_decode_goes_through_itk(tmp_path):
    itk = pytest.importorskip("itk")
    ctype = locale.setlocale(locale.LC_CTYPE)
    vol = phantom((20, 18, 12))
    files, _ = write_series(str(tmp_path / "raw"), vol, shuffle=False)
    jpeg = []
    for f in files:  # GDCM writes JPEG Lossless (process 14), which pydicom decodes only with pylibjpeg or gdcm
        img = itk.imread(f)
        io = itk.GDCMImageIO.New()
        io.SetCompressionType(itk.GDCMImageIOEnums.Compression_JPEG)
        out = str(tmp_path / "jpeg" / os.path.basename(f))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        writer = itk.ImageFileWriter[type(img)].New(Input=img, FileName=out, ImageIO=io, UseCompression=True)
        writer.Update()
        ds, src = pydicom.dcmread(out), pydicom.dcmread(f)
        for tag in ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            setattr(ds, tag, src[tag].value)  # GDCM gives each file its own series
        ds.RescaleSlope, ds.RescaleIntercept = "3", "5"  # ITK applies a rescale; the reader must not apply it twice
        ds.save_as(out)
        jpeg.append(out)
    locale.setlocale(locale.LC_CTYPE, ctype)  # GDCM's JPEG writer sets the C locale (ASCII text files afterwards)
    ds = pydicom.dcmread(jpeg[0])
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    if pydicom.pixels.get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        pytest.skip("pydicom can decode this syntax here")
    a = LoadVolume(min_slices=5)(files)
    b = LoadVolume(min_slices=5)(jpeg)
    assert locale.setlocale(locale.LC_CTYPE) == ctype  # reading through GDCM leaves the locale (text encodings) alone
    np.testing.assert_allclose(b.numpy(), a.numpy() * 3 + 5)
    np.testing.assert_allclose(np.asarray(b.affine), np.asarray(a.affine), atol=1e-3)


def test_truncated_file_names_the_file(tmp_path):
    files, _ = write_series(str(tmp_path / "s"), phantom((20, 18, 12)), rle=True)
    truncate(files[3], keep=0.9)  # cut inside the pixel data
    with pytest.raises(DicomVolumeError, match=os.path.basename(files[3]) + ": truncated") as e:
        LoadVolume(min_slices=5)(files)
    assert "\n" not in str(e.value)


def test_folder_with_two_volumes_is_ambiguous(tmp_path):
    write_series(str(tmp_path / "a"), phantom((20, 18, 12)))
    write_series(str(tmp_path / "b"), phantom((20, 18, 12), seed=1))
    with pytest.raises(DicomVolumeError, match="2 DICOM series"):
        LoadVolume(min_slices=5)(str(tmp_path))


def _frames(positions, orientation=(1, 0, 0, 0, 1, 0), spacing=(1.0, 1.0), shape=(4, 4)):
    return [
        Frame(f"f{i}", None, np.asarray(p, float), np.asarray(orientation, float), spacing, shape)
        for i, p in enumerate(positions)
    ]


@pytest.mark.parametrize(
    "frames, reason",
    [
        (_frames([(0, 0, 0)]), "single 2D image"),
        (_frames([(0, 0, z) for z in (0, 1, 2)]), "only 3 slices"),
        (_frames([(0, 0, z) for z in (0, 1, 1, 2, 3, 4)]), "6 frames at 5 distinct positions"),
        (_frames([(0, 0, z) for z in (0, 1, 2, 3, 5, 6)]), "uneven slice spacing"),
        (
            _frames([(0, 0, 0), (0, 0, 1)]) + _frames([(0, 0, 2), (0, 0, 3)], orientation=(0, 1, 0, 0, 0, -1)),
            "mixed slice orientations",
        ),
        (_frames([(0, 0, z) for z in range(4)]) + _frames([(0, 0, 4)], shape=(5, 4)), "mixed image sizes"),
        (_frames([(0, 0, z) for z in range(4)]) + _frames([(0, 0, 4)], spacing=(1.0, 2.0)), "mixed pixel spacings"),
        ([Frame(f, None, None, None, None, (4, 4)) for f in "fg"], "no volume geometry"),
    ],
)
def test_not_a_volume(frames, reason):
    with pytest.raises(NotAVolume, match=reason):
        volume_geometry(frames, min_slices=4)


def test_volume_geometry_sorts_by_position_along_the_normal():
    # the normal of rows (0,1,0) x columns (0,0,-1) is (-1,0,0): ascending position means decreasing x
    frames = _frames(
        [(x, 5, 7) for x in (3.0, -1.0, 1.0, 5.0, -3.0)], orientation=(0, 1, 0, 0, 0, -1), spacing=(0.5, 0.25)
    )
    ordered, affine = volume_geometry(frames, min_slices=2)
    assert [f.position[0] for f in ordered] == [5.0, 3.0, 1.0, -1.0, -3.0]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    np.testing.assert_allclose(lps[:3, 0], [0, 0.25, 0])  # along a row: column spacing
    np.testing.assert_allclose(lps[:3, 1], [0, 0, -0.5])  # down a column: row spacing
    np.testing.assert_allclose(lps[:3, 2], [-2.0, 0, 0])  # slice step along the normal
    np.testing.assert_allclose(lps[:3, 3], [5.0, 5, 7])


def test_reader_options_are_validated():
    with pytest.raises(ValueError):
        DicomSeriesReader(min_slices=1)
    with pytest.raises(ValueError):
        DicomSeriesReader(spacing_tolerance=2)
    assert not DicomSeriesReader().verify_suffix("x.nii.gz")


CLEAN = os.path.join(LA2018, "dicom", "0RZDK210BSMWAA6467LU_q0")
MESSY = os.path.join(LA2018, "dicom", "1MHBF3G6DCPWHSKG7XCP_q1_messy")


@pytest.mark.integration
@pytest.mark.skipif(not os.path.isdir(CLEAN), reason="no la2018 DICOM exports")
def test_la2018_exports_match_itk_and_nifti():
    import nibabel as nib

    img = LoadVolume(ensure_channel_first=True)(sorted(os.path.join(CLEAN, f) for f in os.listdir(CLEAN))[::-1])
    ref = _itk(CLEAN)
    assert img.shape == ref.shape == (1, 199, 143, 88)
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=1e-4)
    np.testing.assert_array_equal(img.numpy(), ref.numpy())
    messy = LoadVolume(ensure_channel_first=True)(MESSY)  # RLE, opaque names, a localizer and a text file beside it
    nifti = np.asarray(nib.load(os.path.join(LA2018, "qa", "1MHBF3G6DCPWHSKG7XCP_q1.nii.gz")).dataobj, dtype=np.float32)
    assert messy.shape[1:] == nifti.shape
    assert np.corrcoef(messy[0].numpy().ravel(), nifti.ravel())[0, 1] > 0.999  # the same voxels, rescaled
