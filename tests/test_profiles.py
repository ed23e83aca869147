"""Deployment profiles (wan_distill.profiles): names -> models to load, GPU of each, dtype, weights roots; bad names
and bad $WAN_GPU_MAP values are refused naming what is allowed; the generated repository's config.pbtxt files
(KIND_GPU + gpus, explicit load list) come from the one spec. No GPU is needed."""
import re

import pytest
import yaml

from wan_distill import profiles as P
from wan_distill.memory import MemoryPlanError
from wan_distill.serving.repository import repository

from conftest import ROOT

GiB = 1 << 30
T2V_MODELS = {"wan_t2v", "wan_t2v_request", "wan_t2v_stream", "wan_t2v_dit", "wan_text_encoder", "wan_decode_to_mp4"}


def gpus_of(r: P.ResolvedProfile) -> dict[str, int | None]:
    return {p.model: p.gpu for p in r.placements}


def test_t2v_14b_loads_only_the_distilled_t2v_on_one_gpu():
    r = P.resolve("t2v-14b")
    assert set(r.models) == T2V_MODELS
    assert r.tritonserver_args()[0] == "--model-control-mode=explicit"
    assert sorted(a.removeprefix("--load-model=") for a in r.tritonserver_args()[1:]) == sorted(T2V_MODELS)
    g = gpus_of(r)
    assert {m for m, gpu in g.items() if gpu is not None} == {"wan_t2v_dit", "wan_text_encoder", "wan_decode_to_mp4"}
    assert set(r.gpu_need()) == {0} and r.gpu_need()[0] < 79 * GiB  # one 80 GB GPU
    assert r.env == {"WAN_T2V_MODEL_PATH": "/weights/Wan2.1-T2V-14B"}
    assert {p.model: p.dtype for p in r.placements if p.gpu is not None} == {
        "wan_t2v_dit": "bf16", "wan_text_encoder": "bf16", "wan_decode_to_mp4": "fp32"}


def test_baseline_loads_only_when_asked():
    plain, extra, flag = P.resolve("t2v-1.3b"), P.resolve("t2v-1.3b+baseline"), P.resolve("t2v-1.3b", {"WAN_BASELINE": "1"})
    assert not any("baseline" in m for m in plain.models)
    assert set(extra.models) - set(plain.models) == {"wan_t2v_baseline", "wan_t2v_baseline_request",
                                                     "wan_t2v_baseline_stream", "wan_t2v_dit_baseline"}
    assert set(flag.models) == set(extra.models) and flag.name == extra.name == "t2v-1.3b+baseline"
    base = next(p for p in extra.placements if p.model == "wan_t2v_dit_baseline")
    assert base.params["max_jobs_per_call"] == "1" and "2 row(s)" in base.memory.note  # CFG: cond + uncond


def test_each_profile_serves_its_tasks_roots_and_gpus():
    i2v = P.resolve("i2v-14b-720p", {"WAN_WEIGHTS_ROOT": "/w"})
    assert "wan_image_encoder" in i2v.models and "wan_t2v_dit" not in i2v.models
    assert i2v.env == {"WAN_I2V_MODEL_PATH": "/w/Wan2.1-I2V-14B-720P"}
    assert gpus_of(i2v)["wan_i2v_dit"] == 0 and gpus_of(i2v)["wan_decode_to_mp4"] == 1  # two GPUs by default
    both = P.resolve("t2v+i2v", {"WAN_T2V_MODEL_PATH": "/mine/t2v"})
    assert {"wan_t2v_dit", "wan_i2v_dit"} <= set(both.models)
    assert both.env["WAN_T2V_MODEL_PATH"] == "/mine/t2v"  # a set variable wins over the profile's root
    assert gpus_of(both)["wan_t2v_dit"] != gpus_of(both)["wan_i2v_dit"]
    assert P.resolve("t2v+i2v+baseline").baseline
    small, big = P.resolve("t2v-1.3b"), P.resolve("t2v-14b")
    assert sum(small.gpu_need().values()) < sum(big.gpu_need().values())


def test_fp8_picks_the_fp8_configs_and_plans_fewer_bytes(tmp_path):
    bf16, fp8 = P.resolve("t2v-14b"), P.resolve("t2v-14b", {"WAN_DIT_DTYPE": "fp8"}, project_root=tmp_path)
    assert fp8.env["WAN_T2V_CONFIG"] == str(tmp_path / "configs/distill/wan_t2v_distill_fp8_4step_cfg.json")
    assert (ROOT / "configs/distill/wan_t2v_distill_fp8_4step_cfg.json").is_file()
    w = {r.dit_dtype: next(p.memory.weights for p in r.placements if p.model == "wan_t2v_dit") for r in (bf16, fp8)}
    assert w["fp8"] < 0.55 * w["bf16"]
    with pytest.raises(P.ProfileError, match="WAN_DIT_DTYPE must be bf16 or fp8"):
        P.resolve("t2v-14b", {"WAN_DIT_DTYPE": "int4"})


def test_plan_follows_the_model_roots_config_json(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t2v", "dim": 1536, "ffn_dim": 8960, "num_heads": 12, '
                                          '"num_layers": 30}')
    r = P.resolve("t2v-14b", {"WAN_T2V_MODEL_PATH": str(tmp_path)})
    assert "dim 1536, 30 layers" in next(p.memory.note for p in r.placements if p.model == "wan_t2v_dit")


def test_unknown_profile_lists_the_profiles():
    for bad in ("t2v-7b", "t2v-14b+fast", ""):
        with pytest.raises(P.ProfileError) as e:
            P.resolve(bad)
        assert all(name in str(e.value) for name in P.PROFILES) and "+baseline" in str(e.value)


