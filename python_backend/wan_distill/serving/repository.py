"""The Triton model repository from one spec: every ``model_repository/*/config.pbtxt`` is rendered from here.

    python -m wan_distill.serving.repository            # rewrite model_repository/*/config.pbtxt
    python -m wan_distill.serving.repository --check    # exit 1 and name the files that differ (a test runs this)

Adding an input to the DiTs or the pipelines is one edit below. Each pipeline is an ensemble::

    wan_t2v : <pipeline>_request -> wan_text_encoder -> wan_t2v_dit -> wan_decode_to_mp4
    wan_i2v : <pipeline>_request -> wan_image_encoder -> wan_text_encoder -> wan_i2v_dit -> wan_decode_to_mp4

``wan_decode_to_mp4`` decodes and encodes in one process, the MP4 encoder fed frame chunks while the next latent
frame decodes; ``wan_vae_decoder`` and ``wan_video_encoder`` (the two halves) stay served for direct calls.

The request step validates every client input and resolves every default from the pipeline's run config before
anything fans out, so the composing models only ever see explicit, checked values.

Each pipeline also has a streaming twin, ``<pipeline>_stream`` (decoupled): it runs the same ensemble steps by BLS
(``wan_distill.serving.stream`` reads them from here) and streams progress events; see that module.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["Io", "Step", "ModelSpec", "Pipeline", "PIPELINES", "pipeline", "ensemble_steps", "repository", "render",
           "write_repository"]


@dataclass(frozen=True)
class Io:
    """One input or output tensor of a model."""

    name: str
    dtype: str  # Triton type without the TYPE_ prefix: STRING, INT64, FP32, UINT8
    dims: tuple[int, ...]
    optional: bool = False
    note: str = ""

    def opt(self, note: str = "") -> Io:
        return replace(self, optional=True, note=note or self.note)


@dataclass(frozen=True)
class Step:
    """One ensemble step: composing-model tensor name -> ensemble tensor name."""

    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    note: str = ""
    stage: str = ""  # progress-event name of this step in the streamed pipeline ("" = none)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[Io, ...]
    outputs: tuple[Io, ...]
    platform: str = "python"          # "python" (python backend) or "ensemble"
    params: tuple[tuple[str, str, str], ...] = ()  # (key, value, comment)
    steps: tuple[Step, ...] = ()
    adapter: str = ""                 # model folder whose 1/model.py serves this model (shared adapters are symlinks)
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    gpus: tuple[int, ...] = ()        # KIND_GPU devices (deployment profiles, wan_distill.profiles); () = all
    header: str = ""                  # comment lines at the top
    decoupled: bool = False           # model_transaction_policy { decoupled: true } (any number of responses)


def _scalar(name: str, dtype: str = "INT64") -> Io:
    return Io(name, dtype, (1,))


PROMPT, NEGATIVE_PROMPT, IMAGE = _scalar("PROMPT", "STRING"), _scalar("NEGATIVE_PROMPT", "STRING"), _scalar("IMAGE", "STRING")
SEED, HEIGHT, WIDTH, NUM_FRAMES, FPS = (_scalar(n) for n in ("SEED", "HEIGHT", "WIDTH", "NUM_FRAMES", "FPS"))
TEXT_EMBEDDING = Io("TEXT_EMBEDDING", "FP32", (-1, -1))
NEGATIVE_TEXT_EMBEDDING = Io("NEGATIVE_TEXT_EMBEDDING", "FP32", (-1, -1))
CLIP_FEATURE = Io("CLIP_FEATURE", "FP32", (257, -1))
IMAGE_LATENT = Io("IMAGE_LATENT", "FP32", (20, -1, -1, -1))
LATENTS = Io("LATENTS", "FP32", (16, -1, -1, -1))
FRAMES = Io("FRAMES", "UINT8", (-1, -1, -1, 3))
VIDEO_MP4 = _scalar("VIDEO_MP4", "STRING")
PROGRESS = _scalar("PROGRESS", "STRING")  # JSON answer of a DiT control request (wan_distill.jobs)
EVENT = _scalar("EVENT", "STRING")        # JSON progress event of a streamed pipeline (wan_distill.serving.stream)

THREADS = ("num_threads", "0", "torch threads; 0 = all cores; $WAN_NUM_THREADS overrides")
X264 = (("preset", "medium", "x264 preset (ultrafast ... veryslow); faster ones change the video"),
        ("crf", "23", "x264 constant rate factor 0-51 (lower = better, bigger)"),
        ("x264_threads", "0", "x264 threads; 0 = x264 decides"),
        ("x264_lookahead", "-1", "x264 rc-lookahead frames; -1 = the preset's (40); short = encode keeps pace with decode"))


def _weights(model_path_env: str, config_json: str, config_json_env: str) -> tuple[tuple[str, str, str], ...]:
    return (("model_path", "", ""), ("model_path_env", model_path_env, ""), ("config_json", config_json, ""),
            ("config_json_env", config_json_env, ""))


@dataclass(frozen=True)
class Pipeline:
    """One served pipeline: an ensemble, its request step and its DiT (T2V or I2V, distilled or 50/40-step CFG)."""

    task: str       # "t2v" | "i2v"
    baseline: bool

    @property
    def name(self) -> str:
        return f"wan_{self.task}" + ("_baseline" if self.baseline else "")

    @property
    def dit(self) -> str:
        return f"wan_{self.task}_dit" + ("_baseline" if self.baseline else "")

    @property
    def request(self) -> str:
        return f"{self.name}_request"

    @property
    def stream(self) -> str:
        return f"{self.name}_stream"

    @property
    def is_i2v(self) -> bool:
        return self.task == "i2v"

    @property
    def client_inputs(self) -> tuple[Io, ...]:
        """What a client sends (all optional in the config: the request step names whatever is missing)."""
        return (PROMPT, *((IMAGE,) if self.is_i2v else ()), SEED, NEGATIVE_PROMPT, HEIGHT, WIDTH, NUM_FRAMES, FPS)

    @property
    def run_config(self) -> tuple[str, str]:
        """(default run config, environment variable overriding it)."""
        if self.baseline:
            steps = "40step" if self.is_i2v else "50step"
            return (f"configs/baseline/wan_{self.task}_baseline_{steps}_cfg.json",
                    f"WAN_{self.task.upper()}_BASELINE_CONFIG")
        return f"configs/distill/wan_{self.task}_distill_4step_cfg.json", f"WAN_{self.task.upper()}_CONFIG"


PIPELINES = tuple(Pipeline(task, baseline) for baseline in (False, True) for task in ("t2v", "i2v"))


def _request_model(p: Pipeline) -> ModelSpec:
    config, env = p.run_config
    inputs = tuple(io.opt() for io in p.client_inputs)
    return ModelSpec(
        p.request, inputs, tuple(io for io in p.client_inputs), adapter="wan_t2v_request",
        params=(("config_json", config, ""), ("config_json_env", env, "")),
        header=f"# First step of {p.name}: validates every client input (INVALID_ARGUMENT naming the field) and fills\n"
               "# the defaults from the run config, before anything fans out. No torch in this process.")


def _dit_model(p: Pipeline) -> ModelSpec:
    config, env = p.run_config
    inputs = (TEXT_EMBEDDING, SEED, NEGATIVE_TEXT_EMBEDDING, HEIGHT, WIDTH, NUM_FRAMES, CLIP_FEATURE, IMAGE_LATENT)
    # every input optional: a control request (progress / cancel of a job, wan_distill.jobs) has none, and a job
    # request missing one gets INVALID_ARGUMENT naming it from the adapter
    return ModelSpec(
        p.dit, tuple(io.opt() for io in inputs), (LATENTS, PROGRESS), adapter="wan_t2v_dit",
        params=(*_weights(f"WAN_{p.task.upper()}_MODEL_PATH", config, env), THREADS,
                ("max_jobs_per_call", "4", "requests whose steps share one DiT call (same geometry)"),
                ("max_wait_ms", "2", "an idle engine waits this long for more requests before a step starts"),
                ("max_queued_jobs", "32", "requests waiting for a slot beyond this get UNAVAILABLE at once")),
        header="# One background denoising engine per instance: execute() hands each request over and returns, the\n"
               "# engine advances all running requests step by step, batching the steps of requests of one geometry.\n"
               "# Control requests (parameters wan_control = watch | cancel, wan_job_id) ask for PROGRESS only.")


def _ensemble(p: Pipeline) -> ModelSpec:
    checked = {io.name: io.name.lower() for io in p.client_inputs}  # request step outputs -> ensemble tensors
    text_in, text_out = {"PROMPT": "prompt"}, {"TEXT_EMBEDDING": "text_embedding"}
    dit_in = {"TEXT_EMBEDDING": "text_embedding", "SEED": "seed"}
    if p.baseline:
        text_in["NEGATIVE_PROMPT"] = "negative_prompt"
        text_out["NEGATIVE_TEXT_EMBEDDING"] = dit_in["NEGATIVE_TEXT_EMBEDDING"] = "negative_text_embedding"
    else:
        del checked["NEGATIVE_PROMPT"]  # a distilled run has no unconditional branch
    encoders = []
    if p.is_i2v:
        # a chain, not two parallel steps: with one of two parallel steps failing while the other still runs,
        # tritonserver 2.51 can lose the ensemble request (bursts of failing I2V requests wedged the server). The
        # image encoder passes the prompts through, so the text encoder starts only after it succeeded.
        image_in = {"IMAGE": "image", "HEIGHT": "height", "WIDTH": "width", "NUM_FRAMES": "num_frames"}
        image_out = {"CLIP_FEATURE": "clip_feature", "IMAGE_LATENT": "image_latent"}
        for key, tensor in list(text_in.items()):
            image_in[key] = tensor
            image_out[f"{key}_OUT"] = text_in[key] = f"{tensor}_after_image"
        encoders.append(Step("wan_image_encoder", image_in, image_out, stage="image",
                             note="PROMPT (and NEGATIVE_PROMPT) pass through: the text encoder runs after this step"))
        dit_in.update(CLIP_FEATURE="clip_feature", IMAGE_LATENT="image_latent")
    encoders.append(Step("wan_text_encoder", text_in, text_out, stage="text"))
    if not p.is_i2v:
        dit_in.update(HEIGHT="height", WIDTH="width", NUM_FRAMES="num_frames")
    steps = (Step(p.request, {io.name: io.name for io in p.client_inputs}, checked), *encoders,
             Step(p.dit, dit_in, {"LATENTS": "latents"}, stage="denoise"),
             Step("wan_decode_to_mp4", {"LATENTS": "latents", "FPS": "fps"},
                  {"VIDEO_MP4": "VIDEO_MP4", "FRAMES": "FRAMES"}, stage="decode",
                  note="VAE decode with the MP4 encode overlapped (one step; FRAMES only when the client asks)."))
    return ModelSpec(p.name, tuple(io.opt() for io in p.client_inputs), (VIDEO_MP4, FRAMES), platform="ensemble",
                     steps=steps,
                     header="# Every input is optional here so that a missing one reaches the request step, which answers\n"
                            "# INVALID_ARGUMENT naming it (Triton 2.51's ensemble would otherwise stall and report a deadlock).")


def _stream_model(p: Pipeline) -> ModelSpec:
    config, env = p.run_config
    return ModelSpec(
        p.stream, tuple(io.opt() for io in p.client_inputs), (EVENT, VIDEO_MP4, FRAMES), adapter="wan_t2v_stream",
        decoupled=True, params=(("pipeline", p.name, "runs this ensemble's steps (the spec) by BLS"),
                                ("config_json", config, ""), ("config_json_env", env, ""),
                                ("poll_ms", "50", "how often a running request checks whether its client went away")),
        header=f"# Streaming twin of {p.name} (gRPC streaming only): the same steps called by BLS, with JSON progress\n"
               "# events (EVENT) and a cancel that stops the DiT; the last response carries VIDEO_MP4 (+ FRAMES if asked).")


def pipeline(name: str) -> Pipeline:
    """The served pipeline called ``name`` (e.g. "wan_t2v")."""
    for p in PIPELINES:
        if p.name == name:
            return p
    raise KeyError(f"no pipeline {name!r}; served: {', '.join(p.name for p in PIPELINES)}")


def ensemble_steps(p: Pipeline) -> tuple[Step, ...]:
    """The steps of ``p``'s ensemble (the streamed pipeline runs exactly these)."""
    return _ensemble(p).steps


