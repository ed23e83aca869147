"""What one served model loads: model directory, run config and device, from Triton's ``initialize`` args.

Pure Python (no Triton import): ``args`` is the plain dict the python backend passes to ``initialize``.
Settings come from ``config.pbtxt`` parameters and may be overridden by environment variables:

  parameters { key: "model_path"      value: { string_value: "" } }                    # Wan2.1 model root
  parameters { key: "model_path_env"  value: { string_value: "WAN_T2V_MODEL_PATH" } }  # env names, first set wins
  parameters { key: "config_json"     value: { string_value: "configs/distill/wan_t2v_distill_4step_cfg.json" } }
  parameters { key: "config_json_env" value: { string_value: "WAN_T2V_CONFIG" } }
  parameters { key: "num_threads"     value: { string_value: "0" } }                   # torch intra-op threads, 0 = default

``$WAN_NUM_THREADS`` overrides ``num_threads`` for every model. On a small CPU host several stubs share the cores:
1 thread per model gave +47 % / +63 % throughput at concurrency 2 / 4 on 2 cores (bench/results/load_test.md).

Device: a KIND_GPU instance runs on its own GPU (``model_instance_device_id``); a KIND_CPU instance runs on the CPU
unless ``$WAN_DEVICE`` says ``cuda`` / ``cuda:N`` (the Docker image sets it, so one repository serves both).

Relative paths are resolved against the project root (the folder holding ``model_repository/``). Clients never choose paths.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError, RunConfig

if TYPE_CHECKING:  # torch is imported where a device is made: the request-step process runs without it
    import torch


@dataclass(frozen=True)
class Deployment:
    name: str
    model_dir: Path
    run: RunConfig
    device: torch.device
    params: dict[str, str]  # config.pbtxt parameters (string values)

    def int_param(self, key: str, default: int) -> int:
        """An integer ``parameters`` entry of config.pbtxt (``default`` when absent or empty)."""
        value = self.params.get(key, "")
        try:
            return int(value) if value != "" else default
        except ValueError:
            raise ConfigError(f"{self.name}: parameter {key} must be an integer, got {value!r}") from None

    @classmethod
    def from_triton_args(cls, args: dict[str, str]) -> Deployment:
        name, run, params = run_config_from_triton_args(args)
        model_path, model_src = _setting(params, "model_path", _where(name))
        if not model_path:
            raise ConfigError(f"{name}: no model directory configured: set {model_src} to a Wan2.1 model root "
                              "(the folder with config.json and the weights)")
        model_dir = _absolute(model_path, _root(args, params))
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"{name}: {model_dir} (from {model_src}) is not a Wan2.1 model directory: "
                              "config.json is missing")

        import torch  # not at module level: the request-step process reads run configs without torch

        threads = int(os.environ.get("WAN_NUM_THREADS") or params.get("num_threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        if args.get("model_instance_kind") == "GPU":
            device = torch.device("cuda", int(args.get("model_instance_device_id", 0)))
            check_memory_plan(name, params, device.index)
        else:
            device = torch.device(os.environ.get("WAN_DEVICE") or "cpu")
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"{name}: WAN_DEVICE={os.environ['WAN_DEVICE']} but no CUDA device is visible")
        return cls(name, model_dir, run, device, params)


def run_config_from_triton_args(args: dict[str, str]) -> tuple[str, RunConfig, dict[str, str]]:
    """(model name, run config, parameters) of a model that needs a run config but no weights (the request step)."""
    name = args.get("model_name", "model")
    params = {k: v.get("string_value", "") for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
    config_path, config_src = _setting(params, "config_json", _where(name))
    if not config_path:
        raise ConfigError(f"{name}: no run config: set {config_src} to a LightX2V config JSON")
    config_file = _absolute(config_path, _root(args, params))
    if not config_file.is_file():
        raise ConfigError(f"{name}: run config {config_file} (from {config_src}) does not exist")
    return name, RunConfig.from_json(config_file), params


def _root(args: dict[str, str], params: dict[str, str]) -> Path:
    """The project root: parameters.project_root (a generated profile repository), else the folder holding
    model_repository/ (args["model_repository"] is <root>/model_repository/<model>)."""
    if params.get("project_root"):
        return Path(params["project_root"])
    return Path(args["model_repository"]).resolve().parent.parent


def check_memory_plan(name: str, params: dict[str, str], gpu: int, free_memory=None, gpu_count=None) -> None:
    """Before a GPU model loads: refuse (MemoryPlanError) when its planned bytes (``memory_need_bytes``, written by
    a deployment profile, wan_distill.profiles) exceed GPU ``gpu``'s free memory; the message names the model,
    bytes needed vs free and what would fit. ``free_memory(index) -> (free, total)`` and ``gpu_count`` are
    injectable for tests."""
    if not params.get("memory_need_bytes"):
        return
    from . import memory, profiles

    free_memory = free_memory or memory.cuda_free_memory
    free, _total = free_memory(gpu)
    need = int(params["memory_need_bytes"])
    if need <= free:
        return
    hint = ""
    if params.get("wan_profile"):
        if gpu_count is None:
            import torch

            gpu_count = torch.cuda.device_count()
        resolved = profiles.resolve(params["wan_profile"], dict(os.environ, WAN_GPU_MAP=params.get("wan_gpu_map", "")))
        frees = {g: free_memory(g)[0] for g in range(max(gpu_count, gpu + 1))}
        hint = f"Profile {resolved.name} places it on GPU {gpu}. " + profiles.advice(resolved, frees)
    raise memory.MemoryPlanError(f"{name} does not fit on cuda:{gpu}: needs {memory.gib(need)} "
                                 f"({params.get('memory_plan', '')}), but only {memory.gib(free)} is free "
                                 f"({need:,} > {free:,} bytes)" + (f". {hint}" if hint else ""))


def _where(name: str) -> str:
    return f"model_repository/{name}/config.pbtxt"


def _setting(params: dict[str, str], key: str, where: str) -> tuple[str, str]:
    """Value of ``key``: the first set environment variable named in ``<key>_env``, else the parameter."""
    env_names = [n.strip() for n in params.get(f"{key}_env", "").split(",") if n.strip()]
    for env in env_names:
        if os.environ.get(env):
            return os.environ[env], f"${env}"
    hint = " or ".join([f"${n}" for n in env_names] + [f"parameters.{key} in {where}"])
    return params.get(key, ""), hint


def _absolute(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p)
