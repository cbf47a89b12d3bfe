"""``s3``: any S3-compatible object store (AWS, Ceph RGW, MinIO, ...), through boto3.

Large objects go up as parallel multipart uploads (an upload that fails is aborted, so nothing
partial is ever visible); reads are streamed, with ranges; requests retry with backoff.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import Field, SecretStr

from forgehub.storage._http import range_header
from forgehub.storage.base import (
    CHUNK,
    AccessDenied,
    AdapterConfig,
    ObjectInfo,
    ObjectNotFound,
    StorageAdapter,
    StorageError,
    Unavailable,
)
from forgehub.urls import url_host

DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}
MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Config(AdapterConfig):
    bucket: str = Field(min_length=3, max_length=63, description="Bucket name.")
    prefix: str = Field(default="", description="Key prefix inside the bucket.")
    endpoint_url: str | None = Field(default=None, description="Endpoint; empty for AWS.")
    region: str = Field(default="us-east-1")
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    access_key_id: str = Field(default="", description="Access key id.")
    secret_access_key: SecretStr = Field(default=SecretStr(""), description="Secret key.")
    multipart_threshold_mb: int = Field(default=16, ge=5)
    multipart_chunk_mb: int = Field(default=16, ge=5)
    max_concurrency: int = Field(default=8, ge=1, le=64)
    max_attempts: int = Field(default=5, ge=1, le=20)
    create_bucket: bool = Field(default=True, description="Create the bucket if missing.")


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of chunks, for boto3's streaming upload."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _code(exc: Exception) -> str:
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error", {})
    return str(err.get("Code") or resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class S3Storage(StorageAdapter):
    kind = "s3"
    Config = S3Config
    config: S3Config

    @classmethod
    def hosts(cls, config: dict[str, Any]) -> list[str]:
        return url_host(config.get("endpoint_url"))

    @classmethod
    def store_identity(cls, config: dict[str, Any]) -> str:
        host = (config.get("endpoint_url") or "aws").rstrip("/")
        return f"s3:{host}/{config.get('bucket')}/{str(config.get('prefix') or '').strip('/')}"

    def __init__(self, config: S3Config) -> None:
        super().__init__(config)
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        self.client = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url or None,
            region_name=config.region,
            aws_access_key_id=config.access_key_id or None,
            aws_secret_access_key=config.secret_access_key.get_secret_value() or None,
            config=BotoConfig(
                s3={"addressing_style": config.addressing_style},
                retries={"max_attempts": config.max_attempts, "mode": "adaptive"},
                max_pool_connections=max(10, config.max_concurrency * 2),
                connect_timeout=10,
                read_timeout=60,
            ),
        )
        mb = 1024 * 1024
        self.transfer = TransferConfig(
            multipart_threshold=config.multipart_threshold_mb * mb,
            multipart_chunksize=config.multipart_chunk_mb * mb,
            max_concurrency=config.max_concurrency,
            use_threads=True,
        )
        self._bucket_checked = False

    def _key(self, key: str) -> str:
        return f"{self.config.prefix.strip('/')}/{key}" if self.config.prefix.strip("/") else key

    def _translate(self, exc: Exception, what: str) -> StorageError:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        if isinstance(exc, ClientError):
            code = _code(exc)
            if code in DENIED:
                return AccessDenied(f"S3 refused the credentials for {what} ({code})")
            if code in MISSING:
                return ObjectNotFound(f"no object {what!r}")
            if code == "NoSuchBucket":
                return ObjectNotFound(f"bucket {self.config.bucket!r} does not exist")
            return Unavailable(f"S3 error on {what}: {code}")
        if isinstance(exc, NoCredentialsError):
            return AccessDenied("no S3 credentials configured")
        if isinstance(exc, EndpointConnectionError | BotoCoreError):
            return Unavailable(f"cannot reach S3 at {self.config.endpoint_url or 'AWS'}: {exc}")
        return Unavailable(f"S3 failed on {what}: {exc}")

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.config.bucket)
        except ClientError as exc:
            if _code(exc) in {"404", "NoSuchBucket", "NotFound"} and self.config.create_bucket:
                try:
                    self.client.create_bucket(Bucket=self.config.bucket)
                except Exception as exc2:  # noqa: BLE001
                    raise self._translate(exc2, self.config.bucket) from exc2
            else:
                raise self._translate(exc, self.config.bucket) from exc
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, self.config.bucket) from exc
        self._bucket_checked = True

    def _put(self, key: str, chunks: Iterable[bytes], size: int | None) -> None:
        self._ensure_bucket()
        try:
            reader = io.BufferedReader(_ChunkReader(chunks), CHUNK)
            self.client.upload_fileobj(
                reader, self.config.bucket, self._key(key), Config=self.transfer
            )
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated at the boundary
            raise self._translate(exc, key) from exc

    def put_file(self, key: str, path: Any) -> None:
        """Files use boto3's parallel multipart upload from disk (the fastest path)."""
        from forgehub.storage.base import check_key

        check_key(key)
        self._ensure_bucket()
        try:
            self.client.upload_file(
                str(path), self.config.bucket, self._key(key), Config=self.transfer
            )
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, key) from exc

    def _open(self, key: str, start: int | None, end: int | None) -> Iterator[bytes]:
        kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Key": self._key(key)}
        kwargs.update(range_header(start, end))
        try:
            body = self.client.get_object(**kwargs)["Body"]
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, key) from exc

        def gen() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            except Exception as exc:  # noqa: BLE001
                raise self._translate(exc, key) from exc
            finally:
                body.close()

        return gen()

    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.config.bucket, Key=self._key(key))
        except Exception as exc:  # noqa: BLE001
            err = self._translate(exc, key)
            if isinstance(err, ObjectNotFound):
                return None
            raise err from exc
        return ObjectInfo(key, int(head["ContentLength"]))

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.config.bucket, Key=self._key(key))
        except Exception as exc:  # noqa: BLE001
            err = self._translate(exc, key)
            if not isinstance(err, ObjectNotFound):
                raise err from exc

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._key("") if self.config.prefix.strip("/") else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.config.bucket, Prefix=base + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(base) :], int(obj["Size"]))
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, prefix or "/") from exc

    direct = True

    def presign(self, key: str, expires: int = 3600) -> str | None:
        return self._sign("get_object", expires, Key=self._key(key))

    def _sign(self, op: str, expires: int, **params: Any) -> str:
        return str(
            self.client.generate_presigned_url(
                op, Params={"Bucket": self.config.bucket, **params}, ExpiresIn=expires
            )
        )

    def grant_put(self, key: str, size: int, expires: int = 900) -> dict[str, Any]:
        from forgehub.storage.base import check_key

        check_key(key)
        self._ensure_bucket()
        k = self._key(key)
        if size < self.transfer.multipart_threshold:
            return {"url": self._sign("put_object", expires, Key=k)}
        # parts as large as the config says, and never more than S3's 10,000
        part = max(self.transfer.multipart_chunksize, -(-size // 10_000))
        try:
            upload = self.client.create_multipart_upload(Bucket=self.config.bucket, Key=k)
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, key) from exc
        uid = upload["UploadId"]
        return {
            "part_size": part,
            "parts": [
                self._sign("upload_part", expires, Key=k, UploadId=uid, PartNumber=n + 1)
                for n in range(max(1, -(-size // part)))
            ],
            "complete": self._sign("complete_multipart_upload", expires, Key=k, UploadId=uid),
            "abort": self._sign("abort_multipart_upload", expires, Key=k, UploadId=uid),
        }

    def test(self) -> None:
        self._ensure_bucket()
        next(iter(self.list("")), None)