def repository() -> list[ModelSpec]:
    """Every model of model_repository/, in a stable order."""
    text = ModelSpec(
        "wan_text_encoder", (PROMPT, NEGATIVE_PROMPT.opt()), (TEXT_EMBEDDING, NEGATIVE_TEXT_EMBEDDING),
        adapter="wan_text_encoder",
        params=(*_weights("WAN_TEXT_ENCODER_MODEL_PATH,WAN_T2V_MODEL_PATH,WAN_I2V_MODEL_PATH",
                          "configs/distill/wan_t2v_distill_4step_cfg.json", "WAN_T2V_CONFIG"), THREADS),
        header="# The same UMT5 file ships in every Wan2.1 model root; the first variable that is set wins.")
    image = ModelSpec(
        "wan_image_encoder", (IMAGE.opt("absent -> INVALID_ARGUMENT naming IMAGE"), HEIGHT.opt(), WIDTH.opt(),
                              NUM_FRAMES.opt(), PROMPT.opt("passed through"), NEGATIVE_PROMPT.opt("passed through")),
        (CLIP_FEATURE, IMAGE_LATENT, replace(PROMPT, name="PROMPT_OUT"),
         replace(NEGATIVE_PROMPT, name="NEGATIVE_PROMPT_OUT")), adapter="wan_image_encoder",
        params=(*_weights("WAN_I2V_MODEL_PATH", "configs/distill/wan_i2v_distill_4step_cfg.json", "WAN_I2V_CONFIG"),
                THREADS))
    vae = ModelSpec(
        "wan_vae_decoder", (LATENTS,), (FRAMES,), adapter="wan_vae_decoder",
        params=(*_weights("WAN_VAE_MODEL_PATH,WAN_T2V_MODEL_PATH,WAN_I2V_MODEL_PATH",
                          "configs/distill/wan_t2v_distill_4step_cfg.json", "WAN_T2V_CONFIG"), THREADS),
        header="# The same Wan2.1_VAE.pth ships in every Wan2.1 model root; the first variable that is set wins.")
    video = ModelSpec(
        "wan_video_encoder", (FRAMES, FPS.opt()), (VIDEO_MP4, replace(FRAMES, name="FRAMES_OUT")),
        adapter="wan_video_encoder", params=(("default_fps", "16", ""), *X264))
    decode_to_mp4 = ModelSpec(
        "wan_decode_to_mp4", (LATENTS, FPS.opt()), (VIDEO_MP4, FRAMES), adapter="wan_decode_to_mp4",
        params=(*vae.params, *X264),
        header="# The pipelines' last step: wan_vae_decoder + wan_video_encoder in one process, the MP4 encoder\n"
               "# (a thread) fed each latent frame's frames while the next one decodes. Frames as wan_vae_decoder's.")
    models = [text, image, vae, video, decode_to_mp4]
    for p in PIPELINES:
        models += [_request_model(p), _dit_model(p), _ensemble(p), _stream_model(p)]
    return sorted(models, key=lambda m: m.name)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def _io(io: Io) -> tuple[str, str]:
    dims = ", ".join(str(d) for d in io.dims)
    line = f'{{ name: "{io.name}" data_type: TYPE_{io.dtype} dims: [ {dims} ]{" optional: true" if io.optional else ""} }}'
    return line, io.note


