"""Every path is a URI: a local path or ``s3://bucket/prefix``. Reading, writing and listing go
through fsspec (s3fs for S3); Ray Data gets a pyarrow filesystem for the same URI.

An S3-compatible endpoint (MinIO, moto, ...) is chosen with the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).

Outputs are written atomically: files first, then a completion marker (``_SUCCESS.json``) last.
A reader trusts a directory only when ``is_complete`` says so. Single files are written with
``write_atomic`` (local: temp file + ``os.replace``; S3: one PUT, which is atomic).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec
from fsspec import AbstractFileSystem

MARKER_NAME = "_SUCCESS.json"
# keys a completion marker may carry: the MLflow run that wrote the output, and the MLflow model
# logged from a training stage's export (``models:/m-...`` and its id)
MARKER_RUN_ID, MARKER_MODEL_URI, MARKER_MODEL_ID = "mlflow_run_id", "mlflow_model_uri", "mlflow_model_id"


def is_s3(uri: str) -> bool:
    """True for ``s3://`` (and ``s3a://``) URIs."""
    return uri.startswith(("s3://", "s3a://"))


def _check_uri(uri: str) -> None:
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"expected a local path or s3:// URI, got {uri!r}")


def _s3_options() -> dict[str, Any]:
    # Pass the endpoint explicitly rather than trusting every botocore version to read
    # AWS_ENDPOINT_URL; listings are not cached, since other processes (Ray workers) write too.
    options: dict[str, Any] = {"use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """``uri`` -> (an fsspec filesystem, the path inside it). Local paths become absolute."""
    _check_uri(uri)
    if is_s3(uri):
        return fsspec.filesystem("s3", **_s3_options()), uri.split("://", 1)[1].rstrip("/")
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"cannot open {uri!r}: {exc} (use a local path or an s3:// URI)") from exc


def _is_local(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def _to_uri(fs: AbstractFileSystem, path: str) -> str:
    """A path as fsspec lists it -> the URI callers use (local paths stay plain paths)."""
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def absolute(uri: str, *, may_be_hub_id: bool = False) -> str:
    """A local path made absolute (Ray workers do not share the driver's working directory).
    URIs with a scheme (s3://, models:/, http://) are returned unchanged, and so, when
    ``may_be_hub_id``, is an ``owner/name`` that names no local path."""
    if not uri or "://" in uri or uri.startswith("models:/"):
        return uri
    if not may_be_hub_id or os.path.exists(uri) or uri.startswith((".", "/", "~")) or "/" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    return uri if _looks_like_hub_id(uri) else os.path.abspath(uri)


def _looks_like_hub_id(uri: str) -> bool:
    """``owner/name`` with no local folder ``owner``: how hub ids look."""
    parts = uri.split("/")
    return len(parts) == 2 and not os.path.isdir(parts[0])


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/run", "train", "part-0.parquet")`` -> ``"s3://b/run/train/part-0.parquet"``."""
    _check_uri(uri)
    tail = [part.strip("/") for part in parts if part.strip("/")]
    return "/".join([uri.rstrip("/") or "/", *tail]) if tail else uri


def exists(uri: str) -> bool:
    """True when a file or directory (for S3: any object under the prefix) is there."""
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    """The whole content of one file."""
    fs, path = filesystem(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{uri} does not exist") from exc


def read_text(uri: str) -> str:
    """The whole content of one UTF-8 text file."""
    return read_bytes(uri).decode("utf-8")


def write_atomic(uri: str, data: bytes | str) -> None:
    """Write one file so that a reader sees either nothing (or the old file) or all of it."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fs, path = filesystem(uri)
    if _is_local(fs):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        fs.pipe_file(path, payload)  # one PUT: atomic on S3


def write_text(uri: str, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    write_atomic(uri, text)


def listdir(uri: str) -> list[str]:
    """The URIs of the direct children of a directory (or S3 prefix), sorted."""
    fs, path = filesystem(uri)
    if not fs.isdir(path):
        raise FileNotFoundError(f"{uri} is not a directory")
    return sorted(_to_uri(fs, entry) for entry in fs.ls(path, detail=False) if entry.rstrip("/") != path)


def glob(pattern: str) -> list[str]:
    """The URIs matching a glob pattern such as ``s3://b/run/train/*.parquet``, sorted."""
    fs, path = filesystem(pattern)
    return sorted(_to_uri(fs, entry) for entry in fs.glob(path))


def write_marker(uri_dir: str, payload: dict[str, Any]) -> None:
    """Mark ``uri_dir`` complete; call this LAST, after every output file is written."""
    write_atomic(join(uri_dir, MARKER_NAME), json.dumps(payload, sort_keys=True, indent=2, default=str))


def read_marker(uri_dir: str) -> dict[str, Any] | None:
    """The payload of ``uri_dir``'s completion marker, or None when the directory is not complete."""
    try:
        text = read_text(join(uri_dir, MARKER_NAME))
    except (FileNotFoundError, NotADirectoryError):  # absent, or ``uri_dir`` is a file
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"completion marker {join(uri_dir, MARKER_NAME)} is not valid JSON: {exc}") from exc


def is_complete(uri_dir: str) -> bool:
    """True when ``uri_dir`` has its completion marker, i.e. every output in it was written."""
    return exists(join(uri_dir, MARKER_NAME))


def remove_tree(uri: str) -> None:
    """Delete a file or a whole directory / prefix; nothing there is not an error.

    Callers delete only in folders they own (geor_core/ownership.py); as a last guard this never
    deletes a filesystem root, the home folder, the working directory or a folder above it, or a
    whole bucket."""
    fs, path = filesystem(uri)
    if _too_wide_to_delete(fs, path):
        raise ValueError(f"refusing to delete {uri}: a root, home or working folder, or a whole bucket")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _too_wide_to_delete(fs: AbstractFileSystem, path: str) -> bool:
    if not _is_local(fs):
        return "/" not in path.strip("/")
    real = os.path.realpath(path)
    cwd = os.path.realpath(os.getcwd())
    return real in (os.sep, os.path.realpath(os.path.expanduser("~"))) or (cwd + os.sep).startswith(
        real.rstrip(os.sep) + os.sep
    )


def copy_to_local(uri: str, local_dir: str | Path) -> Path:
    """Copy a directory (or one file) at ``uri`` into ``local_dir``, replacing what was there.

    The copy lands in a staging folder first and is renamed into place, so ``local_dir`` never
    holds half a model."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri} does not exist")
    target = Path(local_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        if fs.isfile(path):
            fs.get_file(path, str(staging / Path(path).name))
        else:
            for source in fs.find(path):
                destination = staging / os.path.relpath(source, path)
                destination.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(source, str(destination))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def pyarrow_filesystem(uri: str) -> tuple[Any, str]:
    """``uri`` -> (a pyarrow filesystem, the path inside it), e.g. for Ray Data's ``filesystem=``.

    For S3 the endpoint comes from ``AWS_ENDPOINT_URL`` when set; credentials from the usual chain."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if is_s3(uri):
        options: dict[str, Any] = {}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            options["endpoint_override"] = parsed.netloc
            options["scheme"] = parsed.scheme
        return pafs.S3FileSystem(**options), path
    if _is_local(fs):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


# Query parameters whose values are credentials (matched as parts of the lowercased name, so
# ``access_token``, ``X-Amz-Signature``, ``api_key`` and ``sig`` all count).
_SECRET_QUERY_WORDS = ("token", "key", "secret", "passw", "signature", "credential", "sig", "auth")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{},]+")
REDACTED = "***"


def redact_uri(text: str) -> str:
    """``text`` (a URI, or a message with URIs in it) with every URI's credentials masked: the
    password of ``user:password@`` (a lone ``user@``, often a token, is masked whole) and the
    values of query parameters named like a token, key, secret, password or signature.

    ``https://alice:s3cr3t@host/x?token=abc&n=1`` -> ``https://alice:***@host/x?token=***&n=1``.
    Use it wherever a URI is logged or printed; the unredacted URI is only for connecting."""
    return _URI_IN_TEXT.sub(lambda match: _redact_one(match.group(0)), text)


def _redact_one(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if has_password else f"{REDACTED}@{host}"
    path, has_query, query = tail.partition("?")
    if has_query:
        query, has_fragment, fragment = query.partition("#")
        query = "&".join(_redact_parameter(item) for item in query.split("&"))
        tail = f"{path}?{query}" + (f"#{fragment}" if has_fragment else "")
    return f"{scheme}://{netloc}{tail}"


def _redact_parameter(item: str) -> str:
    name, has_value, _ = item.partition("=")
    words = re.split(r"[^a-z0-9]+", name.lower())
    secret = any(word.startswith(_SECRET_QUERY_WORDS) or word.endswith(_SECRET_QUERY_WORDS) for word in words)
    return f"{name}={REDACTED}" if has_value and secret else item
