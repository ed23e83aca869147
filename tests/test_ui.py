"""The web UI (``wan-ui``, .venv-ui) in a real browser: headless Debian Chromium driven by playwright, against the
real tritonserver serving the tiny demo models (`make test-ui`).

Generate shows the progress moving and a video whose source decodes to the requested frames; a long baseline run
is cancelled from the page (the DiT stops at its next step, the page is ready again, the one DiT slot serves the
next request); INVALID_ARGUMENT and an unreachable server give their messages; the page fetches nothing from
outside 127.0.0.1.

The baseline T2V DiT takes one job per call here (max_jobs_per_call 1, as in test_stream.py), so a request after
the cancel can only run once the cancelled one has left the DiT."""
from __future__ import annotations

import ast
import io
import re
import sys
import time
from urllib.parse import urlparse

import pytest
from wan_distill.serving import repository as spec

from conftest import ROOT, make_png

sys.path.insert(0, str(ROOT / "scripts"))
from demo import demo_env, repository_copy  # noqa: E402
from triton_server import TritonServer, free_port  # noqa: E402
from ui_demo import UI_VENV, WanUi, chromium_path, launch_chromium  # noqa: E402

pytestmark = pytest.mark.server
CLIENT = ROOT / "client" / "wan_client"

# the UI's streamed pipelines and every model their steps call (from the repository spec, so a new step is loaded too)
MODELS = sorted({m for p in map(spec.pipeline, ("wan_t2v", "wan_t2v_baseline", "wan_i2v"))
                 for m in (p.stream, *(s.model for s in spec.ensemble_steps(p)))})
BASELINE_DIT = "wan_t2v_dit_baseline"
RECORD_PROGRESS = """() => {
  window.__wanProgress = [];
  const root = document.querySelector('#t2v-progress');
  const record = () => {
    const bar = root.querySelector('progress');
    if (!bar) return;
    const v = Number(bar.getAttribute('value')), seen = window.__wanProgress;
    if (!seen.length || seen[seen.length - 1] !== v) seen.push(v);
  };
  new MutationObserver(record).observe(root, {subtree: true, childList: true, attributes: true});
  record();
}"""


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-server")
    repo = repository_copy(tmp / "model_repository", {"max_jobs_per_call": "1"}, only=BASELINE_DIT)
    env = {**demo_env(tiny_models["t2v"], tiny_models["i2v"]), "WAN_NUM_THREADS": "1"}
    extra = ["--model-control-mode=explicit", *[f"--load-model={m}" for m in MODELS]]
    with TritonServer(repo, env=env, log_path=tmp / "server.log", extra_args=extra, ready_timeout_s=300) as srv:
        yield srv


def skip_without_ui_venv() -> None:
    if not (UI_VENV / "bin" / "wan-ui").exists():
        pytest.skip("no .venv-ui: `make test-ui` builds it (make ui-env)")


@pytest.fixture(scope="module")
def ui(server, tmp_path_factory):
    skip_without_ui_venv()
    with WanUi(server.grpc_url, log_path=tmp_path_factory.mktemp("ui") / "wan-ui.log") as app:
        yield app


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if chromium_path() is None:
        pytest.skip("no Chromium: apt-get install -y chromium chromium-driver (.ci/run does)")
    skip_without_ui_venv()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: make setup (requirements-dev.txt)")
    with sync_api.sync_playwright() as p:
        context = launch_chromium(p, tmp_path_factory.mktemp("chromium-profile"))
        context.set_default_timeout(120_000)
        yield context
        context.close()


@pytest.fixture
def page(browser):
    """A fresh page (a new gradio session); ``page.outside`` lists every URL it asked for beyond 127.0.0.1."""
    page = browser.new_page()
    page.outside = []
    page.on("request", lambda r: page.outside.append(r.url)
            if urlparse(r.url).hostname not in ("127.0.0.1", None) and not r.url.startswith(("data:", "blob:"))
            else None)
    yield page
    page.close()


