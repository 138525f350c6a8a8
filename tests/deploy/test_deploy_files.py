"""The deployment files (docker/Dockerfile, docker-compose*.yml, k8s/) checked against the code they deploy.

Nothing is started: the Kubernetes manifests are validated against the API schemas of K8S_VERSION
(kubernetes-validate --strict), the compose files by `docker-compose config` when that binary is installed,
and every command, flag, environment variable, model path, port and probe is checked against the CLI
parser, the settings classes, the HTTP routes and the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_files import (
    COMPOSE,
    GPU,
    K8S,
    ROOT,
    Container,
    compose_containers,
    compose_services,
    dockerfile_instructions,
    dockerfile_json,
    interpolate,
    k8s_containers,
    k8s_docs,
    k8s_files,
)

from specserve.cli import build_parser

# the newest API schemas kubernetes-validate 1.37 ships (offline); needs kubernetes-validate >= 1.37
K8S_VERSION = "1.37.0"
# applied with `kubectl apply -k k8s/`; the other two are applied by hand (a template, an example run)
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "secret.example.yaml", "training-job.yaml"}

# subcommand -> its settings class (the environment prefix comes from the class)
SETTINGS = {
    "serve": "services.gateway.settings:GatewaySettings",
    "serve-gateway": "services.gateway.settings:GatewaySettings",
    "serve-verifier": "services.verifier.settings:VerifierSettings",
    "serve-drafter": "services.drafter.settings:DrafterSettings",
    "serve-trainer": "services.trainer.settings:TrainerSettings",
    "trainer-worker": "services.trainer.settings:TrainerSettings",
}
HTTP_ROUTES = {"serve": "services.gateway.app", "serve-gateway": "services.gateway.app",
               "serve-trainer": "services.trainer.app"}
GRPC_SERVERS = {"serve-verifier", "serve-drafter"}
GPU_ROLES = {"serve-verifier", "serve-drafter", "trainer-worker", "torchrun"}
GPU_POOL, CPU_POOL = {"specserve.io/pool": "gpu"}, {"specserve.io/pool": "cpu"}
K8S_ENV_PROBLEMS: list[str] = []
CONTAINERS = [*compose_containers(), *k8s_containers(K8S_ENV_PROBLEMS),
              Container("dockerfile", "docker/Dockerfile CMD", [*dockerfile_json("ENTRYPOINT"),
                                                                 *dockerfile_json("CMD")], {})]
SPECSERVE = [c for c in CONTAINERS if c.argv[0] == "specserve"]
ids = [c.where for c in CONTAINERS]


# ---- settings ----------------------------------------------------------------------------------------------

def settings_class(role: str):
    module, _, name = SETTINGS[role].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if module == "services.trainer.settings" and exc.name in ("services.trainer", module):
            pytest.skip("services.trainer.settings (TrainerSettings) does not exist yet")
        raise


def parse(argv: list[str]) -> argparse.Namespace:
    """`specserve ...` parsed by the real CLI parser; a rejected command or flag fails with argparse's message.
    Abbreviated flags are refused too: `--verifier-url` works today only while no other flag shares the prefix."""
    parser = build_parser()
    for action in parser._actions:  # argparse has no public way to reach the subcommands' parsers
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                subparser.allow_abbrev = False
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}` is refused by specserve's CLI: {stderr.getvalue().strip()}")


def settings_of(c: Container, monkeypatch):
    """The settings object the container's process builds: its flags over its environment (as the CLI does)."""
    cls = settings_class(c.role)
    given = {k: v for k, v in vars(parse(c.argv)).items() if k in cls.model_fields and v is not None}
    if isinstance(given.get("tap_layers"), str):
        given["tap_layers"] = tuple(int(t) for t in given["tap_layers"].split(","))
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("SPECSERVE_")]:
            m.delenv(name)
        for name, value in c.env.items():
            m.setenv(name, value)
        return cls(**given)


def serving_port(c: Container, monkeypatch) -> int | None:
    """The port the container's process listens on (None: it serves nothing, e.g. a worker)."""
    if c.role not in HTTP_ROUTES and c.role not in GRPC_SERVERS:
        return None
    return settings_of(c, monkeypatch).port


def routes(role: str) -> set[str]:
    """Paths of every APIRouter the role's app module defines (the trainer splits /v1/jobs from its probes)."""
    from fastapi import APIRouter

    module = importlib.import_module(HTTP_ROUTES[role])
    return {r.path for value in vars(module).values() if isinstance(value, APIRouter) for r in value.routes}


# ---- schemas and tools -------------------------------------------------------------------------------------

