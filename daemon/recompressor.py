"""Compresses, when the daemon is idle, the packs its flusher filled raw to keep up.

A pack is compressed a slice at a time (fs/recompress.py): reading and compressing in a worker
thread, appending and switching the index while no batch uses the pack, as a batch would. It
starts only after a check interval with no new batch, nothing dirty and no FUSE request, and
pauses the same way between slices, so it does not compete with the user for the two cores.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import trio

from cowfs.daemon.flusher import Flusher
from cowfs.fs.errors import CorruptChunkError
from cowfs.fs.recompress import PackBusy, PackRewrite, relocate

log = logging.getLogger(__name__)

QUIET_SECONDS = 2.0
# FUSE requests without writes hold compression back this long at most: a file browser that
# polls the workspace every second must not leave the store 3x its size.
PATIENCE_SECONDS = 30.0


class Recompressor:
    def __init__(self, flusher: Flusher, requests: Callable[[], int] = lambda: 0) -> None:
        self.flusher = flusher
        self.store = flusher.tree.store
        self._requests = requests  # FUSE requests served so far (fuse_reader.requests_served)
        self._taken_seen = -1
        self._requests_seen = -1
        self._writes_seen_at = -math.inf  # trio clock: the last look that found writes going on

    async def run(self) -> None:
        while True:
            await self._until_quiet()
            for pack_id in await trio.to_thread.run_sync(self.store.uncompressed_packs):
                await self._compress(pack_id)
            await trio.sleep(QUIET_SECONDS)  # packs others hold are looked at again after this

    async def _until_quiet(self) -> None:
        """Return once a whole interval passed without a batch taken, data left dirty or a FUSE
        request (the user's imports and reads get both cores), or without the first two for
        ``PATIENCE_SECONDS`` whatever the requests."""
        while True:
            taken, requests = self.flusher.batches_taken, self._requests()
            writing = taken != self._taken_seen or self.flusher.busy
            if writing:
                self._writes_seen_at = trio.current_time()
            patient = trio.current_time() - self._writes_seen_at < PATIENCE_SECONDS
            self._taken_seen, previous_requests, self._requests_seen = taken, self._requests_seen, requests
            if not writing and (requests == previous_requests or not patient):
                return
            await trio.sleep(QUIET_SECONDS)

    async def _compress(self, pack_id: int) -> None:
        if self.store.appending_pack == pack_id:
            await self.flusher.rotate_pack()
            if self.store.appending_pack == pack_id:  # a batch still holds it: later
                return
        try:
            rewrite = await trio.to_thread.run_sync(PackRewrite, self.store, pack_id)
        except FileNotFoundError:
            await trio.to_thread.run_sync(self.store.forget_uncompressed, pack_id)
            return
        except PackBusy:
            return
        try:
            with rewrite:
                saved = 0
                steps = rewrite.steps()
                while (step := await trio.to_thread.run_sync(next, steps, None)) is not None:
                    await self._until_quiet()
                    moving = await trio.to_thread.run_sync(rewrite.moving, *step)
                    saved += await self.flusher.in_pack_thread(relocate, self.store, moving)
                await self.flusher.in_pack_thread(rewrite.finish)
        except CorruptChunkError as exc:
            message = f"pack {pack_id} left uncompressed: {exc}; run `cowfs fsck` on this store"
            log.error(message)
            self.store.flag_damage(message)
            await trio.to_thread.run_sync(self.store.forget_uncompressed, pack_id)
            return
        except OSError as exc:
            log.warning("compressing pack %d failed, will try again: %s", pack_id, exc)
            return
        log.info("compressed pack %d: %d bytes saved", pack_id, saved)
