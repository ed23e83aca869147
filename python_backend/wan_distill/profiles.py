"""Deployment profiles: one name (``$WAN_PROFILE``) decides what a GPU deployment serves (no torch, no Triton).

    t2v-14b (default of the Docker image)   distilled T2V-14B, up to 720x1280x81, one GPU
    t2v-1.3b                                distilled T2V-1.3B, 480x832x81, one GPU
    i2v-14b-480p / i2v-14b-720p             distilled I2V-14B (480P root / 720P root); 720P: two GPUs
    t2v+i2v                                 distilled T2V-14B and I2V-14B-480P at 480x832x81, two GPUs

``<name>+baseline`` (or ``$WAN_BASELINE=1``) adds the 50/40-step CFG baseline pipelines; they load only when asked.
A profile resolves into the models to load (``--model-control-mode=explicit`` + one ``--load-model`` each), the GPU
of each (``KIND_GPU`` with ``gpus: [n]``; ``$WAN_GPU_MAP`` e.g. ``dit=0,text=1`` overrides), their dtype, the weights
roots (``$WAN_WEIGHTS_ROOT``/<Wan2.1 folder>, unless ``$WAN_T2V_MODEL_PATH`` / ``$WAN_I2V_MODEL_PATH`` are set) and the
run config JSONs (``$WAN_DIT_DTYPE=fp8`` picks the fp8 distilled configs), plus each GPU model's memory plan
(:mod:`.memory`). :func:`write_repository` renders the generated model repository from the one spec
(:mod:`.serving.repository`); the committed CPU demo repository is never touched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from .config import ConfigError, DiTConfig
from .memory import (GiB, Geometry, MemoryPlanError, ModelMemory, dit_memory, gib, image_encoder_memory,
                     text_encoder_memory, vae_decoder_memory)
from .serving import repository as spec

__all__ = ["Profile", "PROFILES", "DEFAULT_PROFILE", "ProfileError", "Placement", "ResolvedProfile", "parse_gpu_map",
           "resolve", "advice", "split_that_fits", "write_repository", "memory_table"]

# The pipelines' GPU steps besides the DiTs (wan_decode_to_mp4: the VAE decode, with the MP4 encode on a CPU thread).
# wan_vae_decoder / wan_video_encoder (the two halves, for direct calls) are not part of any profile.
COMPONENT_MODELS = {"text": "wan_text_encoder", "image": "wan_image_encoder", "vae": "wan_decode_to_mp4"}


class ProfileError(ConfigError):
    """An unknown profile, a bad $WAN_GPU_MAP or another bad profile setting."""


@dataclass(frozen=True)
class Profile:
    name: str
    tasks: tuple[str, ...]
    size: str                      # "14b" | "1.3b"
    geometry: Geometry             # largest video the memory plan is made for
    roots: Mapping[str, str]       # task -> Wan2.1 folder under $WAN_WEIGHTS_ROOT
    gpus: Mapping[str, int] = field(default_factory=dict)  # default placement (unit -> GPU; others GPU 0)
    dit_rows: int = 1              # max_jobs_per_call of the distilled DiT(s): rows per DiT call
    summary: str = ""

    def dit_config(self, task: str) -> DiTConfig:
        if self.size == "1.3b":
            return DiTConfig.t2v_1_3b()
        return DiTConfig.i2v_14b() if task == "i2v" else DiTConfig.t2v_14b()


P480, P720 = Geometry(480, 832, 81), Geometry(720, 1280, 81)
PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("t2v-14b", ("t2v",), "14b", P720, {"t2v": "Wan2.1-T2V-14B"}, dit_rows=1,
            summary="distilled T2V-14B up to 720P, one 80 GB GPU"),
    Profile("t2v-1.3b", ("t2v",), "1.3b", P480, {"t2v": "Wan2.1-T2V-1.3B"}, dit_rows=4,
            summary="distilled T2V-1.3B at 480P, one GPU (>= 40 GB)"),
    Profile("i2v-14b-480p", ("i2v",), "14b", P480, {"i2v": "Wan2.1-I2V-14B-480P"}, dit_rows=1,
            summary="distilled I2V-14B at 480P, one 80 GB GPU"),
    Profile("i2v-14b-720p", ("i2v",), "14b", P720, {"i2v": "Wan2.1-I2V-14B-720P"}, dit_rows=1,
            gpus={"text": 1, "image": 1, "vae": 1}, summary="distilled I2V-14B at 720P, DiT on GPU 0, rest on GPU 1"),
    Profile("t2v+i2v", ("t2v", "i2v"), "14b", P480, {"t2v": "Wan2.1-T2V-14B", "i2v": "Wan2.1-I2V-14B-480P"},
            dit_rows=1, gpus={"i2v_dit": 1, "image": 1},
            summary="distilled T2V-14B + I2V-14B-480P at 480P, two 80 GB GPUs"),
)}
DEFAULT_PROFILE = "t2v-14b"


@dataclass(frozen=True)
class Placement:
    """One served model: its GPU (None = KIND_CPU), dtype, config.pbtxt parameter overrides and memory plan."""

    model: str
    gpu: int | None = None
    dtype: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    memory: ModelMemory | None = None


@dataclass(frozen=True)
class ResolvedProfile:
    profile: Profile
    baseline: bool
    dit_dtype: str
    gpu_map: Mapping[str, int]
    placements: tuple[Placement, ...]
    env: Mapping[str, str]         # WAN_* settings for the models (weights roots, run configs)

    @property
    def name(self) -> str:
        return self.profile.name + ("+baseline" if self.baseline else "")

    @property
    def models(self) -> list[str]:
        return [p.model for p in self.placements]

    def tritonserver_args(self) -> list[str]:
        return ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]

    def by_gpu(self) -> dict[int, list[ModelMemory]]:
        out: dict[int, list[ModelMemory]] = {}
        for p in self.placements:
            if p.gpu is not None and p.memory is not None:
                out.setdefault(p.gpu, []).append(p.memory)
        return dict(sorted(out.items()))

    def gpu_need(self) -> dict[int, int]:
        return {g: sum(m.total for m in ms) for g, ms in self.by_gpu().items()}

    def units(self) -> dict[str, int]:
        """GPU-map unit -> bytes it needs."""
        return {unit_of(p.model): p.memory.total for p in self.placements if p.memory is not None}

    def check(self, free_by_gpu: Mapping[int, int]) -> None:
        """Refuse (MemoryPlanError) when a GPU's models need more than its free bytes, naming what would fit."""
        problems = []
        for g, need in self.gpu_need().items():
            if g not in free_by_gpu:
                problems.append(f"GPU {g} is not visible ({len(free_by_gpu)} GPU(s): "
                                f"{', '.join(map(str, sorted(free_by_gpu))) or 'none'})")
            elif need > free_by_gpu[g]:
                models = "; ".join(f"{m.model} {gib(m.total)}" for m in self.by_gpu()[g])
                problems.append(f"GPU {g} needs {gib(need)} ({models}) but has {gib(free_by_gpu[g])} free")
        if problems:
            raise MemoryPlanError(f"profile {self.name} does not fit: " + "; ".join(problems) + ". "
                                  + advice(self, free_by_gpu))


