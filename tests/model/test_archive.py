"""Zip extraction refuses traversal, links and bombs, and caches by content hash."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from lfv_edge.errors import ModelPackageError
from lfv_edge.model.archive import ZipLimits, extract_package_zip


def _zip(path: Path, members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.txt", "escapes the package folder"),
        ("mochi/../../evil.txt", "escapes the package folder"),
        ("..\\evil.txt", "escapes the package folder"),
        ("/etc/evil", "absolute path"),
        ("C:/evil", "absolute path"),
    ],
)
def test_zip_slip_is_refused_and_nothing_is_written(
    tmp_path: Path, name: str, message: str
) -> None:
    # given a zip with one hostile member among good ones
    archive = _zip(tmp_path / "pkg.zip", {"manifest.json": b"{}", name: b"owned"})
    cache = tmp_path / "cache"
    # when / then
    with pytest.raises(ModelPackageError, match=message):
        extract_package_zip(archive, cache_dir=cache)
    assert not (tmp_path / "evil.txt").exists(), "nothing escaped"
    leftovers = list((cache / "packages").iterdir()) if (cache / "packages").exists() else []
    assert leftovers == [], "the half-extracted scratch folder is removed"


def test_symlinks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("mochi/libdlr.so")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/usr/lib/evil.so")
    with pytest.raises(ModelPackageError, match="symbolic link"):
        extract_package_zip(path, cache_dir=tmp_path / "cache")


def test_a_highly_compressed_member_is_treated_as_a_bomb(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"mochi/weights.params": b"\0" * (8 << 20)})
    with pytest.raises(ModelPackageError, match="zip bomb"):
        extract_package_zip(archive, cache_dir=tmp_path / "cache")


def test_member_count_and_total_size_limits(tmp_path: Path) -> None:
    many = _zip(tmp_path / "many.zip", {f"f{i}": b"x" for i in range(12)})
    with pytest.raises(ModelPackageError, match="12 members"):
        extract_package_zip(many, cache_dir=tmp_path / "c1", limits=ZipLimits(max_members=10))
    big = _zip(
        tmp_path / "big.zip", {"a": b"x" * 1000, "b": b"y" * 1000}, compression=zipfile.ZIP_STORED
    )
    with pytest.raises(ModelPackageError, match="expands to more than 1500 bytes"):
        extract_package_zip(big, cache_dir=tmp_path / "c2", limits=ZipLimits(max_total_bytes=1500))


def test_duplicates_and_non_zips_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", b"{}")
        archive.writestr("MANIFEST.json", b"{}")
    with pytest.raises(ModelPackageError, match="appears twice"):
        extract_package_zip(path, cache_dir=tmp_path / "cache")
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(ModelPackageError, match="not a valid zip"):
        extract_package_zip(tmp_path / "junk.zip", cache_dir=tmp_path / "cache")


def test_a_good_zip_is_extracted_once_per_content(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "pkg.zip", {"manifest.json": b"{}", "mochi/a.json": b"[]"})
    first = extract_package_zip(archive, cache_dir=tmp_path / "cache")
    assert (first / "mochi" / "a.json").read_bytes() == b"[]", "content extracted"
    (first / "marker").write_text("kept")
    second = extract_package_zip(archive, cache_dir=tmp_path / "cache")
    assert second == first, "same content → same cached folder"
    assert (second / "marker").exists(), "the cached folder is reused, not re-extracted"
    copy = _zip(tmp_path / "other.zip", {"manifest.json": b"{ }"})
    assert extract_package_zip(copy, cache_dir=tmp_path / "cache") != first, (
        "new content → new folder"
    )
