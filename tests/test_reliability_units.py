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


# ---------------------------------------------------------------------------------------------------------------
# wan_distill.limits: what every composing model refuses
# ---------------------------------------------------------------------------------------------------------------
import io  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from wan_distill.config import RunConfig  # noqa: E402
from wan_distill.errors import InvalidRequest  # noqa: E402
from wan_distill.limits import check_frames, check_i2v_geometry, check_latents  # noqa: E402
from wan_distill.requests import Geometry, decode_image  # noqa: E402

RUN = RunConfig()


@pytest.mark.parametrize("latents, rule", [
    (np.zeros((16, 1, 200, 200), np.float32), "1600x1600"),
    (np.zeros((16, 42, 2, 2), np.float32), "165 frames"),
    (np.zeros((16, 0, 4, 4), np.float32), "empty"),
    (np.full((16, 1, 4, 4), np.nan, np.float32), "finite"),
    (np.zeros((16, 1, 4, 4), np.float64), "float32"),
    (np.zeros((15, 1, 4, 4), np.float32), "[16, t, h, w]"),
])
def test_latents_outside_the_limits_are_refused_by_name(latents, rule):
    with pytest.raises(InvalidRequest, match="LATENTS") as ei:
        check_latents(latents, RUN)
    assert rule in str(ei.value)


def test_good_latents_and_frames_pass():
    check_latents(np.zeros((16, 3, 4, 6), np.float32), RUN)
    check_frames(np.zeros((9, 32, 48, 3), np.uint8), RUN)


@pytest.mark.parametrize("frames, rule", [
    (np.zeros((1, 33, 47, 3), np.uint8), "even"),
    (np.zeros((0, 32, 48, 3), np.uint8), "empty"),
    (np.zeros((200, 16, 16, 3), np.uint8), "200 frames"),
    (np.zeros((1, 32, 48, 3), np.float32), "uint8"),
])
def test_frames_the_encoder_cannot_take_are_refused_by_name(frames, rule):
    with pytest.raises(InvalidRequest, match="FRAMES") as ei:
        check_frames(frames, RUN)
    assert rule in str(ei.value)


def test_an_i2v_size_beyond_the_limits_names_the_image():
    check_i2v_geometry(Geometry(480, 832, 81), RUN)
    with pytest.raises(InvalidRequest, match="^IMAGE: its aspect ratio gives a 10240x160 video"):
        check_i2v_geometry(Geometry(10240, 160, 1), RUN)


def test_exif_orientation_turns_the_picture_upright():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: a portrait photo stored landscape
    Image.new("RGB", (96, 64)).save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), RUN.max_image_pixels).size == (64, 96)
