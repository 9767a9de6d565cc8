"""`armo serve`: the reward model over HTTP for RLHF trainers (OpenRLHF's remote reward model contract).

A worker owns a copy of the model (in `armo serve` the first runs on the main thread; HTTP runs on another); with
--devices or --workers there is one per device (or several on one), all taking from the one queue. Requests are
parsed and tokenised on the event loop, then queued; a free worker takes whatever is queued, waits for as many requests as
were open while it scored its last batch (clients that send one request each and come straight back, as
OpenRLHF's do; at most --max-wait-ms, at most --max-batch rows), scores them in one pass (token-budget
batches, as `armo score`) and hands every request exactly its own records back. A full queue answers 503
with Retry-After. Every error is a JSON `{"error": "..."}` with a 4xx status (5xx only for armo's own bugs),
one line, no traceback.

Routes: POST /get_reward (OpenRLHF), POST /score (armo's rows -> `armo score` records), GET /health, GET /info.
"""
from __future__ import annotations

import asyncio
import os
import queue
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .api import RewardModel
from .chat_text import split_query
from .configs import ServeConfig
from .errors import ArmoError, one_line
from .jsonl import strict_json
from .options import validate
from .rendering import TooLong, Tree


INLINE_ROWS = 8  # requests up to this many rows are tokenised on the event loop


class Abandoned(Exception):
    """Raised between forward batches to stop scoring a batch nobody will read (shutdown past its bound, or every
    client gone)."""


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Job:
    trees: list[Tree]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class Worker:
    """One model copy and what it has done: rows, batches, time busy, the rows it is scoring now."""

    rm: RewardModel
    name: str
    batches: int = 0
    rows: int = 0
    busy_s: float = 0.0
    scoring: int = 0

    def to_json(self) -> dict:
        return {"worker": self.name, "batches": self.batches, "rows_scored": self.rows, "busy_s": round(self.busy_s, 3),
                "scoring": self.scoring}


