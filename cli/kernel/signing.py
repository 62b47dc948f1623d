"""Saved variables are signed, so a restore never unpickles what this user did not save.

Unpickling runs code. A manifest or skeleton planted in ``.cowfs/vars/`` (by code that ran in
the workspace, by someone who can write a shared directory, or in a workspace or store that
came from elsewhere) would run as the user on ``%cowfs restore``. So, as Jupyter signs
notebooks, each manifest carries a keyed blake3 MAC made with a per-user secret kept outside
every workspace and store (``$XDG_CONFIG_HOME/cowfs/variables.key``, 0600 in a 0700
directory), and the manifest holds the blake3 hash of every skeleton it names. A restore
checks the MAC, then each skeleton against its hash, before anything is unpickled; what
fails is refused with one line unless the user says ``--trust``. Buffers are raw bytes handed
to numpy, never code, and are not covered.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path

import blake3

KEY_BYTES = 32


class UntrustedVariables(Exception):
    """The saved variables are not signed by this user's key; the message says why."""


def key_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "cowfs" / "variables.key"


def user_key(create: bool = True) -> bytes | None:
    """This user's secret, made on first use; None when it does not exist and ``create`` is off."""
    path = key_path()
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another kernel made it meanwhile
        return _read_key(path)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise UntrustedVariables(f"{path} must belong to you and be readable by you alone (chmod 600 {path})")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise UntrustedVariables(f"{path} is not a cowfs key ({len(key)} bytes); remove it to make a new one")
    return key


def key_id(key: bytes) -> str:
    """Names the key without revealing it, so a refusal can say 'another key' rather than 'altered'."""
    return blake3.blake3(b"cowfs key id", key=key).hexdigest()[:16]


def _mac(body: dict, key: bytes) -> str:
    return blake3.blake3(json.dumps(body, sort_keys=True).encode(), key=key).hexdigest()


def sign(manifest: dict, key: bytes) -> dict:
    body = {**manifest, "signer": key_id(key)}
    return {**body, "mac": _mac(body, key)}


def verify(manifest: dict, key: bytes | None) -> None:
    """Raise ``UntrustedVariables`` unless ``manifest`` was signed with ``key``."""
    if "mac" not in manifest:
        raise UntrustedVariables("they are not signed (saved by an older cowfs, or put there by someone else)")
    if key is None:
        raise UntrustedVariables(f"you have no cowfs key ({key_path()}), so they were not saved by you here")
    body = {k: v for k, v in manifest.items() if k != "mac"}
    if body.get("signer") != key_id(key):
        raise UntrustedVariables("they were signed with another key (another user, or another machine)")
    if not hmac.compare_digest(_mac(body, key), str(manifest["mac"])):
        raise UntrustedVariables("their manifest was changed after it was signed")


def check_skeleton(data: bytes, expected: str | None) -> None:
    if expected is None or not hmac.compare_digest(blake3.blake3(data).hexdigest(), expected):
        raise UntrustedVariables("a saved pickle is not the one its signed manifest names")
