"""A sequence-parallel WanDiT: the calling process leads a group of ``sp_size`` processes that run each forward
together (Ulysses, :mod:`.ulysses`), behind the call of ``WanDiT.forward``::

    dit = SequenceParallelDiT(functools.partial(load_fn, model_dir, run), sp_size=2, device="cpu")
    out = dit(x, t, context, clip_fea, y)   # [B, 16, F, H, W] float32, as WanDiT.forward returns it
    dit.close()

Rank 0 is the calling process. It starts sp_size - 1 workers (torch.multiprocessing, spawn); each loads the DiT with
the same picklable loader, ``load(device) -> WanDiT``, on its own device (cuda:i+r next to a leader on cuda:i, or the
CPU), and all ranks join one torch.distributed group through a TCP store on 127.0.0.1 (NCCL on GPU, gloo on CPU).

Per call, rank 0 checks the inputs (``WanDiT.check_inputs``: a malformed call fails before any worker sees it), sends
each worker a small header over its pipe (which inputs, shapes, dtypes), broadcasts the tensors, runs its own share
of the forward and returns the gathered output; each worker answers over its pipe once done.

Failures:

* a worker that died between calls is found at the next call, which restarts the workers first (nothing fails);
* a worker that dies or raises during a call fails that call with :class:`WorkerCrashed` (rank, pid, exit code or
  signal, the worker's exception when it could send it); the group stops its other workers and starts new ones at
  the next call. The leader's own DiT stays loaded;
* workers die with their leader: idle, they wait on their pipe (EOF once the leader is gone); a watchdog thread
  exits as soon as their parent process changes (leader killed mid-call). PR_SET_PDEATHSIG is not used: it fires
  when the *thread* that started a worker exits, and a server's threads come and go while the process lives.

One group per process at a time (it uses the default torch.distributed process group).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..config import ConfigError, DiTConfig
from ..models.dit import WanDiT
from .ulysses import Ulysses, check_sp_geometry

log = logging.getLogger(__name__)

__all__ = ["SequenceParallelDiT", "WorkerCrashed", "rank_devices"]

_INPUTS = ("x", "t", "context", "clip_fea", "y")
_HOST = "127.0.0.1"


class WorkerCrashed(RuntimeError):
    """A worker of a sequence-parallel group died or failed during a call (the next call restarts the workers)."""


def rank_devices(device: torch.device | str, size: int) -> list[torch.device]:
    """Device of each rank: all on the CPU, or consecutive GPUs starting at the leader's."""
    device = torch.device(device)
    if device.type == "cpu":
        return [device] * size
    if device.type == "cuda":
        first, visible = device.index or 0, torch.cuda.device_count()
        if first + size > visible:
            raise ConfigError(f"sp_size {size} from {device} needs GPUs cuda:{first}..cuda:{first + size - 1}, "
                              f"but {visible} are visible")
        return [torch.device("cuda", first + r) for r in range(size)]
    raise ConfigError(f"sequence parallel runs on cpu or cuda devices, got {device}")


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            return f"was killed by signal {-code} (exit code {code})"
    return f"exited with code {code}"


