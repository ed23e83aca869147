#!/usr/bin/env python3
"""Quality and speed of the trained toy models (issue 12): prompt following and Fréchet distance of the attribute
classifier's features against real clips, for the teacher (50-step UniPC + CFG, and 4 distill steps without
distillation), the 4-step DMD student, base + distill LoRA at 4 steps, and the student served by tritonserver; plus
the wall-clock speedup of student 4-step vs teacher 50-step CFG (in-process pipeline, one request at a time).

    nice -n 15 .venv/bin/python bench/training.py --write        # after python -m wan_training.recipe

Same prompts and seeds for every method: the 60 captions ("a red circle moving left", ...) x ``--seeds`` seeds.
Writes bench/results/training.md (the table, the training times from training_log.json, the commands).

    nice -n 15 .venv/bin/python bench/training.py --i2v --write  # the I2V root: bench/results/training_i2v.md

I2V: each prompt is the first frame of a held-out clip of its (colour, shape, motion) + the matching caption; the same
classifier, scoring and methods (student served as wan_i2v).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from bench_model import ROOT, emit, ensure_demo_models, header, start_server

sys.path.insert(0, str(ROOT / "scripts"))
from demo import TOY_CONFIGS, TOY_I2V_ROOT, TOY_ROOT, toy_env  # noqa: E402

from wan_distill.config import RunConfig  # noqa: E402
from wan_distill.pipeline import WanPipeline  # noqa: E402
from wan_training.data import from_uint8_frames  # noqa: E402
from wan_training.evaluate import (Generator, caption_use, eval_prompts, i2v_prompts, load_classifier,  # noqa: E402
                                   real_features, score)

CONFIGS = {"distill": TOY_CONFIGS / "wan_t2v_distill_4step_toy.json",
           "lora": TOY_CONFIGS / "wan_t2v_distill_4step_toy_lora.json",
           "baseline": TOY_CONFIGS / "wan_t2v_baseline_50step_cfg_toy.json"}
I2V_CONFIGS = {k: TOY_CONFIGS / v.name.replace("wan_t2v_", "wan_i2v_") for k, v in CONFIGS.items()}
SERVED = "student 4-step, served (tritonserver)"


def served_videos(prompts, i2v: bool = False) -> list[np.ndarray]:
    from wan_client import WanClient
    env = {**toy_env(TOY_ROOT, ensure_demo_models()["i2v"], i2v_root=TOY_I2V_ROOT if i2v else None),
           "WAN_NUM_THREADS": "1"}
    model = "wan_i2v" if i2v else "wan_t2v"
    with start_server(env, [model], f"training_{model}") as srv, WanClient(srv.grpc_url, timeout_s=600) as client:
        if i2v:
            return [client.i2v(p.image_png(), p.text, seed=p.seed, return_frames=True).frames for p in prompts]
        return [client.t2v(p.text, seed=p.seed, return_frames=True).frames for p in prompts]


def speed(reps: int, i2v: bool = False) -> dict[str, dict[str, float]]:
    """Median seconds per video (one request at a time, in-process pipeline) -> {name: {total, dit}}."""
    out = {}
    configs, root = (I2V_CONFIGS, TOY_I2V_ROOT) if i2v else (CONFIGS, TOY_ROOT)
    prompts = i2v_prompts([0])[:1 + reps] if i2v else None
    for name, cfg in (("teacher 50-step CFG", configs["baseline"]), ("student 4-step", configs["distill"])):
        pipe = WanPipeline.from_model_dir(root, RunConfig.from_json(cfg), "cpu")
        if i2v:
            videos = [pipe.image_to_video(p.image_png(), p.text, seed=i) for i, p in enumerate(prompts)]
        else:
            videos = [pipe.text_to_video("a red circle moving left", seed=0)] + [          # (the first: warm-up)
                pipe.text_to_video("a blue square moving up", seed=i + 1) for i in range(reps)]
        runs = [v.timings for v in videos[1:]]
        out[name] = {"total": statistics.median(sum(r.values()) for r in runs),
                     "dit": statistics.median(r["dit"] for r in runs)}
    return out


def method_rows(gen: Generator, classifier, prompts, real, served: bool, i2v: bool = False) -> tuple[dict, str]:
    """Score every method (and the served student) on ``prompts`` -> (rows, the served-vs-in-process note)."""
    rows, frames = {}, {}
    for name, engine in gen.engines().items():
        t0 = time.perf_counter()
        frames[name] = gen.videos(engine, prompts)
        rows[name] = {**score(classifier, frames[name], prompts, real), "batch_s": time.perf_counter() - t0}
        print(name, rows[name], flush=True)
    if not served:
        return rows, "not run (--no-server)"
    t0 = time.perf_counter()
    frames[SERVED] = served_videos(prompts, i2v)
    rows[SERVED] = {**score(classifier, frames[SERVED], prompts, real), "batch_s": time.perf_counter() - t0}
    diff = max(int(np.abs(s.astype(int) - i.astype(int)).max())
               for s, i in zip(frames[SERVED], frames["student 4-step"]))
    note = f"served frames vs in-process student frames: max |difference| {diff} (uint8)"
    print(SERVED, rows[SERVED], note, flush=True)
    return rows, note


def i2v_main(a, log, classifier, real) -> str:
    """The I2V table: prompts = first frames of held-out clips + their captions."""
    prompts = i2v_prompts(range(100, 100 + a.seeds))
    gen = Generator(TOY_I2V_ROOT, I2V_CONFIGS["distill"], I2V_CONFIGS["lora"], I2V_CONFIGS["baseline"])
    clips = [p.real_clip() for p in prompts]
    rows = {"real clips (held out: the clips the images come from)": score(classifier, clips, prompts, real),
            "real clips through the VAE (encode, decode)": score(
                classifier, [gen.vae.decode_to_uint8(gen.vae.encode(from_uint8_frames(c)[None])[0]).numpy()
                             for c in clips], prompts, real),
            "the image held still (first frame repeated)": score(
                classifier, [np.repeat(c[:1], len(c), axis=0) for c in clips], prompts, real)}
    method, served_note = method_rows(gen, classifier, prompts, real, not a.no_server, i2v=True)
    rows |= method
    times = speed(a.reps, i2v=True)
    print(times, flush=True)
    return i2v_report(a, log, rows, times, served_note, len(prompts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2, help="seeds per caption (60 captions)")
    ap.add_argument("--reps", type=int, default=5, help="timed videos per method for the speedup")
    ap.add_argument("--no-server", action="store_true", help="skip the served row")
    ap.add_argument("--write", action="store_true", help="write bench/results/training.md")
    ap.add_argument("--i2v", action="store_true", help="the I2V root instead (bench/results/training_i2v.md)")
    a = ap.parse_args()
    torch.set_num_threads(1)

    models = TOY_ROOT.parent
    log = json.loads((models / "training_log.json").read_text())
    classifier = load_classifier(models / "attribute_classifier.safetensors")
    real = real_features(classifier, 3000, 240)
    if a.i2v:
        emit("training_i2v", i2v_main(a, log, classifier, real), a.write)
        return 0
    prompts = eval_prompts(range(100, 100 + a.seeds))
    real_ref = score(classifier, [f for f in _real_frames(4000, len(prompts))], prompts_of_real(4000, len(prompts)),
                     real)
    gen = Generator(TOY_ROOT, CONFIGS["distill"], CONFIGS["lora"], CONFIGS["baseline"])
    real_rec = [gen.vae.decode_to_uint8(gen.vae.encode(from_uint8_frames(f)[None])[0]).numpy()
                for f in _real_frames(4000, len(prompts))]
    rows = {"real clips (held out)": real_ref,
            "real clips through the VAE (encode, decode)": score(classifier, real_rec,
                                                                   prompts_of_real(4000, len(prompts)), real)}
    use = caption_use(gen.engines()["teacher 50-step CFG"].dit, gen)
    print("caption use", use, flush=True)
    method, served_note = method_rows(gen, classifier, prompts, real, not a.no_server)
    rows |= method
    times = speed(a.reps)
    print(times, flush=True)
    emit("training", report(a, log, rows, times, served_note, len(prompts), use), a.write)
    return 0


def _real_frames(seed: int, count: int) -> list[np.ndarray]:
    from wan_training.data import make_clip, to_uint8_frames
    return [to_uint8_frames(make_clip(seed, i).video) for i in range(count)]


def prompts_of_real(seed: int, count: int):
    from wan_training.data import make_clip
    from wan_training.evaluate import Prompt
    return [Prompt(c.colour, c.shape, c.motion, seed) for c in (make_clip(seed, i) for i in range(count))]


def quality_table(rows: dict[str, dict]) -> list[str]:
    lines = ["| method | prompt following (all 3 right) | colour + motion right | colour | shape | motion | "
             "Fréchet distance | batch time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        bt = f"{row['batch_s']:.1f}" if "batch_s" in row else "-"
        lines.append(f"| {name} | {row['accuracy']:.3f} | {row['colour_motion']:.3f} | {row['colour']:.3f} | "
                     f"{row['shape']:.3f} | "
                     f"{row['motion']:.3f} | {row['frechet']:.3f} | {bt} |")
    return lines


def speed_line(a, times) -> str:
    t, s = times["teacher 50-step CFG"], times["student 4-step"]
    return (f"Speed, one request at a time (in-process WanPipeline, median of {a.reps}): teacher 50-step CFG "
            f"{t['total'] * 1e3:.0f} ms per video (DiT {t['dit'] * 1e3:.0f} ms), student 4-step "
            f"{s['total'] * 1e3:.0f} ms (DiT {s['dit'] * 1e3:.0f} ms): **{t['total'] / s['total']:.1f}x** end to end, "
            f"{t['dit'] / s['dit']:.1f}x on the DiT.")


def i2v_report(a, log, rows, times, served_note, n) -> str:
    i2v, r = log["i2v"], log["recipe"]
    sec, trained = i2v["seconds"], log.get("training_seconds", {})
    lines = [header("Trained toy I2V models: quality and speed (issue 12)"),
             "- prompts: the first frame of a held-out real clip (not a training clip) of each of the 60 (colour, "
             f"shape, motion) + its caption, x {a.seeds} seeds = {n} videos per method, the same for every method; "
             "the same classifier and scoring as the T2V table (training.md)",
             f"- model: the T2V DiT sizes as a Wan2.1 I2V DiT (36 input channels, img_emb, image cross-attention; "
             f"{i2v['parameters']['dit'] / 1e3:.0f} k params); conditioning built by the serving pipeline's "
             f"ImageConditioner: mask + the VAE latent of [first frame, zeros], {i2v['clip_tokens']} CLIP tokens of "
             "the tiny CLIP (frozen random weights); the T2V root's VAE and UMT5",
             f"- LoRA: rank {i2v['lora']['rank']}, relative reconstruction error of the low-rank deltas "
             f"{i2v['lora']['relative_error']:.4f} (worst layer {i2v['lora']['max_layer_error']:.4f})",
             f"- {served_note}", "", *quality_table(rows), "", speed_line(a, times), "",
             f"Training wall time on this machine (shared 2-core VM, {log['torch_threads']} torch thread(s); the I2V "
             "stages of `make train`):", "",
             "| stage | steps | seconds |", "|---|---|---|",
             f"| conditioning of the training clips' first frames | {r['num_latent_clips']} clips | "
             f"{sec['condition']:.0f} |",
             f"| I2V teacher (from the T2V teacher) | {r['i2v_teacher']['steps']} "
             f"(batch {r['i2v_teacher']['batch']}) | "
             f"{trained.get('i2v_teacher', float('nan')):.0f} |",
             f"| I2V DMD student | {r['i2v_distill']['steps']} (batch {r['i2v_distill']['batch']}) | "
             f"{trained.get('i2v_student', float('nan')):.0f} |", "", I2V_SIMPLIFICATIONS]
    return "\n".join(lines)


def report(a, log, rows, times, served_note, n, use) -> str:
    sec, g = log["seconds"], log["geometry"]
    r = log["recipe"]
    lines = [header("Trained toy models: quality and speed (issue 12)"),
             f"- data: synthetic clips, {g['frames']} frames of {g['height']}x{g['width']} (latent {g['latent']}), "
             "4 colours x 3 shapes x 5 motions = 60 captions; eval: the 60 captions x "
             f"{a.seeds} seeds = {n} videos per method, the same prompts and seeds for every method",
             f"- models: DiT dim {r['spec']['dit_dim']}, {r['spec']['dit_layers']} layers, {r['spec']['dit_heads']} heads "
             f"({log['parameters']['dit'] / 1e3:.0f} k params); VAE base width {r['spec']['vae_dim']} "
             f"({log['parameters']['vae'] / 1e3:.0f} k params); tiny UMT5 frozen with random weights",
             f"- VAE reconstruction PSNR on held-out clips: {log['vae_psnr_db']:.2f} dB",
             f"- LoRA: rank {log['lora']['rank']}, relative reconstruction error of the low-rank deltas "
             f"{log['lora']['relative_error']:.4f} (worst layer {log['lora']['max_layer_error']:.4f})",
             f"- attribute classifier accuracy on real held-out clips: {log['classifier_accuracy_real']:.3f}",
             f"- {served_note}",
             "- does the teacher use its caption? flow-matching loss on real held-out clips with the right caption / "
             "another clip's caption / the null caption: " + "; ".join(
                 f"sigma {s}: {v['right']:.4f} / {v['wrong']:.4f} / {v['null']:.4f}" for s, v in use.items()), "",
             *quality_table(rows), "", speed_line(a, times), "",
             f"Training wall time on this machine (shared 2-core VM, {log['torch_threads']} torch thread(s); "
             "`make train`, i.e. `nice -n 15 .venv/bin/python -m wan_training.recipe --out training/models`):", "",
              "| stage | steps | seconds |", "|---|---|---|"]
    trained = log.get("training_seconds", {})
    steps = {"vae": sum(n for n, _ in r["vae"]["curriculum"]), "teacher": r["teacher"]["steps"], "student": r["distill"]["steps"]}
    for stage, key in (("VAE", "vae"), ("teacher", "teacher"), ("DMD student", "student")):
        lines.append(f"| {stage} | {steps[key]} | {trained.get(key, float('nan')):.0f} |")
    lines += [f"| latents + text | {r['num_latent_clips']} clips | {sec['encode']:.0f} |",
              f"| classifier | {r['classifier']['steps']} | {trained.get('classifier', sec['classifier']):.0f} |",
              f"| whole recipe (this run{'; stages reused from stages/, trained earlier' if sec['vae'] < 60 else ''}) | | "
              f"{sec['total']:.0f} |", "", SIMPLIFICATIONS]
    return "\n".join(lines)


SIMPLIFICATIONS = """Simplified against the papers (DMD, DMD2, Self-Forcing) and Wan2.1, at toy scale on a 2-core CPU:

