"""The whole training recipe, one command: data -> VAE -> T2V teacher -> DMD 4-step student -> model root + LoRA,
then the same for I2V (teacher started from the T2V teacher, the same VAE and text encoder), plus the attribute
classifier used by the quality benchmark.

    python -m wan_training.recipe --out training/models            # full recipe (toy scale, CPU)
    python -m wan_training.recipe --out /tmp/smoke --smoke          # every stage, a few steps (seconds)

Writes ``<out>/Wan2.1-T2V-toy/`` and ``<out>/Wan2.1-I2V-toy/`` (the model roots, see :mod:`.export`),
``<out>/attribute_classifier.safetensors``
and ``<out>/training_log.json`` (sizes, steps, wall time per stage, VAE PSNR, LoRA reconstruction error).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from .classifier import AttributeClassifier, ClassifierTrainConfig, predict, train_classifier
from wan_distill.models.vae import WanVAE

from .common import CaptionBank, ToySpec, condition_on_first_frames, image_conditioner, new_dit, write_text_encoder
from .data import HEIGHT, NUM_FRAMES, WIDTH, make_batch, make_clip, to_uint8_frames
from .distill import DistillConfig, distill
from .export import ROOT_NAME, ROOT_NAMES, link_identical_files, write_encoders, write_model_root
from .teacher import TeacherTrainConfig, i2v_init, train_teacher
from .vae import VAETrainConfig, reconstruction_psnr, standardise_latents_, train_vae


@dataclass(frozen=True)
class Recipe:
    spec: ToySpec = ToySpec()
    vae: VAETrainConfig = VAETrainConfig()
    num_latent_clips: int = 1200
    teacher: TeacherTrainConfig = TeacherTrainConfig()
    distill: DistillConfig = DistillConfig(guidance_scale=2.0)   # shape right: 75.8 % at CFG 2, 70.0 % at 4 (T2V)
    classifier: ClassifierTrainConfig = ClassifierTrainConfig()
    i2v_teacher: TeacherTrainConfig = TeacherTrainConfig(steps=4000, batch=16, lr=3e-4, warmup=50)
    i2v_distill: DistillConfig = DistillConfig(steps=400)
    lora_rank: int = 32
    data_seed: int = 1000
    eval_seed: int = 3000
    notes: dict = field(default_factory=dict)

    def smoke(self) -> "Recipe":
        """Every stage for a few steps: the same code path, seconds instead of minutes."""
        return replace(self, vae=replace(self.vae, curriculum=((1, 1), (1, 5), (1, 9)), image_batch=2, batch=2), num_latent_clips=8,
                       teacher=replace(self.teacher, steps=3, batch=4, warmup=1),
                       distill=replace(self.distill, steps=2, critic_steps=1, batch=2),
                       classifier=replace(self.classifier, steps=2, batch=4),
                       i2v_teacher=replace(self.i2v_teacher, steps=3, batch=4, warmup=1),
                       i2v_distill=replace(self.i2v_distill, steps=2, critic_steps=1, batch=2))


def encode_clips(vae, seed: int, count: int, chunk: int = 16) -> tuple[torch.Tensor, list[str]]:
    latents, captions = [], []
    for start in range(0, count, chunk):
        video, clips = make_batch(seed, start, min(chunk, count - start))
        latents += [vae.encode(v[None])[0] for v in video]
        captions += [c.caption for c in clips]
    return torch.stack(latents), captions


def _cached(path: Path, reuse: bool, train, build):
    """Train (and save the state dict, with the seconds it took) or, with ``reuse`` and a saved file, load."""
    if reuse and path.is_file():
        saved = torch.load(path, weights_only=True)
        model = build()
        model.load_state_dict(saved["state"])
        _cached.seconds[path.stem] = saved["seconds"]
        return model.eval().requires_grad_(False)
    t = time.perf_counter()
    model = train()
    _cached.seconds[path.stem] = time.perf_counter() - t
    torch.save({"state": model.state_dict(), "seconds": _cached.seconds[path.stem]}, path)
    return model


_cached.seconds = {}


def run(recipe: Recipe, out: Path, log=print, reuse: bool = False, reuse_student: bool = True) -> dict:
    out = Path(out)
    root = out / ROOT_NAME
    root.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    work = out / "stages"     # stage results, so --reuse can rerun later stages alone (not committed)
    work.mkdir(exist_ok=True)

    t = time.perf_counter()
    vae = _cached(work / "vae.pt", reuse, lambda: train_vae(recipe.vae, log), lambda: WanVAE(dim=recipe.vae.dim))
    calib, _ = make_batch(recipe.data_seed + 1, 0, 48 if recipe.num_latent_clips > 8 else 4)
    stats = standardise_latents_(vae, calib)
    held_out, _ = make_batch(recipe.eval_seed, 0, 60 if recipe.num_latent_clips > 8 else 2)
    psnr = reconstruction_psnr(vae, held_out)
    times["vae"] = time.perf_counter() - t
    log(f"vae: {psnr:.2f} dB reconstruction PSNR on held-out clips ({times['vae']:.0f} s)")

    t = time.perf_counter()
    latents, captions = encode_clips(vae, recipe.data_seed, recipe.num_latent_clips)
    write_text_encoder(root)
    bank = CaptionBank(root, recipe.spec.text_len)
    times["encode"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher = _cached(work / "teacher.pt", reuse, lambda: train_teacher(latents, captions, bank, recipe.spec,
                                                                         recipe.teacher, log),
                      lambda: new_dit(recipe.spec, 0))
    times["teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    student = _cached(work / "student.pt", reuse and reuse_student,
                      lambda: distill(teacher, bank, tuple(latents.shape[1:]), recipe.distill, log=log),
                      lambda: new_dit(recipe.spec, 0))
    times["distill"] = time.perf_counter() - t

    t = time.perf_counter()
    lora_errors = write_model_root(root, teacher, student, vae, recipe.lora_rank)
    times["export"] = time.perf_counter() - t

    t = time.perf_counter()
    i2v = run_i2v(recipe, out / ROOT_NAMES["i2v"], work, vae, latents, captions, bank, teacher, reuse, reuse_student,
                  log)
    i2v["linked_to_t2v_root"] = link_identical_files(root, out / ROOT_NAMES["i2v"])
    times["i2v"] = time.perf_counter() - t

    t = time.perf_counter()
    clf = _cached(work / "classifier.pt", reuse, lambda: train_classifier(recipe.classifier, log), AttributeClassifier)
    real, clips = make_batch(recipe.eval_seed, 0, 120 if recipe.num_latent_clips > 8 else 4)
    pred, _ = predict(clf, real)
    labels = torch.tensor([c.labels for c in clips])
    clf_acc = (pred == labels).all(1).float().mean().item()
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(out / "attribute_classifier.safetensors"))
    times["classifier"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_all

    summary = {"geometry": {"frames": NUM_FRAMES, "height": HEIGHT, "width": WIDTH,
                            "latent": list(latents.shape[1:])},
               "recipe": asdict(recipe), "seconds": times, "training_seconds": dict(_cached.seconds), "vae_psnr_db": psnr,
               "vae_latent_stats_before_fold": {"mean": stats[0].tolist(), "std": stats[1].tolist()},
               "lora": {"rank": recipe.lora_rank, **lora_errors},
               "classifier_accuracy_real": clf_acc, "i2v": i2v, "torch_threads": torch.get_num_threads(),
               "parameters": {"dit": sum(p.numel() for p in teacher.parameters()),
                              "vae": sum(p.numel() for p in vae.parameters())}}
    (out / "training_log.json").write_text(json.dumps(summary, indent=2))
    log(f"done in {times['total']:.0f} s: {json.dumps(times)}; LoRA rank {recipe.lora_rank} error "
        f"{lora_errors['relative_error']:.4f}; classifier accuracy on real clips {clf_acc:.3f}")
    return summary


def first_frames(seed: int, count: int) -> list:
    """uint8 [H, W, 3] first frames of clips 0 .. count-1 of the stream ``seed`` (the clips encode_clips encodes)."""
    return [to_uint8_frames(make_clip(seed, i).video[:, :1])[0] for i in range(count)]


def run_i2v(recipe: Recipe, root: Path, work: Path, vae, latents, captions, bank, t2v_teacher, reuse: bool,
            reuse_student: bool, log=print) -> dict:
    """The I2V stages on the T2V training clips: their first frames' conditioning (the serving pipeline's
    ImageConditioner on the I2V root's CLIP and VAE), the I2V teacher (started from the T2V teacher), its DMD
    student, the I2V model root + LoRA. Returns seconds, LoRA errors and sizes for training_log.json."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    write_encoders(root, vae, "i2v")
    images = condition_on_first_frames(image_conditioner(root), first_frames(recipe.data_seed, len(captions)),
                                       NUM_FRAMES)
    times["condition"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher = _cached(work / "i2v_teacher.pt", reuse, lambda: train_teacher(
        latents, captions, bank, recipe.spec, recipe.i2v_teacher, log, image=images,
        init=i2v_init(t2v_teacher, recipe.spec, recipe.i2v_teacher.seed)), lambda: new_dit(recipe.spec, 0, "i2v"))
    times["teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    student = _cached(work / "i2v_student.pt", reuse and reuse_student, lambda: distill(
        teacher, bank, tuple(latents.shape[1:]), recipe.i2v_distill, captions=captions, log=log, images=images),
        lambda: new_dit(recipe.spec, 0, "i2v"))
    times["distill"] = time.perf_counter() - t

    t = time.perf_counter()
    lora_errors = write_model_root(root, teacher, student, vae, recipe.lora_rank)
    times["export"] = time.perf_counter() - t
    log(f"i2v: {json.dumps(times)}; LoRA rank {recipe.lora_rank} error {lora_errors['relative_error']:.4f}")
    return {"seconds": times, "lora": {"rank": recipe.lora_rank, **lora_errors},
            "parameters": {"dit": sum(p.numel() for p in teacher.parameters())},
            "clip_tokens": int(images.clip_fea.shape[1])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage")
    parser.add_argument("--reuse", action="store_true",
                        help="load stages already trained in <out>/stages/ (vae, teacher, student, i2v_teacher, "
                             "i2v_student, classifier) instead of training")
    parser.add_argument("--redistill", action="store_true", help="with --reuse: train the students again")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("WAN_NUM_THREADS", "1")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe().smoke() if args.smoke else Recipe()
    run(recipe, args.out, log=lambda msg: print(msg, flush=True), reuse=args.reuse, reuse_student=not args.redistill)


if __name__ == "__main__":
    main()
