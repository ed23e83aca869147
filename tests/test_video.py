"""MP4 encoding: x264 settings, the streaming encoder, and decode -> encode overlap (frames bit-identical to the
plain decode path; x264 fed exactly the whole tensor's frames, and the MP4 decodes like the whole tensor's)."""
from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch

from wan_distill.models.tiny_vae import TinyVAEDecoder
from wan_distill.models.vae import WanVAE
from wan_distill.video import Mp4StreamEncoder, X264Settings, decode_mp4, decode_to_mp4, encode_mp4


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def vae():
    return _randomised(WanVAE(dim=8), 0)


@pytest.fixture(scope="module")
def tae():
    return _randomised(TinyVAEDecoder(widths=(16, 8, 8, 8)), 1)


def latents(t=3, h=4, w=6, seed=0):
    return torch.randn(16, t, h, w, generator=torch.Generator().manual_seed(seed))


def reference_uint8(decoder, z: torch.Tensor) -> np.ndarray:
    """The decode path before streaming existed: each float chunk converted and written into one uint8 tensor."""
    chunks = list(decoder._decode_chunks(z[None]))
    frames = torch.empty(decoder.num_frames(z.shape[1]), 8 * z.shape[2], 8 * z.shape[3], 3, dtype=torch.uint8)
    for f0, chunk in chunks:
        pixels = chunk[0].add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
        frames[f0: f0 + pixels.shape[1]] = pixels.permute(1, 2, 3, 0).cpu()
    return frames.numpy()