def _block(key: str, items: list[tuple[str, str]]) -> list[str]:
    out = [f"{key} ["]
    for i, (line, note) in enumerate(items):
        sep = "," if i < len(items) - 1 else ""
        out.append(f"  {line}{sep}" + (f"  # {note}" if note else ""))
    return out + ["]"]


def render(spec: ModelSpec) -> str:
    """config.pbtxt text of one model."""
    lines = [spec.header] if spec.header else []
    lines.append(f'name: "{spec.name}"')
    lines.append('platform: "ensemble"' if spec.platform == "ensemble" else 'backend: "python"')
    lines.append("max_batch_size: 0")
    if spec.decoupled:
        lines.append("model_transaction_policy { decoupled: true }")
    lines += _block("input", [_io(io) for io in spec.inputs])
    lines += _block("output", [_io(io) for io in spec.outputs])
    if spec.platform == "ensemble":
        lines += ["ensemble_scheduling {", "  step ["]
        for i, step in enumerate(spec.steps):
            lines += ["    {", f'      model_name: "{step.model}"', "      model_version: -1"]
            lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in step.inputs.items()]
            lines += [f"      # {n}" for n in step.note.splitlines()]
            lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in step.outputs.items()]
            lines.append("    }" + ("," if i < len(spec.steps) - 1 else ""))
        lines += ["  ]", "}"]
    else:
        gpus = f" gpus: [ {', '.join(map(str, spec.gpus))} ]" if spec.gpus else ""
        lines.append(f"instance_group [ {{ count: {spec.instance_count} kind: {spec.instance_kind}{gpus} }} ]")
        for key, value, note in spec.params:
            lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
                         + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


