"""The real tritonserver serving model_repository/ on the tiny checkpoints (started by a fixture, stopped by PID).

Served output == in-process output bit for bit; every bad input -> INVALID_ARGUMENT naming the input while the
server keeps serving; cancellation stops the DiT between steps; perf_analyzer reports zero errors."""
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from wan_distill.config import RunConfig
from wan_distill.pipeline import WanPipeline
from wan_distill.video import decode_mp4

from conftest import ROOT, make_png

sys.path.insert(0, str(ROOT / "scripts"))
from demo import demo_env  # noqa: E402
from triton_server import TritonServer  # noqa: E402

from wan_client import WanClient  # noqa: E402
from wan_client.errors import InvalidRequestError, RequestTimeoutError  # noqa: E402

pytestmark = pytest.mark.server
DEMO = ROOT / "configs" / "demo"
SMALL = dict(height=32, width=48, num_frames=5)


def server_env(tiny_models, lora: bool = False) -> dict[str, str]:
    return demo_env(tiny_models["t2v"], tiny_models["i2v"], lora)


BASELINE_NEGATIVE = "blurry, static, low quality"


@pytest.fixture(scope="module")
def baseline_config(tmp_path_factory):
    """The demo T2V baseline config with its own negative_prompt (served without NEGATIVE_PROMPT it must be used)."""
    data = json.loads((DEMO / "wan_t2v_baseline_50step_cfg_demo.json").read_text())
    path = tmp_path_factory.mktemp("configs") / "t2v_baseline_negative.json"
    path.write_text(json.dumps({**data, "negative_prompt": BASELINE_NEGATIVE}))
    return path


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory, baseline_config):
    log = tmp_path_factory.mktemp("triton") / "server.log"
    env = {**server_env(tiny_models), "WAN_T2V_BASELINE_CONFIG": str(baseline_config)}
    with TritonServer(ROOT / "model_repository", env=env, log_path=log, ready_timeout_s=300) as srv:
        yield srv


def inputs(prompt=b"a red fox", seed=1, image=None, **ints):
    items = []

    def add(name, value, dtype):
        arr = np.array(value, dtype=np.object_ if dtype == "BYTES" else None)
        if dtype == "INT64":
            arr = arr.astype(np.int64)
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        items.append(t)

    if prompt is not None:
        add("PROMPT", [prompt], "BYTES")
    if image is not None:
        add("IMAGE", [image], "BYTES")
    if seed is not None:
        add("SEED", [seed], "INT64")
    for k, v in ints.items():
        add(k.upper(), [v], "INT64")
    return items


def infer(grpc, model, items, frames=True, timeout=None):
    outs = [grpcclient.InferRequestedOutput("VIDEO_MP4")] + ([grpcclient.InferRequestedOutput("FRAMES")] if frames else [])
    r = grpc.infer(model, items, outputs=outs, client_timeout=timeout)
    return r.as_numpy("VIDEO_MP4")[0], (r.as_numpy("FRAMES") if frames else None)


def in_process(tiny_models, task, config):
    return WanPipeline.from_model_dir(tiny_models[task], RunConfig.from_json(DEMO / config), device="cpu")


def assert_same_video(mp4: bytes, ref_mp4: bytes) -> None:
    """Equal frames went into both encoders; libx264's threads do not promise identical bytes under CPU load, so
    compare what the two files decode to (same size, same content up to the encoder's choices)."""
    a, b = decode_mp4(mp4), decode_mp4(ref_mp4)
    assert a.shape == b.shape
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < 1.0


def test_all_models_ready(grpc):
    for m in ("wan_t2v", "wan_i2v", "wan_t2v_baseline", "wan_i2v_baseline", "wan_text_encoder", "wan_image_encoder",
              "wan_t2v_dit", "wan_i2v_dit", "wan_vae_decoder", "wan_video_encoder", "wan_decode_to_mp4"):
        assert grpc.is_model_ready(m), m


def test_t2v_ensemble_equals_in_process(grpc, tiny_models):
    mp4, frames = infer(grpc, "wan_t2v", inputs(b"a red fox running through snow", 11, **SMALL))
    ref = in_process(tiny_models, "t2v", "wan_t2v_distill_4step_demo.json").text_to_video(
        "a red fox running through snow", seed=11, **SMALL)
    assert frames.shape == (5, 32, 48, 3)
    assert np.array_equal(frames, ref.frames)
    assert_same_video(mp4, ref.mp4)


def test_i2v_ensemble_equals_in_process(grpc, tiny_models):
    image = make_png(width=48, height=32, seed=3)
    mp4, frames = infer(grpc, "wan_i2v", inputs(b"waves", 5, image=image, **SMALL))
    ref = in_process(tiny_models, "i2v", "wan_i2v_distill_4step_demo.json").image_to_video(image, "waves", seed=5, **SMALL)
    assert np.array_equal(frames, ref.frames)
    assert_same_video(mp4, ref.mp4)


