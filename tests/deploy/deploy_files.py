"""The deployment files read into what they start: one `Container` per process, with its full command line and
its environment (compose interpolation and override merging, Kubernetes ConfigMap/Secret references resolved).
Used by test_deploy_files.py."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = {"cpu": ["docker-compose.yml"], "gpu": ["docker-compose.yml", "docker-compose.gpu.yml"]}
GPU = "nvidia.com/gpu"


@dataclass
class Container:
    """One process a deployment file starts: its full command line and environment."""

    deployment: str  # compose-cpu | compose-gpu | k8s | dockerfile
    where: str
    argv: list[str]
    env: dict[str, str]
    service: str = ""  # compose service name / k8s workload name
    spec: dict | None = None  # compose service, or k8s container
    pod: dict | None = None  # k8s pod template

    @property
    def role(self) -> str:
        """The specserve subcommand, or the program (torchrun)."""
        return self.argv[1] if self.argv[0] == "specserve" else self.argv[0]

    @property
    def gpus(self) -> int:
        return int((self.spec.get("resources", {}).get("limits", {})).get(GPU, 0))


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[dict]:
    return [doc for path in k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value):
    """Compose's ${VAR:-default}, with the defaults only: the test must not depend on the caller's environment."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


def merge(base: dict, over: dict) -> dict:
    """An override file's service on top of the base one (mappings merge, everything else is replaced)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def compose_services(files: list[str]) -> dict[str, dict]:
    services: dict[str, dict] = {}
    for name in files:
        for service, spec in yaml.safe_load((ROOT / name).read_text())["services"].items():
            services[service] = merge(services.get(service, {}), interpolate(spec))
    return services


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def dockerfile_json(instruction: str) -> list[str]:
    [value] = [v for k, v in dockerfile_instructions() if k == instruction]
    return json.loads(value)


def compose_containers() -> list[Container]:
    out = []
    for flavour, files in COMPOSE.items():
        for name, spec in compose_services(files).items():
            if "build" not in spec:  # redis, postgres
                continue
            assert "entrypoint" not in spec, f"{name}: the image's ENTRYPOINT (specserve) is assumed"
            env = spec.get("environment", {})
            if isinstance(env, list):
                env = dict(item.split("=", 1) for item in env)
            out.append(Container(f"compose-{flavour}", f"{'+'.join(files)}: {name}",
                                 [*dockerfile_json("ENTRYPOINT"), *spec["command"]],
                                 {k: "" if v is None else str(v) for k, v in env.items()}, name, spec))
    return out


def k8s_env(container: dict, docs: list[dict], where: str, problems: list[str]) -> dict[str, str]:
    """The container's environment with ConfigMap and Secret references resolved; unresolved ones go to problems."""
    def source(kind: str, name: str) -> dict[str, str]:
        found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
        if not found:
            problems.append(f"{where}: {kind} {name} is not defined in k8s/")
            return {}
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in found[0].get("data", {}).items()}
            return {**data, **found[0].get("stringData", {})}
        return found[0].get("data", {})

    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        kind, body = ("ConfigMap", ref["configMapRef"]) if "configMapRef" in ref else ("Secret", ref["secretRef"])
        env.update(source(kind, body["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        kind, ref = next(("ConfigMap" if k == "configMapKeyRef" else "Secret", v)
                         for k, v in item["valueFrom"].items() if k in ("configMapKeyRef", "secretKeyRef"))
        data = source(kind, ref["name"])
        if ref["key"] not in data and not ref.get("optional"):
            problems.append(f"{where}: {item['name']}: {kind} {ref['name']} has no key {ref['key']}")
        env[item["name"]] = data.get(ref["key"], "")
    return env


def k8s_containers(problems: list[str]) -> list[Container]:
    docs, out = k8s_docs(), []
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = doc["spec"]["template"]
        for c in pod["spec"]["containers"]:
            where = f"k8s {doc['kind']}/{doc['metadata']['name']}: {c['name']}"
            argv = [*(c.get("command") or dockerfile_json("ENTRYPOINT")), *c.get("args", [])]
            env = k8s_env(c, docs, where, problems)
            out.append(Container("k8s", where, argv, env, doc["metadata"]["name"], c, pod))
    return out
