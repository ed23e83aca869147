"""Test-only stand-in for the Wan ensembles (same tensor interface, tiny deterministic videos, no torch).

Frames (T, H, W, 3) uint8, t2v: R = (SEED + 40 t) % 256, G = 100, B = 200 for every pixel of frame t;
i2v: every frame is the decoded IMAGE resized to (W, H), RGB. VIDEO_MP4 = those frames as H.264 MP4 at FPS.
Prompt conventions: "bad" -> INVALID_ARG naming PROMPT; "cancel" -> CANCELLED; "sleep:<s>" -> sleeps <s> seconds
(polling request.is_cancelled(), answering CANCELLED when the client went away); NEGATIVE_PROMPT "bad" -> INVALID_ARG.
Config parameter FAIL_FIRST_K=k: the first k calls per SEED value in this process answer UNAVAILABLE.

STREAM=1 (decoupled, the ``*_stream`` interface): the same checks and video, sent after the events of the real
streamed pipelines (accepted, stage_start/stage_end of text (+ image), denoise with NUM_STEPS step events, decode,
encode, done). "sleep:<s>" spreads <s> seconds over the steps, checking the stream's cancellation every 20 ms; a
cancelled request logs "[fake_wan] <model>: stream '<prompt>' cancelled by the client at step k".
"""
import io
import json
import threading
import time
from collections import Counter

import av
import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

