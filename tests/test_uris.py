"""geor_core.uris against a local folder and the session's moto S3 server: the same behaviour on both."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from geor_core import uris


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty base URI: a local folder, or a unique prefix on the moto server."""
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_prefix")


def test_join_keeps_the_scheme_and_single_slashes():
    assert uris.join("s3://b/run/", "train", "/part-0.parquet") == "s3://b/run/train/part-0.parquet"
    assert uris.join("/tmp/run", "a/", "b") == "/tmp/run/a/b"
    assert uris.join("s3://b/run") == "s3://b/run"


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_uri_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="expected a local path or s3:// URI"):
        uris.filesystem(bad)


def test_unknown_scheme_names_the_uri():
    with pytest.raises(ValueError, match="nosuchscheme://x/y"):
        uris.filesystem("nosuchscheme://x/y")


def test_write_atomic_round_trip_and_overwrite(base):
    target = uris.join(base, "nested", "a.txt")
    assert not uris.exists(target)
    uris.write_atomic(target, b"first")
    assert uris.read_bytes(target) == b"first"
    uris.write_text(target, "second é")
    assert uris.read_text(target) == "second é"
    assert uris.listdir(uris.join(base, "nested")) == [target]  # no temp file left beside it


def test_read_of_missing_file_names_it(base):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        uris.read_bytes(uris.join(base, "missing.txt"))


def test_listdir_and_glob_return_sorted_uris(base):
    for name in ("b.parquet", "a.parquet", "notes.txt", "sub/c.parquet"):
        uris.write_atomic(uris.join(base, name), name)
    assert uris.listdir(base) == [
        uris.join(base, "a.parquet"),
        uris.join(base, "b.parquet"),
        uris.join(base, "notes.txt"),
        uris.join(base, "sub"),
    ]
    assert uris.glob(uris.join(base, "*.parquet")) == [
        uris.join(base, "a.parquet"),
        uris.join(base, "b.parquet"),
    ]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        uris.listdir(uris.join(base, "nothing-here"))


def test_marker_is_what_makes_a_directory_complete(base):
    assert not uris.is_complete(base)
    assert uris.read_marker(base) is None
    uris.write_atomic(uris.join(base, "part-0.parquet"), b"data")
    assert not uris.is_complete(base)  # outputs alone do not make it complete
    uris.write_marker(base, {"rows": 12, "config_hash": "abc"})
    assert uris.is_complete(base)
    assert uris.read_marker(base) == {"rows": 12, "config_hash": "abc"}


def test_crashed_stage_leaves_no_marker(base):
    def write_stage(fail_after: int) -> None:
        for index in range(3):
            if index == fail_after:
                raise RuntimeError("worker died mid-way")
            uris.write_atomic(uris.join(base, f"part-{index}.parquet"), b"x")
        uris.write_marker(base, {"parts": 3})

    with pytest.raises(RuntimeError, match="mid-way"):
        write_stage(fail_after=2)
    assert uris.exists(uris.join(base, "part-1.parquet"))
    assert not uris.is_complete(base)
    write_stage(fail_after=-1)  # the re-run completes
    assert uris.read_marker(base) == {"parts": 3}


