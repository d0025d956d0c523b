"""Validates the Keyway Helm charts without a cluster; run by scripts/check-helm.sh.

For the keyway chart (default values and each helm/keyway/ci/*.yaml) and the example chart
helm/examples/app-with-keyway (default values and each of its ci/*.yaml):

- `helm lint --strict` through Helm's own Go library (helm-python-sdk);
- the values (as Helm merges them) against values.schema.json, with check-jsonschema and Helm;
- `helm template` through the same library, every manifest against the Kubernetes OpenAPI
  schemas (kubernetes-validate, strict: unknown fields are errors) for the oldest and newest
  Kubernetes versions the chart supports;
- the chart's own promises: config mounted as a directory (no subPath) from a rendered
  ConfigMap, no checksum annotation, probes on /healthz and /readyz of the admin port, the grace
  period covering preStop sleep plus drain, the hardened securityContext, resources, selectors
  that match, the listen address per mode, monitors that point at existing ports;
- the rendered keyway.toml against `keyway check --config` when a binary is given;
- negative cases: values the chart must refuse.

Prints one line per check and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import kubernetes_validate
import yaml

# Native sidecars (initContainers with restartPolicy Always) are on by default from 1.29, the
# preStop "sleep" action from 1.30: the chart's floor. The newest is what the validator knows.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
RELEASE = "demo"
NAMESPACE = "keyway-test"
FUTURE_KEYS = {"drain_timeout", "read", "write", "health", "max_clients", "max_client_output",
               "idle_timeout"}


class Failure(Exception):
    pass


class Checker:
    def __init__(self, venv_bin: Path, keyway: Path | None, workdir: Path) -> None:
        self.venv_bin = venv_bin
        self.keyway = keyway
        self.workdir = workdir
        self.passed = 0
        self.failed: list[str] = []

    def check(self, name: str, fn: Callable[[], str | None]) -> Any:
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001: every problem is a failed check, then go on
            self.failed.append(name)
            text = str(e).strip() if isinstance(e, (Failure, helm.HelmError)) else repr(e)
            print(f"FAIL {name}\n     {text}".replace("\n", "\n     "))
            return None
        self.passed += 1
        print(f"ok   {name}" + (f" ({detail})" if detail else ""))
        return detail


def load_values(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    data = yaml.safe_load(path.read_text())
    return data or {}


def split_manifests(rendered: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                raise Failure(f"{template}: not a Kubernetes object: {str(doc)[:200]}")
            docs.append((template, doc))
    return docs


def lint(chart: Path, values: dict[str, Any] | None, with_subcharts: bool = False) -> str:
    report = helm.lint(chart, values, strict=True, namespace=NAMESPACE,
                       with_subcharts=with_subcharts or None)
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    errors = report.get("errors") or []
    if bad or errors:
        lines = [f"{m.get('path')}: {m.get('error')}" for m in bad] + [str(e) for e in errors]
        raise Failure("helm lint --strict:\n" + "\n".join(lines))
    infos = [m.get("error") for m in report.get("messages", []) if m.get("severity", 0) == 1]
    return "; ".join(str(i) for i in infos)


def kube_validate(docs: list[tuple[str, dict[str, Any]]]) -> str:
    problems = []
    crds = 0
    for template, doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            crds += 1  # no OpenAPI schema here: checked by check_monitors instead
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{template} {doc['kind']}/{doc['metadata']['name']} "
                                f"(Kubernetes {version}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{template}: {e.message}")
    if problems:
        raise Failure("\n".join(problems))
    n = len(docs) - crds
    return f"{n} objects x Kubernetes {', '.join(KUBE_VERSIONS)}" + (
        f"; {crds} Prometheus Operator objects checked structurally" if crds else "")


def by_kind(docs: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [d for _, d in docs if d["kind"] == kind]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise Failure(f"cannot read duration {text!r}")


def find_keyway_pods(docs, keyway_values: dict[str, Any]):
    """(workload, pod spec, keyway container, is_sidecar) for each workload running Keyway."""
    found = []
    for _, d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []):
            if c.get("command") == ["/usr/local/bin/keyway"]:
                found.append((d, pod, c, True))
        for c in pod.get("containers", []):
            if c.get("command") == ["/usr/local/bin/keyway"]:
                found.append((d, pod, c, False))
    return found


def check_invariants(docs, kv: dict[str, Any], expect_mode: str) -> str:
    """The chart's promises on the rendered objects. kv: the merged Keyway values."""
    problems: list[str] = []
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    keyway_cms = {n: d for n, d in configmaps.items() if "keyway.toml" in d.get("data", {})}
    if len(keyway_cms) != 1:
        problems.append(f"expected one ConfigMap with keyway.toml, got {sorted(keyway_cms)}")
    pods = find_keyway_pods(docs, kv)
    if expect_mode == "standalone" and not pods:
        problems.append("standalone mode renders no Keyway workload")
    for d, pod, c, sidecar in pods:
        where = f"{d['kind']}/{d['metadata']['name']} container {c['name']}"
        if sidecar != (expect_mode == "sidecar"):
            problems.append(f"{where}: sidecar={sidecar} in {expect_mode} mode")
        if sidecar and c.get("restartPolicy") != "Always":
            problems.append(f"{where}: a native sidecar needs restartPolicy: Always")
        annotations = d["spec"]["template"]["metadata"].get("annotations") or {}
        for a in annotations:
            if "checksum" in a:
                problems.append(f"{where}: pod annotation {a}: the config hot-reloads, no rollout")
        # Probes on the admin port.
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")):
            p = c.get(probe)
            if p is None:
                if probe != "startupProbe":
                    problems.append(f"{where}: no {probe}")
                continue
            get = p.get("httpGet", {})
            if get.get("path") != path or get.get("port") != "keyway-admin":
                problems.append(f"{where}: {probe} is {get}, want {path} on keyway-admin")
        if "keyway-admin" not in ports or "keyway" not in ports:
            problems.append(f"{where}: ports {sorted(ports)} lack keyway/keyway-admin")
        # Security.
        sc = c.get("securityContext") or {}
        psc = pod.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not set")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is {seccomp}")
        res = c.get("resources") or {}
        if not res.get("requests") or not (res.get("limits") or {}).get("memory"):
            problems.append(f"{where}: resources need requests and a memory limit")
        # Config: a whole-directory mount of the rendered ConfigMap.
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == kv["configDir"]]
        if len(mounts) != 1:
            problems.append(f"{where}: no volume mounted at {kv['configDir']}")
        for m in mounts:
            if "subPath" in m or "subPathExpr" in m:
                problems.append(f"{where}: config mounted with subPath: it would never update")
            cm = ((volumes.get(m["name"]) or {}).get("configMap") or {}).get("name")
            if cm not in keyway_cms:
                problems.append(f"{where}: mounts ConfigMap {cm}, rendered: {sorted(keyway_cms)}")
        # Secrets: each *_file of keyway.toml is in a whole-directory mount of the Secret
        # that auth.* names, and nothing else is mounted there.
        if pod.get("enableServiceLinks") is not False:
            problems.append(f"{where}: enableServiceLinks is not false (KEYWAY_* service links)")
        for cm in keyway_cms.values():
            toml = tomllib.loads(cm["data"]["keyway.toml"])
            files = {"admin_token_file": (toml.get("admin_token_file"), "adminToken"),
                     "pool.password_file": (toml["pool"].get("password_file"), "server")}
            for key, (path, auth) in files.items():
                ref = kv["auth"][auth]
                if not ref["existingSecret"]:
                    if path:
                        problems.append(f"{where}: {key} = {path} without auth.{auth}")
                    continue
                if not path:
                    problems.append(f"{where}: auth.{auth}.existingSecret set, no {key}")
                    continue
                directory, _, entry = path.rpartition("/")
                if entry != ref["key"]:
                    problems.append(f"{where}: {key} {path} does not name key {ref['key']}")
                sm = [m for m in c.get("volumeMounts", []) if m["mountPath"] == directory]
                if len(sm) != 1 or "subPath" in sm[0]:
                    problems.append(f"{where}: {key}: no whole-directory mount at {directory}")
                    continue
                secret = ((volumes.get(sm[0]["name"]) or {}).get("secret") or {})
                if secret.get("secretName") != ref["existingSecret"]:
                    problems.append(f"{where}: {directory} mounts {secret}, want Secret "
                                    f"{ref['existingSecret']}")
            if toml["pool"].get("username") != (kv["auth"]["server"]["username"] or None):
                problems.append(f"{where}: pool.username is not auth.server.username")
        args = c.get("args", [])
        if f"{kv['configDir'].rstrip('/')}/keyway.toml" not in args:
            problems.append(f"{where}: args {args} do not name the mounted keyway.toml")
        # Drain timing.
        pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get(
            "seconds", 0)
        drain = duration_seconds(kv["config"].get("drain_timeout") or "10s")
        if not sidecar:
            if pre <= 0:
                problems.append(f"{where}: no preStop sleep")
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace <= pre + drain:
                problems.append(f"{where}: terminationGracePeriodSeconds {grace} <= "
                                f"preStop {pre} + drain {drain}")
        # Listen addresses agree with the mode and the container ports.
        for cm in keyway_cms.values():
            toml = tomllib.loads(cm["data"]["keyway.toml"])
            host, _, port = toml["listen"].rpartition(":")
            want_host = "127.0.0.1" if sidecar else "0.0.0.0"
            if not kv["config"].get("listen") and host != want_host:
                problems.append(f"{where}: listen {toml['listen']}, want {want_host} in this mode")
            # Protected mode: on where the application connects over loopback (sidecar), off
            # where clients are other pods (standalone), unless the values say otherwise.
            want_protected = kv["config"].get("protected_mode")
            if want_protected is None:
                want_protected = sidecar
            if toml.get("protected_mode", True) != want_protected:
                problems.append(f"{where}: protected_mode {toml.get('protected_mode', True)}, "
                                f"want {want_protected} in this mode")
            if int(port) != ports.get("keyway"):
                problems.append(f"{where}: listen port {port} != containerPort {ports}")
            if int(toml["admin"].rpartition(":")[2]) != ports.get("keyway-admin"):
                problems.append(f"{where}: admin {toml['admin']} != containerPort {ports}")
            if toml["admin"].rpartition(":")[0] not in ("0.0.0.0", "[::]"):
                problems.append(f"{where}: admin {toml['admin']} is not reachable by probes")
    # Selectors.
    pod_labels = [(d, d["spec"]["template"]["metadata"].get("labels") or {})
                  for d, _, _, _ in pods]
    for d, labels in pod_labels:
        sel = d["spec"]["selector"]["matchLabels"]
        if not matches(sel, labels):
            problems.append(f"{d['kind']}/{d['metadata']['name']}: selector {sel} misses its pods")
    keyway_pods = [labels for d, labels in pod_labels]
    for kind in ("Service", "PodDisruptionBudget"):
        for o in by_kind(docs, kind):
            sel = o["spec"]["selector"]
            sel = sel.get("matchLabels", sel) if kind == "PodDisruptionBudget" else sel
            if not any(matches(sel, lbl) for lbl in keyway_pods):
                problems.append(f"{kind}/{o['metadata']['name']}: selector {sel} matches no pod")
    if expect_mode == "standalone":
        svc = by_kind(docs, "Service")
        # The admin port is on the Service only when asked for (or for a ServiceMonitor).
        want = {"keyway"}
        if kv["service"].get("exposeAdmin") or kv["monitoring"]["serviceMonitor"]["enabled"]:
            want.add("keyway-admin")
        if len(svc) != 1 or {p["targetPort"] for p in svc[0]["spec"]["ports"]} != want:
            problems.append(f"standalone mode needs one Service on the ports {sorted(want)}")
        if kv["podDisruptionBudget"]["enabled"] and not by_kind(docs, "PodDisruptionBudget"):
            problems.append("no PodDisruptionBudget rendered")
    else:
        for kind in ("Deployment", "Service", "PodDisruptionBudget"):
            for o in by_kind(docs, kind):
                if o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "keyway":
                    problems.append(f"sidecar mode rendered the chart's own {kind}")
    problems += check_monitors(docs, keyway_pods, kv)
    problems += check_network_policy(docs, pods, kv, expect_mode)
    if problems:
        raise Failure("\n".join(problems))
    return f"{len(pods)} Keyway workload(s), {len(docs)} objects"


