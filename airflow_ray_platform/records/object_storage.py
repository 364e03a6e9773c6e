"""Object storage below a base URI, ``file://`` or ``s3://``: persisted job logs and usage Parquet files.

When a job reaches a terminal state its full driver log is written under a predictable key,
``<backend>/<cluster>/<cluster created-at>/<submission_id>.log``, below a base URI: ``file:///dir``
(the embedded default, under the local backend's root) or ``s3://bucket/prefix`` (boto3; endpoint
and credentials from the environment or the ``s3_options``). Objects stream in chunks: S3 gets a
multipart upload fed from the stream, never a whole log in memory. The usage export writes its
Parquet files through the same class.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airflow_ray_platform.backends.base import LOG_CHUNK_BYTES

#: Seconds an S3 call may take to connect, and to answer: a silent endpoint fails a call in seconds
#: (then the caller's never-failing recorder warns), never holds a task for minutes.
S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT = 5, 30
#: Multipart part size on S3, and the copy buffer of ``file://``.


class ObjectStorageError(RuntimeError):
    """An object could not be written or read; the message carries the storage's reason."""


def log_key(backend: str, cluster_name: str, cluster_created_at: str, submission_id: str) -> str:
    stamp = cluster_created_at.replace(":", "-").replace("+", "_")
    return f"{backend}/{cluster_name}/{stamp}/{submission_id}.log"


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (what boto3's multipart upload consumes)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class ObjectStorage:
    """Write and read objects (persisted job logs, Parquet files) below ``base_uri``."""

    def __init__(self, base_uri: str, **s3_options: Any) -> None:
        parts = urlsplit(base_uri)
        if parts.scheme not in ("file", "s3"):
            raise ObjectStorageError(f"object storage URI must be file:// or s3:// (got {base_uri!r})")
        self.base_uri = base_uri.rstrip("/")
        self.scheme = parts.scheme
        self._bucket = parts.netloc
        self._prefix = parts.path.strip("/")
        self._s3_options = s3_options

    def _s3(self) -> Any:
        import boto3
        from botocore.config import Config

        options = {
            "config": Config(
                connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT, retries={"max_attempts": 3}
            ),
            **self._s3_options,
        }
        return boto3.client("s3", **options)

    def uri(self, key: str) -> str:
        return f"{self.base_uri}/{key}"

    def write(self, key: str, chunks: Iterable[bytes]) -> str:
        """Stream ``chunks`` to ``key``; returns the object's URI."""
        try:
            if self.scheme == "file":
                path = Path(urlsplit(self.base_uri).path) / key
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as handle:
                    shutil.copyfileobj(_ChunkReader(chunks), handle, LOG_CHUNK_BYTES)
            else:
                from boto3.s3.transfer import TransferConfig

                object_key = f"{self._prefix}/{key}" if self._prefix else key
                config = TransferConfig(multipart_threshold=LOG_CHUNK_BYTES, multipart_chunksize=LOG_CHUNK_BYTES)
                self._s3().upload_fileobj(_ChunkReader(chunks), self._bucket, object_key, Config=config)
        except ObjectStorageError:
            raise
        except Exception as error:
            raise ObjectStorageError(f"writing {key!r} to {self.base_uri}: {error}") from None
        return self.uri(key)

    def _key(self, uri: str) -> str:
        """The key of ``uri`` below this storage's base; a stored URI never leaves the base."""
        if not uri.startswith(self.base_uri + "/"):
            raise ObjectStorageError(f"{uri!r} is not below this storage's {self.base_uri!r}")
        key = uri[len(self.base_uri) + 1 :]
        if any(part in ("", ".", "..") for part in key.split("/")):
            raise ObjectStorageError(f"{uri!r} is not below this storage's {self.base_uri!r} (empty, '.' or '..' part)")
        return key

    def read(self, uri: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The object at ``uri``, in chunks; from byte ``start``, at most ``length`` bytes (a page of a
        log too large to load whole: a ranged read on S3, a seek in a file)."""
        key = self._key(uri)
        try:
            if self.scheme == "file":
                with open(Path(urlsplit(self.base_uri).path) / key, "rb") as handle:
                    handle.seek(start)
                    left = length
                    while (left is None or left > 0) and (
                        chunk := handle.read(LOG_CHUNK_BYTES if left is None else min(LOG_CHUNK_BYTES, left))
                    ):
                        left = None if left is None else left - len(chunk)
                        yield chunk
            else:
                object_key = f"{self._prefix}/{key}" if self._prefix else key
                ranged = (
                    {}
                    if start == 0 and length is None
                    else {"Range": f"bytes={start}-{'' if length is None else start + length - 1}"}
                )
                body = self._s3().get_object(Bucket=self._bucket, Key=object_key, **ranged)["Body"]
                yield from body.iter_chunks(LOG_CHUNK_BYTES)
        except Exception as error:
            raise ObjectStorageError(f"reading {uri!r}: {error}") from None

    def delete(self, uri: str) -> None:
        """Remove the object at ``uri`` (gone already: nothing to do)."""
        key = self._key(uri)
        try:
            if self.scheme == "file":
                (Path(urlsplit(self.base_uri).path) / key).unlink(missing_ok=True)
            else:
                object_key = f"{self._prefix}/{key}" if self._prefix else key
                self._s3().delete_object(Bucket=self._bucket, Key=object_key)
        except Exception as error:
            raise ObjectStorageError(f"deleting {uri!r}: {error}") from None

    def size(self, uri: str) -> int:
        """The object's size in bytes."""
        key = self._key(uri)
        try:
            if self.scheme == "file":
                return (Path(urlsplit(self.base_uri).path) / key).stat().st_size
            object_key = f"{self._prefix}/{key}" if self._prefix else key
            return int(self._s3().head_object(Bucket=self._bucket, Key=object_key)["ContentLength"])
        except Exception as error:
            raise ObjectStorageError(f"reading the size of {uri!r}: {error}") from None