@pytest.fixture(scope="module")
def lora_server(tiny_models, tmp_path_factory):
    """The same repository serving base weights + the distill LoRA (only the distilled ensembles are loaded)."""
    log = tmp_path_factory.mktemp("triton_lora") / "server.log"
    with TritonServer(ROOT / "model_repository", env=server_env(tiny_models, lora=True), log_path=log,
                      ready_timeout_s=300, extra_args=["--model-control-mode=explicit", "--load-model=wan_t2v",
                                                       "--load-model=wan_i2v"]) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        yield client
        client.close()


def test_base_plus_lora_ensembles_equal_in_process(lora_server, tiny_models):
    _, frames = infer(lora_server, "wan_t2v", inputs(b"a lighthouse at dusk", 9, **SMALL))
    ref = in_process(tiny_models, "t2v", "wan_t2v_distill_4step_demo_lora.json").text_to_video(
        "a lighthouse at dusk", seed=9, **SMALL)
    assert np.array_equal(frames, ref.frames)
    image = make_png(width=48, height=32, seed=4)
    _, frames = infer(lora_server, "wan_i2v", inputs(b"leaves fall", 4, image=image, **SMALL))
    ref = in_process(tiny_models, "i2v", "wan_i2v_distill_4step_demo_lora.json").image_to_video(
        image, "leaves fall", seed=4, **SMALL)
    assert np.array_equal(frames, ref.frames)


def test_baseline_ensemble_equals_in_process(grpc, tiny_models, baseline_config):
    items = inputs(b"a lighthouse", 2, **SMALL)
    neg = grpcclient.InferInput("NEGATIVE_PROMPT", [1], "BYTES")
    neg.set_data_from_numpy(np.array([b"blurry"], dtype=np.object_))
    _, frames = infer(grpc, "wan_t2v_baseline", items + [neg])
    pipe = WanPipeline.from_model_dir(tiny_models["t2v"], RunConfig.from_json(baseline_config), device="cpu")
    ref = pipe.text_to_video("a lighthouse", seed=2, negative_prompt="blurry", **SMALL)
    assert np.array_equal(frames, ref.frames)
    # without NEGATIVE_PROMPT the run config's negative_prompt is used, exactly as in-process
    _, frames = infer(grpc, "wan_t2v_baseline", items)
    assert pipe.run.negative_prompt == BASELINE_NEGATIVE
    assert np.array_equal(frames, pipe.text_to_video("a lighthouse", seed=2, **SMALL).frames)
    assert not np.array_equal(frames, ref.frames)


def test_concurrent_requests_share_dit_steps_and_equal_alone(grpc, server, tiny_models):
    """Requests sent at once are batched step by step in the DiT; each video equals the in-process one alone."""
    prompts = [(b"a red fox", 21), (b"a blue boat", 22), (b"green hills", 23)]
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda p: infer(grpc, "wan_t2v", inputs(p[0], p[1], **SMALL))[1], prompts))
    pipe = in_process(tiny_models, "t2v", "wan_t2v_distill_4step_demo.json")
    for (prompt, seed), frames in zip(prompts, results):
        assert np.array_equal(frames, pipe.text_to_video(prompt.decode(), seed=seed, **SMALL).frames), prompt


def test_defaults_come_from_the_run_config(grpc):
    mp4, frames = infer(grpc, "wan_t2v", inputs(b"defaults", 0))
    assert frames.shape == (17, 192, 320, 3) and mp4[4:8] == b"ftyp"


def test_frames_only_sent_when_asked(grpc):
    r = grpc.infer("wan_t2v", inputs(b"x", 0, **SMALL), outputs=[grpcclient.InferRequestedOutput("VIDEO_MP4")])
    assert r.as_numpy("FRAMES") is None and r.as_numpy("VIDEO_MP4")[0][4:8] == b"ftyp"


def _bad(model, items, **kw):
    return pytest.param(model, items, id=kw.get("id"))


BIG_PNG = make_png(width=4200, height=4100)


