"""scripts/triton_server.py with a deployment profile: refused before anything starts when the profile is unknown or
its memory plan does not fit (simulated free GPU memory), and the real tritonserver serving a profile's generated
repository in explicit mode (rendered for CPU, tiny checkpoints): only the profile's models load, and they serve."""
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from wan_distill.memory import MemoryPlanError

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from demo import demo_env  # noqa: E402
from triton_server import TritonServer, main, prepare_profile  # noqa: E402

GiB = 1 << 30


def test_launcher_refuses_an_unknown_profile(capsys):
    assert main(["--profile", "t2v-7b", "--quiet"]) == 2
    assert "unknown profile 't2v-7b'; profiles: t2v-14b, t2v-1.3b" in capsys.readouterr().err


def test_launcher_refuses_a_plan_that_does_not_fit(tmp_path):
    with pytest.raises(MemoryPlanError, match=r"GPU 0 needs 74\.0 GiB .* has 40\.0 GiB free.*profiles that fit: t2v-1\.3b"):
        prepare_profile("t2v-14b", tmp_path, env={}, free_bytes=lambda: {0: 40 * GiB})
    assert not any(tmp_path.iterdir())  # nothing written
    repo, args, env = prepare_profile("t2v-14b", tmp_path, env={"WAN_T2V_MODEL_PATH": "/m"},
                                      free_bytes=lambda: {0: 79 * GiB})
    assert (repo / "wan_t2v_dit" / "config.pbtxt").is_file() and "--model-control-mode=explicit" in args
    assert env == {}  # a variable already set is not replaced


@pytest.mark.server
def test_profile_repository_serves_only_its_models(tiny_models, tmp_path):
    env = demo_env(tiny_models["t2v"], tiny_models["i2v"])
    repo, args, model_env = prepare_profile("t2v-1.3b", tmp_path / "repo", env=env, device="cpu")
    with TritonServer(repo, env={**env, **model_env}, extra_args=args, log_path=tmp_path / "server.log",
                      ready_timeout_s=300) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        ready = {m["name"] for m in client.get_model_repository_index(as_json=True)["models"]
                 if m.get("state") == "READY"}
        assert ready == {"wan_t2v", "wan_t2v_request", "wan_t2v_stream", "wan_t2v_dit", "wan_text_encoder",
                         "wan_decode_to_mp4"}
        items = []
        for name, value, dtype in (("PROMPT", b"a red fox", "BYTES"), ("SEED", 3, "INT64"), ("HEIGHT", 32, "INT64"),
                                   ("WIDTH", 48, "INT64"), ("NUM_FRAMES", 5, "INT64")):
            t = grpcclient.InferInput(name, [1], dtype)
            t.set_data_from_numpy(np.array([value], dtype=object if dtype == "BYTES" else np.int64))
            items.append(t)
        out = client.infer("wan_t2v", items, outputs=[grpcclient.InferRequestedOutput("FRAMES")])
        assert out.as_numpy("FRAMES").shape == (5, 32, 48, 3)
        client.close()


def test_exec_mode_hands_the_profile_to_the_binary(tmp_path):
    """The container path (docker/Dockerfile's wan-serve): the launcher execs the binary with the generated
    repository, explicit model control, one --load-model per model, then the caller's arguments; the profile's
    settings reach it through the environment."""
    import os
    import subprocess

    probe = tmp_path / "probe.sh"
    probe.write_text('#!/bin/sh\necho "ARGS $*"\necho "ROOT $WAN_T2V_MODEL_PATH"\n')
    probe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAN_")}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "triton_server.py"), "--exec", str(probe), "--",
                          "--exit-timeout-secs=30"], capture_output=True, text=True, timeout=60, check=True,
                         env={**env, "WAN_PROFILE": "t2v-14b", "WAN_WEIGHTS_ROOT": "/w",
                              "WAN_PROFILE_REPOSITORY": str(tmp_path / "repo"), "PATH": "/usr/bin:/bin"}).stdout
    args = dict(line.split(" ", 1) for line in out.splitlines())
    assert args["ARGS"].split() == [f"--model-repository={tmp_path / 'repo'}", "--model-control-mode=explicit",
                                    *(f"--load-model={m}" for m in ("wan_t2v_request", "wan_t2v", "wan_t2v_stream",
                                                                    "wan_t2v_dit", "wan_text_encoder",
                                                                    "wan_decode_to_mp4")),
                                    "--exit-timeout-secs=30"]
    assert args["ROOT"] == "/w/Wan2.1-T2V-14B"
    assert "KIND_GPU gpus: [ 0 ]" in (tmp_path / "repo" / "wan_t2v_dit" / "config.pbtxt").read_text()