def unit_of(model: str) -> str:
    """GPU-map key of a served model: t2v_dit, i2v_dit_baseline, text, image, vae (wan_decode_to_mp4)."""
    for unit, name in COMPONENT_MODELS.items():
        if model == name:
            return unit
    return model.removeprefix("wan_")


def _units(tasks: tuple[str, ...], baseline: bool) -> list[str]:
    units = [f"{t}_dit" for t in tasks] + [f"{t}_dit_baseline" for t in tasks if baseline] + ["text"]
    return units + (["image"] if "i2v" in tasks else []) + ["vae"]


def parse_gpu_map(text: str, units: list[str], profile: str = "") -> dict[str, int]:
    """``"dit=0,text=1"`` -> {unit: gpu}. ``dit`` / ``dit_baseline`` name every (baseline) DiT of the profile."""
    out: dict[str, int] = {}
    aliases = {"dit": [u for u in units if u.endswith("_dit")],
               "dit_baseline": [u for u in units if u.endswith("_dit_baseline")]}
    keys = sorted(set(units) | {a for a, us in aliases.items() if us})
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key:
            raise ProfileError(f"WAN_GPU_MAP: {item!r} is not KEY=GPU (e.g. dit=0,text=1)")
        if key not in keys:
            raise ProfileError(f"WAN_GPU_MAP: unknown key {key!r} for profile {profile}; keys: {', '.join(keys)}")
        if not value.isdigit():
            raise ProfileError(f"WAN_GPU_MAP: {key}={value!r}: the GPU must be an index >= 0")
        for unit in aliases.get(key, [key]):
            if unit in out:
                raise ProfileError(f"WAN_GPU_MAP: {unit} is placed twice")
            out[unit] = int(value)
    return out


