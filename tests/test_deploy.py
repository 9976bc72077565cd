"""Offline validation of deploy/: nothing here needs a Docker engine or a cluster.

- compose.yaml: Debian's docker-compose 1.29 (`docker-compose config`) checks the schema,
  interpolation and dependencies; the resolved output is then checked for what we rely on.
- k8s/*.yaml: kubernetes-validate's bundled schemas, strict mode, a fixed Kubernetes version.
- Dockerfile: read as text, instruction by instruction.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
# The oldest schemas kubernetes-validate>=1.28 (our test extra) ships; newer releases keep them.
K8S_VERSION = "1.28.0"

TOPICS = ("observations", "forecasts", "observations.dlq", "streamseq-state-changelog")
CHANGELOG = "streamseq-state-changelog"
APP_UID = 10001


# ---------------------------------------------------------------- docker-compose ---------


def docker_compose(*args: str, file: Path = COMPOSE, env: dict[str, str] | None = None):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not on PATH. It validates deploy/compose.yaml offline; install "
            "Debian's: `apt-get install -y --no-install-recommends docker-compose` "
            "(`make test` does this)."
        )
    # A clean environment: only our variables, so the defaults in the file are what is tested.
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    run_env.update(env or {})
    return subprocess.run(
        [exe, "-f", str(file), *args],
        capture_output=True, text=True, env=run_env, cwd=ROOT, timeout=60,
    )


def resolved_compose(env: dict[str, str] | None = None) -> dict:
    result = docker_compose("config", env=env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict:
    return resolved_compose()


def volume_mounts(service: dict) -> dict[str, str]:
    """target -> source for a service's volumes, short or long syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[target] = source
    return mounts


def topic_creations(compose: dict) -> dict[str, tuple[str, str]]:
    """topic -> (partitions, rest of the line) from the `topics` service's script."""
    script = "\n".join(compose["services"]["topics"]["command"])
    found = {}
    for match in re.finditer(r"^create --topic (\S+) --partitions (\S+)(.*)$", script, re.MULTILINE):
        found[match.group(1)] = (match.group(2), match.group(3))
    return found


def test_compose_file_is_valid():
    result = docker_compose("config", "-q")
    assert result.returncode == 0, result.stderr
    # Every variable has a default: none may come out empty.
    assert "variable is not set" not in result.stderr, result.stderr


def test_compose_services(compose):
    assert set(compose["services"]) >= {
        "kafka", "topics", "worker", "trainer", "prometheus", "forecast-consumer",
    }


