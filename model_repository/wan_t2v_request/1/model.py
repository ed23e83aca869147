"""wan_*_request: the first step of every pipeline. Checks every client input once (INVALID_ARGUMENT naming the field
and the rule) and fills the defaults from the pipeline's run config, so that nothing fans out before the request is
known to be good and the composing models only see explicit values. No torch in this process.

Inputs (all optional here, so a missing one is named): PROMPT, SEED, NEGATIVE_PROMPT, HEIGHT, WIDTH, NUM_FRAMES, FPS
(+ IMAGE for I2V). Outputs: the same names, validated; NEGATIVE_PROMPT is the run's negative prompt for CFG pipelines.
Shared by wan_t2v_request, wan_i2v_request and the *_baseline_request models (symlinks).
"""
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__/ in model_repository/: Triton would take it for a model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # model_repository/ (triton_io)

import numpy as np  # noqa: E402
import triton_io  # noqa: E402

from wan_distill.deployment import run_config_from_triton_args  # noqa: E402
from wan_distill.requests import parse_video_request  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.name, self.run, _ = run_config_from_triton_args(args)
        self.i2v = "i2v" in self.name

    def execute(self, requests):
        return triton_io.respond(requests, self._check, self.name)

    def _check(self, request):
        get = lambda name: triton_io.scalar(request, name)  # noqa: E731
        req = parse_video_request(self.run, prompt=triton_io.scalar(request, "PROMPT", required=True),
                                  seed=get("SEED"), negative_prompt=get("NEGATIVE_PROMPT"), height=get("HEIGHT"),
                                  width=get("WIDTH"), num_frames=get("NUM_FRAMES"), fps=get("FPS"),
                                  image=get("IMAGE"), i2v=self.i2v, require_seed=True)
        geo = req.geometry
        values = {"PROMPT": req.prompt.encode("utf-8"), "SEED": req.seed, "HEIGHT": geo.height, "WIDTH": geo.width,
                  "NUM_FRAMES": geo.num_frames, "FPS": req.fps, "IMAGE": req.image,
                  "NEGATIVE_PROMPT": None if req.negative_prompt is None else req.negative_prompt.encode("utf-8")}
        outputs = []
        for name in request.requested_output_names():
            value = values[name]
            if isinstance(value, bytes):
                outputs.append(triton_io.bytes_tensor(name, value))
            elif value is not None:
                outputs.append(triton_io.tensor(name, np.array([value], dtype=np.int64)))
        return outputs