def open_ui(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#t2v-generate")


def fill(page, tab: str = "t2v", **fields) -> None:
    """Type into a tab's form: prompt, seed, height, width, frames, fps."""
    for name, value in fields.items():
        box = page.locator(f"#{tab}-{name} textarea" if name == "prompt" else f"#{tab}-{name} input")
        box.fill(str(value))


def status(page, tab: str = "t2v") -> tuple[str, str]:
    """(kind, text) of a tab's status line."""
    line = page.locator(f"#{tab}-status .wan-status")
    return line.get_attribute("data-kind"), line.inner_text()


def wait_status(page, kind: str, timeout_ms: int = 240_000, tab: str = "t2v") -> str:
    page.wait_for_selector(f'#{tab}-status .wan-status[data-kind="{kind}"]', timeout=timeout_ms)
    return status(page, tab)[1]


def decoded_video(page, tab: str = "t2v") -> list:
    """The frames (RGB arrays) of the MP4 the tab's <video> plays, fetched from its source URL."""
    import av

    src = page.locator(f"#{tab}-video video").evaluate("v => v.currentSrc || v.src")
    assert urlparse(src).hostname == "127.0.0.1"
    response = page.request.get(src)
    assert response.ok, response.status
    with av.open(io.BytesIO(response.body())) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def progress_step(page) -> int:
    return int(page.locator("#t2v-progress progress").get_attribute("value"))


def ready_again(page) -> bool:
    return page.locator("#t2v-generate").is_enabled() and page.locator("#t2v-cancel").is_disabled()


def test_generate_shows_progress_and_the_video_decodes_to_the_requested_frames(page, ui):
    open_ui(page, ui.url)
    assert ready_again(page) and status(page)[0] == "idle"
    page.evaluate(RECORD_PROGRESS)
    fill(page, prompt="a red fox running through fresh snow", seed=7, height=64, width=96, frames=9)
    page.locator("#t2v-generate").click()
    text = wait_status(page, "done")
    assert "seed 7" in text and "64×96" in text and "9 frames" in text and "4 steps" in text
    seen = page.evaluate("window.__wanProgress")
    assert seen[-1] == 4 and len(set(seen) - {0}) >= 2, seen  # the bar moved through the steps, not 0 -> 4
    assert all(a <= b for a, b in zip(seen, seen[1:])), seen
    assert ready_again(page)

    frames = decoded_video(page)
    assert len(frames) == 9 and frames[0].shape == (64, 96, 3)
    assert page.outside == []  # offline: no CDN, no analytics


def test_image_to_video_tab(page, ui, tmp_path):
    picture = tmp_path / "first.png"
    picture.write_bytes(make_png(width=96, height=64, seed=2))
    open_ui(page, ui.url)
    page.get_by_role("tab", name="Image → video").click()
    fill(page, "i2v", prompt="the picture comes alive", seed=5, frames=5)
    page.locator("#i2v-generate").click()  # no picture yet: said, and nothing is sent
    assert "IMAGE: choose a picture" in wait_status(page, "invalid", tab="i2v")
    page.locator("#i2v-image input[type=file]").set_input_files(str(picture))
    page.wait_for_selector("#i2v-image img")
    page.locator("#i2v-generate").click()
    text = wait_status(page, "done", tab="i2v")
    assert "seed 5" in text and "5 frames" in text and "(wan_i2v)" in text
    frames = decoded_video(page, "i2v")
    assert len(frames) == 5 and frames[0].shape[2] == 3


def test_random_seed_is_shown(page, ui):
    open_ui(page, ui.url)
    assert page.locator("#t2v-seed input").input_value() == "-1"
    fill(page, prompt="a boat", height=32, width=48, frames=5)
    page.locator("#t2v-generate").click()
    first = re.search(r"seed (\d+)", wait_status(page, "done")).group(1)
    page.locator("#t2v-generate").click()
    page.wait_for_function("s => !document.querySelector('#t2v-status').innerText.includes(s)", arg=f"seed {first}")
    second = re.search(r"seed (\d+)", wait_status(page, "done")).group(1)
    assert first != second  # -1 draws a new seed each time, and the page says which


def test_cancel_a_long_baseline_run_frees_the_dit_and_the_page_is_ready_again(page, ui, server):
    stops = rf"{BASELINE_DIT}: cancelled by the client before denoising step (\d+)"
    before = len(re.findall(stops, server.log_path.read_text(errors="replace")))
    open_ui(page, ui.url)
    page.locator("#t2v-pipeline label", has_text="baseline").click()
    fill(page, prompt="a long baseline run", seed=3, height=256, width=256, frames=9)
    page.locator("#t2v-generate").click()
    page.wait_for_function("() => Number(document.querySelector('#t2v-progress progress').getAttribute('value')) >= 2")
    assert page.locator("#t2v-generate").is_disabled() and page.locator("#t2v-cancel").is_enabled()
    assert "/50" in page.locator("#t2v-progress").inner_text()  # "denoise · step 2/50 · ETA …"
    page.locator("#t2v-cancel").click()
    assert "Cancelled" in wait_status(page, "cancelled", timeout_ms=60_000)
    assert ready_again(page) and progress_step(page) < 50
    assert page.locator("#t2v-progress .wan-progress").get_attribute("data-state") == "cancelled"

    deadline = time.monotonic() + 30
    while len(found := re.findall(stops, server.log_path.read_text(errors="replace"))) == before:
        assert time.monotonic() < deadline, "the DiT did not report the cancel"
        time.sleep(0.1)
    assert 2 < int(found[-1]) <= 50  # stopped between steps, before the 50th

    # the one baseline DiT slot is free: the next baseline request runs all its 50 steps
    fill(page, prompt="after the cancel", seed=4, height=32, width=48, frames=5)
    page.locator("#t2v-generate").click()
    text = wait_status(page, "done")
    assert "50 steps" in text and "wan_t2v_baseline" in text and progress_step(page) == 50
    assert ready_again(page)


def test_invalid_argument_shows_the_servers_message_naming_the_field(page, ui):
    open_ui(page, ui.url)
    fill(page, prompt="bad width", seed=1, height=32, width=40, frames=5)
    page.locator("#t2v-generate").click()
    text = wait_status(page, "invalid", timeout_ms=60_000)
    assert "Invalid request" in text and re.search(r"WIDTH: must be a multiple of 16 .*got 40", text), text
    assert ready_again(page)


def test_unreachable_server_is_said_plainly(page, tmp_path):
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    with WanUi(nowhere, log_path=tmp_path / "wan-ui.log") as lonely:
        open_ui(page, lonely.url)
        page.wait_for_selector('#server .wan-status[data-kind="unreachable"]')
        fill(page, prompt="anyone there?", height=32, width=48, frames=5)
        page.locator("#t2v-generate").click()
        text = wait_status(page, "unreachable", timeout_ms=60_000)
        assert f"Server unreachable at {nowhere}" in text and "make serve" in text
        assert ready_again(page)


def test_the_ui_talks_to_triton_only_through_the_client():
    """wan_client (the UI included) imports neither torch nor the model package: it never loads a model."""
    paths = sorted(CLIENT.glob("*.py"))
    assert CLIENT / "ui.py" in paths
    for path in paths:
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imported.add(node.module.split(".")[0])
        assert not imported & {"torch", "wan_distill", "triton_python_backend_utils"}, (path.name, imported)
