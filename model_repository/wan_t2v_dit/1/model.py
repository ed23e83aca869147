"""wan_*_dit: context (+ CLIP tokens and y for I2V) + SEED -> denoised latents [16, t, h, w].

execute() checks each request, hands it to a background denoising engine as a job and returns; the engine thread
advances every running job step by step (the steps of jobs of one geometry share a DiT call) and sends each job's one
response when it leaves. Between steps a job stops if its request was cancelled (a direct call), its ``timeout`` has
passed (Triton 2.51's ensembles forward a request's timeout but not a client's cancellation), or a control request
cancelled it.

Control requests (request parameters, ``wan_distill.jobs``): a job request may carry ``wan_job_id``; a request with
``wan_control`` = ``watch`` (long-poll the job's progress) or ``cancel`` and that ``wan_job_id`` asks for PROGRESS only
and is answered without blocking execute(). The streamed pipelines use them. Shared by wan_t2v_dit, wan_i2v_dit and
the *_baseline models (symlinks).
"""
import json
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__/ in model_repository/: Triton would take it for a model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # model_repository/ (triton_io, triton_metrics)

import torch  # noqa: E402
import triton_io  # noqa: E402
import triton_metrics  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from wan_distill.batching import ContinuousBatcher  # noqa: E402
from wan_distill.deployment import Deployment  # noqa: E402
from wan_distill.engine import JobStatus  # noqa: E402
from wan_distill.errors import InvalidRequest  # noqa: E402
from wan_distill.jobs import AFTER_STEP, CONTROL, JOB_ID, WAIT_MS, JobBoard  # noqa: E402
from wan_distill.pipeline import load_engine  # noqa: E402
from wan_distill.requests import check_geometry, check_seed  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.deployment = dep = Deployment.from_triton_args(args)
        self.metrics = triton_metrics.DiTMetrics(dep.name)
        self.engine = load_engine(dep.model_dir, dep.run, dep.device, dep.int_param("max_jobs_per_call", 4))
        self.engine.on_call = self.metrics.on_call
        self.board = JobBoard()
        self.batcher = ContinuousBatcher(self.engine, max_queued=dep.int_param("max_queued_jobs", 32),
                                         max_wait_s=dep.int_param("max_wait_ms", 2) / 1000, name=dep.name,
                                         on_counts=self.metrics.on_counts)
        pb_utils.Logger.log_info(
            f"{dep.name}: {dep.model_dir} on {dep.device}, {dep.run.source}: {dep.run.infer_steps} steps, "
            f"{'CFG' if self.engine.needs_negative_context else 'no CFG'}, {dep.run.num_dit_calls} DiT calls per "
            f"video, up to {self.engine.max_jobs_per_call} requests per DiT call")

    def execute(self, requests):
        for request in requests:
            try:
                params = json.loads(request.parameters() or "{}")
                job_id = None if params.get(JOB_ID) is None else str(params[JOB_ID])
                if params.get(CONTROL) is not None:
                    self._control(request, params[CONTROL], job_id, params)
                else:
                    self._submit(request, job_id)
            except Exception as e:
                triton_io.send_final(request, triton_io.error_response(e, self.deployment.name))
        return None

    def _submit(self, request, job_id):
        try:
            job = self._job(request, job_id)
        except Exception as e:
            if job_id is not None:
                self.board.refuse(job_id, str(e))  # its watches are answered at once
            raise
        if job_id is not None:
            self.board.attach(job)
        try:
            self.batcher.submit(job)
        except Exception as e:
            job.finish(JobStatus.FAILED, e)
            self.board.finish(job)
            raise

    def finalize(self):
        self.batcher.close()
        self.board.close()
        close = getattr(self.engine.dit, "close", None)  # a sequence-parallel group stops its workers
        if close is not None:
            close()

    def _job(self, request, job_id):
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
            clip_fea=tensor("CLIP_FEATURE", False), y=tensor("IMAGE_LATENT", False), job_id=job_id,
            should_stop=stop_check(request), on_step=self.board.step, on_done=lambda job: self._respond(request, job))

    def _respond(self, request, job):
        self.board.finish(job)
        if job.status is JobStatus.CANCELLED:
            self.metrics.on_stopped(triton_metrics.stop_kind(job.stop_reason() or ""), job.started_at is not None)
        # the job's error is not raised here: a raise would tie job -> error -> traceback -> frame -> job in a cycle
        # that keeps the request and its tensors alive until a full garbage collection (RSS grew per cancel)
        if job.status is JobStatus.DONE:
            try:
                response = pb_utils.InferenceResponse(output_tensors=[triton_io.tensor("LATENTS", job.result().numpy())])
            except Exception as e:
                response = triton_io.error_response(e, self.deployment.name)
        else:
            response = triton_io.error_response(job.error or RuntimeError(f"job ended {job.status.value}"),
                                                self.deployment.name)
        job.on_done = job.on_step = job.should_stop = None  # the board may keep the job a while: not the request
        triton_io.send_final(request, response)

    def _control(self, request, control, job_id, params):
        """A watch or cancel of job ``job_id``; answered with PROGRESS (now, or from the engine / board thread)."""
        if job_id is None:
            raise InvalidRequest(JOB_ID, f"is required with {CONTROL}")
        extra = set(request.requested_output_names()) - {"PROGRESS"}
        if extra:
            raise InvalidRequest(CONTROL, f"a control request asks for PROGRESS only, not {sorted(extra)}")

        def reply(snapshot):
            progress = triton_io.bytes_tensor("PROGRESS", json.dumps(snapshot).encode("utf-8"))
            triton_io.send_final(request, pb_utils.InferenceResponse(output_tensors=[progress]))

        if control == "cancel":
            reply(self.board.cancel(job_id))
        elif control == "watch":
            self.board.watch(job_id, _int(params, AFTER_STEP, 0), _int(params, WAIT_MS, 10_000) / 1000, reply)
        else:
            raise InvalidRequest(CONTROL, f"must be 'watch' or 'cancel', got {control!r}")


def _int(params, key, default):
    try:
        return int(params.get(key, default))
    except (TypeError, ValueError):
        raise InvalidRequest(key, f"must be an integer, got {params.get(key)!r}") from None


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