def _flag(env: Mapping[str, str], key: str) -> bool:
    value = env.get(key, "").strip().lower()
    if value not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ProfileError(f"{key} must be 0 or 1, got {value!r}")
    return value in ("1", "true", "yes")


def _dit_config(root: Path, fallback: DiTConfig) -> DiTConfig:
    """The model root's config.json when present (the plan follows the real architecture), else the release's."""
    cfg = root / "config.json"
    return DiTConfig.from_dict(json.loads(cfg.read_text()), str(cfg)) if cfg.is_file() else fallback


def resolve(name: str, env: Mapping[str, str] | None = None, project_root: Path | None = None) -> ResolvedProfile:
    """``name`` (e.g. "t2v-14b", "t2v-14b+baseline") + the WAN_* settings in ``env`` -> what to serve where."""
    env = dict(env or {})
    base, _, extra = name.strip().partition("+")
    if base == "t2v" and extra.startswith("i2v"):  # "t2v+i2v" is a name of its own
        base, _, extra = "t2v+i2v", "", extra[3:].lstrip("+")
    if base not in PROFILES or extra not in ("", "baseline"):
        raise ProfileError(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)} "
                           "(append +baseline for the CFG baselines)")
    prof = PROFILES[base]
    baseline = extra == "baseline" or _flag(env, "WAN_BASELINE")
    dtype = env.get("WAN_DIT_DTYPE", "bf16").strip() or "bf16"
    if dtype not in ("bf16", "fp8"):
        raise ProfileError(f"WAN_DIT_DTYPE must be bf16 or fp8, got {dtype!r}")
    rows_text = env.get("WAN_DIT_ROWS", "").strip()
    if rows_text and not (rows_text.isdigit() and int(rows_text) >= 1):
        raise ProfileError(f"WAN_DIT_ROWS must be an integer >= 1, got {rows_text!r}")
    rows = int(rows_text) if rows_text else prof.dit_rows

    units = _units(prof.tasks, baseline)
    gpu_map = {u: prof.gpus.get(u, 0) for u in units if not u.endswith("_baseline")}
    gpu_map.update({f"{t}_dit_baseline": gpu_map[f"{t}_dit"] for t in prof.tasks if baseline})
    gpu_map.update(parse_gpu_map(env.get("WAN_GPU_MAP", ""), units, prof.name))

    weights_root = Path(env.get("WAN_WEIGHTS_ROOT") or "/weights")
    settings: dict[str, str] = {}
    roots: dict[str, Path] = {}
    for task, folder in prof.roots.items():
        var = f"WAN_{task.upper()}_MODEL_PATH"
        roots[task] = Path(env.get(var) or weights_root / folder)
        settings[var] = str(roots[task])
        if dtype == "fp8":
            config = f"configs/distill/wan_{task}_distill_fp8_4step_cfg.json"
            settings[f"WAN_{task.upper()}_CONFIG"] = str((project_root or Path()) / config)

    placements: list[Placement] = []
    geo = prof.geometry
    for task in prof.tasks:
        cfg = _dit_config(roots[task], prof.dit_config(task))
        p = spec.pipeline(f"wan_{task}")
        placements += [Placement(p.request), Placement(p.name), Placement(p.stream)]
        placements.append(Placement(p.dit, gpu_map[f"{task}_dit"], dtype, {"max_jobs_per_call": str(rows)},
                                    dit_memory(p.dit, cfg, dtype, geo, rows)))
        if baseline:
            b = spec.pipeline(f"wan_{task}_baseline")
            placements += [Placement(b.request), Placement(b.name), Placement(b.stream)]
            placements.append(Placement(b.dit, gpu_map[f"{task}_dit_baseline"], "bf16", {"max_jobs_per_call": "1"},
                                        dit_memory(b.dit, cfg, "bf16", geo, 2)))  # one job = cond + uncond rows
    placements.append(Placement("wan_text_encoder", gpu_map["text"], "bf16", {},
                                text_encoder_memory("wan_text_encoder")))
    if "i2v" in prof.tasks:
        placements.append(Placement("wan_image_encoder", gpu_map["image"], "fp32", {},
                                    image_encoder_memory("wan_image_encoder", geo)))
    placements.append(Placement("wan_decode_to_mp4", gpu_map["vae"], "fp32", {},
                                vae_decoder_memory("wan_decode_to_mp4", geo)))
    return ResolvedProfile(prof, baseline, dtype, gpu_map, tuple(placements), settings)


