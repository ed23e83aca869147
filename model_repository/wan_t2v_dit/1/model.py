"""wan_*_dit: context (+ CLIP tokens and y for I2V) + SEED -> denoised latents [16, t, h, w].

execute() checks each request, hands it to a background denoising engine as a job and returns; the engine thread
advances every running job step by step (the steps of jobs of one geometry share a DiT call) and sends each job's one
response when it leaves. Between steps a job stops if its request was cancelled (a direct call) or its ``timeout`` has
passed (Triton 2.51's ensembles forward a request's timeout but not a client's cancellation). Shared by wan_t2v_dit,
wan_i2v_dit and the *_baseline models (symlinks).
"""
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__/ in model_repository/: Triton would take it for a model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # model_repository/ (triton_io)

import torch  # noqa: E402
import triton_io  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from wan_distill.batching import ContinuousBatcher  # noqa: E402
from wan_distill.deployment import Deployment  # noqa: E402
from wan_distill.pipeline import load_engine  # noqa: E402
from wan_distill.requests import check_geometry, check_seed  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.deployment = dep = Deployment.from_triton_args(args)
        self.engine = load_engine(dep.model_dir, dep.run, dep.device, dep.int_param("max_jobs_per_call", 4))
        self.batcher = ContinuousBatcher(self.engine, max_queued=dep.int_param("max_queued_jobs", 32),
                                         max_wait_s=dep.int_param("max_wait_ms", 2) / 1000, name=dep.name)
        pb_utils.Logger.log_info(
            f"{dep.name}: {dep.model_dir} on {dep.device}, {dep.run.source}: {dep.run.infer_steps} steps, "
            f"{'CFG' if self.engine.needs_negative_context else 'no CFG'}, {dep.run.num_dit_calls} DiT calls per "
            f"video, up to {self.engine.max_jobs_per_call} requests per DiT call")

    def execute(self, requests):
        for request in requests:
            try:
                self.batcher.submit(self._job(request))
            except Exception as e:
                triton_io.send_final(request, triton_io.error_response(e, self.deployment.name))
        return None

    def finalize(self):
        self.batcher.close()
        close = getattr(self.engine.dit, "close", None)  # a sequence-parallel group stops its workers
        if close is not None:
            close()

    def _job(self, request):
        run = self.deployment.run
        seed = check_seed(triton_io.scalar(request, "SEED", required=True), run)
        tensor = lambda name, required=True: _torch(triton_io.array(request, name, required))  # noqa: E731
        if self.engine.cfg.is_i2v:
            latent_shape = ()  # taken from IMAGE_LATENT
        else:
            latent_shape = check_geometry(run, triton_io.scalar(request, "HEIGHT"), triton_io.scalar(request, "WIDTH"),
                                          triton_io.scalar(request, "NUM_FRAMES")).latent_shape
        return self.engine.new_job(
            tensor("TEXT_EMBEDDING"), seed, latent_shape, negative_context=tensor("NEGATIVE_TEXT_EMBEDDING", False),
            clip_fea=tensor("CLIP_FEATURE", False), y=tensor("IMAGE_LATENT", False),
            should_stop=stop_check(request), on_done=lambda job: self._respond(request, job))

    def _respond(self, request, job):
        try:
            response = pb_utils.InferenceResponse(output_tensors=[triton_io.tensor("LATENTS", job.result().numpy())])
        except Exception as e:
            response = triton_io.error_response(e, self.deployment.name)
        triton_io.send_final(request, response)


def _torch(array):
    return None if array is None else torch.from_numpy(array)


def stop_check(request):
    """Why to stop ("cancelled" / "timed out ..."), or None: polled between steps. The timeout counts from the
    request's arrival at this model."""
    timeout_us = request.timeout()
    deadline = time.monotonic() + timeout_us / 1e6 if timeout_us else None

    def why():
        if request.is_cancelled():
            return "cancelled"
        if deadline is not None and time.monotonic() > deadline:
            return f"timed out (request timeout {timeout_us / 1e6:g} s)"
        return None
    return why
