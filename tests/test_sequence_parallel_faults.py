"""Sequence-parallel group lifecycle (gloo, CPU): crashed workers fail a call clearly and are replaced, workers die
with their leader, close() leaves no process behind."""
from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from sp_helpers import CPU, SPEC, inputs, process_gone
from wan_distill.config import RunConfig
from wan_distill.parallel import SequenceParallelDiT, WorkerCrashed
from wan_distill.pipeline import load_run_dit
from wan_distill.tiny import write_model_dir


@pytest.fixture(scope="module")
def t2v_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("sp_faults") / "t2v", "t2v", SPEC)


@pytest.fixture(scope="module")
def reference(t2v_dir):
    return load_run_dit(t2v_dir, RunConfig(), CPU)


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start(model_dir, size: int) -> SequenceParallelDiT:
    return SequenceParallelDiT(functools.partial(load_run_dit, model_dir, RunConfig()), size, CPU, timeout_s=60)


def wait_gone(pids, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(process_gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_worker_killed_mid_call_fails_that_call_then_the_group_recovers(t2v_dir, reference, single_thread):
    dit = start(t2v_dir, 3)
    args = inputs(reference.cfg, 2, 2, 6, 10)
    try:
        old = dit.worker_pids
        victim = old[0]  # rank 1
        os.kill(victim, signal.SIGSTOP)  # frozen: the call below will be waiting on it inside a collective
        result: dict = {}
        call = threading.Thread(target=lambda: result.update(out=_call(dit, args)))
        call.start()
        time.sleep(1.0)
        assert call.is_alive()  # blocked on the frozen rank
        os.kill(victim, signal.SIGKILL)
        call.join(30)
        assert not call.is_alive(), "the call hangs after a worker died"
        error = result["out"]
        assert isinstance(error, WorkerCrashed)
        assert f"rank 1 (pid {victim}) was killed by SIGKILL (exit code -9)" in str(error)
        assert "restart" in str(error)
        assert wait_gone(old), "workers of the failed group are still running"
        assert not torch.distributed.is_initialized()
        # the next call starts new workers and is correct
        out = dit(*args)
        assert len(dit.worker_pids) == 2 and not set(dit.worker_pids) & set(old)
        torch.testing.assert_close(out, reference(*args), atol=1e-5, rtol=1e-5)
    finally:
        pids = dit.worker_pids
        dit.close()
    assert wait_gone(pids)


def _call(dit, args):
    try:
        return dit(*args)
    except Exception as e:  # noqa: BLE001 - handed to the test thread
        return e


def test_worker_died_between_calls_is_replaced_without_failing(t2v_dir, reference, single_thread, caplog):
    dit = start(t2v_dir, 2)
    args = inputs(reference.cfg, 1, 1, 2, 14)
    try:
        torch.testing.assert_close(dit(*args), reference(*args), atol=1e-5, rtol=1e-5)
        (victim,) = dit.worker_pids
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15  # until it can be reaped (all its threads gone), as the next call checks
        while victim in [p.pid for p in multiprocessing.active_children()] and time.monotonic() < deadline:
            time.sleep(0.05)
        out = dit(*args)
        assert dit.worker_pids != [victim]
        torch.testing.assert_close(out, reference(*args), atol=1e-5, rtol=1e-5)
        assert any(f"rank 1 (pid {victim}) was killed by SIGKILL" in r.getMessage() for r in caplog.records)
    finally:
        pids = dit.worker_pids
        dit.close()
    assert wait_gone(pids)
    with pytest.raises(RuntimeError, match="closed"):
        dit(*args)


def failing_in_workers(model_dir, device):
    """A loader that works in the leader and raises in the workers."""
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("weights unreadable on this rank")
    return load_run_dit(model_dir, RunConfig(), device)


def test_worker_error_at_start_is_reported_with_its_exception(t2v_dir, single_thread):
    before = set(multiprocessing.active_children())
    with pytest.raises(WorkerCrashed, match=r"rank 1 \(pid \d+\) failed: RuntimeError: weights unreadable on this rank"):
        SequenceParallelDiT(functools.partial(failing_in_workers, t2v_dir), 2, CPU, timeout_s=60)
    assert set(multiprocessing.active_children()) <= before
    assert not torch.distributed.is_initialized()


LEADER = textwrap.dedent("""
    import sys, functools, torch
    from wan_distill.config import RunConfig
    from wan_distill.parallel import SequenceParallelDiT
    from wan_distill.pipeline import load_run_dit

    if __name__ == "__main__":
        torch.set_num_threads(1)
        dit = SequenceParallelDiT(functools.partial(load_run_dit, sys.argv[1], RunConfig()), 3, "cpu")
        print(" ".join(map(str, dit.worker_pids)), flush=True)
        x, ctx = torch.randn(1, 16, 4, 8, 12), torch.randn(1, 7, dit.cfg.text_dim)
        while True:  # forwards back to back: the leader is killed inside one (or between two)
            dit(x, torch.tensor([500.0]), ctx)
""")


def test_workers_exit_when_the_leader_is_killed(t2v_dir, tmp_path):
    script = tmp_path / "leader.py"
    script.write_text(LEADER)
    leader = subprocess.Popen([sys.executable, str(script), str(t2v_dir)], stdout=subprocess.PIPE, text=True)
    try:
        line = leader.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        time.sleep(1.0)
        assert leader.poll() is None and not any(process_gone(p) for p in pids)
        leader.kill()
        leader.wait(10)
        assert wait_gone(pids, 15.0), "workers outlived their leader"
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait(10)