class Batcher:
    """The workers: each forms batches from the one queue of requests and scores them on its model copy."""

    def __init__(self, rm: RewardModel | list[RewardModel], max_batch: int, max_wait_s: float, max_queue: int,
                 names: list[str] | None = None):
        rms = rm if isinstance(rm, list) else [rm]
        self.workers = [Worker(m, n) for m, n in zip(rms, names or [str(i) for i in range(len(rms))])]
        self.rm, self.max_batch, self.max_wait_s = rms[0], max_batch, max_wait_s
        self.q: queue.Queue[Job | None] = queue.Queue(max_queue)
        # the first worker runs on the caller's thread (run()) or on `thread`; the others always on their own
        self.thread = threading.Thread(target=self._loop, name="armo-worker", daemon=True)
        self.others = [threading.Thread(target=self._loop, args=(lambda: True, w), name=f"armo-worker-{i}", daemon=True)
                       for i, w in enumerate(self.workers[1:], 1)]
        self.external = False  # True: the caller runs run() itself; the app's lifespan starts no thread
        self.open = self.peak = 0  # requests open now (event loop only), and the most open since the last batch
        self.deadline: float | None = None  # set by begin_shutdown: in-flight work past it is abandoned
        self.abandoned = 0  # requests answered 503 because of it
        self._lock = threading.Lock()  # a batch is formed by one worker at a time

    @property
    def batches(self) -> int:
        return sum(w.batches for w in self.workers)

    @property
    def rows(self) -> int:
        return sum(w.rows for w in self.workers)

    @property
    def busy_s(self) -> float:
        return sum(w.busy_s for w in self.workers)

    @property
    def scoring(self) -> int:
        return sum(w.scoring for w in self.workers)

    def begin_shutdown(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s

    def _abandon(self, batch: list[Job]) -> bool:
        past = self.deadline is not None and time.monotonic() >= self.deadline
        return past or all(j.future.done() for j in batch)

    def opened(self) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)

    def closed(self) -> None:
        self.open -= 1

    def start(self) -> None:
        """Score on threads of their own (an app run by another ASGI server)."""
        self.thread.start()
        self.start_others()

    def start_others(self) -> None:
        for t in self.others:
            t.start()

    def stop(self) -> None:
        for _ in self.workers:  # one stop for each worker's loop
            self.q.put(None)
        for t in (self.thread, *self.others):
            if t.is_alive():
                t.join(timeout=60)

    def run(self, alive: Callable[[], bool] = lambda: True) -> None:
        """Score on the calling thread until stop(), or until alive() turns false (the other workers on their own
        threads). `armo serve` runs this on the main thread: on a 2-core CPU, torch's kernels called from any other
        thread used about 1.7 of 2 cores and ran 10-20% slower (measured in-process)."""
        self.start_others()
        self._loop(alive)

    def submit(self, trees: list[Tree]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        try:
            self.q.put_nowait(Job(trees, fut, loop))
        except queue.Full:
            raise HTTPError(503, "the queue is full; retry shortly", {"Retry-After": "1"}) from None
        return fut

    def _loop(self, alive: Callable[[], bool] = lambda: True, worker: Worker | None = None) -> None:
        worker = worker or self.workers[0]
        held: Job | None = None
        while True:
            job = held
            while job is None:
                try:
                    job = self.q.get(timeout=0.5)
                    break
                except queue.Empty:
                    if not alive():
                        return
            held = None
            if job is None:
                return
            with self._lock:  # the other workers score meanwhile; this one gathers its batch
                batch, stop, held = self._gather(job)
            self._run(batch, worker)
            if stop:
                return

    def _gather(self, job: Job) -> tuple[list[Job], bool, Job | None]:
        """A batch that starts with `job`: (the batch, whether a stop came, a job held for the next batch)."""
        held: Job | None = None
        batch, n = [job], len(job.trees)
        # the clients seen during the last batch are likely on their way back: wait for them, not for a
        # fixed time (a lone client is never kept waiting), and never past --max-wait-ms
        expect, self.peak = self.peak, self.open
        deadline = time.monotonic() + self.max_wait_s
        stop = False
        while n < self.max_batch:
            if len(batch) >= expect and self.q.empty():
                break
            try:
                nxt = self.q.get(timeout=max(deadline - time.monotonic(), 0)) if deadline > time.monotonic() \
                    else self.q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            if n + len(nxt.trees) > self.max_batch:
                held = nxt  # first in the next batch
                break
            batch.append(nxt)
            n += len(nxt.trees)
        return batch, stop, held

    def _run(self, batch: list[Job], worker: Worker | None = None) -> None:
        worker = worker or self.workers[0]
        batch = [j for j in batch if not j.future.done()]  # clients that went away while queued
        if not batch:
            return

        def check(rows: int, tokens: int) -> None:
            if self._abandon(batch):
                raise Abandoned()

        trees = [t for j in batch for t in j.trees]
        t0 = time.perf_counter()
        worker.scoring = len(trees)
        try:
            check(0, 0)
            recs = worker.rm.score_prepared(trees, on_batch=check)
        except Abandoned:
            self.abandoned += sum(not j.future.done() for j in batch)  # clients still waiting: answered 503
            err = HTTPError(503, "the server is shutting down: this request was abandoned after --shutdown-timeout")
            for j in batch:
                j.loop.call_soon_threadsafe(_settle, j.future, None, err)
            return
        except Exception as e:  # a bug or the machine: every request of the batch gets it, the worker goes on
            err = e if isinstance(e, ArmoError) else HTTPError(500, f"internal error ({type(e).__name__}: {one_line(e)[:200]})")
            for j in batch:
                j.loop.call_soon_threadsafe(_settle, j.future, None, err)
            return
        finally:
            worker.scoring = 0
        worker.batches += 1
        worker.rows += len(trees)
        worker.busy_s += time.perf_counter() - t0
        i = 0
        for j in batch:
            j.loop.call_soon_threadsafe(_settle, j.future, recs[i:i + len(j.trees)], None)
            i += len(j.trees)


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():  # the client went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def make_app(rm: RewardModel | list[RewardModel], cfg: ServeConfig, names: list[str] | None = None):
    """The ASGI app (Starlette) around a loaded model, or several copies of it (one worker each)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    api_key = cfg.api_key or os.environ.get("ARMO_API_KEY") or None
    limit = int(cfg.max_body_mb * 1024 * 1024)
    batcher = Batcher(rm, cfg.max_batch, cfg.max_wait_ms / 1000.0, cfg.max_queue, names)
    rm = batcher.rm  # parsing and tokenising: the same for every copy
    objectives = rm.objectives

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"request body over --max-body-mb {cfg.max_body_mb:g}")
        body, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise HTTPError(413, f"request body over --max-body-mb {cfg.max_body_mb:g}")
            body.append(chunk)
        try:
            return strict_json(b"".join(body))
        except (ValueError, RecursionError) as e:
            raise HTTPError(400, f"malformed JSON ({one_line(e)[:160]})") from None

    def check_rows(n: int) -> None:
        if n > cfg.max_rows:
            raise HTTPError(413, f"{n} rows in one request, over --max-rows {cfg.max_rows}")

    async def prepared(rows: list, source: str) -> list[Tree]:
        # a few rows (OpenRLHF sends one) are tokenised right here: a thread hop costs more than the work and
        # its thread competes with the worker for the cores; a large request goes to a thread, so as not to
        # hold up the other connections
        if len(rows) <= INLINE_ROWS:
            return rm.prepare(rows, source)
        return await run_in_threadpool(rm.prepare, rows, source)

    async def scored(trees: list[Tree]) -> list[dict]:
        return await batcher.submit(trees) if trees else []

    async def get_reward(request: Request) -> dict:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise HTTPError(400, "expected a JSON object with 'query' (a list of strings)")
        queries, prompts = body.get("query"), body.get("prompts")
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise HTTPError(400, "field 'query': expected a list of strings")
        if prompts is not None and (not isinstance(prompts, list) or len(prompts) != len(queries)
                                    or not all(isinstance(p, str) for p in prompts)):
            raise HTTPError(400, "field 'prompts': expected a list of strings, one per query")
        labels = body.get("labels")
        if labels is not None and not isinstance(labels, list):
            raise HTTPError(400, "field 'labels': expected a list")
        check_rows(len(queries))
        rows = [split_query(q, prompts[i] if prompts else None, f"query[{i}]") for i, q in enumerate(queries)]
        recs = await scored(await prepared(rows, "query"))
        rewards = [r["score"] for r in recs]
        return {"rewards": rewards, "scores": rewards, "extra_logs": {o: [r["rewards"][o] for r in recs] for o in objectives}}

    async def score(request: Request) -> list:
        body = await read_json(request)
        rows = body.get("rows") if isinstance(body, dict) else body
        if not isinstance(rows, list):
            raise HTTPError(400, "expected a JSON list of rows (any shape `armo score` reads), or {\"rows\": [...]}")
        check_rows(len(rows))
        return await scored(await prepared(rows, "rows"))

    async def health(request: Request) -> dict:
        return {"status": "ok", "queued": batcher.q.qsize(), "scoring": batcher.scoring,
                "workers": [{"worker": w.name, "scoring": w.scoring} for w in batcher.workers]}

    async def info(request: Request) -> dict:
        return {**rm.info(), "server": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "max_queue": cfg.max_queue,
                                        "max_rows": cfg.max_rows, "max_body_mb": cfg.max_body_mb, "auth": api_key is not None,
                                        "batches": batcher.batches, "rows_scored": batcher.rows,
                                        "busy_s": round(batcher.busy_s, 3),
                                        "workers": [w.to_json() for w in batcher.workers]}}

    def endpoint(fn, open_route: bool = False, scoring: bool = False):
        async def handle(request: Request) -> JSONResponse:
            if scoring:
                batcher.opened()
            try:
                if api_key and not open_route:
                    got = request.headers.get("authorization", "")
                    if not secrets.compare_digest(got.encode(), f"Bearer {api_key}".encode()):
                        raise HTTPError(401, "missing or wrong bearer token (Authorization: Bearer KEY)",
                                        {"WWW-Authenticate": "Bearer"})
                return JSONResponse(await fn(request))
            except HTTPError as e:
                return JSONResponse({"error": e.message}, e.status, e.headers)
            except ClientDisconnect:  # the client hung up mid-body: nobody to answer
                print(f"armo serve: {request.method} {request.url.path}: the client hung up before its request "
                      f"was read", file=sys.stderr, flush=True)
                return JSONResponse({"error": "client disconnected"}, 400)
            except TooLong as e:  # serve takes --overflow error | truncate-prompt (no skip: every row gets a score)
                return JSONResponse({"error": f"{e.what} (this server runs --overflow error; start it with --overflow "
                                              f"truncate-prompt to drop the oldest prompt tokens)"}, 413)
            except ArmoError as e:
                return JSONResponse({"error": one_line(e)}, 400)
            except Exception as e:  # a bug: one line to the client and to the log, never a traceback
                msg = f"internal error ({type(e).__name__}: {one_line(e)[:200]})"
                print(f"armo serve: {msg}", file=sys.stderr, flush=True)
                return JSONResponse({"error": msg}, 500)
            finally:
                if scoring:
                    batcher.closed()
        return handle

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 404)
        return JSONResponse({"error": f"{request.method} {request.url.path}: "
                                      f"{'no such route' if status == 404 else 'method not allowed'} "
                                      f"(routes: POST /get_reward, POST /score, GET /health, GET /info)"}, status)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if not batcher.external:
            batcher.start()
        yield
        batcher.stop()  # after uvicorn has let in-flight requests finish

    routes = [Route("/get_reward", endpoint(get_reward, scoring=True), methods=["POST"]),
              Route("/score", endpoint(score, scoring=True), methods=["POST"]),
              Route("/health", endpoint(health, open_route=True), methods=["GET"]), Route("/info", endpoint(info), methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found}, lifespan=lifespan)
    app.state.batcher = batcher
    return app


def _exit_late(sig: int) -> None:
    print("armo serve: in-flight work did not stop within --shutdown-timeout: exiting", file=sys.stderr, flush=True)
    os._exit(128 + sig)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port (0: any free port). Made with its protocol named (IPPROTO_TCP): asyncio
    turns off Nagle's algorithm (TCP_NODELAY) only on connections of such a socket, and without it every answer on a
    kept-alive connection waited for the client's delayed ACK, about 40 ms (measured: 108 ms a request against 62 ms
    on a new connection, one client, the default model on this CPU)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:  # a port in use is the world's state: exit 1
        sock.close()
        raise OSError(e.errno, f"cannot listen there ({e.strerror})", f"{host}:{port}") from None
    sock.listen(2048)
    return sock


def start_http(app: Any, cfg: ServeConfig, sock: socket.socket) -> tuple[Any, threading.Thread, Batcher]:
    """uvicorn serving `app` (make_app) from a listening socket, on a thread the caller starts, and the app's batcher,
    which the caller runs on its own thread (Batcher.run) until the server stops (server.should_exit). `armo serve`
    and benchmarks/gpu_serve_jobs.py (the server in the process that holds the model) run the same pieces."""
    import uvicorn

    # uvicorn cancels what is left a little after armo abandons it, so that requests get armo's 503, not a cancel
    config = uvicorn.Config(app, log_level="warning", access_log=not cfg.quiet,
                            timeout_graceful_shutdown=int(cfg.shutdown_timeout) + 2)
    if not cfg.quiet:  # uvicorn logs access at INFO; the rest of its logging stays at WARNING
        import logging

        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    server = uvicorn.Server(config)
    batcher = app.state.batcher
    batcher.external = True
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="armo-http", daemon=True)
    return server, http, batcher


def worker_devices(cfg: ServeConfig) -> list[str | None]:
    """Each worker's device: --devices one each, or --workers copies on --device."""
    if cfg.devices is not None:
        if cfg.workers is not None:
            raise ArmoError("give --devices (a worker per device) or --workers (copies on --device), not both")
        if cfg.device is not None:
            raise ArmoError("give --devices or --device, not both")
        devices = [d.strip() for d in cfg.devices.split(",") if d.strip()]
        if not devices:
            raise ArmoError("--devices: name at least one device, e.g. cuda:0,cuda:1")
        if len(set(devices)) != len(devices):
            raise ArmoError(f"--devices {cfg.devices}: a device named twice (for copies on one device: --workers)")
        return list(devices)
    return [cfg.device] * (cfg.workers or 1)


def serve(cfg: ServeConfig) -> None:
    """Run `armo serve` until SIGINT/SIGTERM: in-flight requests finish, new connections are refused."""
    validate(cfg)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ArmoError("armo serve needs the serve extra: pip install 'armo-cli[serve]' (starlette, uvicorn)") from None

    devices = worker_devices(cfg)
    if devices[0] in (None, "cpu") and len(devices) > 1:
        import torch

        # one pool of cores, split: each worker's kernels take their share (torch's thread count is per process)
        torch.set_num_threads(max(1, torch.get_num_threads() // len(devices)))
    rms = [RewardModel(cfg.model, device=d, dtype=cfg.dtype, backbone=cfg.backbone, max_length=cfg.max_length,
                       overflow=cfg.overflow, batch_tokens=cfg.batch_tokens, max_padding=cfg.max_padding) for d in devices]
    rm = rms[0]
    names = [f"{i}:{m.backbone.device}" for i, m in enumerate(rms)]
    app = make_app(rms, cfg, names)
    sock = listening_socket(cfg.host, cfg.port)  # connections queue from now on: the address printed below answers
    port = sock.getsockname()[1]
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not (cfg.api_key or os.environ.get("ARMO_API_KEY")):
        print(f"armo serve: warning: bound to {cfg.host} without --api-key: anyone who reaches it can use it",
              file=sys.stderr, flush=True)
    server, http, batcher = start_http(app, cfg, sock)
    # HTTP on a thread, the model on the main thread (see Batcher.run); signals arrive on the main thread and
    # ask uvicorn for its graceful shutdown: in-flight requests finish (the worker goes on scoring them),
    # new connections are refused, then the lifespan stops the worker
    captured: list[int] = []

    def on_signal(sig: int, frame: Any) -> None:
        captured.append(sig)
        if len(captured) > 1:  # asked twice: no more waiting
            print(f"armo serve: {signal.Signals(sig).name} again: exiting now, in-flight requests abandoned",
                  file=sys.stderr, flush=True)
            os._exit(128 + sig)
        batcher.begin_shutdown(cfg.shutdown_timeout)
        server.handle_exit(sig, frame)
        # a forward batch that does not return (a hung device) must not keep the process: a last bound
        late = threading.Timer(cfg.shutdown_timeout + 10, _exit_late, (sig,))
        late.daemon = True
        late.start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    http.start()
    workers = f", {len(rms)} workers: {', '.join(names)}" if len(rms) > 1 else ""
    print(f"armo serve: {rm.model.path} on http://{cfg.host}:{port} (objectives: {', '.join(rm.objectives)}){workers}",
          flush=True)
    try:
        batcher.run(http.is_alive)
        http.join()
        if not server.started:
            raise ArmoError("the HTTP server stopped before it started (see the message above)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    abandoned = f", {batcher.abandoned} abandoned at --shutdown-timeout" if batcher.abandoned else ""
    print(f"armo serve: stopped ({batcher.rows} rows scored in {batcher.batches} batches; in-flight requests were "
          f"answered{abandoned})", file=sys.stderr, flush=True)
    if captured and captured[0] == signal.SIGINT:  # Ctrl-C: a normal stop, not a job to resume
        sys.exit(130)
    if captured:  # exit as the signal asked, as uvicorn does on the main thread (by the default action: the
        signal.signal(captured[0], signal.SIG_DFL)  # requests are answered, nothing is left to clean up)
        signal.raise_signal(captured[0])
