"""wan_vae_decoder: LATENTS [16, t, h, w] -> FRAMES uint8 [1+4(t-1), 8h, 8w, 3], decoded one latent frame at a time
(by the Wan VAE, or the taew2_1 tiny decoder when the run config sets ``use_tae``)."""
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


class TritonPythonModel:
    def initialize(self, args):
        self.deployment = dep = Deployment.from_triton_args(args)
        self.vae = load_decoder(dep.model_dir, dep.run, dep.device)
        self.timer = triton_metrics.StageTimer("wan_vae_decode_duration_seconds",
                                               "Duration of one VAE decode (latents to uint8 frames)", dep.name)

    def execute(self, requests):
        return triton_io.respond(requests, self._decode, self.deployment.name)

    def _decode(self, request):
        latents = torch.from_numpy(triton_io.array(request, "LATENTS"))
        check_latents(latents.numpy(), self.deployment.run)  # shape, finite, the deployment's frame/pixel limits
        with self.timer.time():
            frames = self.vae.decode_to_uint8(latents.to(self.deployment.device))
        return [triton_io.tensor("FRAMES", frames.cpu().numpy())]
