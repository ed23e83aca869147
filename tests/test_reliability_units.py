"""Reliability pieces without a server: the client's retryable errors, the supervisor's flags and stub parsing."""
from __future__ import annotations

import pytest

from wan_client.errors import ServerError, ServerUnavailableError, from_triton
from wan_distill.serving.supervisor import _stub_of, http_address, supervised_args


class FakeTritonError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self._status, self._message = status, message

    def status(self):
        return self._status

    def message(self):
        return self._message


def test_a_dead_stub_is_retryable_other_internal_errors_are_not():
    dead = from_triton(FakeTritonError("StatusCode.INTERNAL", "Stub process 'wan_t2v_dit_0_0' is not healthy."))
    assert isinstance(dead, ServerUnavailableError) and dead.code == "UNAVAILABLE"
    bug = from_triton(FakeTritonError("StatusCode.INTERNAL", "wan_t2v_dit: RuntimeError: boom"))
    assert isinstance(bug, ServerError) and bug.code == "INTERNAL"


def test_supervised_args_add_explicit_mode_and_restrict_model_control():
    args = supervised_args(["--model-repository=/m"], "tok")
    assert "--model-control-mode=explicit" in args and "--load-model=*" in args
    assert "--http-restricted-api=model-repository:wan-model-control=tok" in args
    assert "--grpc-restricted-protocol=model-repository:wan-model-control=tok" in args
    chosen = supervised_args(["--model-control-mode=explicit", "--load-model=wan_t2v"], "tok")
    assert "--load-model=*" not in chosen
    with pytest.raises(ValueError, match="explicit"):
        supervised_args(["--model-control-mode=poll"], "tok")
    assert http_address(["--http-address=0.0.0.0", "--http-port", "9000"]) == "127.0.0.1:9000"


def test_stub_command_line_gives_model_instance_and_shm_region():
    argv = ["/opt/tritonserver/backends/python/triton_python_backend_stub", "/repo/wan_t2v_dit/1/model.py",
            "/triton_python_backend_shm_region_4f2a", "1048576", "1048576", "123", "/opt/python/lib", "336",
            "wan_t2v_dit_0_0", "/opt/tritonserver/backends/python"]
    stub = _stub_of(7, argv)
    assert (stub.model, stub.instance, stub.shm_region) == ("wan_t2v_dit", "wan_t2v_dit_0_0",
                                                            "triton_python_backend_shm_region_4f2a")
    assert _stub_of(8, ["/usr/bin/python3", "x"]) is None
