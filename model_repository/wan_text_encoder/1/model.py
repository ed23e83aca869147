"""wan_text_encoder: PROMPT (+ NEGATIVE_PROMPT) -> UMT5 context [L, text_dim] (trimmed to the true token count)."""
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__/ in model_repository/: Triton would take it for a model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # model_repository/ (triton_io)

import triton_io  # noqa: E402

from wan_distill.deployment import Deployment  # noqa: E402
from wan_distill.loaders.text_encoder import load_text_encoder  # noqa: E402
from wan_distill.pipeline import text_len_of  # noqa: E402
from wan_distill.requests import decode_text  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.deployment = Deployment.from_triton_args(args)
        dep = self.deployment
        self.encoder = load_text_encoder(dep.model_dir, dep.device, text_len_of(dep.model_dir, dep.run))

    def execute(self, requests):
        return triton_io.respond(requests, self._encode, self.deployment.name)

    def _encode(self, request):
        prompts = [decode_text("PROMPT", triton_io.scalar(request, "PROMPT", required=True))]
        want_negative = "NEGATIVE_TEXT_EMBEDDING" in request.requested_output_names()
        if want_negative:
            negative = decode_text("NEGATIVE_PROMPT", triton_io.scalar(request, "NEGATIVE_PROMPT"), required=False)
            prompts.append(self.deployment.run.negative_prompt if negative is None else negative)
        contexts = [c.float().cpu().numpy() for c in self.encoder.encode(prompts)]
        outputs = [triton_io.tensor("TEXT_EMBEDDING", contexts[0])]
        if want_negative:
            outputs.append(triton_io.tensor("NEGATIVE_TEXT_EMBEDDING", contexts[1]))
        return outputs
