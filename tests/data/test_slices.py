import os

import numpy as np
import pytest

from bundle.data import DatalistError, SliceCache, load_datalist
from tests.conftest import write_nifti


def _entries(toy_dataset, **kw):
    return load_datalist(toy_dataset(**kw))["segmentation"]


def test_counts_shapes_and_la_flags(toy_dataset, tmp_path):
    cache = SliceCache(_entries(toy_dataset), spatial_size=16, cache_dir=str(tmp_path / "cache"))
    assert len(cache) == 12  # 2 volumes x 6 slices along the last axis
    assert cache.images.shape == (12, 1, 16, 16) and cache.images.dtype == np.float16
    assert cache.labels.shape == (12, 1, 16, 16) and cache.labels.dtype == np.uint8
    assert cache.has_la.tolist() == [False, False, True, True, False, False] * 2
    assert 0.0 <= float(cache.images.min()) and float(cache.images.max()) <= 1.0
    rec = cache.records([8])[0]
    assert (rec["volume"], rec["slice"], rec["has_la"], rec["patient"]) == (1, 2, True, "b")
    assert rec["image"].shape == (1, 16, 16)
    assert len(cache.records(cache.has_la)) == 4


def test_second_build_reads_from_disk_and_matches(toy_dataset, tmp_path, monkeypatch):
    entries = _entries(toy_dataset)
    first = SliceCache(entries, spatial_size=16, cache_dir=str(tmp_path / "cache"))
    assert len(os.listdir(tmp_path / "cache")) == 2
    # a cached volume is never read again: make any read fail
    import bundle.data.slices as slices

    monkeypatch.setattr(slices, "volume_transform", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    second = SliceCache(entries, spatial_size=16, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_changed_settings_or_file_miss_the_cache(toy_dataset, tmp_path):
    entries = _entries(toy_dataset)
    SliceCache(entries, spatial_size=16, cache_dir=str(tmp_path / "c"))
    SliceCache(entries, spatial_size=8, cache_dir=str(tmp_path / "c"))
    assert len(os.listdir(tmp_path / "c")) == 4
    write_nifti(entries[0]["image"], np.ones((16, 12, 6), np.uint8))
    os.utime(entries[0]["image"], ns=(1, 1))
    SliceCache(entries, spatial_size=8, cache_dir=str(tmp_path / "c"))
    assert len(os.listdir(tmp_path / "c")) == 5


def test_entries_without_mask(toy_dataset):
    quality = load_datalist(toy_dataset())["quality"]
    cache = SliceCache(quality, spatial_size=16)
    assert not cache.has_la.any() and not cache.has_mask.any()
    rec = cache.records([0])[0]
    assert (rec["nulling"], rec["sharpness"], rec["enhancement"], rec["fibrosis"]) == (3, 4, 2, 5)


def test_unreadable_volume_names_the_entry(toy_dataset):
    (toy_dataset.root / "images" / "b.nii.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(DatalistError, match=r"segmentation\[1\] \(patient b\): cannot read and slice .*b.nii.gz"):
        SliceCache(_entries(toy_dataset), spatial_size=16)


def test_invalid_options(toy_dataset):
    with pytest.raises(ValueError):
        SliceCache([], spatial_size=4)
    with pytest.raises(ValueError):
        SliceCache([], lower=50, upper=10)
    assert len(SliceCache([], spatial_size=16)) == 0


def test_uint8_and_memory_mapped_set(toy_dataset, tmp_path):
    entries = _entries(toy_dataset)
    ref = SliceCache(entries, spatial_size=16, cache_dir=str(tmp_path / "c"))
    small = SliceCache(entries, spatial_size=16, cache_dir=str(tmp_path / "c"), dtype="uint8", mmap=True)
    assert small.images.dtype == np.uint8 and isinstance(small.images, np.memmap)
    assert small.nbytes < ref.nbytes
    np.testing.assert_allclose(small.images / 255.0, ref.images.astype(np.float32), atol=1 / 255 + 1e-3)
    np.testing.assert_array_equal(small.labels, ref.labels)
    assert small.has_la.tolist() == ref.has_la.tolist()
    again = SliceCache(entries, spatial_size=16, cache_dir=str(tmp_path / "c"), dtype="uint8", mmap=True)
    np.testing.assert_array_equal(again.images, small.images)
    assert again.slice.tolist() == ref.slice.tolist() and again.slice_axes == [2, 2]
    with pytest.raises(ValueError):
        SliceCache(entries, spatial_size=16, mmap=True)
    with pytest.raises(ValueError):
        SliceCache(entries, spatial_size=16, dtype="int4")
