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
- secrets: no secret material in any ConfigMap, every Secret volume mounted as a whole
  directory, every `*_file` of keyway.toml inside the mount of the Secret its values name;
- TLS: the TLS port on the container, the Service and the NetworkPolicy; the cert-manager
  Certificate's fields (cert-manager's CRD is not known to kubernetes-validate);
- the rendered keyway.toml against `keyway check --config` when a binary is given, with
  stand-ins for the Secret files (generated PEM certificates for the TLS files);
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
import ipaddress
import re
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
    certs = 0
    for template, doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            crds += 1  # no OpenAPI schema here: checked by check_monitors instead
            continue
        if doc["apiVersion"].startswith("cert-manager.io/"):
            certs += 1  # no OpenAPI schema here: checked by check_certificate instead
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
    n = len(docs) - crds - certs
    return f"{n} objects x Kubernetes {', '.join(KUBE_VERSIONS)}" + (
        f"; {crds} Prometheus Operator objects checked structurally" if crds else "") + (
        f"; {certs} cert-manager Certificate skipped here (a CRD), checked by its own check"
        if certs else "")


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
        # that the values name, under the entry they name; no Secret is mounted with subPath.
        if pod.get("enableServiceLinks") is not False:
            problems.append(f"{where}: enableServiceLinks is not false (KEYWAY_* service links)")
        problems += check_secret_mounts(where, c, volumes)
        for cm in keyway_cms.values():
            toml = tomllib.loads(cm["data"]["keyway.toml"])
            want = expected_secret_files(kv, sidecar)
            got = secret_files(toml)
            if set(got) != set(want):
                problems.append(f"{where}: secret files {sorted(got)}, want {sorted(want)}")
            for key, path in got.items():
                if key not in want:
                    continue
                secret_name, entry = want[key]
                directory, _, name = path.rpartition("/")
                if name != entry:
                    problems.append(f"{where}: {key} {path} does not name entry {entry}")
                sm = [m for m in c.get("volumeMounts", []) if m["mountPath"] == directory]
                if len(sm) != 1 or "subPath" in sm[0] or "subPathExpr" in sm[0]:
                    problems.append(f"{where}: {key}: no whole-directory mount at {directory}")
                    continue
                secret = ((volumes.get(sm[0]["name"]) or {}).get("secret") or {})
                if secret.get("secretName") != secret_name:
                    problems.append(f"{where}: {directory} mounts {secret}, want Secret "
                                    f"{secret_name}")
                if secret.get("items"):
                    problems.append(f"{where}: {directory}: Secret mounted with items")
            if toml["pool"].get("username") != (kv["auth"]["server"]["username"] or None):
                problems.append(f"{where}: pool.username is not auth.server.username")
            # Only poolTls.insecureSkipVerify turns verification off.
            pool_tls = toml["pool"].get("tls")
            if bool(pool_tls) != kv["poolTls"]["enabled"]:
                problems.append(f"{where}: [pool.tls] {pool_tls} with poolTls.enabled="
                                f"{kv['poolTls']['enabled']}")
            insecure = (pool_tls or {}).get("insecure_skip_verify", False)
            if insecure != (kv["poolTls"]["enabled"] and kv["poolTls"]["insecureSkipVerify"]):
                problems.append(f"{where}: insecure_skip_verify = {insecure} without "
                                "poolTls.insecureSkipVerify")
            # TLS listener: on the keyway-tls port, on loopback in sidecar mode by default.
            if kv["tls"]["enabled"]:
                tls_listen = toml.get("tls_listen", "")
                host, _, port = tls_listen.rpartition(":")
                if not port.isdigit() or int(port) != ports.get("keyway-tls"):
                    problems.append(f"{where}: tls_listen {tls_listen!r} != containerPort "
                                    f"keyway-tls {ports.get('keyway-tls')}")
                want_host = "127.0.0.1" if sidecar else "0.0.0.0"
                if not kv["tls"]["listen"] and host != want_host:
                    problems.append(f"{where}: tls_listen {tls_listen}, want {want_host}")
                if ("client_ca_file" in toml.get("tls", {})) != kv["tls"]["clientAuth"]["enabled"]:
                    problems.append(f"{where}: client_ca_file vs tls.clientAuth.enabled")
            elif "tls_listen" in toml or "tls" in toml or "keyway-tls" in ports:
                problems.append(f"{where}: TLS listener rendered without tls.enabled")
            names = [u["name"] for u in toml.get("users", [])]
            if names != [u["name"] for u in kv["users"]["list"]]:
                problems.append(f"{where}: [[users]] {names}, values {kv['users']['list']}")
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
                # Standalone: off unless clients authenticate (Keyway then lifts it itself).
                want_protected = sidecar or auth_required(kv) or (
                    kv["tls"]["enabled"] and kv["tls"]["clientAuth"]["enabled"])
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
        if kv["tls"]["enabled"]:
            want.add("keyway-tls")
        if len(svc) != 1 or {p["targetPort"] for p in svc[0]["spec"]["ports"]} != want:
            problems.append(f"standalone mode needs one Service on the ports {sorted(want)}")
        if kv["podDisruptionBudget"]["enabled"] and not by_kind(docs, "PodDisruptionBudget"):
            problems.append("no PodDisruptionBudget rendered")
    else:
        for kind in ("Deployment", "Service", "PodDisruptionBudget"):
            for o in by_kind(docs, kind):
                if o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "keyway":
                    problems.append(f"sidecar mode rendered the chart's own {kind}")
    problems += check_no_secret_in_configmaps(docs)
    problems += check_monitors(docs, keyway_pods, kv)
    problems += check_network_policy(docs, pods, kv, expect_mode)
    if problems:
        raise Failure("\n".join(problems))
    return f"{len(pods)} Keyway workload(s), {len(docs)} objects"