DEFAULTS = {"HEIGHT": 32, "WIDTH": 48, "NUM_FRAMES": 5, "FPS": 16}


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """(T, H, W, 3) uint8 -> MP4 bytes (libx264, yuv420p)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "18"}
        for fr in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return buf.getvalue()


class Invalid(Exception):
    pass


def _err(msg, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(msg, code))


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.mode = params.get("MODE", "t2v")
        self.fail_first_k = int(params.get("FAIL_FIRST_K", "0"))
        self.stream = params.get("STREAM", "0") == "1"
        self.num_steps = int(params.get("NUM_STEPS", "4"))
        self.calls = Counter()

    def _scalar(self, request, name):
        t = pb_utils.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy().reshape(-1)[0]

    def _text(self, request, name):
        v = self._scalar(request, name)
        if v is None:
            return None
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid(f"{name}: must be valid UTF-8")

    def _int(self, request, name, lo, hi, multiple=1):
        v = self._scalar(request, name)
        if v is None:
            return DEFAULTS[name]
        v = int(v)
        if not (lo <= v <= hi) or v % multiple:
            raise Invalid(f"{name}: must be a multiple of {multiple} in [{lo}, {hi}], got {v}")
        return v

    def execute(self, requests):
        if self.stream:
            for r in requests:
                threading.Thread(target=self._stream, args=(r,), daemon=True).start()
            return None
        return [self._one(r) for r in requests]

    def _parse(self, request):
        try:
            prompt = self._text(request, "PROMPT")
            if prompt is None:
                raise Invalid("PROMPT: is required")
            if prompt == "bad":
                raise Invalid("PROMPT: 'bad' is rejected by the fake model")
            if self._text(request, "NEGATIVE_PROMPT") == "bad":
                raise Invalid("NEGATIVE_PROMPT: 'bad' is rejected by the fake model")
            seed = self._scalar(request, "SEED")
            if seed is None:
                raise Invalid("SEED: is required")
            seed = int(seed)
            if seed < 0:
                raise Invalid(f"SEED: must be >= 0, got {seed}")
            h = self._int(request, "HEIGHT", 16, 256, 16)
            w = self._int(request, "WIDTH", 16, 256, 16)
            f = self._int(request, "NUM_FRAMES", 1, 33)
            fps = self._int(request, "FPS", 1, 60)
            image = None
            if self.mode == "i2v":
                raw = self._scalar(request, "IMAGE")
                if raw is None:
                    raise Invalid("IMAGE: is required")
                try:
                    image = Image.open(io.BytesIO(bytes(raw)))
                    image.load()
                except Exception as e:
                    raise Invalid(f"IMAGE: cannot decode ({type(e).__name__})")
        except Invalid as e:
            return _err(str(e), pb_utils.TritonError.INVALID_ARG)
        return prompt, seed, h, w, f, fps, image

    def _one(self, request):
        parsed = self._parse(request)
        if isinstance(parsed, pb_utils.InferenceResponse):
            return parsed
        prompt, seed, h, w, f, fps, image = parsed
        if prompt == "cancel":
            return _err("request cancelled (fake model)", pb_utils.TritonError.CANCELLED)
        if prompt.startswith("sleep:"):
            t_end = time.monotonic() + float(prompt.split(":", 1)[1])
            while time.monotonic() < t_end:
                if request.is_cancelled():
                    print(f"[fake_wan] {self.name}: request '{prompt}' cancelled by the client", flush=True)
                    return _err("request cancelled", pb_utils.TritonError.CANCELLED)
                time.sleep(0.02)
        if self.fail_first_k:
            self.calls[seed] += 1
            if self.calls[seed] <= self.fail_first_k:
                return _err(f"warming up (fake): call {self.calls[seed]} of {self.fail_first_k} for seed {seed} refused",
                            pb_utils.TritonError.UNAVAILABLE)

        return pb_utils.InferenceResponse(self._outputs(request, _frames(seed, h, w, f, image), fps))

    def _outputs(self, request, frames, fps):
        wanted = set(request.requested_output_names()) or {"VIDEO_MP4", "FRAMES"}
        outs = []
        if "VIDEO_MP4" in wanted:
            outs.append(pb_utils.Tensor("VIDEO_MP4", np.array([encode_mp4(frames, fps)], dtype=np.object_)))
        if "FRAMES" in wanted:
            outs.append(pb_utils.Tensor("FRAMES", frames))
        return outs

    # --- STREAM=1 --------------------------------------------------------------------------------------
    def _stream(self, request):
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        t0 = time.monotonic()

        def event(kind, **kw):
            data = json.dumps({"type": kind, "t": time.monotonic() - t0, **kw}).encode()
            return pb_utils.Tensor("EVENT", np.array([data], dtype=np.object_))

        def fail(code, message):  # as the real streams: an error event (gRPC status name), then the final error
            sender.send(pb_utils.InferenceResponse([event("error", code=code, message=message)]))
            code = {"INVALID_ARGUMENT": "INVALID_ARG"}.get(code, code)
            sender.send(_err(message, getattr(pb_utils.TritonError, code)), flags=final)

        parsed = self._parse(request)
        if isinstance(parsed, pb_utils.InferenceResponse):
            fail("INVALID_ARGUMENT", parsed.error().message())
            return
        prompt, seed, h, w, f, fps, image = parsed
        if prompt == "cancel":
            fail("CANCELLED", "request cancelled (fake model)")
            return
        if self.fail_first_k:
            self.calls[seed] += 1
            if self.calls[seed] <= self.fail_first_k:
                fail("UNAVAILABLE", f"warming up (fake): call {self.calls[seed]} of {self.fail_first_k} for seed "
                                    f"{seed} refused")
                return
        send = lambda *tensors: sender.send(pb_utils.InferenceResponse(list(tensors)))  # noqa: E731
        send(event("accepted", pipeline=self.name.removesuffix("_stream"), seed=seed, height=h, width=w,
                   num_frames=f, fps=fps, num_steps=self.num_steps))
        for stage in ("text", "image") if image is not None else ("text",):
            send(event("stage_start", stage=stage))
            send(event("stage_end", stage=stage, seconds=0.0))
        send(event("stage_start", stage="denoise"))
        per_step = float(prompt.split(":", 1)[1]) / self.num_steps if prompt.startswith("sleep:") else 0.0
        d0 = time.monotonic()
        for step in range(1, self.num_steps + 1):
            t_end = time.monotonic() + per_step
            while True:
                if sender.is_cancelled():
                    print(f"[fake_wan] {self.name}: stream '{prompt}' cancelled by the client at step {step}",
                          flush=True)
                    fail("CANCELLED", "request cancelled")
                    return
                if time.monotonic() >= t_end:
                    break
                time.sleep(0.02)
            elapsed = time.monotonic() - d0
            send(event("step", step=step, num_steps=self.num_steps, elapsed_s=elapsed,
                       eta_s=elapsed / step * (self.num_steps - step), queued_s=0.0, started_at=time.time() - elapsed))
        send(event("stage_end", stage="denoise", seconds=time.monotonic() - d0))
        for stage in ("decode", "encode"):
            send(event("stage_start", stage=stage))
            send(event("stage_end", stage=stage, seconds=0.0))
        outs = self._outputs(request, _frames(seed, h, w, f, image), fps)
        sender.send(pb_utils.InferenceResponse([event("done", seconds=time.monotonic() - t0, height=h, width=w,
                                                      num_frames=f)] + outs), flags=final)


def _frames(seed, h, w, f, image):
    if image is not None:
        base = np.asarray(image.convert("RGB").resize((w, h)), dtype=np.uint8)
        return np.broadcast_to(base, (f, h, w, 3)).copy()
    frames = np.empty((f, h, w, 3), np.uint8)
    frames[..., 0] = ((seed + 40 * np.arange(f)) % 256).astype(np.uint8)[:, None, None]
    frames[..., 1], frames[..., 2] = 100, 200
    return frames