def split_that_fits(units: Mapping[str, int], free: list[int]) -> dict[str, int] | None:
    """A placement of ``units`` (name -> bytes) over GPUs with ``free`` bytes each (best fit, largest first: each
    onto the GPU with the least room that still holds it), or None when there is none this way."""
    room = list(free)
    out: dict[str, int] = {}
    for unit, need in sorted(units.items(), key=lambda kv: -kv[1]):
        fitting = [i for i in range(len(room)) if room[i] >= need]
        if not fitting:
            return None
        g = min(fitting, key=lambda i: room[i])
        room[g] -= need
        out[unit] = g
    return out


def advice(resolved: ResolvedProfile, free_by_gpu: Mapping[int, int]) -> str:
    """What would fit GPUs with ``free_by_gpu`` bytes: a WAN_GPU_MAP split of this profile, or other profiles."""
    free = [free_by_gpu[g] for g in sorted(free_by_gpu)]
    split = split_that_fits(resolved.units(), free)
    if split is not None:
        text = ",".join(f"{u}={g}" for u, g in sorted(split.items(), key=lambda kv: (kv[1], kv[0])))
        return f"This profile fits as WAN_GPU_MAP={text}"
    fitting = []
    for name in PROFILES:
        other = resolve(name, {"WAN_WEIGHTS_ROOT": "/nonexistent"})  # the releases' architectures
        if split_that_fits(other.units(), free) is not None:
            fitting.append(name)
    need = sum(resolved.units().values())
    where = ", ".join(gib(f) for f in free) or "no GPU"
    return (f"It needs {gib(need)} in all, more than these GPUs can hold ({where} free); "
            + (f"profiles that fit: {', '.join(fitting)}" if fitting else "no profile fits: use a larger GPU"))


