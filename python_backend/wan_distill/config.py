"""Typed configuration, parsed and validated once.

Two files describe a deployment:

* the model's ``config.json`` (Wan2.1 layout) -> :class:`DiTConfig` (architecture);
* a LightX2V-style run config (``configs/distill/*.json``) -> :class:`RunConfig` (sampling, geometry, LoRAs).

LightX2V's own config files load unchanged: keys we do not use are accepted and logged once,
contradictions raise :class:`ConfigError` with a message that names the key and the rule.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file is malformed or contradicts itself."""


_logged_ignored: set[tuple[str, str]] = set()


def _log_ignored_once(source: str, keys: list[str]) -> None:
    new = [k for k in keys if (source, k) not in _logged_ignored]
    if new:
        _logged_ignored.update((source, k) for k in new)
        log.info("%s: ignoring keys this server does not use: %s", source, ", ".join(sorted(new)))


def _read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data


# ----------------------------------------------------------------------------------------------
# DiT architecture (Wan2.1 config.json)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiTConfig:
    """Wan2.1 DiT hyper-parameters, as in the model directory's ``config.json``.

    ``text_dim`` / ``image_dim`` are class defaults in Wan (4096 = UMT5-XXL, 1280 = CLIP ViT-H);
    they are only written to config.json by our tiny test models.
    """

    model_type: Literal["t2v", "i2v"] = "t2v"
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_len: int = 512
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    image_dim: int = 1280
    qk_norm: bool = True
    cross_attn_norm: bool = True

    def __post_init__(self) -> None:
        if self.model_type not in ("t2v", "i2v"):
            raise ConfigError(f"config.json: model_type must be 't2v' or 'i2v', got {self.model_type!r}")
        if self.dim % self.num_heads:
            raise ConfigError(f"config.json: dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"config.json: head_dim ({self.head_dim}) must be even for RoPE")
        if self.model_type == "i2v" and self.in_dim != 36:
            raise ConfigError(f"config.json: an i2v model needs in_dim 36 (16 noise + 4 mask + 16 image), got {self.in_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def is_i2v(self) -> bool:
        return self.model_type == "i2v"

    # Presets of the released models (wan/configs/*.py).
    @classmethod
    def t2v_1_3b(cls) -> DiTConfig:
        return cls("t2v", 1536, 8960, 256, 12, 30, 16, 16)

    @classmethod
    def t2v_14b(cls) -> DiTConfig:
        return cls("t2v", 5120, 13824, 256, 40, 40, 16, 16)

    @classmethod
    def i2v_14b(cls) -> DiTConfig:
        return cls("i2v", 5120, 13824, 256, 40, 40, 36, 16)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> DiTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        known_meta = {"_class_name", "_diffusers_version", "_name_or_path", "window_size"}
        _log_ignored_once(source, [k for k in data if k not in names and k not in known_meta])
        kwargs = {k: v for k, v in data.items() if k in names}
        if "patch_size" in kwargs:
            kwargs["patch_size"] = tuple(kwargs["patch_size"])
        if "model_type" not in kwargs:
            kwargs["model_type"] = "i2v" if kwargs.get("in_dim") == 36 else "t2v"
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> DiTConfig:
        return cls.from_dict(_read_json(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", **d}


# ----------------------------------------------------------------------------------------------
# Run config (LightX2V JSON)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to merge at load: ``W += strength * scale * up @ down``."""

    path: Path
    strength: float = 1.0


# LightX2V keys that change nothing for this server (attention kernels, offload, parallelism...).
_IGNORED_LIGHTX2V_KEYS = {
    "self_attn_1_type", "cross_attn_1_type", "cross_attn_2_type", "attention_type", "cpu_offload",
    "offload_granularity", "offload_ratio", "t5_cpu_offload", "t5_offload_granularity", "lazy_load",
    "unload_modules", "use_tiling_vae",
    "parallel_attn_type", "parallel_vae", "seq_parallel", "mm_config", "rotary_chunk", "rotary_chunk_size",
    "clean_cuda_cache", "torch_compile", "feature_caching", "teacache_thresh", "use_ret_steps", "coefficients",
    "t5_quantized", "t5_quant_scheme", "clip_quantized", "clip_quant_scheme", "use_prompt_enhancer",
    "vae_stride", "patch_size", "num_channels_latents", "fps", "target_fps", "sample_fps", "use_bfloat16",
    "model_cls", "task", "do_mm_calib", "enable_profiling_debug", "audio_sr", "changing_resolution",
}

# dit_quant_scheme values (LightX2V's names) whose files hold per-output-row symmetric fp8 / int8 linear weights.
# The kernel part of the name (sgl, vllm, q8f, ...) picks LightX2V's GEMM; here fp8 runs torch._scaled_mm on CUDA.
DIT_QUANT_SCHEMES = {f"{fmt}-{kernel}": fmt for fmt in ("fp8", "int8")
                     for kernel in ("sgl", "vllm", "q8f", "triton", "torchao")}


# Wan2.1's default negative prompt for CFG sampling (wan/configs/shared_config.py ``sample_neg_prompt``).
WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
                       "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
                       "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class RunConfig:
    """Sampling / geometry settings of one deployment (LightX2V config JSON, plus our few keys).

    ``denoising_step_list`` set -> step-distilled sampling (no CFG); unset -> baseline flow-matching sampling
    with ``infer_steps`` steps and CFG when ``enable_cfg``.
    """

    infer_steps: int = 4
    denoising_step_list: tuple[int, ...] | None = (1000, 750, 500, 250)
    sample_shift: float = 5.0
    enable_cfg: bool = False
    sample_guide_scale: float = 5.0
    target_video_length: int = 81
    target_height: int = 480
    target_width: int = 832
    seed: int = 42
    text_len: int | None = None
    lora_configs: tuple[LoraSpec, ...] = ()
    dit_original_ckpt: Path | None = None
    dit_quantized: bool = False
    dit_quantized_ckpt: Path | None = None
    dit_quant_scheme: str = "Default"
    use_tae: bool = False
    tae_path: Path | None = None
    need_scaled: bool | None = None
    # ours
    distill_update: Literal["renoise", "euler"] = "renoise"
    compile_dit: bool = False
    warmup_dit: bool = True  # with compile_dit on CUDA: one denoising step at the default size when the model loads
    sp_size: int = 1  # Ulysses sequence-parallel processes per DiT forward (LightX2V: parallel.seq_p_size)
    sample_solver: Literal["unipc", "euler"] = "unipc"
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    fps: int = 16
    max_height: int = 1280
    max_width: int = 1280
    max_frames: int = 161
    max_image_pixels: int = 4096 * 4096
    source: str = field(default="<defaults>", compare=False)

    def __post_init__(self) -> None:
        src = self.source
        if self.denoising_step_list is not None:
            steps = list(self.denoising_step_list)
            if not steps:
                raise ConfigError(f"{src}: denoising_step_list must not be empty")
            if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= NUM_TRAIN_TIMESTEPS for s in steps):
                raise ConfigError(f"{src}: denoising_step_list values must be integers in [1, {NUM_TRAIN_TIMESTEPS}] "
                                  f"(indices into the training timesteps), got {steps}")
            if any(a <= b for a, b in zip(steps, steps[1:])):
                raise ConfigError(f"{src}: denoising_step_list must be strictly decreasing, got {steps}")
            if self.infer_steps != len(steps):
                raise ConfigError(
                    f"{src}: infer_steps ({self.infer_steps}) must equal the length of denoising_step_list "
                    f"({len(steps)}: {steps})")
            if self.enable_cfg:
                raise ConfigError(
                    f"{src}: a step-distilled config (denoising_step_list set) must have enable_cfg false: "
                    "CFG is distilled into the weights and enabling it blurs the video")
        elif self.infer_steps < 1:
            raise ConfigError(f"{src}: infer_steps must be >= 1, got {self.infer_steps}")
        if self.sample_shift <= 0:
            raise ConfigError(f"{src}: sample_shift must be > 0, got {self.sample_shift}")
        if self.distill_update not in ("renoise", "euler"):
            raise ConfigError(f"{src}: distill_update must be 'renoise' or 'euler', got {self.distill_update!r}")
        if self.sample_solver not in ("unipc", "euler"):
            raise ConfigError(f"{src}: sample_solver must be 'unipc' or 'euler', got {self.sample_solver!r}")
        if (self.target_video_length - 1) % 4:
            raise ConfigError(f"{src}: target_video_length must be 4k+1, got {self.target_video_length}")
        for key in ("target_height", "target_width"):
            if getattr(self, key) % 16:
                raise ConfigError(f"{src}: {key} must be a multiple of 16, got {getattr(self, key)}")
        if not 1 <= self.fps <= 120:
            raise ConfigError(f"{src}: fps must be in [1, 120], got {self.fps}")
        if self.sp_size < 1:
            raise ConfigError(f"{src}: sp_size must be >= 1, got {self.sp_size}")
        if self.sp_size > 1 and self.compile_dit:
            raise ConfigError(f"{src}: compile_dit is not supported with sp_size > 1 (the all-to-alls inside each "
                              "block are not compiled); set one of them off")
        if self.dit_quantized and self.dit_quant_scheme not in DIT_QUANT_SCHEMES:
            raise ConfigError(
                f"{src}: dit_quant_scheme {self.dit_quant_scheme!r} is not supported with dit_quantized; use one of "
                f"{', '.join(sorted(DIT_QUANT_SCHEMES))} (per-output-channel fp8 / int8 weights)")
        if not self.dit_quantized and self.dit_quant_scheme != "Default":
            raise ConfigError(f"{src}: dit_quant_scheme {self.dit_quant_scheme!r} needs dit_quantized true")
        if not self.dit_quantized and self.dit_quantized_ckpt is not None:
            raise ConfigError(f"{src}: dit_quantized_ckpt is set but dit_quantized is false")

    @property
    def is_distill(self) -> bool:
        return self.denoising_step_list is not None

    @property
    def uses_cfg(self) -> bool:
        """CFG at sampling time (baselines with enable_cfg; a distilled config never has it)."""
        return self.enable_cfg

    @property
    def dit_quant_format(self) -> str | None:
        """``"fp8"`` / ``"int8"`` when the config asks for a quantized DiT (``dit_quantized``), else None."""
        return DIT_QUANT_SCHEMES[self.dit_quant_scheme] if self.dit_quantized else None

    @property
    def num_dit_calls(self) -> int:
        """DiT evaluations per video: one per step, two with CFG."""
        return self.infer_steps * (2 if self.enable_cfg else 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> RunConfig:
        data = dict(data)
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        for old, new in (("use_tiny_vae", "use_tae"), ("tiny_vae_path", "tae_path")):  # older LightX2V names
            if old in data:
                value = data.pop(old)
                if new in data and data[new] != value:
                    raise ConfigError(f"{source}: {old} ({value!r}) and {new} ({data[new]!r}) disagree")
                data[new] = value
        if data.get("enable_dynamic_cfg"):
            raise ConfigError(f"{source}: enable_dynamic_cfg (guidance-conditioned distill) is not supported")
        if data.get("feature_caching", "NoCaching") != "NoCaching":
            raise ConfigError(f"{source}: feature_caching {data['feature_caching']!r} is incompatible with "
                              "step-distilled sampling; remove it or set 'NoCaching'")
        _parallel_to_sp_size(data, source)
        if "fps" not in data:
            for alias in ("target_fps", "sample_fps"):
                if alias in data:
                    data["fps"] = data[alias]
        loras: list[LoraSpec] = []
        for entry in data.pop("lora_configs", None) or []:
            if not isinstance(entry, dict) or "path" not in entry:
                raise ConfigError(f"{source}: each lora_configs entry needs a 'path', got {entry!r}")
            loras.append(LoraSpec(_resolve(entry["path"], base_dir), float(entry.get("strength", 1.0))))
        lora_path = data.pop("lora_path", None) or []
        if isinstance(lora_path, str):
            lora_path = [lora_path]
        loras += [LoraSpec(_resolve(p, base_dir), float(data.get("lora_strength", 1.0))) for p in lora_path]
        data.pop("lora_strength", None)
        unknown = [k for k in data if k not in names]
        _log_ignored_once(source, unknown)
        kwargs = {k: v for k, v in data.items() if k in names}
        if "denoising_step_list" not in kwargs:
            kwargs["denoising_step_list"] = None
        elif kwargs["denoising_step_list"] is not None:
            steps = kwargs["denoising_step_list"]
            if not isinstance(steps, (list, tuple)):
                raise ConfigError(f"{source}: denoising_step_list must be a list of integers, got {steps!r}")
            # 1000.0 in a JSON file means 1000; 999.5 stays a float and is refused in __post_init__
            kwargs["denoising_step_list"] = tuple(int(s) if isinstance(s, float) and s.is_integer() else s for s in steps)
        for key in ("dit_original_ckpt", "dit_quantized_ckpt", "tae_path"):
            if kwargs.get(key):
                kwargs[key] = _resolve(kwargs[key], base_dir)
            else:
                kwargs.pop(key, None)
        _check_types(kwargs, source)
        return cls(**kwargs, lora_configs=tuple(loras), source=source)

    @classmethod
    def from_json(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        return cls.from_dict(_read_json(path), source=str(path), base_dir=path.parent)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


_INT_KEYS = {"infer_steps", "target_video_length", "target_height", "target_width", "seed", "fps",
             "max_height", "max_width", "max_frames", "max_image_pixels", "sp_size"}
_FLOAT_KEYS = {"sample_shift", "sample_guide_scale"}


_ULYSSES_ATTN_TYPES = ("ulysses", "ulysses-4090")  # the same all-to-all algorithm (-4090: over send/recv pairs)


def _parallel_to_sp_size(data: dict[str, Any], source: str) -> None:
    """``"parallel": {"seq_p_size": N, "seq_p_attn_type": "ulysses"}`` -> ``sp_size`` N (in place).

    Refused: other sequence-parallel attention types (ring, ...), CFG and tensor parallelism, quantized
    (fp8 / fp4) communication, and an ``sp_size`` that contradicts ``seq_p_size``. Keys that only tune LightX2V's
    own kernels (seq_p_head_parallel, seq_p_tensor_fusion, ...) are logged as ignored.
    """
    parallel = data.pop("parallel", None)
    if parallel in (None, False) or parallel == {}:
        return
    if not isinstance(parallel, dict):
        raise ConfigError(f"{source}: parallel must be an object such as "
                          f'{{"seq_p_size": 2, "seq_p_attn_type": "ulysses"}}, or false; got {parallel!r}')
    size = parallel.get("seq_p_size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"{source}: parallel.seq_p_size must be an integer >= 1, got {size!r}")
    attn = parallel.get("seq_p_attn_type", "ulysses")
    if size > 1 and attn not in _ULYSSES_ATTN_TYPES:
        raise ConfigError(f"{source}: parallel.seq_p_attn_type {attn!r} is not supported: this server implements "
                          "Ulysses sequence parallelism only (\"ulysses\"); ring and other attention types are not")
    for key, what in (("cfg_p_size", "CFG parallelism"), ("tensor_p_size", "tensor parallelism")):
        if parallel.get(key, 1) not in (1, None):
            raise ConfigError(f"{source}: parallel.{key} {parallel[key]!r} ({what}) is not supported; "
                              "use parallel.seq_p_size (sp_size) only")
    for key in ("seq_p_fp8_comm", "seq_p_fp4_comm", "seq_p_quant_scheme"):
        if parallel.get(key):
            raise ConfigError(f"{source}: parallel.{key} (quantized all-to-all) is not supported: the exchange "
                              "carries the activations' own dtype")
    known = {"seq_p_size", "seq_p_attn_type", "cfg_p_size", "tensor_p_size", "seq_p_fp8_comm", "seq_p_fp4_comm",
             "seq_p_quant_scheme"}
    _log_ignored_once(source, [f"parallel.{k}" for k in parallel if k not in known])
    if "seq_p_size" in parallel:
        if "sp_size" in data and data["sp_size"] != size:
            raise ConfigError(f"{source}: sp_size ({data['sp_size']!r}) contradicts parallel.seq_p_size ({size}); "
                              "give one of them")
        data["sp_size"] = size


def _check_types(kwargs: dict[str, Any], source: str) -> None:
    for k, v in kwargs.items():
        if k in _INT_KEYS and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"{source}: {k} must be an integer, got {v!r}")
        if k in _FLOAT_KEYS and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ConfigError(f"{source}: {k} must be a number, got {v!r}")
        if k in ("enable_cfg", "compile_dit", "warmup_dit", "dit_quantized", "use_tae") and not isinstance(v, bool):
            raise ConfigError(f"{source}: {k} must be true or false, got {v!r}")
        if k == "need_scaled" and v is not None and not isinstance(v, bool):
            raise ConfigError(f"{source}: {k} must be true, false or null, got {v!r}")
        if k == "dit_quant_scheme" and not isinstance(v, str):
            raise ConfigError(f"{source}: {k} must be a string such as 'fp8-sgl', got {v!r}")


def _resolve(p: str | Path, base_dir: Path | None) -> Path:
    """Absolute paths as given; relative ones against the config file's folder (kept as given if absent)."""
    p = Path(p)
    if p.is_absolute() or base_dir is None:
        return p
    candidate = base_dir / p
    return candidate if candidate.exists() else p