def user_state(rules: str) -> tuple[bool, bool]:
    """(on, nopass) after a user's rules, as Keyway applies them."""
    on = nopass = False
    for r in rules.split():
        r = r.lower()
        if r == "on":
            on = True
        elif r == "off":
            on = False
        elif r == "nopass":
            nopass = True
        elif r == "resetpass":
            nopass = False
        elif r == "reset":
            on = nopass = False
    return on, nopass


def auth_required(kv) -> bool:
    """Whether clients must authenticate: users, and no `default` that is on and nopass."""
    users = kv["users"]["list"]
    return bool(users) and not any(
        u["name"] == "default" and user_state(u.get("rules", "")) == (True, True) for u in users)


def tls_secret_name(kv) -> str | None:
    t = kv["tls"]
    if not t["enabled"]:
        return None
    if t["existingSecret"]:
        return t["existingSecret"]
    return f"{RELEASE}-keyway-tls"


def secret_files(toml: dict[str, Any]) -> dict[str, str]:
    """Every file keyway.toml names that holds a secret or TLS material, by key."""
    out = {}
    if toml.get("admin_token_file"):
        out["admin_token_file"] = toml["admin_token_file"]
    for k in ("password_file",):
        if toml["pool"].get(k):
            out[f"pool.{k}"] = toml["pool"][k]
    for k in ("ca_file", "cert_file", "key_file"):
        if (toml["pool"].get("tls") or {}).get(k):
            out[f"pool.tls.{k}"] = toml["pool"]["tls"][k]
    for k in ("cert_file", "key_file", "client_ca_file"):
        if (toml.get("tls") or {}).get(k):
            out[f"tls.{k}"] = toml["tls"][k]
    for u in toml.get("users", []):
        if u.get("password_file"):
            out[f"users.{u['name']}.password_file"] = u["password_file"]
        if u.get("passwords"):
            out[f"users.{u['name']}.passwords"] = "(inline hashes)"
    for s in toml["pool"].get("servers", []):
        if s.get("password_file"):
            out[f"pool.servers.{s['name']}.password_file"] = s["password_file"]
    return out