def _kubernetes_validate():
    try:
        import kubernetes_validate.utils as kv
    except ImportError:
        pytest.fail("kubernetes-validate is a dev dependency and must be installed (pip install kubernetes-validate)")
    return kv


@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
def test_manifest_passes_strict_schema_validation(path):
    kv = _kubernetes_validate()
    resources = kv.resources_from_file(str(path))
    assert resources, f"{path.name} holds no resource"
    for resource in resources:
        try:
            kv.validate(resource, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{path.name} {kv.kn(resource)}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.SchemaNotFoundError as exc:  # the CLI only warns; an unknown kind is a mistake here
            pytest.fail(f"{path.name}: {exc.message}")
        except kv.VersionNotSupportedError:
            pytest.fail(f"the installed kubernetes-validate has no schemas for Kubernetes {K8S_VERSION}: "
                        "install kubernetes-validate>=1.37")
        assert resource["kind"] == "Namespace" or resource["metadata"].get("namespace") == "specserve", \
            f"{path.name} {kv.kn(resource)}: not in the specserve namespace"


def test_strict_validation_rejects_an_unknown_field():
    """Guards the test above: a misspelt field must fail, or passing it would mean nothing."""
    kv = _kubernetes_validate()
    [deployment] = [d for d in kv.resources_from_file(str(K8S / "gateway.yaml")) if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "specserve"
    expected = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in NOT_IN_KUSTOMIZATION)
    assert sorted(kustomization["resources"]) == expected


@pytest.mark.parametrize("flavour", COMPOSE)
def test_compose_config_is_valid(flavour):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Debian package docker-compose) not installed; .ci/run installs it")
    files = [arg for name in COMPOSE[flavour] for arg in ("-f", name)]
    done = subprocess.run([binary, *files, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---- commands and settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("c", CONTAINERS, ids=ids)
def test_command_exists_and_accepts_its_flags(c):
    if c.role == "torchrun":
        module = c.argv[c.argv.index("-m") + 1]
        assert module == "specserve.training.cli" and importlib.util.find_spec(module)
        from specserve.training.cli import add_train_parser

        parser = argparse.ArgumentParser(prog="specserve.training.cli")  # as its main() builds it
        add_train_parser(parser.add_subparsers(dest="command", required=True))
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            try:
                parser.parse_args(["train", *c.argv[c.argv.index("-m") + 2:]])
            except SystemExit:
                pytest.fail(f"{c.where}: {stderr.getvalue().strip()}")
        return
    assert c.argv[0] == "specserve", f"{c.where}: runs {c.argv[0]!r}, expected specserve or torchrun"
    parse(c.argv)
    assert c.role in SETTINGS, f"{c.where}: `specserve {c.role}` is not a service this test knows"


def test_k8s_env_references_resolve():
    assert not K8S_ENV_PROBLEMS


@pytest.mark.parametrize("c", SPECSERVE, ids=[c.where for c in SPECSERVE])
def test_environment_names_settings_fields(c):
    cls = settings_class(c.role)
    prefix = cls.model_config["env_prefix"]
    for name in (n for n in c.env if n.startswith("SPECSERVE_")):
        assert name.startswith(prefix) and name[len(prefix):].lower() in cls.model_fields, \
            f"{c.where}: {name} is not a field of {cls.__name__} (prefix {prefix})"


@pytest.mark.parametrize("c", SPECSERVE, ids=[c.where for c in SPECSERVE])
def test_settings_accept_the_values(c, monkeypatch):
    settings_of(c, monkeypatch)  # a pydantic ValidationError names the field


def test_model_paths_exist():
    texts = [(c.where, t) for c in CONTAINERS for t in [*c.argv, *c.env.values()]]
    texts += [("docker/Dockerfile", v) for k, v in dockerfile_instructions() if k == "COPY"]
    found = [(where, m) for where, t in texts for m in re.findall(r"models/[\w./-]+", t)]
    assert found
    for where, path in found:
        assert (ROOT / path).exists(), f"{where}: {path} does not exist in the repository"


def _by_role(deployment: str, role: str) -> list[Container]:
    return [c for c in CONTAINERS if c.deployment == deployment and c.role == role]


@pytest.mark.parametrize("deployment", ["compose-cpu", "compose-gpu", "k8s"])
def test_verifier_taps_are_the_drafts_layers(deployment, monkeypatch):
    """The gateway refuses a drafter whose target_layer_ids differ from the verifiers' tap layers."""
    [drafter] = [settings_of(c, monkeypatch) for c in _by_role(deployment, "serve-drafter")]
    kind, _, path = drafter.drafter.partition(":")
    layers = json.loads((ROOT / path / "config.json").read_text())["target_layer_ids"]
    verifiers = _by_role(deployment, "serve-verifier")
    assert verifiers
    for c in verifiers:
        assert list(settings_of(c, monkeypatch).tap_layers) == layers, f"{c.where}: taps differ from {path}"


@pytest.mark.parametrize("deployment", ["compose-cpu", "compose-gpu"])
def test_compose_gateway_reaches_its_services(deployment, monkeypatch):
    [gateway] = [settings_of(c, monkeypatch) for c in _by_role(deployment, "serve-gateway")]
    for role, urls in (("serve-verifier", gateway.verifier_urls), ("serve-drafter", [gateway.drafter_url])):
        servers = {f"{c.service}:{settings_of(c, monkeypatch).port}" for c in _by_role(deployment, role)}
        assert set(urls) == servers, f"gateway --{role[6:]}-url(s) {urls}, but the {role} services are {servers}"


def test_k8s_gateway_lists_every_verifier_replica(monkeypatch):
    """Pod DNS names <statefulset>-<i>.<headless service>: the gateway dials each replica directly."""
    docs = k8s_docs()
    [gateway] = [settings_of(c, monkeypatch) for c in _by_role("k8s", "serve-gateway")]
    [verifier] = _by_role("k8s", "serve-verifier")
    [sts] = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == verifier.service]
    [headless] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert headless["spec"].get("clusterIP") == "None"
    port = settings_of(verifier, monkeypatch).port
    expected = [f"{sts['metadata']['name']}-{i}.{headless['metadata']['name']}:{port}"
                for i in range(sts["spec"]["replicas"])]
    assert gateway.verifier_urls == expected
    [drafter] = _by_role("k8s", "serve-drafter")
    host, _, service_port = gateway.drafter_url.partition(":")
    [service] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == host]
    assert _selects(service, drafter.pod)
    [target] = [p.get("targetPort", p["port"]) for p in service["spec"]["ports"] if p["port"] == int(service_port)]
    assert _container_port(drafter.spec, target) == settings_of(drafter, monkeypatch).port


