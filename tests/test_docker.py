"""docker/Dockerfile without a Docker engine: every path it COPYs exists in the build context, the default command
serves the default deployment profile through the launcher, and the profile is one environment variable."""
import glob
import re
import shlex

from wan_distill.profiles import DEFAULT_PROFILE, PROFILES, resolve

from conftest import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"


def instructions(path=DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def missing_copy_sources(path=DOCKERFILE) -> list[str]:
    """COPY sources (all but the destination; flags skipped) that match nothing in the build context (ROOT)."""
    copies = [[a for a in shlex.split(args) if not a.startswith("--")][:-1]
              for word, args in instructions(path) if word == "COPY"]
    assert copies, "no COPY in the Dockerfile"
    return [src for srcs in copies for src in srcs if not glob.glob(str(ROOT / src))]


def test_every_copied_path_exists(tmp_path):
    assert missing_copy_sources() == []
    assert "COPY scripts/triton_server.py ./scripts/" in DOCKERFILE.read_text()
    bad = tmp_path / "Dockerfile"  # the check can fail
    bad.write_text(DOCKERFILE.read_text().replace("COPY configs ./configs", "COPY config ./configs"))
    assert missing_copy_sources(bad) == ["config"]


def test_default_command_serves_the_default_profile():
    env = {}
    for word, args in instructions():
        if word == "ENV":
            env.update(dict(kv.split("=", 1) for kv in shlex.split(args)))
    assert env["WAN_PROFILE"] == DEFAULT_PROFILE == "t2v-14b" and DEFAULT_PROFILE in PROFILES
    assert len(resolve(env["WAN_PROFILE"], env).gpu_need()) == 1  # one GPU
    assert not any(k.endswith("_MODEL_PATH") for k in env)  # the profile decides the weights roots
    (cmd,) = [args for word, args in instructions() if word == "CMD"]
    assert cmd == '["wan-serve"]'
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert re.search(r"exec python3 /opt/wan/scripts/triton_server\.py --exec tritonserver -- ", runs)