def expected_secret_files(kv, sidecar: bool) -> dict[str, tuple[str, str]]:
    """What the values ask for: key -> (Secret name, entry)."""
    want: dict[str, tuple[str, str]] = {}
    auth = kv["auth"]
    if auth["adminToken"]["existingSecret"]:
        want["admin_token_file"] = (auth["adminToken"]["existingSecret"],
                                    auth["adminToken"]["key"])
    if auth["server"]["existingSecret"]:
        want["pool.password_file"] = (auth["server"]["existingSecret"], auth["server"]["key"])
    pt = kv["poolTls"]
    if pt["enabled"] and not pt["insecureSkipVerify"]:
        want["pool.tls.ca_file"] = (pt["existingSecret"], pt["caKey"])
    if pt["enabled"] and pt["clientCertificate"]:
        want["pool.tls.cert_file"] = (pt["existingSecret"], "tls.crt")
        want["pool.tls.key_file"] = (pt["existingSecret"], "tls.key")
    tls = tls_secret_name(kv)
    if tls:
        want["tls.cert_file"] = (tls, "tls.crt")
        want["tls.key_file"] = (tls, "tls.key")
        ca = kv["tls"]["clientAuth"]
        if ca["enabled"]:
            want["tls.client_ca_file"] = (ca["existingSecret"] or tls, ca["key"])
    for u in kv["users"]["list"]:
        if user_state(u.get("rules", "")) == (True, False):
            want[f"users.{u['name']}.password_file"] = (kv["users"]["existingSecret"],
                                                         u.get("key") or u["name"])
    return want


def check_secret_mounts(where: str, c: dict[str, Any], volumes: dict[str, Any]) -> list[str]:
    """Every Secret volume (or projected Secret) the container mounts is a whole directory:
    a subPath mount is a copy made at pod start, and rotations and renewals never reach it."""
    problems = []
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"]) or {}
        holds_secret = "secret" in v or any(
            "secret" in src for src in (v.get("projected") or {}).get("sources", []))
        if holds_secret and ("subPath" in m or "subPathExpr" in m):
            problems.append(f"{where}: Secret volume {m['name']} mounted with subPath at "
                            f"{m['mountPath']}: a rotated Secret would never reach Keyway")
        if holds_secret and not m.get("readOnly"):
            problems.append(f"{where}: Secret volume {m['name']} is not mounted readOnly")
    return problems


# What must never be in a ConfigMap: PEM blocks (keys, certificates), Redis password hashes,
# clear passwords in ACL rules, and the keys that hold inline secrets.
SECRET_PATTERNS = [
    (re.compile(r"-----BEGIN [A-Z ]+-----"), "a PEM block"),
    (re.compile(r"#[0-9a-fA-F]{64}\b"), "a password hash (#<sha256>)"),
    (re.compile(r"^\s*rules\s*=.*?[\s'\"][<>!][^\s'\"]+", re.M),
     "a password in ACL rules (>pw, <pw, !hash)"),
    (re.compile(r"^\s*(passwords|password|token|requirepass)\s*=", re.M),
     "an inline password or token key"),
]


