"""Shared fixtures: the tiny Wan2.1-layout model directories, written once per test session."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from wan_distill.tiny import write_demo_checkpoints

    return write_demo_checkpoints(tmp_path_factory.mktemp("tiny"))


def make_png(width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    """A smooth RGB test picture as PNG bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1),
                    np.full_like(xx, int(rng.integers(0, 255)))], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def png_bytes() -> bytes:
    return make_png()


@pytest.fixture(scope="module")
def grpc(server):
    """A raw tritonclient gRPC client to the module's ``server`` fixture (a real tritonserver)."""
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()