def test_compose_kafka_is_apache_kafka_in_kraft_mode(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "CONTROLLER://" in env["KAFKA_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    # One node: the internal topics cannot have more than one replica.
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert str(env[key]) == "1", key
    assert not any("ZOOKEEPER" in key for key in env)
    assert "healthcheck" in kafka


def test_compose_topics_and_compacted_co_partitioned_changelog(compose):
    created = topic_creations(compose)
    assert set(created) == set(TOPICS)
    partitions, options = created[CHANGELOG]
    assert "cleanup.policy=compact" in options
    assert partitions == created["observations"][0] == "8"


def test_compose_partition_counts_come_from_env():
    created = topic_creations(resolved_compose({"STREAMSEQ_PARTITIONS": "12"}))
    assert created["observations"][0] == created[CHANGELOG][0] == "12"


def test_compose_worker_scales_in_one_group(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker, "a fixed container_name prevents --scale"
    assert "ports" not in worker, "a published host port prevents --scale"
    assert worker["deploy"]["replicas"] == 2
    assert resolved_compose({"WORKERS": "5"})["services"]["worker"]["deploy"]["replicas"] == 5
    assert worker["environment"]["STREAMSEQ_KAFKA__GROUP_ID"] == "streamseq-workers"
    assert worker["environment"]["STREAMSEQ_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert worker["command"] == ["worker", "--config", "/etc/streamseq/worker.toml"]
    assert worker["build"] == {"context": str(ROOT), "dockerfile": "deploy/Dockerfile"}


def test_compose_start_order(compose):
    services = compose["services"]
    for name in ("worker", "forecast-consumer"):
        assert services[name]["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "topics": {"condition": "service_completed_successfully"},
        }, name
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}


def test_compose_configs_and_shared_data(compose):
    services = compose["services"]
    # deploy/config/*.toml belong to the config owner; only their paths are checked here.
    for name in ("worker", "trainer"):
        service = services[name]
        mounts = volume_mounts(service)
        assert mounts[f"/etc/streamseq/{name}.toml"] == str(DEPLOY / "config" / f"{name}.toml")
        assert mounts["/var/lib/streamseq"] == "streamseq-data"
        assert service["environment"]["STREAMSEQ_REGISTRY__PATH"] == "/var/lib/streamseq/registry"
        assert service["environment"]["STREAMSEQ_STORE__PATH"] == "/var/lib/streamseq/windows"
        assert service["command"][service["command"].index("--config") + 1] == f"/etc/streamseq/{name}.toml"
    assert "streamseq-data" in compose["volumes"]
    # The worker drains on SIGTERM; Docker's default 10 s would cut the final commit short.
    assert services["worker"]["stop_grace_period"] == "60s"
    # The image's HEALTHCHECK probes the worker's HTTP server, which these services lack.
    for name in ("trainer", "forecast-consumer"):
        assert services[name]["healthcheck"] in ({"disable": True}, {"test": ["NONE"]}), name


def test_compose_forecast_consumer(compose):
    consumer = compose["services"]["forecast-consumer"]
    assert consumer["command"] == ["forecasts", "--topic", "forecasts", "--format", "json"]


def test_prometheus_discovers_every_worker(compose):
    prometheus = compose["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    assert volume_mounts(prometheus)["/etc/prometheus/prometheus.yml"] == str(DEPLOY / "prometheus.yml")
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamseq-worker"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == 8080


@pytest.mark.parametrize(
    ("name", "breakage", "expected"),
    [
        ("unknown key", lambda d: d["services"]["worker"].update(replicaz=3), "replicaz"),
        (
            "undefined dependency",
            lambda d: d["services"]["worker"]["depends_on"].update(kafkaa={"condition": "service_healthy"}),
            "kafkaa",
        ),
        (
            "bad condition",
            lambda d: d["services"]["worker"]["depends_on"]["topics"].update(condition="service_done"),
            "service_done",
        ),
    ],
)
def test_compose_validation_rejects_broken_copy(tmp_path, name, breakage, expected):
    # Same depth as deploy/, so the relative build context and mounts resolve as in the original.
    (tmp_path / "deploy").mkdir()
    original = yaml.safe_load(COMPOSE.read_text())

    control = tmp_path / "deploy" / "control.yaml"
    control.write_text(yaml.safe_dump(original, sort_keys=False))
    assert docker_compose("config", "-q", file=control).returncode == 0, "unbroken copy must pass"

    broken_data = copy.deepcopy(original)
    breakage(broken_data)
    broken = tmp_path / "deploy" / "compose.yaml"
    broken.write_text(yaml.safe_dump(broken_data, sort_keys=False))
    result = docker_compose("config", "-q", file=broken)
    assert result.returncode != 0, f"{name} was accepted"
    assert expected in result.stderr + result.stdout


# ---------------------------------------------------------------- Kubernetes -------------


def load_manifests() -> list[tuple[str, dict]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.name, document))
    return documents


MANIFESTS = load_manifests()


def k8s_validate(resource: dict) -> None:
    # SchemaNotFoundError (a mistyped kind or apiVersion) propagates: it fails the test, where
    # the CLI would only warn.
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def find(kind: str, name: str | None = None) -> dict:
    matches = [d for _, d in MANIFESTS if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    "resource",
    [document for _, document in MANIFESTS],
    ids=[f"{file}:{document['kind']}/{document['metadata']['name']}" for file, document in MANIFESTS],
)
def test_k8s_manifest_is_valid(resource):
    k8s_validate(resource)


def test_k8s_expected_resources_in_one_namespace():
    kinds = {document["kind"] for _, document in MANIFESTS}
    assert kinds >= {
        "Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment",
        "Service", "PodDisruptionBudget", "CronJob",
    }
    namespace = find("Namespace")["metadata"]["name"]
    for file, document in MANIFESTS:
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == namespace, file


def test_k8s_worker_probes_and_shutdown():
    worker = find("Deployment", "streamseq-worker")
    spec = pod_spec(worker)
    (container,) = spec["containers"]
    assert container["args"] == ["worker", "--config", "/etc/streamseq/worker.toml"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert ports.get(container[probe]["httpGet"]["port"], container[probe]["httpGet"]["port"]) == 8080
    # Above the worker's shutdown deadline, so SIGTERM's drain finishes before SIGKILL.
    assert spec["terminationGracePeriodSeconds"] > 30
    assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("workload", [("Deployment", "streamseq-worker"), ("CronJob", "streamseq-trainer")])
def test_k8s_pods_run_non_root_read_only(workload):
    spec = pod_spec(find(*workload))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == APP_UID
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # Registry and window store: the shared ReadWriteMany claim.
    claim = volumes[mounts["/var/lib/streamseq"]]["persistentVolumeClaim"]["claimName"]
    pvc = find("PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize(
    ("workload", "config"),
    [(("Deployment", "streamseq-worker"), "worker.toml"), (("CronJob", "streamseq-trainer"), "trainer.toml")],
)
def test_k8s_config_file_is_mounted_from_the_configmap(workload, config):
    spec = pod_spec(find(*workload))
    (container,) = spec["containers"]
    config_path = container["args"][container["args"].index("--config") + 1]
    assert config_path == f"/etc/streamseq/{config}"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/streamseq")
    source = next(v for v in spec["volumes"] if v["name"] == mount["name"])["configMap"]
    assert [item["path"] for item in source["items"]] == [config]
    assert config in find("ConfigMap", source["name"])["data"]


def test_k8s_sasl_password_comes_from_the_secret():
    (container,) = pod_spec(find("Deployment", "streamseq-worker"))["containers"]
    env = {e["name"]: e for e in container["env"]}
    for variable in ("STREAMSEQ_KAFKA__SASL_PASSWORD", "STREAMSEQ_KAFKA__SASL_USERNAME"):
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        secret = find("Secret", ref["name"])
        assert secret["type"] == "Opaque"
        assert "REPLACE_ME" in secret["stringData"][ref["key"]], "placeholders must be obvious"
    for name, text in find("ConfigMap", "streamseq-config")["data"].items():
        assert "sasl_password" not in tomllib.loads(text).get("kafka", {}), name


def test_k8s_config_files_are_toml_with_the_shared_paths():
    data = find("ConfigMap", "streamseq-config")["data"]
    for name in ("worker.toml", "trainer.toml"):
        config = tomllib.loads(data[name])
        assert config["registry"]["path"] == "/var/lib/streamseq/registry", name
        assert config["store"]["path"] == "/var/lib/streamseq/windows", name


def test_k8s_service_pdb_and_hpa_select_the_workers():
    worker = find("Deployment", "streamseq-worker")
    labels = worker["spec"]["template"]["metadata"]["labels"]

    service = find("Service", "streamseq-worker")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080 and port["name"] == "metrics"
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"

    pdb = find("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    hpa = find("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert hpa["spec"]["maxReplicas"] <= int(topic_creations(resolved_compose())["observations"][0])


def test_k8s_trainer_runs_once_per_schedule_with_a_single_writer():
    cronjob = find("CronJob", "streamseq-trainer")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = pod_spec(cronjob)["containers"]
    assert container["args"][0] == "train" and "--once" in container["args"]


def test_k8s_validation_rejects_broken_deployment():
    worker = find("Deployment", "streamseq-worker")
    k8s_validate(worker)

    unknown_field = copy.deepcopy(worker)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessProbes"):
        k8s_validate(unknown_field)

    wrong_type = copy.deepcopy(worker)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(wrong_type)

    unknown_kind = copy.deepcopy(worker)
    unknown_kind["apiVersion"] = "apps/v1beta9"
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        k8s_validate(unknown_kind)


# ---------------------------------------------------------------- Dockerfile -------------


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Stages, each a list of (INSTRUCTION, arguments); continuations joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        instruction, _, arguments = (pending + stripped).partition(" ")
        pending = ""
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        assert stages, f"{instruction} before the first FROM"
        stages[-1].append((instruction, arguments.strip()))
    return stages


STAGES = dockerfile_stages((DEPLOY / "Dockerfile").read_text())


def last(stage: list[tuple[str, str]], instruction: str) -> str:
    values = [arguments for name, arguments in stage if name == instruction]
    assert values, f"no {instruction} in the final stage"
    return values[-1]


def test_dockerfile_is_multi_stage_with_a_slim_final_image():
    assert len(STAGES) >= 2
    builder_from = STAGES[0][0][1].split()
    assert builder_from[-2:] == ["AS", "builder"] or builder_from[-2:] == ["as", "builder"]
    final = STAGES[-1]
    assert final[0][1].split()[0] == "python:3.11-slim"
    copies = [arguments for name, arguments in final if name == "COPY"]
    assert any(arguments.startswith("--from=builder ") for arguments in copies)


def test_dockerfile_final_stage_has_no_build_tools():
    compilers = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|python3-dev|libc6-dev)\b")
    for name, arguments in STAGES[-1]:
        if name == "RUN":
            assert not compilers.search(arguments), arguments
            assert "apt-get install" not in arguments, arguments


def test_dockerfile_installs_cpu_torch_in_the_builder():
    builder = " ".join(arguments for _, arguments in STAGES[0])
    assert "TORCH_VERSION=2.13.0" in builder
    assert "https://download.pytorch.org/whl/cpu" in builder
    runs = [arguments for name, arguments in STAGES[0] if name == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    package_run = next(i for i, r in enumerate(runs) if "pip install ." in r)
    assert torch_run < package_run, "CPU torch must be installed before the package pulls in torch"


def test_dockerfile_runtime_contract():
    final = STAGES[-1]
    user = last(final, "USER").split(":")[0]
    assert user not in ("root", "0")
    assert user == str(APP_UID), "numeric uid, so runAsNonRoot can check it (k8s uses the same)"
    assert json.loads(last(final, "ENTRYPOINT")) == ["streamseq"]
    assert json.loads(last(final, "CMD")) == ["worker", "--config", "/etc/streamseq/worker.toml"]
    assert "8080" in last(final, "EXPOSE").split()
    assert last(final, "STOPSIGNAL") == "SIGTERM"
    healthcheck = last(final, "HEALTHCHECK")
    assert "/healthz" in healthcheck and "python" in healthcheck and "curl" not in healthcheck


def test_dockerignore_lets_the_copied_sources_through():
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: .venv, .git, out/ and data never enter the context"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for name, arguments in STAGES[0]:
        if name == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by the .dockerignore"