class _Workers:
    """The worker processes, their pipes and the TCP store of one start of the group (no reference to the group,
    so that a finalizer can stop them)."""

    def __init__(self):
        self.procs: list = []  # index i: rank i + 1
        self.conns: list = []
        self.store: dist.TCPStore | None = None
        self.owns_pg = False

    @property
    def running(self) -> bool:
        return bool(self.procs)

    def dead(self) -> list[str]:
        return [f"rank {r} (pid {p.pid}) {_describe_exit(p.exitcode)}"
                for r, p in enumerate(self.procs, 1) if not p.is_alive()]

    def send(self, msg) -> None:
        for conn in self.conns:
            conn.send(msg)

    def expect(self, what: str, timeout_s: float) -> None:
        """Wait until every worker has sent ``(what,)``; raise WorkerCrashed when one dies or reports an error."""
        pending = dict(enumerate(self.conns, 1))
        deadline = time.monotonic() + timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerCrashed(f"no '{what}' from rank(s) {sorted(pending)} within {timeout_s:.0f} s")
            sentinels = {self.procs[r - 1].sentinel: r for r in pending}
            for ready in wait([*pending.values(), *sentinels], timeout=left):
                r = sentinels.get(ready) or next(r for r, c in pending.items() if c is ready)
                if r not in pending:
                    continue
                message = self._receive(r)
                if message is not None and message[0] == what:
                    del pending[r]
                    continue
                raise WorkerCrashed(self._failure(r, message))

    def _receive(self, rank: int):
        conn = self.conns[rank - 1]
        try:
            return conn.recv() if conn.poll() else None
        except (EOFError, OSError):
            return None

    def _failure(self, rank: int, message=None) -> str:
        proc = self.procs[rank - 1]
        if message is None:
            message = self._receive(rank)
        if message is not None and message[0] == "error":
            log.warning("sequence-parallel worker rank %d (pid %d): %s", rank, proc.pid, message[2])
            proc.join(2.0)
            return f"rank {rank} (pid {proc.pid}) failed: {message[1]}"
        proc.join(2.0)
        return f"rank {rank} (pid {proc.pid}) {_describe_exit(proc.exitcode)}"

    def diagnose(self, grace_s: float = 5.0) -> list[str]:
        """After a failed call: what the workers that stopped reported, or how they exited (waits up to grace_s for
        a first one, then briefly for the others)."""
        stopped = lambda: [not p.is_alive() or c.poll() for p, c in zip(self.procs, self.conns)]  # noqa: E731
        deadline = time.monotonic() + grace_s
        while not any(stopped()) and time.monotonic() < deadline:
            time.sleep(0.05)
        deadline = min(deadline, time.monotonic() + 0.5)
        while not all(stopped()) and time.monotonic() < deadline:
            time.sleep(0.05)
        report = []
        for r, (proc, conn) in enumerate(zip(self.procs, self.conns), 1):
            if not proc.is_alive() or conn.poll():
                report.append(self._failure(r))
        return report

    def stop(self, graceful: bool = True) -> None:
        """Ask the workers to leave (graceful: idle workers) or kill them (after a failed call), then leave the
        process group."""
        if graceful:
            for conn, proc in zip(self.conns, self.procs):
                if proc.is_alive():
                    try:
                        conn.send(("close",))
                    except OSError:
                        pass
            deadline = time.monotonic() + 10.0
            for proc in self.procs:
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        for conn in self.conns:
            conn.close()
        self.procs, self.conns, self.store = [], [], None
        if self.owns_pg and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as e:  # noqa: BLE001 - a broken group may fail to close; it is dropped either way
                log.warning("sequence-parallel DiT: leaving the process group: %s", e)
        self.owns_pg = False