def write_repository(root: Path, check: bool = False) -> list[Path]:
    """Render every config.pbtxt (and the version folder's model.py link) under ``root``. Returns the files that
    differed (``check``: nothing is written)."""
    stale = []
    for spec in repository():
        folder = root / spec.name
        cfg = folder / "config.pbtxt"
        text = render(spec)
        if not cfg.is_file() or cfg.read_text() != text:
            stale.append(cfg)
            if not check:
                folder.mkdir(parents=True, exist_ok=True)
                cfg.write_text(text)
        version = folder / "1"
        if spec.platform == "ensemble":
            marker = version / ".gitkeep"
            if not marker.exists():
                stale.append(marker)
                if not check:
                    version.mkdir(parents=True, exist_ok=True)
                    marker.touch()
            continue
        link = version / "model.py"
        if spec.adapter != spec.name:
            target = Path("..") / ".." / spec.adapter / "1" / "model.py"
            if not (link.is_symlink() and Path(link.readlink()) == target):
                stale.append(link)
                if not check:
                    version.mkdir(parents=True, exist_ok=True)
                    link.unlink(missing_ok=True)
                    link.symlink_to(target)
        elif not link.is_file():
            stale.append(link)  # an adapter's own model.py is written by hand
    return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[3] / "model_repository")
    ap.add_argument("--check", action="store_true", help="only report files that differ from the spec")
    a = ap.parse_args(argv)
    stale = write_repository(a.out, check=a.check)
    for path in stale:
        print(f"{'stale' if a.check else 'wrote'}: {path}")
    return 1 if (a.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
