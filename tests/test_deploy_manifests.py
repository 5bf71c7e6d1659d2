"""deploy/: Kubernetes manifests (schema-valid offline, and consistent with each other, the image and the
server's settings), the compose file (compose-spec schema, files it references) and the Envoy configs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from llmrpc_server.app import SERVICE_NAME

from tests.envoy_front import envoy_binary

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
ENVOY = ROOT / "deploy" / "envoy"
BIN = Path(sys.executable).parent
IMAGE_ENV = DockerfileParser(str(ROOT)).envs

Doc = dict[str, Any]


def documents() -> Iterator[tuple[Path, Doc]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in yaml.safe_load_all(path.read_text()):
                if doc is not None:
                    yield path, doc


def find(kind: str, name: str) -> Doc:
    (doc,) = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def gateway() -> tuple[Doc, Doc]:
    """The gateway Deployment and its one container."""
    deployment = find("Deployment", "llmrpc")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


@pytest.mark.parametrize(("path", "doc"), list(documents()), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_every_manifest_is_a_valid_kubernetes_resource(path: Path, doc: Doc) -> None:
    assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), path
    # Strict: an unknown or misspelt field fails, as `kubectl apply --validate=strict` would.
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_applies_everything_but_the_optional_envoy_front() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert all((K8S / name).is_file() for name in listed)
    assert {p.name for p in K8S.glob("*.yaml")} - listed == {"kustomization.yaml", "envoy.yaml"}


def test_gateway_pods_drain_within_their_termination_period() -> None:
    deployment, container = gateway()
    pod = deployment["spec"]["template"]["spec"]
    grace, delay = (float(flag(container["args"], f"--{name.replace('_', '-')}")
                          or env_of(container).get(f"LLMRPC_{name.upper()}") or IMAGE_ENV[f"LLMRPC_{name.upper()}"])
                    for name in ("grace", "drain_delay"))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # Kubernetes counts the preStop hook against the same period: SIGTERM comes only after it.
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + delay + grace
    # Serving on while NOT_SERVING must outlast Envoy's health-check interval, or it keeps sending calls.
    (check,) = envoy_config("envoy.yaml")["static_resources"]["clusters"][0]["health_checks"]
    assert delay > 2 * float(check["interval"].rstrip("s"))
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_gateway_container_probes_ports_resources_and_security() -> None:
    deployment, container = gateway()
    pod = deployment["spec"]["template"]["spec"]
    assert container["image"] and not container["image"].endswith(":latest")
    assert {"name": "grpc", "containerPort": 50051, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    # Ready means the completion service itself is SERVING (it turns NOT_SERVING first on SIGTERM).
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == _image_uid()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # With a read-only root, the SQLite cache must sit on a writable emptyDir.
    cache_dir = str(PurePosixPath(env_of(container).get("LLMRPC_CACHE_PATH") or IMAGE_ENV["LLMRPC_CACHE_PATH"]).parent)
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache_dir]
    assert "emptyDir" in volumes[mount["name"]] and not mount.get("readOnly")


def _image_uid() -> int:
    users = [str(i["value"]) for i in DockerfileParser(str(ROOT)).structure if i["instruction"] == "USER"]
    return int(users[-1].split(":")[0])


def test_gateway_config_secret_and_redis_references_resolve() -> None:
    deployment, container = gateway()
    pod = deployment["spec"]["template"]["spec"]
    env = env_of(container)
    (secret_ref,) = container["envFrom"]
    secret = find("Secret", secret_ref["secretRef"]["name"])
    assert "LLMRPC_AUTH_TOKENS" in secret["stringData"]  # behind Envoy callers are not loopback: auth is required
    config_path = PurePosixPath(env["LLMRPC_CONFIG"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert config_path.name in find("ConfigMap", volume["configMap"]["name"])["data"]
    redis = urlsplit(env["LLMRPC_REDIS_URL"])
    service = find("Service", str(redis.hostname))
    assert redis.port in [p["port"] for p in service["spec"]["ports"]]


def test_gateway_args_env_and_config_file_are_settings_the_server_accepts(tmp_path: Path) -> None:
    _, container = gateway()
    config = find("ConfigMap", "llmrpc-config")["data"]["config.json"]
    (tmp_path / "config.json").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMRPC_")}
    env.update(env_of(container))
    env.update(LLMRPC_CONFIG=str(tmp_path / "config.json"), LLMRPC_CACHE_PATH=str(tmp_path / "cache.sqlite"))
    args = container["args"]
    assert args[0] == "serve"
    # The same settings loaded by a maintenance command, which exits instead of serving (`keys new`: one that
    # touches no store, since the cluster's Redis in LLMRPC_REDIS_URL is not reachable from here).
    done = subprocess.run([str(BIN / "llmrpc-server"), "keys", "new", *args[1:]], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_services_autoscaler_and_budget_select_the_pods() -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"] for _, d in documents() if d["kind"] == "Deployment"}
    for _, doc in documents():
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
            (template,) = [t for t in pods.values() if selector.items() <= t["metadata"]["labels"].items()]
            names = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in doc["spec"]["ports"]} <= names, doc["metadata"]["name"]
    hpa = find("HorizontalPodAutoscaler", "llmrpc")
    assert hpa["spec"]["scaleTargetRef"]["name"] in pods and hpa["spec"]["minReplicas"] >= 2
    pdb = find("PodDisruptionBudget", "llmrpc")
    assert pdb["spec"]["selector"]["matchLabels"] == find("Deployment", "llmrpc")["spec"]["selector"]["matchLabels"]
    assert find("Service", "llmrpc-headless")["spec"]["clusterIP"] == "None"


def envoy_config(name: str) -> Doc:
    config: Doc = yaml.safe_load((ENVOY / name).read_text())
    return config


def endpoints(config: Doc) -> list[tuple[str, int]]:
    (cluster,) = config["static_resources"]["clusters"]
    return [(e["endpoint"]["address"]["socket_address"]["address"],
             e["endpoint"]["address"]["socket_address"]["port_value"])
            for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]


@pytest.mark.parametrize("name", ["envoy.yaml", "envoy-compose.yaml"])
def test_envoy_config_is_valid_for_the_shipped_envoy(name: str) -> None:
    done = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(ENVOY / name), "--disable-hot-restart",
                           "-l", "warning"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deprecated" not in (done.stdout + done.stderr).lower()
    admin = envoy_config(name)["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1"  # the admin interface never leaves loopback


def test_envoy_fronts_the_headless_service_in_kubernetes() -> None:
    config = envoy_config("envoy.yaml")
    headless = find("Service", "llmrpc-headless")
    assert endpoints(config) == [(headless["metadata"]["name"], headless["spec"]["ports"][0]["port"])]
    (listener,) = config["static_resources"]["listeners"]
    front = find("Deployment", "llmrpc-envoy")["spec"]["template"]["spec"]
    (container,) = front["containers"]
    assert listener["address"]["socket_address"]["port_value"] == container["ports"][0]["containerPort"]
    assert flag(container["args"], "-c") == "/etc/envoy/envoy.yaml"
    assert any(m["mountPath"] == "/etc/envoy" for m in container["volumeMounts"])


def compose() -> Doc:
    doc: Doc = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return doc


def test_compose_file_matches_the_compose_spec() -> None:
    done = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                           str(ROOT / "deploy" / "compose.yaml")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_redis_two_replicas_and_envoy_from_files_that_exist() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"redis", "llmrpc-1", "llmrpc-2", "envoy"}
    base = ROOT / "deploy"
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (base / build["context"] / build.get("dockerfile", "Dockerfile")).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (base / source).is_file(), f"{name}: {source}"
            else:
                assert source in doc["volumes"], f"{name}: {source}"
    replicas = ["llmrpc-1", "llmrpc-2"]
    for name in replicas:
        env = services[name]["environment"]
        # Envoy is not on the replicas' loopback: they need tokens, or an explicit opt-out on a laptop.
        assert env.get("LLMRPC_ALLOW_UNAUTHENTICATED") == "true" or env.get("LLMRPC_AUTH_TOKENS")
        assert urlsplit(env["LLMRPC_REDIS_URL"]).hostname == "redis"
    config = envoy_config("envoy-compose.yaml")
    assert endpoints(config) == [(name, int(IMAGE_ENV["LLMRPC_PORT"])) for name in replicas]
    (listener,) = config["static_resources"]["listeners"]
    assert services["envoy"]["ports"] == [f"127.0.0.1:50051:{listener['address']['socket_address']['port_value']}"]


def test_compose_envoy_differs_from_the_shipped_one_only_in_its_replicas() -> None:
    shipped, flavour = envoy_config("envoy.yaml"), envoy_config("envoy-compose.yaml")
    for config in (shipped, flavour):
        (cluster,) = config["static_resources"]["clusters"]
        cluster["load_assignment"]["endpoints"] = []
    assert shipped == flavour