class SequenceParallelDiT:
    """``sp_size`` processes running one WanDiT forward together; called like ``WanDiT.forward``.

    load: picklable ``load(device) -> WanDiT`` (e.g. ``functools.partial`` of a module-level loader), called once
    per rank. cfg: the DiT's config, to refuse an sp_size the heads do not allow before loading anything.
    timeout_s: longest wait for a worker to load, or in one collective. num_threads: torch threads per worker
    (default: the caller's). python: interpreter for the workers (default ``sys.executable``).
    """

    def __init__(self, load: Callable[[torch.device], WanDiT], sp_size: int, device: torch.device | str = "cpu", *,
                 cfg: DiTConfig | None = None, timeout_s: float = 600.0, num_threads: int | None = None,
                 python: str | None = None):
        if sp_size < 2:
            raise ConfigError(f"SequenceParallelDiT needs sp_size >= 2, got {sp_size} (sp_size 1 is the plain WanDiT)")
        if cfg is not None:
            check_sp_geometry(cfg, sp_size)
        self.sp_size = sp_size
        self.devices = rank_devices(device, sp_size)
        self.device = self.devices[0]
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        self._load, self._timeout_s = load, timeout_s
        self._num_threads = num_threads or torch.get_num_threads()
        self._python = python or sys.executable
        self._dit: WanDiT | None = None
        self._sp = Ulysses(0, sp_size)
        self._lock = threading.Lock()
        self._closed = False
        self._workers = _Workers()
        self._finalizer = weakref.finalize(self, self._workers.stop)
        with self._lock:
            self._start()

    # -- what callers of a WanDiT read ---------------------------------------------------------------------------
    @property
    def cfg(self) -> DiTConfig:
        return self._dit.cfg

    @property
    def dtype(self) -> torch.dtype:
        return self._dit.dtype

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._workers.procs]

    @property
    def bytes_sent(self) -> int:
        """Bytes rank 0 has sent to the other ranks inside the DiT forwards so far (see ``Ulysses.bytes_sent``)."""
        return self._sp.bytes_sent

    # -- calls -----------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Same inputs and result as ``WanDiT.forward``: x [B, 16, F, H, W], t [B] -> [B, out_dim, F, H, W] fp32."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this SequenceParallelDiT is closed")
            self._dit.check_inputs(x, t, context, clip_fea, y)
            dead = self._workers.dead()
            if dead:
                log.warning("sequence-parallel DiT: %s since the last call; restarting the workers", "; ".join(dead))
                self._workers.stop()
            if not self._workers.running:
                self._start()
            inputs = {name: None if a is None else a.to(self.device).contiguous()
                      for name, a in zip(_INPUTS, (x, t, context, clip_fea, y))}
            header = {name: None if a is None else (tuple(a.shape), a.dtype) for name, a in inputs.items()}
            try:
                self._workers.send(("forward", header))
                for a in inputs.values():
                    if a is not None:
                        dist.broadcast(a, src=0)
                out = self._dit(**inputs)
                self._workers.expect("done", self._timeout_s)
            except Exception as e:
                raise self._failed(e) from e
            except BaseException:  # e.g. KeyboardInterrupt mid-call: the workers are mid-forward, start afresh
                self._workers.stop(graceful=False)
                raise
            return out

    forward = __call__

    def close(self) -> None:
        """Stop the workers and leave the process group; later calls raise."""
        with self._lock:
            self._closed = True
            self._workers.stop()
            self._dit = None

    def __enter__(self) -> SequenceParallelDiT:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------------
    def _failed(self, error: Exception) -> WorkerCrashed:
        if isinstance(error, WorkerCrashed):
            report = [str(error)]
        else:
            report = self._workers.diagnose() or [f"rank 0 failed: {type(error).__name__}: {error}"]
        self._workers.stop(graceful=False)
        return WorkerCrashed(f"sequence-parallel DiT (sp_size {self.sp_size}) call failed: {'; '.join(report)}. "
                             "The workers restart at the next call")

    def _start(self) -> None:
        if dist.is_initialized():
            raise RuntimeError("torch.distributed's default process group is already in use in this process: "
                               "one SequenceParallelDiT per process")
        timeout = timedelta(seconds=self._timeout_s)
        w = self._workers
        w.store = dist.TCPStore(_HOST, 0, self.sp_size, is_master=True, wait_for_workers=False, timeout=timeout)
        ctx = mp.get_context("spawn")
        if self._python != sys.executable:
            ctx.set_executable(self._python)
        try:
            for rank in range(1, self.sp_size):
                ours, theirs = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=_worker_main, name=f"wan-sp-rank{rank}", daemon=True, args=(
                    rank, self.sp_size, self.devices[rank], self._load, theirs, w.store.port, self._timeout_s,
                    self._num_threads, os.getpid()))
                proc.start()
                theirs.close()
                w.procs.append(proc)
                w.conns.append(ours)
            if self._dit is None:  # loads while the workers load
                self._dit = self._load(self.device)
                check_sp_geometry(self._dit.cfg, self.sp_size)
                self._dit.sequence_parallel = self._sp
            w.expect("loaded", self._timeout_s)
            w.owns_pg = True
            dist.init_process_group(self.backend, store=w.store, rank=0, world_size=self.sp_size, timeout=timeout,
                                    **({"device_id": self.device} if self.backend == "nccl" else {}))
            w.expect("ready", self._timeout_s)
        except BaseException:
            w.stop(graceful=False)
            raise
        log.info("sequence-parallel DiT: %d ranks (%s) on %s, worker pids %s", self.sp_size, self.backend,
                 ", ".join(map(str, self.devices)), self.worker_pids)


# ----------------------------------------------------------------------------------------------
# Worker process
# ----------------------------------------------------------------------------------------------
def _exit_with_leader(leader_pid: int) -> None:
    """Exit this worker as soon as its parent (the leader) is gone, whatever the main thread is blocked in."""
    def watch():
        while os.getppid() == leader_pid:
            time.sleep(0.2)
        os._exit(3)
    threading.Thread(target=watch, name="leader-watchdog", daemon=True).start()


def _worker_main(rank: int, size: int, device: torch.device, load: Callable[[torch.device], WanDiT], conn,
                 store_port: int, timeout_s: float, num_threads: int, leader_pid: int) -> None:
    _exit_with_leader(leader_pid)
    try:
        torch.set_num_threads(num_threads)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dit = load(device)
        dit.sequence_parallel = Ulysses(rank, size)
        conn.send(("loaded",))
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(_HOST, store_port, size, is_master=False, timeout=timeout)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout,
                                **({"device_id": device} if backend == "nccl" else {}))
        conn.send(("ready",))
        with torch.inference_mode():
            while True:
                try:
                    message = conn.recv()
                except EOFError:  # the leader is gone
                    break
                if message[0] == "close":
                    break
                inputs = {name: None if spec is None else torch.empty(spec[0], dtype=spec[1], device=device)
                          for name, spec in message[1].items()}
                for a in inputs.values():
                    if a is not None:
                        dist.broadcast(a, src=0)
                dit(**inputs)
                conn.send(("done",))
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - report anything, then leave so that the others' collectives fail
        try:
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
        except Exception:  # noqa: BLE001
            pass
        os._exit(1)
    os._exit(0)