def write_repository(resolved: ResolvedProfile, out: Path, adapters: Path, project_root: Path,
                     device: str = "gpu") -> Path:
    """Render the profile's models from the spec into ``out`` (config.pbtxt + ``1/model.py`` linked to the adapter
    in ``adapters``, the committed repository). ``device="cpu"``: every instance KIND_CPU and no memory plan (to run
    the same generated repository on a CPU host)."""
    out = Path(out)
    specs = {s.name: s for s in spec.repository()}
    placements = {p.model: p for p in resolved.placements}
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # a previous profile's models must not stay loadable
        if (old / "config.pbtxt").is_file() and old.name not in placements:
            (old / "config.pbtxt").unlink()
    for name, place in placements.items():
        s = specs[name]
        params = dict((k, (v, note)) for k, v, note in s.params)
        if s.platform != "ensemble":
            params["project_root"] = (str(Path(project_root).resolve()), "relative config paths resolve here")
            params["wan_profile"] = (resolved.name, "")
        for k, v in place.params.items():
            params[k] = (v, params.get(k, ("", ""))[1])
        s = replace(s, params=tuple((k, v, note) for k, (v, note) in params.items()))
        if place.gpu is not None and device == "gpu":
            extra = {"memory_need_bytes": (str(place.memory.total), "checked against free GPU memory before load"),
                     "memory_plan": (place.memory.describe().replace('"', "'"), ""),
                     "wan_gpu_map": (",".join(f"{u}={g}" for u, g in resolved.gpu_map.items()), "")}
            s = replace(s, instance_kind="KIND_GPU", gpus=(place.gpu,),
                        params=s.params + tuple((k, v, n) for k, (v, n) in extra.items()))
        folder = out / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(spec.render(s))
        link = folder / "1" / "model.py"
        if s.platform != "ensemble":
            target = (Path(adapters) / s.adapter / "1" / "model.py").resolve()
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
    return out


def memory_table() -> str:
    """Markdown: the computed memory plan per model and per profile (``python -m wan_distill.profiles``)."""
    from . import memory as M

    g480, g720 = P480, P720
    lines = ["| model | params | dtype | weights | activations at 480x832x81 | at 720x1280x81 |", "|---|---|---|---|---|---|"]
    for label, cfg in (("T2V-1.3B DiT", DiTConfig.t2v_1_3b()), ("T2V-14B DiT", DiTConfig.t2v_14b()),
                       ("I2V-14B DiT", DiTConfig.i2v_14b())):
        total = M.dit_params(cfg)[0]
        lines.append(f"| {label} | {total / 1e9:.2f} B | bf16 (fp8) | {gib(M.dit_weight_bytes(cfg, 'bf16'))} "
                     f"({gib(M.dit_weight_bytes(cfg, 'fp8'))}) | {gib(M.dit_activation_bytes(cfg, g480, 1))} per row "
                     f"| {gib(M.dit_activation_bytes(cfg, g720, 1))} per row |")
    t5 = M.text_encoder_memory("t5")
    lines.append(f"| UMT5-XXL (wan_text_encoder) | {M.umt5_params() / 1e9:.2f} B | bf16 | {gib(t5.weights)} "
                 f"| {gib(t5.activations)} | {gib(t5.activations)} |")
    im = {g: M.image_encoder_memory("image", g) for g in (g480, g720)}
    lines.append(f"| CLIP ViT-H/14 + VAE (wan_image_encoder) | {M.clip_params() / 1e9:.2f} B + "
                 f"{M.WAN_VAE_PARAMS / 1e9:.2f} B | fp32 | {gib(im[g480].weights)} | {gib(im[g480].activations)} "
                 f"| {gib(im[g720].activations)} |")
    vae = {g: M.vae_decoder_memory("vae", g) for g in (g480, g720)}
    lines.append(f"| Wan VAE (wan_decode_to_mp4) | {M.WAN_VAE_PARAMS / 1e9:.2f} B | fp32 | {gib(vae[g480].weights)} "
                 f"| {gib(vae[g480].activations)} | {gib(vae[g720].activations)} |")
    lines += ["", "| profile | plans for | DiT rows per call | per GPU (each model + 1 GiB CUDA context) |",
              "|---|---|---|---|"]
    for n in [*PROFILES, "t2v-1.3b+baseline", "t2v-14b+baseline"]:
        r = resolve(n, {"WAN_WEIGHTS_ROOT": "/nonexistent"})  # the releases' architectures
        per = "; ".join(f"GPU {g}: **{gib(sum(m.total for m in ms))}** = "
                        + " + ".join(f"{m.model.removeprefix('wan_')} {m.total / GiB:.1f}" for m in ms)
                        for g, ms in r.by_gpu().items())
        lines.append(f"| {n} | {r.profile.geometry} | {r.profile.dit_rows} | {per} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(memory_table())
