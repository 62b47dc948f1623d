"""The edge where cowfs meets object storage: which remotes a store knows, and their objects
through the standard AWS SDK (boto3). Everything above this module speaks in keys and bytes."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

from cowfs.fs.errors import StoreError
from cowfs.fs.store import Store, open_private

REMOTES_FILE = "remotes.json"


# -- configuration ---------------------------------------------------------------------------------
@dataclass
class RemoteConfig:
    name: str
    url: str
    endpoint_url: str | None = None

    @property
    def bucket_and_prefix(self) -> tuple[str, str]:
        if not self.url.startswith("s3://"):
            raise StoreError(f"remote {self.name}: {self.url!r} is not an s3://bucket/prefix address")
        bucket, _, prefix = self.url[len("s3://"):].partition("/")
        if not bucket:
            raise StoreError(f"remote {self.name}: {self.url!r} names no bucket")
        return bucket, prefix.strip("/")


def load_remotes(store: Store) -> dict[str, RemoteConfig]:
    path = store.path / REMOTES_FILE
    if not path.exists():
        return {}
    with os.fdopen(open_private(path, os.O_RDONLY)) as handle:
        return {name: RemoteConfig(**config) for name, config in json.load(handle).items()}


def save_remotes(store: Store, remotes: dict[str, RemoteConfig]) -> None:
    path = store.path / REMOTES_FILE
    temporary = path.with_suffix(".tmp")
    with os.fdopen(open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as handle:
        json.dump({name: asdict(config) for name, config in remotes.items()}, handle, indent=2)
    os.replace(temporary, path)


def remote_named(store: Store, name: str) -> RemoteConfig:
    remotes = load_remotes(store)
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none yet"
        raise StoreError(f"no remote named {name!r} (known: {known}); add one with "
                         "`cowfs remote add NAME s3://bucket/prefix`")
    return remotes[name]


# -- the bucket ------------------------------------------------------------------------------------
@dataclass
class Traffic:
    uploaded: int = 0
    downloaded: int = 0
    requests: int = 0


class Bucket:
    """The remote's objects, through the standard AWS SDK: credentials and endpoint the AWS way
    (environment, AWS_PROFILE, AWS_ENDPOINT_URL), or the endpoint given to `remote add`."""

    def __init__(self, config: RemoteConfig) -> None:
        try:
            import boto3
            import botocore.exceptions
        except ImportError:
            raise StoreError("remotes need the AWS SDK: `pip install 'cowfs[remote]'` (boto3)") from None
        self.name = config.name
        self.bucket, self.prefix = config.bucket_and_prefix
        self.client = boto3.client("s3", endpoint_url=config.endpoint_url or None)
        self.errors = botocore.exceptions
        self.traffic = Traffic()

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}/{kind}/{name}" if self.prefix else f"{kind}/{name}"

    def _call(self, what: str, action: Callable):
        try:
            self.traffic.requests += 1
            return action()
        except self.errors.NoCredentialsError:
            raise StoreError(f"remote {self.name}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
        except self.errors.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise StoreError(f"remote {self.name}: {what} failed: {code or exc}") from None
        except (self.errors.EndpointConnectionError, self.errors.ConnectionError) as exc:
            raise StoreError(f"remote {self.name}: cannot reach the object store ({exc})") from None
        except self.errors.HTTPClientError as exc:  # the connection broke mid-request, or timed out
            raise StoreError(f"remote {self.name}: {what} failed, the connection to the object store broke "
                             f"({exc}); run the command again, what arrived is kept") from None

    def names(self, kind: str) -> list[str]:
        return list(self.objects(kind))

    def objects(self, kind: str) -> dict[str, tuple[float, int]]:
        """Each object's age in seconds (by the object store's clock) and size."""
        prefix = self._key(kind, "")
        found: dict[str, tuple[float, int]] = {}

        def listing() -> None:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[item["Key"][len(prefix):]] = (item["LastModified"].timestamp(), item["Size"])

        self._call(f"listing {prefix}", listing)
        now = max([time.time(), *(stamp for stamp, _ in found.values())])  # never behind the store's clock
        return {name: (now - stamp, size) for name, (stamp, size) in found.items()}

    def delete(self, kind: str, name: str) -> None:
        key = self._key(kind, name)
        self._call(f"deleting {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def get(self, kind: str, name: str, first: int | None = None, last: int | None = None) -> bytes:
        extra = {} if first is None else {"Range": f"bytes={first}-{last}"}
        key = self._key(kind, name)
        body = self._call(f"reading {key}",
                          lambda: self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"].read())
        self.traffic.downloaded += len(body)
        return body

    def put_new(self, kind: str, name: str, body: bytes) -> None:
        """Write a key that must not exist yet (names are contents' hashes or unique ids)."""
        key = self._key(kind, name)
        self._call(f"writing {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body))
        if kind != "leases":  # coordination, not what was shared
            self.traffic.uploaded += len(body)