def check_monitors(docs, keyway_pods, kv) -> list[str]:
    problems = []
    services = by_kind(docs, "Service")
    for m in by_kind(docs, "ServiceMonitor"):
        sel = m["spec"]["selector"]["matchLabels"]
        targets = [s for s in services if matches(sel, s["metadata"].get("labels") or {})]
        if not targets:
            problems.append(f"ServiceMonitor/{m['metadata']['name']}: selects no Service")
        for e in m["spec"]["endpoints"]:
            if not any(e["port"] in {p["name"] for p in s["spec"]["ports"]} for s in targets):
                problems.append(f"ServiceMonitor: port {e['port']} is not a Service port")
            if e.get("path") != "/metrics":
                problems.append("ServiceMonitor: path is not /metrics")
    for m in by_kind(docs, "PodMonitor"):
        sel = m["spec"]["selector"]["matchLabels"]
        if kv["monitoring"]["podMonitor"].get("selector"):
            if sel != kv["monitoring"]["podMonitor"]["selector"]:
                problems.append(f"PodMonitor: selector {sel} is not the configured one")
        if keyway_pods and not any(matches(sel, lbl) for lbl in keyway_pods):
            problems.append(f"PodMonitor/{m['metadata']['name']}: selector {sel} matches no pod")
        for e in m["spec"]["podMetricsEndpoints"]:
            if e["port"] != "keyway-admin" or e.get("path") != "/metrics":
                problems.append(f"PodMonitor: endpoint {e} is not keyway-admin /metrics")
    return problems


