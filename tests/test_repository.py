"""model_repository/ is rendered from one spec (wan_distill.serving.repository): the files on disk are not stale, and
the spec is consistent (every ensemble step maps existing tensors of an existing model; every client input reaches
the request step first)."""
import shutil

from wan_distill.serving.repository import PIPELINES, render, repository, write_repository

from conftest import ROOT

REPO = ROOT / "model_repository"


def test_config_files_are_rendered_from_the_spec():
    stale = write_repository(REPO, check=True)
    assert stale == [], ("regenerate with `.venv/bin/python -m wan_distill.serving.repository`: "
                         + ", ".join(str(p.relative_to(ROOT)) for p in stale))


def test_check_mode_reports_an_edited_file(tmp_path):
    shutil.copytree(REPO, tmp_path, symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert write_repository(tmp_path, check=True) == []
    cfg = tmp_path / "wan_t2v_dit" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('"4"', '"5"'))
    assert write_repository(tmp_path, check=True) == [cfg]
    assert write_repository(tmp_path) == [cfg] and write_repository(tmp_path, check=True) == []


def test_every_python_model_has_an_adapter_on_disk():
    for spec in repository():
        if spec.platform == "python":
            assert (REPO / spec.name / "1" / "model.py").resolve().is_file(), spec.name


def test_ensemble_steps_are_consistent():
    models = {m.name: m for m in repository()}
    for p in PIPELINES:
        ens = models[p.name]
        produced = {io.name for io in ens.inputs}
        assert ens.steps[0].model == p.request
        assert set(ens.steps[0].inputs) == {io.name for io in ens.inputs}  # every client input is checked first
        for step in ens.steps:
            composing = models[step.model]
            inputs = {io.name: io for io in composing.inputs}
            outputs = {io.name for io in composing.outputs}
            assert set(step.inputs) <= set(inputs), (p.name, step.model)
            assert all(io.optional or io.name in step.inputs for io in composing.inputs), (p.name, step.model)
            assert set(step.outputs) <= outputs, (p.name, step.model)
            assert set(step.inputs.values()) <= produced, (p.name, step.model)  # a DAG in step order
            produced |= set(step.outputs.values())
        assert {io.name for io in ens.outputs} <= produced
        # client tensors are read by the request step only: nothing fans out on unchecked input
        client = {io.name for io in ens.inputs}
        assert all(not set(s.inputs.values()) & client for s in ens.steps[1:]), p.name


def test_render_is_text_triton_reads():
    text = render(next(m for m in repository() if m.name == "wan_t2v"))
    assert text.count("{") == text.count("}") and 'platform: "ensemble"' in text and "optional: true" in text