# ---- ports and probes --------------------------------------------------------------------------------------

def _container_port(container: dict, port) -> int | None:
    """A probe's or Service's port (number or name) as a declared container port number, or None."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return p["containerPort"]
    return None


def _selects(service: dict, pod: dict) -> bool:
    return service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


K8S_SERVERS = [c for c in CONTAINERS if c.deployment == "k8s" and (c.role in HTTP_ROUTES or c.role in GRPC_SERVERS)]


@pytest.mark.parametrize("c", K8S_SERVERS, ids=[c.where for c in K8S_SERVERS])
def test_k8s_ports_match_settings_and_probes(c, monkeypatch):
    port = settings_of(c, monkeypatch).port
    assert [p["containerPort"] for p in c.spec["ports"]] == [port], f"{c.where}: containerPort is not {port}"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = c.spec.get(kind)
        if probe is None:
            assert kind == "startupProbe", f"{c.where}: no {kind}"
            continue
        if c.role in GRPC_SERVERS:
            assert probe.get("grpc", {}).get("port") == port, f"{c.where}: {kind} is not grpc on {port}"
        else:
            http = probe["httpGet"]
            assert _container_port(c.spec, http["port"]) == port, f"{c.where}: {kind} port"
            assert http["path"] == ("/ready" if kind == "readinessProbe" else "/health"), f"{c.where}: {kind}"
            assert http["path"] in routes(c.role)


def test_k8s_services_target_declared_ports():
    docs = k8s_docs()
    pods = [c for c in CONTAINERS if c.deployment == "k8s"]
    for service in (d for d in docs if d["kind"] == "Service"):
        selected = [c for c in pods if _selects(service, c.pod)]
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        for p in service["spec"]["ports"]:
            for c in selected:
                assert _container_port(c.spec, p.get("targetPort", p["port"])) is not None, \
                    f"Service {service['metadata']['name']} port {p['port']}: no such port on {c.where}"


@pytest.mark.parametrize("deployment", ["compose-cpu", "compose-gpu"])
def test_compose_healthchecks_and_published_ports(deployment, monkeypatch):
    exposed = {int(p) for k, v in dockerfile_instructions() if k == "EXPOSE" for p in v.split()}
    for c in (c for c in CONTAINERS if c.deployment == deployment):
        port = serving_port(c, monkeypatch)
        if port is None:
            continue
        assert port in exposed, f"{c.where}: port {port} is not EXPOSEd by docker/Dockerfile"
        test = " ".join(c.spec["healthcheck"]["test"])
        assert {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", test)} == {port}, f"{c.where}: healthcheck port"
        if c.role in GRPC_SERVERS:
            assert "grpc_health.v1" in test
        else:
            [path] = re.findall(r"127\.0\.0\.1:\d+(/\w*)", test)
            assert path in routes(c.role)
        for published in c.spec.get("ports", []):
            assert int(str(published).rsplit(":", 1)[-1]) == port, f"{c.where}: publishes {published}"
        for dependency, condition in c.spec.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}
            assert "healthcheck" in compose_services(COMPOSE[deployment.removeprefix("compose-")])[dependency]


def test_dockerfile_exposes_every_k8s_port(monkeypatch):
    exposed = {int(p) for k, v in dockerfile_instructions() if k == "EXPOSE" for p in v.split()}
    assert {serving_port(c, monkeypatch) for c in K8S_SERVERS} <= exposed


# ---- GPUs --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [c for c in CONTAINERS if c.deployment == "k8s"],
                         ids=[c.where for c in CONTAINERS if c.deployment == "k8s"])
def test_k8s_gpu_placement(c, monkeypatch):
    spec = c.pod["spec"]
    if c.role not in GPU_ROLES:
        assert c.gpus == 0 and spec.get("nodeSelector") == CPU_POOL, f"{c.where}: belongs on the CPU pool"
        return
    assert c.gpus >= 1 and spec.get("nodeSelector") == GPU_POOL, f"{c.where}: needs {GPU} on the GPU pool"
    assert any(t.get("key") == GPU for t in spec.get("tolerations", [])), f"{c.where}: no {GPU} toleration"
    if c.role in GRPC_SERVERS:
        assert settings_of(c, monkeypatch).device.startswith("cuda")
    elif c.role == "trainer-worker":  # a job may ask for max_nproc processes, one GPU each
        assert int(c.env["SPECSERVE_TRAINER_MAX_NPROC"]) == c.gpus
    else:
        assert int(c.argv[c.argv.index("--nproc_per_node") + 1]) == c.gpus


@pytest.mark.parametrize("deployment", ["compose-cpu", "compose-gpu"])
def test_compose_gpu_reservations_only_in_the_override(deployment, monkeypatch):
    for c in (c for c in CONTAINERS if c.deployment == deployment):
        devices = c.spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        on_gpu = deployment == "compose-gpu" and c.role in GPU_ROLES
        assert bool(devices) == on_gpu, f"{c.where}: GPU reservation {devices}"
        assert all(d["driver"] == "nvidia" and d["capabilities"] == ["gpu"] for d in devices)
        if c.role in GRPC_SERVERS:
            assert settings_of(c, monkeypatch).device.startswith("cuda") == on_gpu, f"{c.where}: device"


# ---- image and training job --------------------------------------------------------------------------------

def test_dockerfile_copies_what_exists_and_the_context_keeps_it():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignore  # an allowlist: only what is re-included reaches the build context
    for key, value in dockerfile_instructions():
        if key == "COPY" and not value.startswith("--from"):
            *sources, _ = value.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert f"!{source}" in ignore, f"COPY {source}: excluded by .dockerignore"
    assert dockerfile_json("ENTRYPOINT") == ["specserve"]


def test_image_torch_is_the_pinned_one():
    """The image installs the torch that scripts/setup-venv.sh (what the tests run on) pins."""
    pinned = re.search(r'"(torch==[^"]+)"', (ROOT / "scripts" / "setup-venv.sh").read_text()).group(1)
    [arg] = [v for k, v in dockerfile_instructions() if k == "ARG" and v.startswith("TORCH_SPEC=")]
    assert arg == f'TORCH_SPEC="{pinned}"'
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert interpolate(compose["x-specserve"]["build"]["args"]["TORCH_SPEC"]) == pinned


def test_training_job_config_is_a_valid_train_config():
    from specserve.training.config import from_dict

    [job] = [c for c in CONTAINERS if c.role == "torchrun"]
    config = Path(job.argv[job.argv.index("--config") + 1])
    [mount] = [m for m in job.spec["volumeMounts"] if Path(m["mountPath"]) == config.parent]
    [volume] = [v for v in job.pod["spec"]["volumes"] if v["name"] == mount["name"]]
    [configmap] = [d for d in yaml.safe_load_all((K8S / "training-job.yaml").read_text())
                   if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]]
    from_dict(yaml.safe_load(configmap["data"][config.name]))  # unknown keys and bad values raise