def check_network_policy(docs, pods, kv, expect_mode) -> list[str]:
    """The optional NetworkPolicy selects the Keyway pods and opens their named ports only."""
    problems = []
    policies = by_kind(docs, "NetworkPolicy")
    wanted = kv["networkPolicy"]["enabled"] and expect_mode == "standalone"
    if wanted != bool(policies):
        problems.append(f"networkPolicy.enabled={kv['networkPolicy']['enabled']} rendered "
                        f"{len(policies)} NetworkPolicy")
    for np in policies:
        labels = [d["spec"]["template"]["metadata"].get("labels") or {} for d, _, _, _ in pods]
        sel = np["spec"]["podSelector"]["matchLabels"]
        if not any(matches(sel, lbl) for lbl in labels):
            problems.append(f"NetworkPolicy: podSelector {sel} matches no Keyway pod")
        names = {p["name"] for _, _, c, _ in pods for p in c.get("ports", [])}
        opened = {}
        for rule in np["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if port["port"] not in names:
                    problems.append(f"NetworkPolicy: port {port['port']} is not a Keyway port")
                opened[port["port"]] = rule.get("from")
        if opened.get("keyway", []) != (kv["networkPolicy"]["clientFrom"] or None):
            problems.append(f"NetworkPolicy: client port from {opened.get('keyway')}")
        admin_from = kv["networkPolicy"]["adminFrom"]
        if ("keyway-admin" in opened) != bool(admin_from) or (
                admin_from and opened["keyway-admin"] != admin_from):
            problems.append(f"NetworkPolicy: admin port from {opened.get('keyway-admin')}, "
                            f"want {admin_from or 'closed'}")
    return problems


def keyway_check(checker: Checker, docs, label: str) -> str:
    cms = [d for d in by_kind(docs, "ConfigMap") if "keyway.toml" in d.get("data", {})]
    text = cms[0]["data"]["keyway.toml"]
    parsed = tomllib.loads(text)  # TOML syntax, independent of any binary
    # Secret files exist only in the pod: stand-ins here, so that `keyway check` reads them.
    for path in (parsed.get("admin_token_file"), parsed["pool"].get("password_file")):
        if path:
            stand_in = checker.workdir / f"secret-{abs(hash(path))}"
            stand_in.write_text("stand-in-secret\n")
            text = text.replace(json.dumps(path), json.dumps(str(stand_in)))
    if checker.keyway is None:
        return "TOML parses; no Keyway binary: `keyway check` skipped"
    path = checker.workdir / f"{label.replace('/', '_').replace(' ', '_')}.keyway.toml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWAY_")}
    out = subprocess.run([str(checker.keyway), "check", "--config", str(path)],
                         capture_output=True, text=True, env=env, timeout=60)
    if out.returncode != 0:
        raise Failure(f"keyway check --config rejected the rendered keyway.toml:\n"
                      f"{out.stderr.strip() or out.stdout.strip()}\n--- keyway.toml ---\n{text}")
    return f"{out.stdout.strip().rpartition(': ')[2]}"


