"""Quality of generated videos, measured with the attribute classifier: prompt following and a Fréchet distance.

Every method runs through the project's own serving code: weights found and loaded strictly by
``wan_distill.loaders`` from the model root and a run config, denoised by ``wan_distill.engine.DenoiseEngine``
(the sampler of the run config: UniPC + CFG for the baseline, the 4-step distill schedule otherwise), text from
the root's UMT5, frames from the root's VAE ``decode_to_uint8`` (the served decoder's output). I2V (an I2V root): a prompt is the first frame of a
held-out real clip of its (colour, shape, motion) plus the matching caption; the conditioning comes from the serving
pipeline's ``ImageConditioner`` on the root's CLIP and VAE.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from wan_distill.config import DiTConfig, RunConfig
from wan_distill.engine import DenoiseEngine
from wan_distill.loaders.checkpoint import load_dit
from wan_distill.loaders.text_encoder import load_text_encoder
from wan_distill.loaders.vae import load_vae_from_dir
from wan_distill.models.dit import WanDiT
from wan_distill.pipeline import text_len_of

from .classifier import AttributeClassifier, frechet_distance, predict
from .common import image_conditioner
from .data import COMBOS, caption, from_uint8_frames, make_batch, make_clip, to_uint8_frames

METHODS = ("teacher 50-step CFG", "teacher 4-step (no distillation)", "student 4-step", "base + LoRA 4-step")
I2V_IMAGE_SEED = 5000      # the stream of held-out clips whose first frames are the I2V prompts (training: 1000)


@dataclass(frozen=True)
class Prompt:
    colour: str
    shape: str
    motion: str
    seed: int
    image: tuple[int, int] | None = None   # I2V: (stream seed, index) of the held-out clip whose first frame is given

    def real_clip(self) -> np.ndarray:
        """I2V: uint8 [F, H, W, 3] of the held-out clip (of this prompt's attributes) the image is taken from."""
        return to_uint8_frames(make_clip(*self.image, combo=(self.colour, self.shape, self.motion)).video)

    @property
    def first_frame(self) -> np.ndarray:
        """I2V: the given picture, uint8 [H, W, 3]."""
        return self.real_clip()[0]

    def image_png(self) -> bytes:
        """I2V: the given picture as the PNG a client sends."""
        buf = io.BytesIO()
        Image.fromarray(self.first_frame).save(buf, format="PNG")
        return buf.getvalue()

    @property
    def text(self) -> str:
        return caption(self.colour, self.shape, self.motion)

    @property
    def labels(self) -> tuple[int, int, int]:
        from .data import COLOURS, MOTIONS, SHAPES
        return list(COLOURS).index(self.colour), SHAPES.index(self.shape), list(MOTIONS).index(self.motion)


def eval_prompts(seeds: Sequence[int]) -> list[Prompt]:
    """Every (colour, shape, motion) caption with every seed."""
    return [Prompt(*combo, seed) for seed in seeds for combo in COMBOS]


def i2v_prompts(seeds: Sequence[int], image_seed: int = I2V_IMAGE_SEED) -> list[Prompt]:
    """Every (colour, shape, motion) caption with every seed, each with the first frame of its own held-out clip."""
    return [Prompt(*combo, seed, image=(image_seed, j * len(COMBOS) + i))
            for j, seed in enumerate(seeds) for i, combo in enumerate(COMBOS)]


def load_classifier(path: Path) -> AttributeClassifier:
    model = AttributeClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


class Generator:
    """The root's text encoder and VAE (and, for an I2V root, its image conditioner), shared by every method;
    ``engines`` builds one engine per method."""

    def __init__(self, root: Path, distill_config: Path, lora_config: Path, baseline_config: Path):
        self.root = Path(root)
        self.runs = {"distill": RunConfig.from_json(distill_config), "lora": RunConfig.from_json(lora_config),
                     "baseline": RunConfig.from_json(baseline_config)}
        self.text_encoder = load_text_encoder(self.root, "cpu", text_len_of(self.root, self.runs["distill"]))
        self.vae = load_vae_from_dir(self.root, "cpu")
        self.is_i2v = DiTConfig.from_json(self.root / "config.json").is_i2v
        self.conditioner = image_conditioner(self.root) if self.is_i2v else None
        self._conditions: dict[tuple, dict[str, torch.Tensor]] = {}   # I2V: per (image, geometry), shared by methods

    def engines(self) -> dict[str, DenoiseEngine]:
        base: WanDiT = load_dit(self.root, self.runs["baseline"])          # base weights: the teacher
        student = load_dit(self.root, self.runs["distill"])                # distill_models/distill_model.safetensors
        merged = load_dit(self.root, self.runs["lora"])                    # base + distill LoRA
        return dict(zip(METHODS, (DenoiseEngine(base, self.runs["baseline"], "cpu", 64),
                                  DenoiseEngine(base, self.runs["distill"], "cpu", 64),
                                  DenoiseEngine(student, self.runs["distill"], "cpu", 64),
                                  DenoiseEngine(merged, self.runs["lora"], "cpu", 64))))

    @torch.inference_mode()
    def videos(self, engine: DenoiseEngine, prompts: Sequence[Prompt]) -> list[np.ndarray]:
        """uint8 frames [F, H, W, 3] per prompt, at the run config's geometry (I2V: conditioned on the prompt's
        first frame)."""
        run = engine.run
        shape = (16, 1 + (run.target_video_length - 1) // 4, run.target_height // 8, run.target_width // 8)
        texts = sorted({p.text for p in prompts})
        contexts = dict(zip(texts, self.text_encoder.encode(texts)))
        negative = self.text_encoder.encode([run.negative_prompt])[0] if run.uses_cfg else None

        def image(p: Prompt) -> dict:
            if not self.is_i2v:
                return {}
            key = (p.image, run.target_height, run.target_width, run.target_video_length)
            if key not in self._conditions:
                cond = self.conditioner(Image.fromarray(p.first_frame), run.target_height * run.target_width,
                                        run.target_video_length)
                self._conditions[key] = {"clip_fea": cond.clip_fea, "y": cond.y}
            return self._conditions[key]

        jobs = [engine.new_job(contexts[p.text], p.seed, shape, negative_context=negative, **image(p))
                for p in prompts]
        engine.run_until_done(jobs)
        return [self.vae.decode_to_uint8(job.result()).numpy() for job in jobs]


def real_features(classifier: AttributeClassifier, seed: int, count: int) -> torch.Tensor:
    videos, _ = make_batch(seed, 0, count)
    return predict(classifier, videos)[1]


def score(classifier: AttributeClassifier, frames: Sequence[np.ndarray], prompts: Sequence[Prompt],
          real: torch.Tensor) -> dict[str, float]:
    """Prompt-following accuracy (all three attributes right, and each alone) and the Fréchet distance to ``real``."""
    videos = torch.stack([from_uint8_frames(f) for f in frames])
    pred, feats = predict(classifier, videos)
    labels = torch.tensor([p.labels for p in prompts])
    hit = pred == labels
    return {"accuracy": hit.all(1).float().mean().item(),
            "colour_motion": (hit[:, 0] & hit[:, 2]).float().mean().item(), "colour": hit[:, 0].float().mean().item(),
            "shape": hit[:, 1].float().mean().item(), "motion": hit[:, 2].float().mean().item(),
            "frechet": frechet_distance(feats, real)}


@torch.no_grad()
def caption_use(dit: WanDiT, gen: "Generator", count: int = 120, sigmas=(0.3, 0.6, 0.9), seed: int = 0
                ) -> dict[float, dict[str, float]]:
    """Flow-matching loss of ``dit`` on encoded real clips with their own caption, another clip's caption and the
    null caption, per noise level: a model that uses its text has right < wrong and right < null."""
    videos, clips = make_batch(3000, 0, count)
    x0 = torch.cat([gen.vae.encode(v[None]) for v in videos])
    texts = [c.caption for c in clips]
    embs = dict(zip(sorted(set(texts)) + [""], gen.text_encoder.encode(sorted(set(texts)) + [""])))

    def context(names):
        longest = max(embs[n].shape[0] for n in names)
        return torch.stack([torch.nn.functional.pad(embs[n], (0, 0, 0, longest - embs[n].shape[0])) for n in names])

    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in sigmas:
        noise = torch.randn(x0.shape, generator=g)
        x_t = (1 - s) * x0 + s * noise
        t = torch.full((count,), 1000.0 * s)
        loss = {name: torch.nn.functional.mse_loss(dit(x_t, t, context(caps)), noise - x0).item()
                for name, caps in (("right", texts), ("wrong", texts[1:] + texts[:1]), ("null", [""] * count))}
        out[s] = loss
    return out
