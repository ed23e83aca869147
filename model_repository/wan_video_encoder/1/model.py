"""wan_video_encoder: FRAMES uint8 [F, H, W, 3] (+ FPS) -> VIDEO_MP4 (H.264, yuv420p) bytes (+ FRAMES_OUT if asked)."""
import json
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__/ in model_repository/: Triton would take it for a model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # model_repository/ (triton_io)

import triton_io  # noqa: E402
import triton_metrics  # noqa: E402

from wan_distill.config import RunConfig  # noqa: E402
from wan_distill.limits import check_frames  # noqa: E402
from wan_distill.requests import check_fps  # noqa: E402
from wan_distill.video import X264Settings, encode_mp4  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.name = args.get("model_name", "wan_video_encoder")
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        self.defaults = RunConfig(fps=int(params.get("default_fps", 16)))
        self.x264 = X264Settings.from_params(params)
        self.timer = triton_metrics.StageTimer("wan_mp4_encode_duration_seconds",
                                               "Duration of one MP4 (H.264) encode", self.name)

    def execute(self, requests):
        return triton_io.respond(requests, self._encode, self.name)

    def _encode(self, request):
        fps = check_fps(triton_io.scalar(request, "FPS"), self.defaults)
        frames = triton_io.array(request, "FRAMES")
        check_frames(frames, self.defaults)  # uint8 RGB, >= 1 frame, even sides (libx264), the deployment's limits
        with self.timer.time():
            mp4 = encode_mp4(frames, fps, settings=self.x264)
        outputs = [triton_io.bytes_tensor("VIDEO_MP4", mp4)]
        if "FRAMES_OUT" in request.requested_output_names():  # the raw frames only travel when the client asks
            outputs.append(triton_io.tensor("FRAMES_OUT", frames))
        return outputs