def moving_frames(f=9, h=32, w=48, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.stack([np.roll(base, 2 * i, axis=1) for i in range(f)])


class RecordingWriter:
    """Stand-in for video._Writer: records what the encoder thread hands to x264."""

    written: list[np.ndarray] = []

    def __init__(self, height, width, fps, settings):
        RecordingWriter.written = []
        self.args = (height, width, fps, settings)

    def write(self, frames):
        RecordingWriter.written.append(frames.copy())

    def finish(self):
        return repr(self.args).encode()

    def close(self):
        pass


def same_encode(mp4: bytes, reference_mp4: bytes, frames: np.ndarray) -> bool:
    """Two H.264 encodes of ``frames`` agree: same frame count and size, and the same quality (mean abs error against
    the source within 1 level). Not bytes: libx264 (this PyAV build) gives different bytes run to run in a loaded
    test process, with its own thread count and (seen once) with one thread too (~1 % size jitter); what reaches
    x264 is checked exactly with RecordingWriter."""
    x, y = decode_mp4(mp4), decode_mp4(reference_mp4)
    err = lambda a: float(np.abs(a.astype(np.int16) - frames.astype(np.int16)).mean())  # noqa: E731
    return x.shape == y.shape == frames.shape and abs(err(x) - err(y)) < 1.0


@pytest.mark.parametrize("kind", ["vae", "tae"])
def test_overlapped_decode_frames_are_bit_identical_and_mp4_equals_whole_tensor_encode(kind, vae, tae, monkeypatch):
    decoder = vae if kind == "vae" else tae
    z = latents(seed=3)
    expect = reference_uint8(decoder, z)
    assert expect.shape == (9, 32, 48, 3) and len(np.unique(expect)) > 50   # a real picture, not a constant
    assert np.array_equal(decoder.decode_to_uint8(z).numpy(), expect)
    out = decode_to_mp4(decoder.decode_uint8_chunks(z), decoder.num_frames(z.shape[1]), fps=16, keep_frames=True)
    assert np.array_equal(out.frames, expect)
    assert same_encode(out.mp4, encode_mp4(expect, 16), expect)
    assert out.encode_seconds > 0 and out.total_seconds >= out.decode_seconds
    # what reaches x264: exactly the whole tensor's frames, in order, chunk by chunk (1 frame, then 4 per latent)
    from wan_distill import video
    monkeypatch.setattr(video, "_Writer", RecordingWriter)
    settings = X264Settings(preset="fast", crf=20)
    out = decode_to_mp4(decoder.decode_uint8_chunks(z), 9, fps=12, settings=settings)
    assert [c.shape[0] for c in RecordingWriter.written] == [1, 4, 4]
    assert np.array_equal(np.concatenate(RecordingWriter.written), expect)
    assert out.mp4 == repr((32, 48, 12, settings)).encode()
    encode_mp4(expect, 12, settings=settings)
    assert np.array_equal(np.concatenate(RecordingWriter.written), expect)   # the whole-tensor path feeds the same


def test_decode_to_mp4_without_frames_and_other_fps():
    frames = moving_frames()
    chunks = [(0, frames[:1]), (1, frames[1:5]), (5, frames[5:])]
    out = decode_to_mp4(iter(chunks), 9, fps=8)
    assert out.frames is None and same_encode(out.mp4, encode_mp4(frames, 8), frames)
    assert av.open(io.BytesIO(out.mp4)).streams.video[0].average_rate == 8
    assert out.mp4 != encode_mp4(frames, 16)  # the frame rate is in the file


def test_decode_to_mp4_counts_frames():
    frames = moving_frames()
    with pytest.raises(ValueError, match="expected 10 frames, the decoder yielded 9"):
        decode_to_mp4(iter([(0, frames)]), 10)
    with pytest.raises(ValueError, match="yielded no frames"):
        decode_to_mp4(iter([]), 9)


def test_stream_encoder_checks_chunks_and_reports_encoder_errors():
    with Mp4StreamEncoder(32, 48) as enc:
        with pytest.raises(ValueError, match=r"\[n, 32, 48, 3\]"):
            enc.put(np.zeros((2, 32, 40, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            enc.put(np.zeros((2, 32, 48, 3), np.float32))
    with pytest.raises(ValueError, match="even height and width"):
        Mp4StreamEncoder(33, 48)
    enc = Mp4StreamEncoder(32, 48, fps=16)
    enc.put(moving_frames(4))
    assert decode_mp4(enc.finish()).shape == (4, 32, 48, 3)
    with pytest.raises(RuntimeError, match="put after finish"):
        enc.put(moving_frames(1))


def test_stream_encoder_error_surfaces(monkeypatch):
    from wan_distill import video

    def broken(self, frames):
        raise OSError("disk on fire")
    monkeypatch.setattr(video._Writer, "write", broken)
    enc = Mp4StreamEncoder(32, 48)
    enc.put(moving_frames(2))
    with pytest.raises(OSError, match="disk on fire"):
        enc.finish()


def test_decoder_error_stops_the_encoder_thread():
    frames = moving_frames()

    def chunks():
        yield 0, frames[:1]
        raise RuntimeError("decode failed")
    import threading
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="decode failed"):
        decode_to_mp4(chunks(), 9)
    assert not [t for t in threading.enumerate() if t.ident not in before and t.name == "mp4-encoder"]


def test_x264_settings_validate_and_change_the_encode():
    assert X264Settings() == X264Settings.from_params({}) == X264Settings.from_params({"preset": "", "crf": ""})
    assert X264Settings.from_params({"preset": "veryfast", "crf": "20", "x264_threads": "2",
                                     "x264_lookahead": "10"}) == X264Settings("veryfast", 20, 2, 10)
    for params, field in (({"preset": "warp"}, "preset"), ({"crf": "52"}, "crf"), ({"crf": "x"}, "crf"),
                          ({"x264_threads": "-1"}, "threads"), ({"x264_lookahead": "-2"}, "lookahead")):
        with pytest.raises(ValueError, match=field):
            X264Settings.from_params(params)
    assert X264Settings().options() == {"crf": "23", "preset": "medium"}   # the encode as before: x264's threads
    assert X264Settings(threads=3).options()["threads"] == "3"
    assert X264Settings(lookahead=10).options()["x264-params"] == "rc-lookahead=10"
    frames = moving_frames()
    default = encode_mp4(frames, 16)
    coarse = decode_mp4(encode_mp4(frames, 16, settings=X264Settings(crf=51)))
    err = lambda x: np.abs(x.astype(np.int16) - frames.astype(np.int16)).mean()  # noqa: E731
    one_thread = decode_mp4(encode_mp4(frames, 16, settings=X264Settings(threads=1)))
    assert one_thread.shape == frames.shape and abs(err(one_thread) - err(decode_mp4(default))) < 1  # same quality
    assert coarse.shape == frames.shape and err(coarse) > err(decode_mp4(default)) + 1   # CRF reaches x264


def test_short_lookahead_lets_x264_encode_while_frames_arrive():
    """With the preset's 40-frame lookahead x264 returns no packet for 20 frames (all work waits for the flush); with
    lookahead 4 packets come out while frames are still being fed, which is what lets the encode overlap the decode."""
    from wan_distill import video

    frames = moving_frames(20, 64, 96)
    packets = {}
    for lookahead in (-1, 4):
        writer = video._Writer(64, 96, 16, X264Settings(lookahead=lookahead, threads=1))
        count = []
        for frame in frames:
            pk = writer.stream.encode(writer.av.VideoFrame.from_ndarray(frame, format="rgb24"))
            count.append(len(pk))
            writer.container.mux(pk)
        decoded = decode_mp4(writer.finish())
        packets[lookahead] = sum(count)
        assert decoded.shape == frames.shape
    assert packets[-1] == 0 and packets[4] > 5


def test_stream_encoder_error_in_the_final_flush_surfaces(monkeypatch):
    from wan_distill import video

    def broken(self):
        raise OSError("flush failed")
    monkeypatch.setattr(video._Writer, "finish", broken)
    enc = Mp4StreamEncoder(32, 48)
    enc.put(moving_frames(2))
    with pytest.raises(OSError, match="flush failed"):
        enc.finish()                                   # raised, not a hang


def test_a_failed_decode_writes_no_file(monkeypatch):
    from wan_distill import video
    finished = []
    monkeypatch.setattr(video._Writer, "finish", lambda self: finished.append(1) or b"")
    frames = moving_frames()

    def chunks():
        yield 0, frames[:1]
        yield 1, frames[1:5]
        raise RuntimeError("decode failed")
    with pytest.raises(RuntimeError, match="decode failed"):
        decode_to_mp4(chunks(), 9)
    assert finished == []
