"""The one batching path between every route and the embedder.

A request decodes its image in a worker thread (so the event loop never touches pixels),
then waits in a bounded queue; one background task takes up to ``max_batch`` queued images,
runs a single forward pass in the inference thread, and hands each request its vector. While
one batch runs, the next batch's images are already being decoded in the other threads.

Background work (import jobs) yields to interactive requests: a batch takes queued interactive
images first and then no background ones, and background images enter the decode threads only as
threads free up, so an interactive request never queues behind a backlog of a job's decodes. A task marks
itself as background with :func:`background_priority`.

With a CUDA device the decode threads only check each JPEG's header and the batch is decoded
on the card (:mod:`same_search.embed.gpu_decode`); other formats are decoded here as before.

Before a decode is submitted its cost is read from the header (:mod:`same_search.embed.admission`):
a heavy picture (a large PNG, say) decodes in the admission's own threads within a megapixel
budget, or is refused with err_no 99 before it costs anything, so it never delays the light ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from same_search.config import LimitsConfig, ModelConfig
from same_search.embed.admission import DecodeAdmission
from same_search.embed.embedder import Embedder, ModelInfo
from same_search.embed.errors import EmbedderBusy, EmbedderStopping, EmbedderTimeout, EmbedFailed
from same_search.embed.gpu_decode import Decoded, JpegBatchDecoder, gather_batch, gpu_eligible, jpeg_thumbnail
from same_search.embed.images import ImageLimits, Region, decode, decode_cost, make_thumbnail, open_checked
from same_search.priority import PICTURE_NICENESS, nicer_by

log = logging.getLogger(__name__)


INTERACTIVE, BACKGROUND = 0, 1
_priority: ContextVar[int] = ContextVar("embed_priority", default=INTERACTIVE)


def background_priority() -> None:
    """Embed at background priority from now on in this task and the tasks it creates."""
    _priority.set(BACKGROUND)


@dataclass
class _Job:
    decoded: Decoded
    future: asyncio.Future[np.ndarray]


class EmbedService:
    """Bounded, batching, asynchronous front of an :class:`Embedder`."""

    def __init__(
        self,
        embedder: Embedder,
        cfg: ModelConfig,
        limits: LimitsConfig,
        decode_threads: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        gpu_decoder: JpegBatchDecoder | None = None,
        admission: DecodeAdmission | None = None,
    ) -> None:
        """``gpu_decoder`` decodes JPEGs in the batch; by default nvJPEG when the embedder runs
        on CUDA and ``[model] gpu_decode`` is on (tests inject a stand-in on the CPU).
        ``admission`` is the decode budget, shared by every model and the local features (the
        registry's); by default one of its own."""
        self.embedder = embedder
        self.cfg = cfg
        self.limits = ImageLimits(limits.min_side, limits.max_side, limits.max_pixels)
        self._owns_admission = admission is None
        self.admission = admission or DecodeAdmission.from_limits(limits)
        threads = decode_threads or embedder.plan.decode_threads
        lower = nicer_by(PICTURE_NICENESS)  # searches by contsign first (priority.py)
        self._decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="decode", initializer=lower)
        self.workers = embedder.plan.workers
        self.max_batch = embedder.plan.max_batch
        self._infer_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="infer", initializer=lower)
        # (priority, arrival, job): interactive before background, first come first served within.
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Job]] = asyncio.PriorityQueue()
        self._arrivals = itertools.count()
        self._background_decodes = asyncio.Semaphore(threads)
        self._pending = 0
        self._in_forward = 0
        self._waiting = 0  # decoded: queued, or held by a batching loop, not yet in a forward pass
        self._tasks: list[asyncio.Task] = []
        self.batches = 0
        self.images = 0
        self._on_batch = on_batch
        if gpu_decoder is None and embedder.device.type == "cuda" and cfg.gpu_decode:
            gpu_decoder = JpegBatchDecoder.probe(embedder.device, cfg.image_size)
        self.gpu_decoder = gpu_decoder

    @property
    def info(self) -> ModelInfo:
        """The serving model's identity."""
        return self.embedder.info

    @property
    def queue_size(self) -> int:
        """Requests admitted and not yet answered (decoding, queued or in the forward pass)."""
        return self._pending

    async def warm_up(self) -> None:
        """Run the first forward passes before the ports open (see :meth:`Embedder.warm_up`)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._infer_pool, self.embedder.warm_up)

    def start(self) -> None:
        """Start one batching loop per inference worker, all fed by the one queue."""
        self._tasks = [
            asyncio.create_task(self._run(), name=f"embed-batcher-{i}") for i in range(self.workers)
        ]

    async def close(self) -> None:
        """Stop batching; queued requests get err_no 5 (feature service unavailable)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            _, _, job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(EmbedderStopping("embedder is shutting down"))
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=True)
        if self._owns_admission:
            self.admission.close()

    async def embed_image(self, data: bytes, region: Region | None = None) -> np.ndarray:
        """Decode and embed one image (only ``region`` of it when given); err_no 100 for bad
        images, 1 for a bad region, 99 when full, 2 on timeout."""
        vector, _ = await self.embed_with_thumbnail(data, 0, region)
        return vector

    async def embed_with_thumbnail(
        self, data: bytes, thumbnail_side: int, region: Region | None = None
    ) -> tuple[np.ndarray, bytes | None]:
        """Like :meth:`embed_image`, plus a JPEG thumbnail (longest side ``thumbnail_side``; 0 = none)
        made from the already decoded picture (the region, when given), so storing one costs no
        second decode."""
        if self._pending >= self.cfg.queue_max:
            raise EmbedderBusy(f"embedder queue is full ({self.cfg.queue_max} requests waiting); retry later")
        self._pending += 1
        try:
            return await asyncio.wait_for(
                self._embed(data, thumbnail_side, region), timeout=self.cfg.timeout_s
            )
        except TimeoutError as exc:
            raise EmbedderTimeout(
                f"no vector within {self.cfg.timeout_s:g}s; the embedder is overloaded"
            ) from exc
        finally:
            self._pending -= 1

    async def _embed(
        self, data: bytes, thumbnail_side: int, region: Region | None
    ) -> tuple[np.ndarray, bytes | None]:
        loop = asyncio.get_running_loop()
        priority = _priority.get()
        cost = decode_cost(data, self.limits, self.cfg.image_size, region)  # the header: refusals here
        if priority == INTERACTIVE:
            async with self.admission.admit(data, cost) as heavy:
                decoded, thumbnail = await loop.run_in_executor(
                    heavy or self._decode_pool, self._decode, data, thumbnail_side, region
                )
        else:  # at most one background decode per thread: none waits in the pool's queue
            async with self._background_decodes, self.admission.admit(data, cost) as heavy:
                decoded, thumbnail = await loop.run_in_executor(
                    heavy or self._decode_pool, self._decode, data, thumbnail_side, region
                )
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._waiting += 1
        self._queue.put_nowait((priority, next(self._arrivals), _Job(decoded, future)))
        return await future, thumbnail

    def _decode(
        self, data: bytes, thumbnail_side: int, region: Region | None
    ) -> tuple[Decoded, bytes | None]:
        if self.gpu_decoder is not None and region is None:
            opened = open_checked(data, self.limits)  # limits checked here, whoever decodes
            if gpu_eligible(opened):
                try:
                    thumbnail = jpeg_thumbnail(opened, thumbnail_side) if thumbnail_side else None
                except Exception:  # a broken file: the full decode below says precisely why
                    pass
                else:
                    return Decoded(jpeg=data), thumbnail
        image = decode(data, self.limits, self.cfg.image_size, region)
        thumbnail = make_thumbnail(image, thumbnail_side) if thumbnail_side else None
        return Decoded(pixels=self.embedder.preprocess(image)), thumbnail

    def _cpu_pixels(self, data: bytes) -> np.ndarray:
        """A JPEG the GPU refused, decoded here (its error, if any, is the request's answer)."""
        return self.embedder.preprocess(decode(data, self.limits, self.cfg.image_size))

    def _forward(self, jobs: list[_Job]) -> list[np.ndarray | Exception]:
        """One forward pass over ``jobs``, in the inference thread: a vector or an error per job."""
        items = [job.decoded for job in jobs]
        if all(item.pixels is not None for item in items):
            return list(self.embedder.embed(np.stack([item.pixels for item in items])))
        pixels, errors = gather_batch(items, self.gpu_decoder, self._cpu_pixels)
        vectors = iter(self.embedder.embed_tensor(pixels) if pixels is not None else ())
        return [error if error is not None else next(vectors) for error in errors]

    def _decoding(self) -> int:
        """Admitted requests still decoding: neither waiting for a forward pass nor in one."""
        return self._pending - self._in_forward - self._waiting

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            self._waiting -= len(jobs)
            jobs = [job for job in jobs if not job.future.done()]  # timed out while queued
            if not jobs:
                continue
            self._in_forward += len(jobs)
            try:
                vectors = await loop.run_in_executor(self._infer_pool, self._forward, jobs)
            except Exception as exc:
                log.exception("forward pass failed for a batch of %d", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(EmbedFailed(f"feature extraction failed: {exc}"))
                continue
            finally:
                self._in_forward -= len(jobs)
            self.batches += 1
            self.images += len(jobs)
            if self._on_batch is not None:
                self._on_batch(len(jobs))
            for job, vector in zip(jobs, vectors, strict=True):
                if job.future.done():
                    continue
                if isinstance(vector, Exception):
                    job.future.set_exception(vector)
                else:
                    job.future.set_result(vector)

    async def _collect(self) -> list[_Job]:
        """The first queued job, whatever else is queued, and what is still being decoded if it
        arrives within ``max_wait_ms``.

        Waiting only while other requests are decoding means a lone request never pays the
        wait (single-search latency), while a burst still shares one forward pass. A batch
        led by an interactive image takes no background images: on a CPU a pass costs about
        its batch size, and a search should not pay for an import's images.
        """
        priority, _, first = await self._queue.get()
        jobs = [first]
        deadline = asyncio.get_running_loop().time() + self.cfg.max_wait_ms / 1000.0
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                item = self._queue.get_nowait()
            elif self._decoding() <= 0:
                break
            else:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item[0] > priority:  # background behind an interactive lead: the next batch's
                self._queue.put_nowait(item)
                break
            jobs.append(item[2])
        return jobs
