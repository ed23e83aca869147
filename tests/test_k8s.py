"""deploy/k8s: every overlay renders with `kubectl kustomize`, the core kinds pass kubernetes-validate's offline
JSON schemas (strict: unknown fields fail), and the ServiceMonitor (a prometheus-operator CRD that
kubernetes-validate has no schema for) passes the small schema below, which covers the fields these manifests use.
The resources must also fit together (selectors, ports, names, the adapter rule's metric) and the overlays must
differ where the profiles do. No cluster runs here: this checks the manifests, not a deployment."""
import re
import shutil
import subprocess

import jsonschema
import pytest
import yaml

from conftest import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = ROOT / "deploy" / "k8s"
PROFILES = ("t2v-1.3b", "t2v-14b", "i2v-14b-480p", "i2v-14b-720p")
K8S_VERSIONS = ("1.29", "1.37")  # oldest and newest Kubernetes minor checked
ADAPTER_QUERY = ("avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s])"
                 "/(1+delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) by (<<.GroupBy>>)")

# The ServiceMonitor fields these manifests rely on (prometheus-operator's monitoring.coreos.com/v1); endpoints
# admit only the keys used here, so a misspelt key fails instead of being ignored by the operator.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"], "additionalProperties": False,
                             "properties": {"matchLabels": {"type": "object", "minProperties": 1,
                                                            "additionalProperties": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                                   "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}},
            },
        },
    },
}


def kustomize(path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (needed for `kubectl kustomize`)")
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = {}
    for d in docs:
        assert d["kind"] not in kinds, f"two {d['kind']}s"
        kinds[d["kind"]] = d
    return kinds


def quantity(q) -> float:
    """A Kubernetes quantity ("96Gi", "4", "500m") as a number."""
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|m|k|M|G)?", str(q))
    assert m, q
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(m[1]) * scale[m[2]]


def validate_core(doc: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, dict]]:
    return {p: by_kind(kustomize(K8S / "overlays" / p)) for p in PROFILES}


def container(kinds: dict[str, dict]) -> dict:
    (c,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def test_overlays_render_and_pass_schema_validation(rendered):
    for profile, kinds in rendered.items():
        assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"}, profile
        for kind, doc in kinds.items():
            if kind == "ServiceMonitor":
                jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            else:
                validate_core(doc)


def test_weights_claim_and_adapter_rule_render_and_validate():
    (pvc,) = kustomize(K8S / "weights")
    validate_core(pvc)
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    (cm,) = kustomize(K8S / "prometheus-adapter")
    validate_core(cm)
    (rule,) = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    assert re.sub(r"\s+", "", rule["metricsQuery"]) == ADAPTER_QUERY.replace(" by ", "by")
    assert rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    assert values["rules"]["existing"] == cm["metadata"]["name"]


def test_validation_can_fail(rendered):
    """The checks above reject what they should: a misspelt Deployment field, a bad ServiceMonitor endpoint."""
    bad = yaml.safe_load(yaml.safe_dump(rendered["t2v-14b"]["Deployment"]))
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["resource"] = c.pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(bad)
    sm = yaml.safe_load(yaml.safe_dump(rendered["t2v-14b"]["ServiceMonitor"]))
    sm["spec"]["endpoints"][0]["targetport"] = 8002
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sm, SERVICE_MONITOR_SCHEMA)


def test_resources_fit_together(rendered):
    weights_claim = kustomize(K8S / "weights")[0]["metadata"]["name"]
    (rule,) = yaml.safe_load(kustomize(K8S / "prometheus-adapter")[0]["data"]["config.yaml"])["rules"]
    for profile, kinds in rendered.items():
        dep, svc, hpa, sm = (kinds[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"))
        pod = dep["spec"]["template"]
        c = container(kinds)
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), profile
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(), profile
        assert svc["spec"]["selector"]["wan-triton/profile"] == profile  # profiles share a namespace safely
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
        assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
            n: (num, n) for n, num in ports.items()}
        assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
        # Triton's health endpoints on the HTTP port; startup allows minutes of weight loading
        probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert {k: (p["httpGet"]["path"], p["httpGet"]["port"]) for k, p in probes.items()} == {
            "startupProbe": ("/v2/health/ready", "http"), "readinessProbe": ("/v2/health/ready", "http"),
            "livenessProbe": ("/v2/health/live", "http")}
        startup_s = probes["startupProbe"]["periodSeconds"] * probes["startupProbe"]["failureThreshold"]
        assert startup_s >= 600, (profile, startup_s)
        # weights read-only from the shared claim; /dev/shm memory-backed with a size limit
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert vols["weights"]["persistentVolumeClaim"] == {"claimName": weights_claim, "readOnly": True}
        assert mounts["weights"]["readOnly"] is True and mounts["weights"]["mountPath"] == "/weights"
        assert mounts["dshm"]["mountPath"] == "/dev/shm" and vols["dshm"]["emptyDir"]["medium"] == "Memory"
        shm = quantity(vols["dshm"]["emptyDir"]["sizeLimit"])
        mem_req, mem_lim = quantity(c["resources"]["requests"]["memory"]), quantity(c["resources"]["limits"]["memory"])
        assert mem_lim - shm >= mem_req, profile  # a full /dev/shm (charged to the pod) still leaves the request
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        # the HPA scales this Deployment on the adapter rule's metric
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": dep["metadata"]["name"]}
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
        assert metric["pods"]["target"]["type"] == "AverageValue"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_overlays_differ_where_profiles_do(rendered):
    env = {p: {e["name"]: e.get("value") for e in container(k)["env"]} for p, k in rendered.items()}
    assert {p: e["WAN_PROFILE"] for p, e in env.items()} == {p: p for p in PROFILES}
    gpus = {p: int(container(k)["resources"]["limits"]["nvidia.com/gpu"]) for p, k in rendered.items()}
    mem = {p: quantity(container(k)["resources"]["limits"]["memory"]) for p, k in rendered.items()}
    shm = {p: quantity(next(v for v in k["Deployment"]["spec"]["template"]["spec"]["volumes"]
                            if v["name"] == "dshm")["emptyDir"]["sizeLimit"]) for p, k in rendered.items()}
    assert gpus["t2v-1.3b"] == gpus["t2v-14b"] == gpus["i2v-14b-480p"] == 1 < gpus["i2v-14b-720p"]
    assert mem["t2v-1.3b"] < mem["t2v-14b"] < mem["i2v-14b-480p"] < mem["i2v-14b-720p"]  # + CLIP, + 720P
    # /dev/shm carries the video tensors between steps: sized by the largest video a profile makes (720P: T2V-14B
    # and I2V-720P), not by the model
    assert shm["t2v-1.3b"] == shm["i2v-14b-480p"] < shm["t2v-14b"] == shm["i2v-14b-720p"]
    names = [{d["metadata"]["name"] for d in k.values()} for k in rendered.values()]
    assert len(set().union(*names)) == sum(map(len, names))  # no two overlays create the same object