- scale: DiT dim 96 x 3 layers, VAE base width 8, 9 frames of 32x32 (the issue suggests 17 of 64x64: the Wan VAE
  does not train to a usable quality in the CPU budget at that size), 60 captions; T2V here (I2V: training_i2v.md);
- text encoder: the project's tiny UMT5, frozen with its random weights (the 60 captions separate: nearest pair of
  padded embeddings 13.8 apart, mean norm 23.5);
- VAE: a deterministic autoencoder (Wan's `encode` returns the mean; no KL, no GAN / perceptual loss), with a
  foreground-weighted loss, an auxiliary latent target and a curriculum of single frames, 5-frame and 9-frame
  clips; latent statistics folded into conv1 / conv2 so Wan's fixed normalisation gives unit-variance latents;
- data: shapes of radius 22-27 % of the frame (7-8.6 px), so that 4x4 latents keep them (at 15-20 % the toy VAE
  kept the shape of 44 % of clips);
- teacher: plain flow matching, u ~ U(0, 1) through shift 5, caption dropout 10 % to the empty caption (the CFG
  negative prompt of configs/toy), EMA weights;
- DMD: no GAN term (DMD2's) and no regression loss (DMD's; DMD2 drops it too); no ODE-pair initialisation
  (Self-Forcing initialises its causal student from ODE regression): the student and the critic start as copies of
  the teacher; the student is bidirectional (a Wan2.1 DiT, like LightX2V's released models), so Self-Forcing's
  autoregressive, KV-cached frame-by-frame rollout reduces to rolling out the 4-step schedule; exit step uniform in
  {1..4} with gradients through the exit step only; real score = teacher with CFG scale 2 (T2V; I2V 4: measured
  here, T2V students of CFG 1 / 2 / 3 / 4 followed the whole prompt in 75.0 / 75.8 / 71.7 / 70.0 %); DMD's normaliser mean
  |x̂ - x0_real| per sample; distribution-matching noise level from U(0.02, 0.98) through the shift; 5 critic updates
  per generator update on fresh student rollouts; Adam betas (0, 0.999); batch 16, 800 generator updates;
- LoRA: rank 32 of width 96 (LightX2V: 64 of 5120), extracted by truncated SVD of student - teacher per 2-D weight;
  the rest as full `.diff` / `.diff_b` / `.diff_m` deltas.
"""


I2V_SIMPLIFICATIONS = """I2V, on top of the T2V simplifications (training.md):

- data: the T2V training clips; the image is the clip's first frame (uint8, as a client would send it), the caption
  still names colour, shape and motion; one image per clip (no augmentation);
- teacher: started from the trained T2V teacher (every shared weight copied; the 20 mask + image-latent input channels
  and `v_img` zero, so it starts out as exactly the T2V model), then flow matching as for T2V with the image always
  given: only the caption is dropped (10 %), because the served CFG (the engine, like Wan2.1's I2V sampler) keeps the
  image in the unconditional row; the teacher 50-step baseline uses text CFG scale 4 (Wan2.1 I2V: 5);
- CLIP: the tiny random CLIP of wan_distill.tiny at 224 px (257 tokens), so the 32x32 image is upsampled 7x; it
  carries little (the image latent in y carries the picture);
- DMD: the T2V recipe with each rollout conditioned on one training clip's image + caption (real score: CFG teacher
  with the same image in both rows); fewer updates than T2V (CPU budget).
"""


if __name__ == "__main__":
    sys.exit(main())
