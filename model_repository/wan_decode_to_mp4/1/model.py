"""wan_decode_to_mp4: LATENTS [16, t, h, w] (+ FPS) -> VIDEO_MP4 (H.264) (+ FRAMES uint8 [1+4(t-1), 8h, 8w, 3] if
asked). Decodes one latent frame at a time (Wan VAE, or taew2_1 with ``use_tae``) and hands each chunk of frames to
an MP4 encoder thread, so the encode runs while the next latent frame decodes (wan_distill.video.decode_to_mp4).
TIMINGS (only when asked: the streamed pipelines): JSON {"decode": s, "encode": s}."""
import json
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__/ in model_repository/: Triton would take it for a model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # model_repository/ (triton_io)

import torch  # noqa: E402
import triton_io  # noqa: E402
import triton_metrics  # noqa: E402

from wan_distill.deployment import Deployment  # noqa: E402
from wan_distill.limits import check_latents  # noqa: E402
from wan_distill.loaders.vae import load_decoder  # noqa: E402
from wan_distill.requests import check_fps  # noqa: E402
from wan_distill.video import X264Settings, decode_to_mp4  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.deployment = dep = Deployment.from_triton_args(args)
        self.x264 = X264Settings.from_params(dep.params)
        self.vae = load_decoder(dep.model_dir, dep.run, dep.device)
        labels, buckets = {"model": dep.name}, triton_metrics.SECONDS_BUCKETS  # the two separate models' metrics
        self.decode_seconds = triton_metrics.histogram(
            "wan_vae_decode_duration_seconds", "Duration of one VAE decode (latents to uint8 frames)", labels, buckets)
        self.encode_seconds = triton_metrics.histogram(  # the encoder thread's busy time, overlapping the decode
            "wan_mp4_encode_duration_seconds", "Duration of one MP4 (H.264) encode", labels, buckets)

    def execute(self, requests):
        return triton_io.respond(requests, self._run, self.deployment.name)

    def _run(self, request):
        latents = torch.from_numpy(triton_io.array(request, "LATENTS"))
        check_latents(latents.numpy(), self.deployment.run)  # shape, finite, the deployment's frame/pixel limits
        fps = check_fps(triton_io.scalar(request, "FPS"), self.deployment.run)
        want_frames = "FRAMES" in request.requested_output_names()  # the raw frames only travel when asked
        out = decode_to_mp4(self.vae.decode_uint8_chunks(latents.to(self.deployment.device)),
                            self.vae.num_frames(latents.shape[1]), fps, self.x264, keep_frames=want_frames)
        self.decode_seconds.observe(out.decode_seconds)
        self.encode_seconds.observe(out.encode_seconds)
        outputs = [triton_io.bytes_tensor("VIDEO_MP4", out.mp4)]
        if want_frames:
            outputs.append(triton_io.tensor("FRAMES", out.frames))
        if "TIMINGS" in request.requested_output_names():  # the streamed pipeline's decode / encode stage times
            outputs.append(triton_io.bytes_tensor("TIMINGS", json.dumps(
                {"decode": out.decode_seconds, "encode": out.encode_seconds}).encode()))
        return outputs
