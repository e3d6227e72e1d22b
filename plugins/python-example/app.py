"""The example provider in Python: the same provider as plugins/example (Rust), built into a
WebAssembly component by componentize-py, which embeds CPython. Its "backend" is the host's `kv`
store: creating a pod writes a record there and the pod is reported Running at once.

Read it top to bottom: config, metadata (who am I, is this config valid), node (what do I offer),
pods (lifecycle). A real provider adds its backend's API through the `http` import.

The bindings (`wit_world`) are generated from wit/v0.2.0 by componentize-py at build time
(`plugins/build python`). Every export is a method of a class named after its interface; an
error is raised as `Err(ProviderError_...)` and reaches the host as the `provider-error` case.
Every call runs in a fresh instance: nothing kept in module globals survives a call.
"""

import json
import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import metadata, node, pods
from wit_world.exports.pods import (
    ContainerState_Running,
    ContainerStatus,
    ContainerUsage,
    CreatePlan,
    Deletion_Gone,
    Instance,
    NotApplied,
    PodChange_ConfigMap,
    PodChange_Secret,
    PodOutcome,
    PodPhase,
    PodStatus,
    PodUsage,
    StateRunning,
    UpdateOutcome,
)
from wit_world.imports import kv as hostkv
from wit_world.imports import log as hostlog
from wit_world.imports.types import (
    Event,
    EventKind,
    InvalidInput,
    KeyValue,
    PodRef,
    ProviderError_Internal,
    ProviderError_Invalid,
    ProviderError_NotFound,
    ProviderError_QuotaExceeded,
    ProviderError_Unsupported,
)

NAME = "python-example"
VERSION = "0.1.0"
CONTRACT = "0.2.0"

# ---------------------------------------------------------------------------------------------
# Config: the node's `[nodes.provider]` table, as JSON.

DEFAULT_MAX_PODS = 200
MAX_PODS_LIMIT = 1000


def invalid(reason, field, message):
    return Err(ProviderError_Invalid(InvalidInput(reason=reason, field=field, message=message)))