def schema_check(checker: Checker, chart: helm.Chart, values, label: str) -> str:
    merged = chart.merge_values(values)
    # What Helm validates: the user's values coalesced with the chart's defaults.
    path = checker.workdir / f"{label.replace('/', '_').replace(' ', '_')}.values.json"
    path.write_text(json.dumps(merged))
    schema = Path(chart_dir_of(chart)) / "values.schema.json"
    out = subprocess.run([str(checker.venv_bin / "check-jsonschema"), "--schemafile",
                          str(schema), str(path)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise Failure(out.stdout + out.stderr)
    chart.validate_schema(values)
    return "check-jsonschema and Helm"


_chart_dirs: dict[int, str] = {}


def chart_dir_of(chart: helm.Chart) -> str:
    return _chart_dirs[id(chart)]


def run_case(checker: Checker, chart_dir: Path, values_file: Path | None, *,
             keyway_key: str | None, expect_mode: str | None = None) -> None:
    label = f"{chart_dir.name}/{values_file.name if values_file else 'values.yaml (defaults)'}"
    values = load_values(values_file)
    checker.check(f"{label}: helm lint --strict",
                  lambda: lint(chart_dir, values, with_subcharts=keyway_key is not None))
    with helm.Chart.load(chart_dir) as chart:
        _chart_dirs[id(chart)] = str(chart_dir)
        merged = chart.merge_values(values)
        kv = merged[keyway_key] if keyway_key else merged
        mode = expect_mode or kv["mode"]
        if keyway_key is None:
            checker.check(f"{label}: values against values.schema.json",
                          lambda: schema_check(checker, chart, values, label))
        docs_box: list = []

        def render() -> str:
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            docs_box.extend(split_manifests(rendered))
            kinds = sorted({d["kind"] for _, d in docs_box})
            return ", ".join(kinds)

        if checker.check(f"{label}: helm template", render) is None:
            return
        docs = docs_box
        checker.check(f"{label}: Kubernetes schemas (strict)", lambda: kube_validate(docs))
        checker.check(f"{label}: chart invariants ({mode})",
                      lambda: check_invariants(docs, kv, mode))
        checker.check(f"{label}: keyway check on the rendered keyway.toml",
                      lambda: keyway_check(checker, docs, label))


def expect_refused(checker: Checker, chart_dir: Path, name: str, values: dict[str, Any],
                   needle: str) -> None:
    def run() -> str:
        with helm.Chart.load(chart_dir) as chart:
            try:
                chart.validate_schema(values)
                chart.render(values, name=RELEASE, namespace=NAMESPACE)
            except helm.HelmError as e:
                if needle not in str(e):
                    raise Failure(f"refused, but not for the expected reason ({needle!r}): {e}")
                return "refused"
        raise Failure(f"values were accepted: {values}")
    checker.check(f"{chart_dir.name}: refuses {name}", run)


def future_keys(checker: Checker, chart_dir: Path) -> None:
    """Keys the binary may not know yet render correctly when set (TOML only, no keyway check)."""
    values = {"config": {"drain_timeout": "15s", "pool": {
        "read": "nearest", "write": "all", "health": {"interval": "1s", "failures": 3}},
        "limits": {"max_clients": 10000, "max_client_output": 67108864, "idle_timeout": "5m"}},
        "terminationGracePeriodSeconds": 25}

    def run() -> str:
        with helm.Chart.load(chart_dir) as chart:
            chart.validate_schema(values)
            docs = split_manifests(chart.render(values, name=RELEASE, namespace=NAMESPACE))
        cm = [d for d in by_kind(docs, "ConfigMap") if "keyway.toml" in d.get("data", {})][0]
        t = tomllib.loads(cm["data"]["keyway.toml"])
        got = {"drain_timeout": t.get("drain_timeout"), "read": t["pool"].get("read"),
               "write": t["pool"].get("write"), "health": t["pool"].get("health"),
               "max_clients": t["limits"].get("max_clients"),
               "max_client_output": t["limits"].get("max_client_output"),
               "idle_timeout": t["limits"].get("idle_timeout")}
        want = {"drain_timeout": "15s", "read": "nearest", "write": "all",
                "health": {"interval": "1s", "failures": 3}, "max_clients": 10000,
                "max_client_output": 67108864, "idle_timeout": "5m"}
        if got != want:
            raise Failure(f"rendered {got}, want {want}")
        defaults = load_values(chart_dir / "values.yaml")
        with helm.Chart.load(chart_dir) as chart:
            docs = split_manifests(chart.render(defaults, name=RELEASE, namespace=NAMESPACE))
        cm = [d for d in by_kind(docs, "ConfigMap") if "keyway.toml" in d.get("data", {})][0]
        t = tomllib.loads(cm["data"]["keyway.toml"])
        present = FUTURE_KEYS & (set(t) | set(t["pool"]) | set(t.get("limits", {})))
        if present:
            raise Failure(f"defaults render keys that older binaries refuse: {present}")
        return "set: rendered with the right types; unset: left out"
    checker.check(f"{chart_dir.name}: keys newer than the binary render only when set", run)


def vendored_templates(checker: Checker, keyway_chart: Path, where: Path) -> None:
    """A chart that copies _helpers.tpl instead of depending on the keyway chart."""
    def run() -> str:
        (where / "templates").mkdir(parents=True)
        (where / "Chart.yaml").write_text(
            "apiVersion: v2\nname: vendored-app\nversion: 0.1.0\nappVersion: '2.0.0'\n")
        kv = yaml.safe_load((keyway_chart / "values.yaml").read_text())
        kv["mode"] = "sidecar"
        kv["image"]["tag"] = "0.1.0"
        (where / "values.yaml").write_text(yaml.safe_dump({"keyway": kv}))
        shutil.copy(keyway_chart / "templates" / "_helpers.tpl",
                    where / "templates" / "_keyway.tpl")
        (where / "templates" / "keyway-configmap.yaml").write_text(
            '{{ include "keyway.configMap" . }}\n')
        (where / "templates" / "deployment.yaml").write_text("""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-app
spec:
  selector:
    matchLabels: {app: vendored}
  template:
    metadata:
      labels: {app: vendored}
    spec:
      enableServiceLinks: false
      initContainers:
        {{- include "keyway.sidecar" . | nindent 8 }}
      containers:
        - name: app
          image: registry.example.com/app:2.0.0
      volumes:
        {{- include "keyway.sidecarVolume" . | nindent 8 }}
""")
        with helm.Chart.load(where) as chart:
            merged = chart.merge_values(None)
            docs = split_manifests(chart.render(None, name=RELEASE, namespace=NAMESPACE))
        kube_validate(docs)
        check_invariants(docs, merged["keyway"], "sidecar")
        keyway_check(checker, docs, "vendored")
        image = find_keyway_pods(docs, kv)[0][2]["image"]
        if image != "keyway:0.1.0":
            raise Failure(f"image {image}, want keyway:0.1.0")
        return "keyway.configMap, keyway.sidecar, keyway.sidecarVolume"
    checker.check("templates copied into another chart render a valid sidecar", run)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--helm-dir", type=Path, required=True)
    ap.add_argument("--keyway", type=Path)
    args = ap.parse_args()
    venv_bin = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="keyway-helm-") as tmp:
        work = Path(tmp)
        # Work on a copy: `helm dependency update` writes charts/ and Chart.lock.
        shutil.copytree(args.helm_dir, work / "helm", ignore=shutil.ignore_patterns(
            "charts", "Chart.lock", "__pycache__"))
        checker = Checker(venv_bin, args.keyway, work)
        print(f"Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
              f"kubernetes-validate {kubernetes_validate.__version__}, "
              f"Kubernetes {', '.join(KUBE_VERSIONS)}, "
              f"keyway: {args.keyway or 'none (keyway check skipped)'}")

        chart = work / "helm" / "keyway"
        schema = chart / "values.schema.json"

        def metaschema() -> str:
            out = subprocess.run([str(venv_bin / "check-jsonschema"), "--check-metaschema",
                                  str(schema)], capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise Failure(out.stdout + out.stderr)
            draft = json.loads(schema.read_text()).get("$schema", "")
            if "draft-07" not in draft:
                raise Failure(f"$schema is {draft!r}, want draft-07")
            return "draft-07"
        checker.check("keyway/values.schema.json is a valid JSON Schema", metaschema)

        run_case(checker, chart, None, keyway_key=None)
        for f in sorted((chart / "ci").glob("*.yaml")):
            run_case(checker, chart, f, keyway_key=None)

        expect_refused(checker, chart, "an unknown mode", {"mode": "cluster"}, "mode")
        expect_refused(checker, chart, "an empty pool", {"config": {"pool": {"servers": []}}},
                       "servers")
        expect_refused(checker, chart, "a grace period shorter than preStop + drain",
                       {"terminationGracePeriodSeconds": 12, "preStopSleepSeconds": 5,
                        "config": {"drain_timeout": "10s"}}, "terminationGracePeriodSeconds")
        expect_refused(checker, chart, "a ServiceMonitor in sidecar mode",
                       {"mode": "sidecar", "monitoring": {"serviceMonitor": {"enabled": True}}},
                       "serviceMonitor")
        expect_refused(checker, chart, "a PodMonitor without selector in sidecar mode",
                       {"mode": "sidecar", "monitoring": {"podMonitor": {"enabled": True}}},
                       "selector")
        expect_refused(checker, chart, "an unknown limits key",
                       {"config": {"limits": {"max_conns": 5}}}, "max_conns")
        expect_refused(checker, chart, "Secrets mounted over the config directory",
                       {"secretsDir": "/etc/keyway/",
                        "auth": {"adminToken": {"existingSecret": "t"}}}, "secretsDir")
        expect_refused(checker, chart, "a NetworkPolicy in sidecar mode",
                       {"mode": "sidecar", "networkPolicy": {"enabled": True},
                        "monitoring": {"podMonitor": {"selector": {"app": "x"}}}},
                       "networkPolicy")
        expect_refused(checker, chart, "an admin token given in the values",
                       {"auth": {"adminToken": {"token": "s3cret"}}}, "token")
        future_keys(checker, chart)

        example = work / "helm" / "examples" / "app-with-keyway"

        def deps() -> str:
            helm.dependency_update(example)
            listed = helm.dependency_list(example)
            if any(d["status"] != "ok" for d in listed):
                raise Failure(f"dependencies: {listed}")
            return ", ".join(f"{d['name']} {d['version']} from {d['repository']}"
                             for d in listed)
        if checker.check("app-with-keyway: helm dependency update (file://)", deps) is not None:
            run_case(checker, example, None, keyway_key="keyway", expect_mode="sidecar")
            for f in sorted((example / "ci").glob("*.yaml")):
                run_case(checker, example, f, keyway_key="keyway", expect_mode="sidecar")
            expect_refused(checker, example, "keyway.sidecar while keyway.mode is standalone",
                           {"keyway": {"mode": "standalone"}}, "mode: sidecar")

        vendored_templates(checker, chart, work / "vendored")

        if checker.failed:
            print("failed checks:")
            for name in checker.failed:
                print(f"  - {name}")
        print(f"check-helm: {checker.passed} passed, {len(checker.failed)} failed")
        return 1 if checker.failed else 0


if __name__ == "__main__":
    sys.exit(main())