def check_no_secret_in_configmaps(docs) -> list[str]:
    problems = []
    for cm in by_kind(docs, "ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            for pattern, what in SECRET_PATTERNS:
                m = pattern.search(text)
                if m:
                    problems.append(f"ConfigMap/{cm['metadata']['name']} {key}: {what}: "
                                    f"{m.group(0)[:12]}...")
        if cm.get("binaryData"):
            problems.append(f"ConfigMap/{cm['metadata']['name']}: binaryData")
    return problems


GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
DNS_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CERT_SPEC_KEYS = {"secretName", "issuerRef", "dnsNames", "ipAddresses", "duration",
                  "renewBefore", "privateKey", "usages"}
KEY_USAGES = {"signing", "digital signature", "content commitment", "key encipherment",
              "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
              "decipher only", "any", "server auth", "client auth", "code signing",
              "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
              "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"}


def go_duration_seconds(text: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", text))


def check_certificate(docs, kv, mode: str) -> str:
    """The cert-manager Certificate (cert-manager.io/v1, a CRD that kubernetes-validate does
    not know), field by field as cert-manager's CRD defines the ones the chart renders, and
    that its Secret is the one mounted for the TLS listener."""
    certs = [d for _, d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    cm = kv["tls"]["certManager"]
    wanted = kv["tls"]["enabled"] and cm["enabled"]
    if not wanted:
        if certs:
            raise Failure(f"{len(certs)} Certificate rendered without tls.certManager.enabled")
        return "none rendered (tls.certManager off)"
    if len(certs) != 1:
        raise Failure(f"tls.certManager.enabled rendered {len(certs)} Certificates")
    c = certs[0]
    p = []
    if c["apiVersion"] != "cert-manager.io/v1" or c["kind"] != "Certificate":
        p.append(f"{c['apiVersion']} {c['kind']}, want cert-manager.io/v1 Certificate")
    meta = c.get("metadata") or {}
    if not DNS_NAME.match(meta.get("name", "")) or len(meta.get("name", "")) > 253:
        p.append(f"metadata.name {meta.get('name')!r}")
    spec = c.get("spec") or {}
    unknown = set(spec) - CERT_SPEC_KEYS
    if unknown:
        p.append(f"spec fields not checked here: {sorted(unknown)}")
    if spec.get("secretName") != tls_secret_name(kv):
        p.append(f"secretName {spec.get('secretName')}, but the TLS Secret mounted is "
                 f"{tls_secret_name(kv)}")
    ref = spec.get("issuerRef") or {}
    if set(ref) - {"name", "kind", "group"} or not isinstance(ref.get("name"), str) \
            or not ref.get("name"):
        p.append(f"issuerRef {ref}: needs a name (and only name, kind, group)")
    if ref.get("group", "cert-manager.io") == "cert-manager.io" and \
            ref.get("kind", "Issuer") not in ("Issuer", "ClusterIssuer"):
        p.append(f"issuerRef.kind {ref.get('kind')} for group cert-manager.io")
    dns = spec.get("dnsNames", [])
    ips = spec.get("ipAddresses", [])
    if not isinstance(dns, list) or not isinstance(ips, list) or not (dns or ips):
        p.append("needs dnsNames or ipAddresses (lists)")
    for n in dns if isinstance(dns, list) else []:
        if not isinstance(n, str) or not DNS_NAME.match(n) or len(n) > 253:
            p.append(f"dnsNames: {n!r} is not a DNS name")
    for ip in ips if isinstance(ips, list) else []:
        try:
            ipaddress.ip_address(ip)
        except (ValueError, TypeError):
            p.append(f"ipAddresses: {ip!r} is not an IP address")
    if mode == "sidecar" and not cm["dnsNames"] and not cm["ipAddresses"] and (
            dns != ["localhost"] or ips != ["127.0.0.1"]):
        p.append(f"sidecar default names {dns} {ips}, want localhost and 127.0.0.1")
    if mode == "standalone" and not cm["dnsNames"] and not cm["ipAddresses"]:
        svc = [s["metadata"]["name"] for s in by_kind(docs, "Service")]
        if not svc or svc[0] not in dns:
            p.append(f"standalone default dnsNames {dns} miss the Service {svc}")
    for k in ("duration", "renewBefore"):
        if k in spec and (not isinstance(spec[k], str) or not GO_DURATION.match(spec[k])):
            p.append(f"{k} {spec[k]!r} is not a Go duration")
    if "duration" in spec and GO_DURATION.match(str(spec["duration"])) and \
            go_duration_seconds(spec["duration"]) < 3600:
        p.append(f"duration {spec['duration']} is under cert-manager's minimum of 1h")
    if "renewBefore" in spec and GO_DURATION.match(str(spec["renewBefore"])):
        rb = go_duration_seconds(spec["renewBefore"])
        d = go_duration_seconds(spec["duration"]) if "duration" in spec else 90 * 24 * 3600
        if not 300 <= rb < d:
            p.append(f"renewBefore {spec['renewBefore']} must be at least 5m and under the "
                     f"duration")
    pk = spec.get("privateKey") or {}
    if set(pk) - {"algorithm", "size", "rotationPolicy", "encoding"}:
        p.append(f"privateKey fields {sorted(pk)}")
    sizes = {"ECDSA": {256, 384}, "RSA": {2048, 3072, 4096}}  # what rustls (ring) accepts
    if pk.get("algorithm") not in sizes or pk.get("size") not in sizes.get(
            pk.get("algorithm"), set()):
        p.append(f"privateKey {pk.get('algorithm')} {pk.get('size')}: not one Keyway loads")
    if pk.get("rotationPolicy", "Never") not in ("Always", "Never"):
        p.append(f"privateKey.rotationPolicy {pk.get('rotationPolicy')}")
    usages = spec.get("usages", [])
    if not isinstance(usages, list) or set(usages) - KEY_USAGES or "server auth" not in usages:
        p.append(f"usages {usages}: known usages only, with server auth")
    if p:
        raise Failure("\n".join(p))
    return (f"secretName {spec['secretName']}, issuer {ref.get('kind', 'Issuer')}/"
            f"{ref['name']}, {len(dns)} DNS names, {len(ips)} IPs; kubernetes-validate "
            "skips it (a CRD)")


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
        if kv["tls"]["enabled"] and opened.get("keyway-tls", []) != (
                kv["networkPolicy"]["clientFrom"] or None):
            problems.append(f"NetworkPolicy: the TLS port is open from "
                            f"{opened.get('keyway-tls', 'nowhere')}, want the client port's "
                            f"sources {kv['networkPolicy']['clientFrom'] or 'any'}")
        admin_from = kv["networkPolicy"]["adminFrom"]
        if ("keyway-admin" in opened) != bool(admin_from) or (
                admin_from and opened["keyway-admin"] != admin_from):
            problems.append(f"NetworkPolicy: admin port from {opened.get('keyway-admin')}, "
                            f"want {admin_from or 'closed'}")
    return problems


def stand_in_pem(workdir: Path) -> dict[str, Path]:
    """A CA and a certificate it signed (for localhost, 127.0.0.1 and the names the chart
    renders), made once with openssl: stand-ins for the TLS Secrets' files, which exist only in
    the pod, so that `keyway check` loads real PEM."""
    out = {"ca": workdir / "pem" / "ca.crt", "crt": workdir / "pem" / "tls.crt",
           "key": workdir / "pem" / "tls.key"}
    if out["key"].exists():
        return out
    d = workdir / "pem"
    d.mkdir(exist_ok=True)
    openssl = shutil.which("openssl")
    if openssl is None:
        raise Failure("openssl is needed to make stand-in certificates for `keyway check`")

    def run(*args: str) -> None:
        r = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=60,
                           cwd=d)
        if r.returncode != 0:
            raise Failure(f"openssl {' '.join(args)}: {r.stderr.strip()}")
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=keyway-check CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
        "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth,clientAuth\n")
    run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "tls.crt", "-days", "2", "-extfile", "ext.cnf")
    return out


