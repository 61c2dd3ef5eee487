"""One place for local and ``s3://`` storage (fsspec): paths, atomic writes, listing,
torch checkpoints, content hashes.

Credentials and endpoints come from the standard AWS environment or config
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``~/.aws``); nothing here takes, stores or
logs a secret. Writes are atomic at file granularity: a local file is written to a
temporary name and renamed; an S3 object appears only when its upload completes. So a
file that exists is complete, which the label job's exactly-once commit relies on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import uuid
from typing import Any

import fsspec
import pyarrow.fs
import torch

_TMP_MARK = ".tmp-"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def absolute(uri: str) -> str:
    """A local path made absolute (a URI as it is): for paths handed to Ray workers
    whose working directory is not the driver's (Tune runs each trial in its own).

    >>> absolute("s3://b/x"), absolute("/a/b")
    ('s3://b/x', '/a/b')
    """
    return uri if is_remote(uri) else os.path.abspath(uri)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for a local path or URI."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def parent(uri: str) -> str:
    if is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(uri))


def ray_storage(uri: str) -> tuple[str, object | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train / Tune run configs: local
    paths as they are; ``s3://`` as a pyarrow S3 filesystem that honours the standard
    ``AWS_ENDPOINT_URL`` (an S3-compatible store) and the path inside it."""
    if not uri.startswith("s3://"):
        return uri, None

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {"endpoint_override": endpoint} if endpoint else {}
    if os.environ.get("AWS_DEFAULT_REGION"):
        kwargs["region"] = os.environ["AWS_DEFAULT_REGION"]
    return uri.removeprefix("s3://"), pyarrow.fs.S3FileSystem(**kwargs)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def check_output_root(uri: str, flag: str) -> None:
    """An output root must be a folder or prefix: stop at once on an existing file; an
    object-store prefix must be writable with the credentials at hand (one small probe
    object, written and removed), so a job does not fail after its work is done."""
    if not is_remote(uri) and os.path.isfile(uri.removeprefix("file://")):
        raise ValueError(
            f"{flag} {uri!r}: an existing file, not a folder; give a folder or an s3:// prefix"
        )
    if is_remote(uri):
        probe = join(uri, ".write-probe")
        try:
            fs, path = filesystem(probe)
            fs.pipe_file(path, b"")
            fs.rm_file(path)
        except Exception as err:  # botocore / aiobotocore errors have no common base here
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"{flag} {redact(uri)!r}: cannot write there ({type(err).__name__}: {reason[:200]}); "
                "set credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
                "and AWS_ENDPOINT_URL for an S3-compatible store) and check that the bucket exists"
            ) from None


def makedirs(uri: str) -> None:
    if not is_remote(uri):
        os.makedirs(uri, exist_ok=True)


def listdir(uri: str) -> list[str]:
    """Full URIs of the entries directly under ``uri`` (sorted; empty if missing)."""
    fs, path = filesystem(uri)
    try:
        entries = (
            fs.ls(path, detail=False, refresh=True) if is_remote(uri) else fs.ls(path, detail=False)
        )
    except FileNotFoundError:
        return []
    prefix = uri.split("://", 1)[0] + "://" if is_remote(uri) else ""
    return sorted(prefix + e if prefix and not e.startswith(prefix) else e for e in entries)


def size(uri: str) -> int:
    """The size of a file in bytes."""
    fs, path = filesystem(uri)
    return int(fs.size(path))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that the file is either absent or complete."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def remove_stale_temporaries(uri: str) -> int:
    """Delete half-written temporaries left under ``uri`` by a killed writer."""
    if is_remote(uri) or not os.path.isdir(uri):
        return 0
    n = 0
    for root, _, files in os.walk(uri):
        for name in files:
            if _TMP_MARK in name:
                os.remove(os.path.join(root, name))
                n += 1
    return n


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri).decode())


def write_json(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def save_torch(obj: Any, uri: str) -> str:
    """Save with ``torch.save``; returns the sha256 of the bytes written."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    write_bytes_atomic(uri, data)
    return hashlib.sha256(data).hexdigest()


def load_torch(uri: str) -> Any:
    return torch.load(io.BytesIO(read_bytes(uri)), map_location="cpu", weights_only=True)


def load_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A state dict from a local or ``s3://`` file (``.pt``/``.pth``); unwraps the common
    ``{"state_dict": ...}`` / ``{"model": ...}`` containers."""
    obj = load_torch(uri)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"weights file {uri!r}: expected a state dict, got {type(obj).__name__}")
    return obj


def sha256_of(uri: str) -> str:
    return hashlib.sha256(read_bytes(uri)).hexdigest()


_SECRET_PATTERNS = [
    re.compile(
        r"(aws_secret_access_key|secret|password|token)(['\"]?\s*[:=]\s*['\"]?)([^\s'\",}]+)", re.I
    ),
    re.compile(r"(AKIA|ASIA)[A-Z0-9]{12,}"),
]


def redact(text: str) -> str:
    """Blank anything that looks like a credential (for logs, errors, run records)."""
    for env in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        value = os.environ.get(env)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = _SECRET_PATTERNS[0].sub(lambda m: m.group(1) + m.group(2) + "***", text)
    return _SECRET_PATTERNS[1].sub("***", text)