def test_crash_inside_a_local_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = str(tmp_path / "model" / "config.json")
    uris.write_atomic(target, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        uris.write_atomic(target, b"new, never fully written")
    assert uris.read_bytes(target) == b"old"
    assert os.listdir(tmp_path / "model") == ["config.json"]  # the temp file was cleaned up


def test_s3_listing_sees_writes_from_other_clients(s3_server, s3_prefix):
    import boto3

    uris.write_atomic(uris.join(s3_prefix, "a"), b"1")
    assert uris.listdir(s3_prefix) == [uris.join(s3_prefix, "a")]
    key = s3_prefix.split("/", 3)[3] + "/b"
    boto3.client("s3").put_object(Bucket=s3_server.bucket, Key=key, Body=b"2")  # e.g. a Ray worker
    assert uris.listdir(s3_prefix) == [uris.join(s3_prefix, "a"), uris.join(s3_prefix, "b")]
    assert uris.is_complete(s3_prefix) is False
    boto3.client("s3").put_object(
        Bucket=s3_server.bucket, Key=key.rsplit("/", 1)[0] + "/_SUCCESS.json", Body=b"{}"
    )
    assert uris.is_complete(s3_prefix)


def test_remove_tree(base):
    uris.write_atomic(uris.join(base, "x", "y.bin"), b"1")
    uris.write_marker(base, {})
    uris.remove_tree(base)
    assert not uris.exists(uris.join(base, "x", "y.bin"))
    assert not uris.is_complete(base)
    uris.remove_tree(base)  # nothing there: not an error


def test_copy_to_local_copies_a_tree_and_replaces_the_old_copy(base, tmp_path):
    uris.write_atomic(uris.join(base, "config.json"), b"{}")
    uris.write_atomic(uris.join(base, "weights", "model.safetensors"), b"w" * 1000)
    destination = tmp_path / "cache" / "model"
    destination.mkdir(parents=True)
    (destination / "stale.bin").write_bytes(b"old")

    copied = uris.copy_to_local(base, destination)

    assert copied == destination
    files = sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file())
    assert files == ["config.json", "weights/model.safetensors"]
    assert (destination / "weights" / "model.safetensors").read_bytes() == b"w" * 1000
    assert [p.name for p in destination.parent.iterdir()] == ["model"]  # no staging folder left


def test_copy_to_local_of_one_file_and_of_nothing(base, tmp_path):
    uris.write_atomic(uris.join(base, "one.txt"), b"1")
    copied = uris.copy_to_local(uris.join(base, "one.txt"), tmp_path / "dst")
    assert (copied / "one.txt").read_bytes() == b"1"
    with pytest.raises(FileNotFoundError, match="absent"):
        uris.copy_to_local(uris.join(base, "absent"), tmp_path / "dst2")
    assert not (tmp_path / "dst2").exists()


def test_pyarrow_filesystem_reads_parquet_written_through_fsspec(base):
    table = pa.table({"id": ["a", "b", "c"], "lat": [1.0, 2.0, 3.0]})
    fs, path = uris.filesystem(uris.join(base, "train", "part-0.parquet"))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    pq.write_table(table, path, filesystem=fs)

    arrow_fs, arrow_path = uris.pyarrow_filesystem(uris.join(base, "train"))
    expected_type = pafs.S3FileSystem if uris.is_s3(base) else pafs.LocalFileSystem
    assert isinstance(arrow_fs, expected_type)
    assert pq.read_table(arrow_path, filesystem=arrow_fs).equals(table)


def test_ray_data_writes_and_reads_s3_through_pyarrow_filesystem(ray_cluster, s3_prefix):
    import ray

    arrow_fs, path = uris.pyarrow_filesystem(uris.join(s3_prefix, "table"))
    ray.data.range(20).write_parquet(path, filesystem=arrow_fs)  # the filesystem travels to workers
    assert uris.glob(uris.join(s3_prefix, "table", "*.parquet"))
    rows = ray.data.read_parquet(path, filesystem=arrow_fs).take_all()
    assert sorted(row["id"] for row in rows) == list(range(20))


def test_marker_of_a_plain_file_is_absent_not_an_error(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,lat,lon\n")
    assert uris.read_marker(str(manifest)) is None
    from geor_core.registry.lineage import data_fingerprint

    assert data_fingerprint(str(manifest)) == data_fingerprint(str(manifest))


def test_local_paths_become_absolute_and_remote_uris_do_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert uris.absolute("out/sft") == str(tmp_path / "out" / "sft")
    assert uris.absolute("models/tiny", may_be_hub_id=True) == str(tmp_path / "models" / "tiny")
    assert uris.absolute("Qwen/Qwen2.5-VL-7B-Instruct", may_be_hub_id=True) == "Qwen/Qwen2.5-VL-7B-Instruct"
    for remote in ("s3://bucket/prefix", "models:/geo-r@champion", ""):
        assert uris.absolute(remote) == remote
