"""wan_image_encoder (I2V): IMAGE bytes (+ HEIGHT/WIDTH as max area, NUM_FRAMES) -> CLIP tokens + y (mask | VAE latent).

PROMPT / NEGATIVE_PROMPT pass through unchanged (PROMPT_OUT / NEGATIVE_PROMPT_OUT): the I2V ensemble is a chain, the
text encoder runs after this step (see wan_distill.serving.repository)."""
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__/ in model_repository/: Triton would take it for a model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # model_repository/ (triton_io)

import triton_io  # noqa: E402

from wan_distill.deployment import Deployment  # noqa: E402
from wan_distill.loaders.image_encoder import load_image_encoder  # noqa: E402
from wan_distill.loaders.vae import load_vae_from_dir  # noqa: E402
from wan_distill.limits import check_i2v_geometry  # noqa: E402
from wan_distill.pipeline import ImageConditioner, i2v_geometry  # noqa: E402
from wan_distill.requests import check_geometry  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.deployment = dep = Deployment.from_triton_args(args)
        self.conditioner = ImageConditioner(load_image_encoder(dep.model_dir, dep.device),
                                            load_vae_from_dir(dep.model_dir, dep.device),
                                            dep.device, dep.run.max_image_pixels)

    def execute(self, requests):
        return triton_io.respond(requests, self._condition, self.deployment.name)

    def _condition(self, request):
        geo = check_geometry(self.deployment.run, triton_io.scalar(request, "HEIGHT"),
                             triton_io.scalar(request, "WIDTH"), triton_io.scalar(request, "NUM_FRAMES"))
        image = self.conditioner.decode(triton_io.scalar(request, "IMAGE"))
        check_i2v_geometry(i2v_geometry(image.size[::-1], geo.height * geo.width, geo.num_frames), self.deployment.run)
        cond = self.conditioner(image, geo.height * geo.width, geo.num_frames)
        outputs = [triton_io.tensor("CLIP_FEATURE", cond.clip_fea.numpy()),
                   triton_io.tensor("IMAGE_LATENT", cond.y.numpy())]
        for name in ("PROMPT", "NEGATIVE_PROMPT"):
            if f"{name}_OUT" in request.requested_output_names():
                outputs.append(triton_io.bytes_tensor(f"{name}_OUT", triton_io.scalar(request, name, required=True)))
        return outputs
