"""wan_*_dit: context (+ CLIP tokens and y for I2V) + SEED -> denoised latents [16, t, h, w].

One execute() runs every denoising step (4 for distilled configs, N with CFG for baselines) and checks between
steps whether to stop: the request was cancelled (a direct call), or its ``timeout`` has run out. Triton 2.51's
ensembles do not pass a client's cancellation on to a step that is already executing, but they do forward the
request's ``timeout`` (microseconds), which our client sets from its deadline. Shared by wan_t2v_dit, wan_i2v_dit and
the *_baseline models (symlinks).
"""
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__/ in model_repository/: Triton would take it for a model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # model_repository/ (triton_io)

import torch  # noqa: E402
import triton_io  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from wan_distill.deployment import Deployment  # noqa: E402
from wan_distill.errors import InvalidRequest  # noqa: E402
from wan_distill.pipeline import load_denoiser  # noqa: E402
from wan_distill.requests import check_geometry, check_seed  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.deployment = dep = Deployment.from_triton_args(args)
        self.denoiser = load_denoiser(dep.model_dir, dep.run, dep.device)
        self.is_i2v = self.denoiser.dit.cfg.is_i2v
        pb_utils.Logger.log_info(
            f"{dep.name}: {dep.model_dir} on {dep.device}, {dep.run.source}: {dep.run.infer_steps} steps, "
            f"{'CFG' if self.denoiser.needs_negative_context else 'no CFG'}, {dep.run.num_dit_calls} DiT calls per video")

    def execute(self, requests):
        return triton_io.respond(requests, self._denoise, self.deployment.name)

    def _denoise(self, request):
        run = self.deployment.run
        seed = check_seed(triton_io.scalar(request, "SEED", required=True), run)
        context = torch.from_numpy(triton_io.array(request, "TEXT_EMBEDDING"))
        negative = triton_io.array(request, "NEGATIVE_TEXT_EMBEDDING", required=False)
        negative = None if negative is None else torch.from_numpy(negative)
        clip_fea = y = None
        if self.is_i2v:
            clip_fea = torch.from_numpy(triton_io.array(request, "CLIP_FEATURE"))
            y = torch.from_numpy(triton_io.array(request, "IMAGE_LATENT"))
            latent_shape = (16, *y.shape[1:])
        else:
            for name in ("CLIP_FEATURE", "IMAGE_LATENT"):
                if triton_io.array(request, name, required=False) is not None:
                    raise InvalidRequest(name, "is only accepted by an image-to-video model")
            latent_shape = check_geometry(run, triton_io.scalar(request, "HEIGHT"), triton_io.scalar(request, "WIDTH"),
                                          triton_io.scalar(request, "NUM_FRAMES")).latent_shape
        latents = self.denoiser(context, seed, latent_shape, negative, clip_fea, y, should_stop=stop_check(request))
        return [triton_io.tensor("LATENTS", latents.numpy())]


def stop_check(request):
    """True once the request is cancelled or its timeout (counted from this step's start) has passed."""
    timeout_us = request.timeout()
    deadline = time.monotonic() + timeout_us / 1e6 if timeout_us else None
    return lambda: request.is_cancelled() or (deadline is not None and time.monotonic() > deadline)