def keyway_check(checker: Checker, docs, label: str) -> str:
    cms = [d for d in by_kind(docs, "ConfigMap") if "keyway.toml" in d.get("data", {})]
    text = cms[0]["data"]["keyway.toml"]
    parsed = tomllib.loads(text)  # TOML syntax, independent of any binary
    # Secret files exist only in the pod: stand-ins here, so that `keyway check` reads them
    # (a password or token; a generated certificate, key or CA for the TLS files).
    files = secret_files(parsed)
    for key, path in files.items():
        if key.endswith(".passwords"):
            continue
        if key.endswith("cert_file"):
            stand_in = stand_in_pem(checker.workdir)["crt"]
        elif key.endswith("key_file"):
            stand_in = stand_in_pem(checker.workdir)["key"]
        elif key.endswith("ca_file"):
            stand_in = stand_in_pem(checker.workdir)["ca"]
        else:
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
    stand_ins = sum(1 for k in files if not k.endswith(".passwords"))
    return (f"{out.stdout.strip().rpartition(': ')[2]}"
            + (f"; {stand_ins} Secret files stood in for" if stand_ins else ""))


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
        checker.check(f"{label}: cert-manager Certificate",
                      lambda: check_certificate(docs, kv, mode))
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
        kv["tls"]["enabled"] = True
        kv["tls"]["certManager"]["enabled"] = True
        kv["tls"]["certManager"]["issuerRef"]["name"] = "ca"
        (where / "values.yaml").write_text(yaml.safe_dump({"keyway": kv}))
        shutil.copy(keyway_chart / "templates" / "_helpers.tpl",
                    where / "templates" / "_keyway.tpl")
        (where / "templates" / "keyway-configmap.yaml").write_text(
            '{{ include "keyway.configMap" . }}\n')
        (where / "templates" / "keyway-certificate.yaml").write_text(
            '{{ include "keyway.certificate" . }}\n')
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
        check_certificate(docs, merged["keyway"], "sidecar")
        keyway_check(checker, docs, "vendored")
        image = find_keyway_pods(docs, kv)[0][2]["image"]
        if image != "keyway:0.1.0":
            raise Failure(f"image {image}, want keyway:0.1.0")
        return "keyway.configMap, keyway.certificate, keyway.sidecar, keyway.sidecarVolume"
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
        expect_refused(checker, chart, "a user's password hash in its rules",
                       {"users": {"existingSecret": "u", "list": [
                           {"name": "app", "rules": "on #" + "ab" * 32 + " +@all"}]}},
                       "Secret of users.existingSecret")
        expect_refused(checker, chart, "a user's clear password in its rules",
                       {"users": {"existingSecret": "u", "list": [
                           {"name": "app", "rules": "on >hunter2 +@all"}]}},
                       "Secret of users.existingSecret")
        expect_refused(checker, chart, "a user's password hashes in the values",
                       {"users": {"existingSecret": "u", "list": [
                           {"name": "app", "passwords": ["#" + "ab" * 32]}]}}, "passwords")
        expect_refused(checker, chart, "a user needing a password without users.existingSecret",
                       {"users": {"list": [{"name": "app", "rules": "on +@all"}]}},
                       "users.existingSecret")
        expect_refused(checker, chart, "a user name that is no Secret key without key",
                       {"users": {"existingSecret": "u", "list": [
                           {"name": "app:ro", "rules": "on +@read"}]}}, "not a valid Secret key")
        expect_refused(checker, chart, "tls.enabled without a Secret or cert-manager",
                       {"tls": {"enabled": True}}, "tls.existingSecret")
        expect_refused(checker, chart, "cert-manager without an issuer",
                       {"tls": {"enabled": True, "certManager": {"enabled": True}}},
                       "issuerRef.name")
        expect_refused(checker, chart, "an ECDSA key size rustls does not verify",
                       {"tls": {"enabled": True, "certManager": {
                           "enabled": True, "issuerRef": {"name": "ca"},
                           "privateKey": {"algorithm": "ECDSA", "size": 2048}}}}, "privateKey")
        expect_refused(checker, chart, "poolTls without a CA or an explicit insecureSkipVerify",
                       {"poolTls": {"enabled": True}}, "insecureSkipVerify")
        expect_refused(checker, chart, "a pool client certificate without a Secret",
                       {"poolTls": {"enabled": True, "insecureSkipVerify": True,
                                    "clientCertificate": True}}, "poolTls.existingSecret")
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
