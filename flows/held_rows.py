"""The validated rows a flow holds for a source, read on a worker thread while the source's
extractor still waits on its service (`ExtractContext.prefetch`): a run that merges its changes
into them does not wait for the read after the extraction."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from connectors.state.validated_cache import SourceRows, ValidatedCache


class HeldRowsAhead:
    """One read of `source`'s rows at (`digest`, `version`), started by `start` (at most once)."""

    def __init__(self, cache: ValidatedCache, source: str, digest: str, version: str):
        self.cache, self.source, self.digest, self.version = cache, source, digest, version
        self._pool: ThreadPoolExecutor | None = None
        self._read: Future[SourceRows | None] | None = None

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="held-rows")
            self._read = self._pool.submit(self.cache.load, self.source, self.digest, self.version)

    def rows(self) -> SourceRows | None:
        """The rows (None: a miss, as `ValidatedCache.load`): the read started ahead (waited for), or
        read now when none was started."""
        if self._read is None:
            return self.cache.load(self.source, self.digest, self.version)
        return self._read.result()

    def close(self) -> None:
        """Wait for a read nobody took (it only reads this user's own state files)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
