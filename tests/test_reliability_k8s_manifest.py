"""deploy/k8s.yaml, validated without a cluster: each document against a JSON schema of the parts of
the Kubernetes API it uses (required fields, types, enums), then the cross-references a schema
cannot see: the headless Service selects the Deployment's pods, the ports agree, the probes ask
the health service for the served service name, the container's arguments parse with the real
`energy-rerank serve` parser, bind beyond loopback on the probed port, and drain within the grace.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from energy_rerank.server.app import SERVICE_NAME
from energy_rerank.server.cli import add_parser, config_from_args

yaml = pytest.importorskip("yaml", reason="needs pyyaml")
jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema")

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "k8s.yaml"

NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
LABELS = {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name", "labels"],
            "properties": {"name": NAME, "namespace": NAME, "labels": LABELS}}  # fmt: skip
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
PORT_REF = {"oneOf": [PORT, NAME]}
PROBE = {
    "type": "object",
    "properties": {
        "grpc": {
            "type": "object",
            "required": ["port"],
            "properties": {"port": PORT, "service": {"type": "string"}},
        },
        "exec": {"type": "object", "required": ["command"]},
        "httpGet": {"type": "object", "required": ["port"]},
        "tcpSocket": {"type": "object", "required": ["port"]},
        "periodSeconds": {"type": "integer", "minimum": 1},
        "failureThreshold": {"type": "integer", "minimum": 1},
    },
    "oneOf": [{"required": [k]} for k in ("grpc", "exec", "httpGet", "tcpSocket")],
}
CONTAINER = {
    "type": "object",
    "required": ["name", "image", "args", "ports", "readinessProbe", "livenessProbe", "resources"],
    "properties": {
        "name": NAME,
        "image": {"type": "string", "minLength": 1},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "ports": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["containerPort"],
            "properties": {"name": NAME, "containerPort": PORT, "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}}},
        "startupProbe": PROBE, "readinessProbe": PROBE, "livenessProbe": PROBE,
        "resources": {"type": "object", "required": ["requests"],
                      "properties": {"requests": LABELS | {"additionalProperties": {"type": ["string", "number"]}}}},
        "securityContext": {"type": "object", "properties": {
            "allowPrivilegeEscalation": {"const": False}, "readOnlyRootFilesystem": {"type": "boolean"}}},
    },
}  # fmt: skip
SCHEMAS = {
    ("v1", "Service"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": METADATA, "spec": {
            "type": "object", "required": ["clusterIP", "selector", "ports"],
            "properties": {
                "clusterIP": {"const": "None"},  # headless
                "selector": LABELS,
                "ports": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["name", "port"],
                    "properties": {"name": NAME, "port": PORT, "targetPort": PORT_REF,
                                   "protocol": {"enum": ["TCP", "UDP", "SCTP"]}, "appProtocol": {"type": "string"}}}},
            }}},
    },
    ("apps/v1", "Deployment"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": METADATA, "spec": {
            "type": "object", "required": ["replicas", "selector", "template"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 2},  # more than one: that is the point
                "selector": {"type": "object", "required": ["matchLabels"], "properties": {"matchLabels": LABELS}},
                "template": {"type": "object", "required": ["metadata", "spec"], "properties": {
                    "metadata": {"type": "object", "required": ["labels"], "properties": {"labels": LABELS}},
                    "spec": {"type": "object", "required": ["containers"], "properties": {
                        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 1},
                        "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                        "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                    }},
                }},
            }}},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    loaded = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in loaded}
    assert len(by_kind) == len(loaded), "one document per kind expected"
    return by_kind


def test_documents_match_the_schema(docs):
    assert set(docs) == {"Service", "Deployment"}
    for doc in docs.values():
        schema = SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        assert schema is not None, f"unexpected {doc['apiVersion']} {doc['kind']}"
        jsonschema.validate(doc, schema)


def test_schema_rejects_a_broken_manifest(docs):
    broken = yaml.safe_load(yaml.safe_dump(docs["Service"]))
    broken["spec"]["clusterIP"] = "10.0.0.1"  # not headless any more
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMAS[("v1", "Service")])
    broken = yaml.safe_load(yaml.safe_dump(docs["Deployment"]))
    del broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMAS[("apps/v1", "Deployment")])


def test_service_deployment_and_server_agree(docs):
    svc, dep = docs["Service"], docs["Deployment"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items(), "the Service selects no pod"
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for p in svc["spec"]["ports"]:
        target = p.get("targetPort", p["port"])
        assert (ports[target] if isinstance(target, str) else target) == p["port"], p

    # the container's command line is one the real server accepts
    assert container["command"] == ["energy-rerank"] and container["args"][0] == "serve"
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(shlex.split(shlex.join(container["args"])))
    config = config_from_args(argparse.Namespace(**{**vars(args), "token_file": None}))
    host, port = config.address.rsplit(":", 1)
    assert host == "0.0.0.0" and int(port) == ports["grpc"], (
        "pods must listen beyond loopback on the grpc port"
    )
    assert config.metrics_address == "0.0.0.0" and config.metrics_port == ports["metrics"]
    assert config.drain_seconds < pod["spec"]["terminationGracePeriodSeconds"]

    # the token comes from a mounted secret, and the probes ask for the served service by name
    token_dir = str(Path(args.token_file).parent)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "secret" in volumes[mounts[token_dir]]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": ports["grpc"], "service": SERVICE_NAME}
    assert container["livenessProbe"]["grpc"]["port"] == ports["grpc"]