@pytest.mark.parametrize("model,build,field", [
    ("wan_t2v", lambda: inputs(prompt=None), "PROMPT"),
    ("wan_t2v", lambda: inputs(prompt=None, **SMALL), "PROMPT"),
    ("wan_t2v", lambda: inputs(seed=None, **SMALL), "SEED"),
    ("wan_i2v", lambda: inputs(seed=None, image=make_png(), **SMALL), "SEED"),
    ("wan_i2v", lambda: inputs(prompt=None, image=make_png(), **SMALL), "PROMPT"),
    ("wan_t2v_baseline", lambda: inputs(seed=None, **SMALL), "SEED"),
    ("wan_i2v", lambda: inputs(**SMALL), "IMAGE"),
    ("wan_i2v", lambda: inputs(image=b"\x89PNG garbage", **SMALL), "IMAGE"),
    ("wan_i2v", lambda: inputs(image=BIG_PNG, **SMALL), "IMAGE"),
    ("wan_t2v", lambda: inputs(prompt=b"\xff\xfe bad utf8"), "PROMPT"),
    ("wan_t2v", lambda: inputs(height=40, width=48, num_frames=5), "HEIGHT"),
    ("wan_t2v", lambda: inputs(height=32, width=4096, num_frames=5), "WIDTH"),
    ("wan_t2v", lambda: inputs(height=32, width=48, num_frames=6), "NUM_FRAMES"),
    ("wan_t2v", lambda: inputs(height=32, width=48, num_frames=401), "NUM_FRAMES"),
    ("wan_i2v", lambda: inputs(image=make_png(), height=32, width=48, num_frames=8), "NUM_FRAMES"),
    ("wan_t2v", lambda: inputs(seed=-5, **SMALL), "SEED"),
    ("wan_t2v", lambda: inputs(**SMALL, fps=0), "FPS"),
], ids=["no-prompt", "no-prompt-with-sizes", "t2v-no-seed", "i2v-no-seed", "i2v-no-prompt", "baseline-no-seed",
        "i2v-no-image", "bad-image", "huge-image", "non-utf8", "height-16", "width-range",
        "frames-4k1", "frames-range", "i2v-frames", "negative-seed", "fps"])
def test_bad_input_is_invalid_argument_and_server_keeps_serving(grpc, model, build, field):
    with pytest.raises(InferenceServerException) as e:
        infer(grpc, model, build(), frames=False)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value.message()
    assert field in e.value.message()
    assert grpc.is_server_ready() and grpc.is_model_ready(model)


def test_wrong_dtype_and_shape_rejected(grpc):
    seed32 = grpcclient.InferInput("SEED", [1], "INT32")
    seed32.set_data_from_numpy(np.array([1], np.int32))
    with pytest.raises(InferenceServerException) as e:
        infer(grpc, "wan_t2v", inputs(seed=None) + [seed32], frames=False)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "SEED" in e.value.message()
    two = grpcclient.InferInput("PROMPT", [2], "BYTES")
    two.set_data_from_numpy(np.array([b"a", b"b"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as e:
        infer(grpc, "wan_t2v", [two] + inputs(prompt=None, seed=1), frames=False)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "PROMPT" in e.value.message()
    mp4, _ = infer(grpc, "wan_t2v", inputs(b"after errors", 3, **SMALL), frames=False)  # still serving
    assert mp4[4:8] == b"ftyp"


def test_client_library_against_real_server(server):
    with WanClient(server.grpc_url, timeout_s=120) as client:
        out = client.t2v("a small boat", seed=4, return_frames=True, **SMALL)
        assert out.frames.shape == (5, 32, 48, 3) and out.mp4[4:8] == b"ftyp"
        with pytest.raises(InvalidRequestError, match="HEIGHT"):
            client.t2v("x", seed=1, height=40, width=48, num_frames=5)


def test_timed_out_request_stops_the_dit_between_steps(server):
    """A 50-step CFG run at a larger size is cut by the client's deadline: the DiT logs that it stopped before one of
    its 50 steps (not after the last), and the instance serves the next request."""
    big = dict(height=480, width=832, num_frames=33)
    marker = re.compile(r"wan_t2v_dit_baseline: timed out \(request timeout [^)]*\) before denoising step (\d+)")
    before = len(marker.findall(server.log_tail(2000)))
    with WanClient(server.grpc_url, retries=0) as client:
        with pytest.raises(RequestTimeoutError):
            client.t2v("long", seed=1, model="wan_t2v_baseline", client_timeout=1.5, **big)
        deadline = time.monotonic() + 120
        while len(marker.findall(server.log_tail(2000))) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        steps = [int(n) for n in marker.findall(server.log_tail(2000))]
        assert len(steps) == before + 1 and 1 < steps[-1] <= 50
        out = client.t2v("short", seed=1, model="wan_t2v_baseline", **SMALL)
        assert out.mp4[4:8] == b"ftyp"


def test_perf_analyzer_reports_no_errors(server, grpc, tmp_path):
    def failures():
        stats = grpc.get_inference_statistics("wan_t2v", as_json=True)["model_stats"][0]["inference_stats"]
        return int(stats.get("fail", {}).get("count", 0)), int(stats.get("success", {}).get("count", 0))

    fail0, ok0 = failures()
    csv, data = tmp_path / "pa.csv", tmp_path / "input.json"
    small = {"HEIGHT": [32], "WIDTH": [48], "NUM_FRAMES": [5]}
    data.write_text(json.dumps({"data": [{"PROMPT": [p], "SEED": [s], **small} for p, s in (("a fox", 1), ("a cat", 2))]}))
    env = dict(os.environ, URL=server.grpc_url, CONCURRENCY="1", COUNT="3", STABILITY="1000", MAX_TRIALS="5", CSV=str(csv),
               INPUT_DATA=str(data))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "perf_t2v.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Throughput" in proc.stdout and csv.is_file()
    fail1, ok1 = failures()
    assert fail1 == fail0 and ok1 >= ok0 + 3