@pytest.mark.parametrize("text, error", [
    ("dit", r"'dit' is not KEY=GPU"),
    ("=1", r"is not KEY=GPU"),
    ("gpu=1", r"unknown key 'gpu' for profile t2v-14b; keys: dit, t2v_dit, text, vae"),
    ("image=1", r"unknown key 'image'"),                 # t2v-14b loads no image encoder
    ("dit_baseline=1", r"unknown key 'dit_baseline'"),   # nor a baseline
    ("dit=-1", r"dit='-1': the GPU must be an index >= 0"),
    ("text=one", r"text='one'"),
    ("dit=0,t2v_dit=1", r"t2v_dit is placed twice"),
])
def test_gpu_map_errors(text, error):
    with pytest.raises(P.ProfileError, match=error):
        P.resolve("t2v-14b", {"WAN_GPU_MAP": text})


def test_gpu_map_places_models():
    r = P.resolve("t2v-14b+baseline", {"WAN_GPU_MAP": " dit=0, dit_baseline=1 ,text=1,"})
    g = gpus_of(r)
    assert (g["wan_t2v_dit"], g["wan_t2v_dit_baseline"], g["wan_text_encoder"], g["wan_decode_to_mp4"]) == (0, 1, 1, 0)
    assert P.resolve("t2v-1.3b+baseline").gpu_map["t2v_dit_baseline"] == 0  # default: beside its distilled DiT


def test_plan_check_refuses_and_suggests():
    r = P.resolve("t2v-14b+baseline")  # everything on GPU 0: 127 GiB
    with pytest.raises(MemoryPlanError, match=r"GPU 0 needs .* but has 79\.0 GiB free.*fits as WAN_GPU_MAP="):
        r.check({0: 79 * GiB, 1: 79 * GiB})
    with pytest.raises(MemoryPlanError, match=r"GPU 1 is not visible"):
        P.resolve("i2v-14b-720p").check({0: 139 * GiB})
    P.resolve("t2v-14b").check({0: 79 * GiB})  # fits one 80 GB GPU
    assert P.split_that_fits({"a": 5, "b": 4, "c": 3}, [7, 6]) == {"a": 1, "b": 0, "c": 0}
    assert P.split_that_fits({"a": 8}, [7, 7]) is None


def _instance_group(text: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith("instance_group")]
    return line


def test_generated_repository(tmp_path):
    r = P.resolve("t2v-14b", {"WAN_GPU_MAP": "dit=1"})
    out = P.write_repository(r, tmp_path / "repo", ROOT / "model_repository", ROOT)
    assert {p.name for p in out.iterdir()} == T2V_MODELS
    dit = (out / "wan_t2v_dit" / "config.pbtxt").read_text()
    assert _instance_group(dit) == "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 1 ] } ]"
    assert _instance_group((out / "wan_text_encoder" / "config.pbtxt").read_text()).endswith("gpus: [ 0 ] } ]")
    assert "KIND_CPU" in _instance_group((out / "wan_t2v_request" / "config.pbtxt").read_text())
    need = int(re.search(r'key: "memory_need_bytes" value: \{ string_value: "(\d+)"', dit)[1])
    assert need == next(p.memory.total for p in r.placements if p.model == "wan_t2v_dit")
    assert '"max_jobs_per_call" value: { string_value: "1" }' in dit
    assert f'"project_root" value: {{ string_value: "{ROOT}" }}' in dit
    link = out / "wan_t2v_dit" / "1" / "model.py"
    assert link.resolve() == (ROOT / "model_repository" / "wan_t2v_dit" / "1" / "model.py").resolve()
    assert (out / "wan_t2v" / "1").is_dir() and 'platform: "ensemble"' in (out / "wan_t2v" / "config.pbtxt").read_text()
    # everything else equals the committed spec's rendering (inputs, outputs, ensemble steps)
    committed = {s.name: s for s in repository()}
    body = lambda t: [ln for ln in t.splitlines() if not ln.startswith(("instance_group", "parameters"))]
    for name in T2V_MODELS:
        assert body((out / name / "config.pbtxt").read_text()) == body((ROOT / "model_repository" / name /
                                                                        "config.pbtxt").read_text()), name
    assert committed  # the committed CPU repository keeps KIND_CPU everywhere (test_repository checks it is fresh)
    # another profile into the same folder: the first profile's extra models disappear
    P.write_repository(P.resolve("i2v-14b-480p"), out, ROOT / "model_repository", ROOT)
    assert not (out / "wan_t2v_dit" / "config.pbtxt").exists() and (out / "wan_i2v_dit" / "config.pbtxt").is_file()


def test_cpu_rendering_of_a_profile(tmp_path):
    out = P.write_repository(P.resolve("t2v-1.3b"), tmp_path, ROOT / "model_repository", ROOT, device="cpu")
    dit = (out / "wan_t2v_dit" / "config.pbtxt").read_text()
    assert "KIND_CPU" in _instance_group(dit) and "memory_need_bytes" not in dit


def test_k8s_overlays_name_profiles():
    for overlay in (ROOT / "deploy" / "k8s" / "overlays").iterdir():
        docs = [d for d in yaml.safe_load_all((overlay / "profile.yaml").read_text()) if d]
        env = {e["name"]: e["value"] for d in docs if d["kind"] == "Deployment"
               for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        r = P.resolve(env["WAN_PROFILE"])
        gpus = int(next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
                   ["resources"]["limits"]["nvidia.com/gpu"])
        assert len(r.gpu_need()) == gpus, overlay.name  # the overlay asks for as many GPUs as the profile uses


def test_memory_table_covers_every_profile():
    table = P.memory_table()
    for name in P.PROFILES:
        assert f"| {name} |" in table
    assert "| t2v-14b+baseline | 720x1280x81 | 1 | GPU 0: **127.5 GiB**" in table  # needs a split (see the check)