def parse_config(text):
    """The config as a dict with every key filled in. Unknown keys are refused, so an operator's
    typo is reported instead of silently ignored."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise invalid("InvalidConfig", "config", f"the config is not JSON: {e}")
    if not isinstance(raw, dict):
        raise invalid("InvalidConfig", "config", "the config must be a table")
    unknown = sorted(set(raw) - {"max_pods"})
    if unknown:
        raise invalid("InvalidConfig", f"config.{unknown[0]}", f"unknown key {unknown[0]}, expected max_pods")
    max_pods = raw.get("max_pods", DEFAULT_MAX_PODS)
    # bool is an int in Python; the Rust example (serde) refuses it too.
    if not isinstance(max_pods, int) or isinstance(max_pods, bool) or not 1 <= max_pods <= MAX_PODS_LIMIT:
        raise invalid(
            "InvalidConfig",
            "config.max_pods",
            f"max_pods is {json.dumps(max_pods)}, but must be between 1 and {MAX_PODS_LIMIT}",
        )
    return {"max_pods": max_pods}


def kv(key, value):
    return KeyValue(key=key, value=value)


class Metadata(exports.Metadata):
    def info(self):
        return metadata.PluginInfo(
            name=NAME,
            version=VERSION,
            contract_version=CONTRACT,
            description="Example provider in Python: pods are records in the host's kv store, Running at once",
        )

    def validate_config(self, node_name, config):
        # Compact separators: the same normalised text as the Rust example's serde_json.
        return json.dumps(parse_config(config), separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Node.


class Node(exports.Node):
    def describe(self, ctx):
        config = parse_config(ctx.config)
        capacity = [kv("cpu", "1000"), kv("memory", "4Ti"), kv("pods", str(config["max_pods"]))]
        return node.NodeOffer(
            capacity=capacity,
            allocatable=list(capacity),
            labels=[],
            taints=[],
            conditions=[
                node.NodeCondition(
                    kind="Ready",
                    status="True",
                    reason="ExampleProviderReady",
                    message="the example provider is always ready",
                )
            ],
            operating_system="linux",
            architecture="amd64",
        )


# ---------------------------------------------------------------------------------------------
# Pods. The "backend" record of one instance, stored as JSON under `instances/<node>/<uid>`:
# {namespace, name, uid, instance_id, pod_ip, started_at, init_containers, containers}, the
# containers as [name, image] pairs.


def record_key(node_name, uid):
    return f"instances/{node_name}/{uid}"


def load(node_name, uid):
    raw = hostkv.get(record_key(node_name, uid))
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise Err(ProviderError_Internal(f"stored record for pod uid {uid} is corrupt: {e}"))


def save(node_name, record):
    if not hostkv.set(record_key(node_name, record["uid"]), json.dumps(record).encode(), None):
        raise Err(ProviderError_QuotaExceeded("the host's kv store for this plugin is full"))


def parse_pod(resolved):
    """The fields of the Pod JSON this provider needs, or the `invalid` error create returns."""
    try:
        pod = json.loads(resolved.pod)
        meta, spec = pod["metadata"], pod["spec"]
        parsed = {
            "name": meta["name"],
            "namespace": meta.get("namespace") or "default",
            "uid": meta.get("uid", ""),
            "containers": containers(spec["containers"]),
            "init_containers": containers(spec.get("initContainers") or []),
            "spec": spec,
        }
    except (ValueError, KeyError, TypeError) as e:
        raise invalid("InvalidPod", "pod", f"cannot read the pod: {type(e).__name__}: {e}")
    if not parsed["uid"]:
        raise invalid("InvalidPod", "metadata.uid", "the pod has no uid")
    return parsed


def uses(spec, kind, name):
    """How the pod spec uses the ConfigMap or Secret `name`: (mounted as files, read into env)."""
    volume_key, volume_name, env_ref, env_from = {
        "ConfigMap": ("configMap", "name", "configMapKeyRef", "configMapRef"),
        "Secret": ("secret", "secretName", "secretKeyRef", "secretRef"),
    }[kind]
    source_key = "configMap" if kind == "ConfigMap" else "secret"
    mounted = False
    for volume in spec.get("volumes") or []:
        if (volume.get(volume_key) or {}).get(volume_name) == name:
            mounted = True
        for source in (volume.get("projected") or {}).get("sources") or []:
            if (source.get(source_key) or {}).get("name") == name:
                mounted = True
    env = False
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for var in container.get("env") or []:
            if ((var.get("valueFrom") or {}).get(env_ref) or {}).get("name") == name:
                env = True
        for source in container.get("envFrom") or []:
            if (source.get(env_from) or {}).get("name") == name:
                env = True
    return mounted, env


def not_applied(spec, changes):
    """The changes the example cannot apply: a ConfigMap or Secret the pod reads only into
    environment variables (a mounted one is read anew, as a kubelet refreshes its files)."""
    result = []
    for change in changes:
        if isinstance(change, PodChange_ConfigMap):
            kind = "ConfigMap"
        elif isinstance(change, PodChange_Secret):
            kind = "Secret"
        else:
            continue
        mounted, env = uses(spec, kind, change.value)
        if env and not mounted:
            result.append(
                NotApplied(
                    change=change,
                    reason="EnvChangeNotApplied",
                    message=f"{kind} {change.value} changed, but the pod reads it only into environment variables: "
                    "the containers keep their environment until the pod is recreated",
                )
            )
    return result


def containers(specs):
    return [[c["name"], c.get("image", "")] for c in specs]


def pod_ip(uid):
    """A stable private address from the uid (10.0.0.0/8), so status never changes between calls.
    FNV-1a, as the Rust example: the same uid gets the same address from either provider."""
    h = 0x811C9DC5
    for b in uid.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return f"10.{(h >> 16) & 0xFF}.{(h >> 8) & 0xFF}.{(h & 0xFF) % 254 + 1}"


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def instance_id(uid):
    return f"pyexample-{uid[:8]}"


def running(record, pairs):
    return [
        ContainerStatus(
            name=name,
            image=image,
            ready=True,
            restart_count=0,
            state=ContainerState_Running(StateRunning(started_at=record["started_at"])),
            last_state=None,
        )
        for name, image in pairs
    ]


def status_of(record):
    return PodStatus(
        phase=PodPhase.RUNNING,
        reason="",
        message="",
        pod_ip=record["pod_ip"],
        start_time=record["started_at"],
        # Init containers have run to completion by the time the pod is Running; the example
        # reports them running too to stay small.
        init_container_statuses=running(record, record["init_containers"]),
        container_statuses=running(record, record["containers"]),
    )


def annotations(instance):
    return [kv("example.vk.io/instance-id", instance)]


def created_event(instance):
    return Event(kind=EventKind.NORMAL, reason="InstanceCreated", message=f"example instance {instance} created")


def outcome(record, events):
    return PodOutcome(
        instance_id=record["instance_id"],
        status=status_of(record),
        annotations=annotations(record["instance_id"]),
        events=events,
    )


def not_found(ref):
    return Err(ProviderError_NotFound(f"no instance for pod {ref.namespace}/{ref.name} (uid {ref.uid})"))


def no_streams(what):
    return Err(
        ProviderError_Unsupported(
            f"the example provider has no {what}: its instances are records in a key-value store, "
            "with no process to reach"
        )
    )


class Pods(exports.Pods):
    def plan(self, ctx, pod):
        # What create would do, without doing it: it sends no request (its backend is `kv`).
        parsed = parse_pod(pod)
        instance = instance_id(parsed["uid"])
        return CreatePlan(requests=[], annotations=annotations(instance), events=[created_event(instance)])

    def create(self, ctx, pod, attempt):
        parsed = parse_pod(pod)
        uid = parsed["uid"]
        # Idempotent by uid: the host may retry a create whose answer it never saw. On a first
        # attempt (`may_exist` false) no earlier create can have stored a record: skip the lookup.
        if attempt.may_exist:
            existing = load(ctx.node_name, uid)
            if existing is not None:
                return outcome(existing, [])
        record = {
            "namespace": parsed["namespace"],
            "name": parsed["name"],
            "uid": uid,
            "instance_id": instance_id(uid),
            "pod_ip": pod_ip(uid),
            "started_at": now_rfc3339(),
            "init_containers": parsed["init_containers"],
            "containers": parsed["containers"],
        }
        save(ctx.node_name, record)
        hostlog.emit(
            hostlog.Level.INFO,
            "created instance",
            [kv("pod", f"{record['namespace']}/{record['name']}"), kv("instance", record["instance_id"])],
        )
        return outcome(record, [created_event(record["instance_id"])])

    def update(self, ctx, pod, changes):
        parsed = parse_pod(pod)
        ref = PodRef(namespace=parsed["namespace"], name=parsed["name"], uid=parsed["uid"])
        record = load(ctx.node_name, parsed["uid"])
        if record is None:
            raise not_found(ref)
        # Only images can change in a record; they are whatever the pod says now.
        record["containers"] = parsed["containers"]
        record["init_containers"] = parsed["init_containers"]
        save(ctx.node_name, record)
        return UpdateOutcome(outcome=outcome(record, []), not_applied=not_applied(parsed["spec"], changes))

    def delete(self, ctx, pod, reason):
        # The example has no attached resources, so every reason deletes the same way, at once.
        if hostkv.delete(record_key(ctx.node_name, pod.uid)):
            return Deletion_Gone()
        raise not_found(pod)

    def finalize(self, ctx, pod, work):
        # Delete never hands over work (it answers `gone`): nothing to finish, and saying so
        # loudly if some ever arrives.
        if work:
            raise Err(
                ProviderError_Internal(
                    f"delete of pod {pod.namespace}/{pod.name} returned {len(work)} bytes of finalize work, "
                    "but the example has none to do"
                )
            )

    def status(self, ctx, pod):
        record = load(ctx.node_name, pod.uid)
        if record is None:
            raise not_found(pod)
        return status_of(record)

    def list(self, ctx):
        instances = []
        for key in hostkv.keys(f"instances/{ctx.node_name}/"):
            # A record deleted between `keys` and `get` is simply not listed.
            record = load(ctx.node_name, key.rsplit("/", 1)[-1])
            if record is not None:
                ref = PodRef(namespace=record["namespace"], name=record["name"], uid=record["uid"])
                instances.append(Instance(pod=ref, instance_id=record["instance_id"], status=status_of(record)))
        return instances

    def logs(self, ctx, pod, container, opts):
        raise no_streams("logs")

    def exec(self, ctx, pod, container, opts):
        raise no_streams("exec")

    def attach(self, ctx, pod, container, opts):
        raise no_streams("attach")

    def port_forward(self, ctx, pod, port):
        raise no_streams("ports to forward")

    def usage(self, ctx, refs):
        now = now_rfc3339()
        usage = []
        for ref in refs:
            # Pods without an instance are left out, as the contract asks.
            record = load(ctx.node_name, ref.uid)
            if record is None:
                continue
            containers_usage = [
                ContainerUsage(
                    name=name,
                    cpu_usage_core_nano_seconds=1_000_000_000,
                    cpu_usage_nano_cores=1_000_000,
                    memory_working_set_bytes=16 << 20,
                    memory_usage_bytes=20 << 20,
                    start_time=record["started_at"],
                )
                for name, _ in record["containers"]
            ]
            usage.append(PodUsage(pod=ref, timestamp=now, containers=containers_usage))
        return usage
