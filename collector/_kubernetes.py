"""Manifests for Kubernetes with the Prometheus Operator (kube-prometheus-stack), from the same data.

``collector build`` writes under ``deploy/kubernetes/``: one ``PrometheusRule`` per rule file (its
groups are exactly ``rules.documents()``, which ``prometheus/rules/*.yml`` hold too), one
``ConfigMap`` per dashboard labelled ``grafana_dashboard: "1"`` for Grafana's dashboard sidecar (with
the folder in the ``grafana_folder`` annotation), a ``ServiceMonitor`` example and a
``kustomization.yaml`` listing them. The ``release`` label is what kube-prometheus-stack selects
rules and monitors by (its Helm release name; change ``RELEASE`` if yours differs).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from collector import _dashboards
from collector.catalogue import rules, yaml

DIRECTORY = "deploy/kubernetes"
RELEASE = "kube-prometheus-stack"
PART_OF = {"app.kubernetes.io/part-of": "fastapi-collector"}


def _name(path: str) -> str:
    return f"fastapi-collector-{PurePosixPath(path).stem}"


def prometheus_rules() -> dict[str, dict[str, object]]:
    """File name -> ``PrometheusRule``, one per plain rule file."""
    return {
        f"prometheusrule-{PurePosixPath(path).stem}.yaml": {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": _name(path), "labels": {**PART_OF, "release": RELEASE}},
            "spec": document,
        }
        for path, document in rules.documents().items()
    }


def dashboard_config_maps() -> dict[str, dict[str, object]]:
    """File name -> ``ConfigMap`` holding one dashboard for the Grafana sidecar."""
    out: dict[str, dict[str, object]] = {}
    for dashboard in _dashboards.dashboards():
        uid = dashboard["uid"]
        out[f"dashboard-{uid}.yaml"] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"dashboard-{uid}",
                "labels": {**PART_OF, "grafana_dashboard": "1"},
                "annotations": {"grafana_folder": _dashboards.FOLDER},
            },
            "data": {f"{uid}.json": _dashboards.render(dashboard)},
        }
    return out


def service_monitor() -> dict[str, object]:
    """An example: scrape every pod behind Services labelled ``app.kubernetes.io/name: fastapi-app``."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "fastapi-app", "labels": {**PART_OF, "release": RELEASE}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "fastapi-app"}},
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"},
            ],
        },
    }


def files() -> dict[str, str]:
    """``collector build``'s generator: every manifest, by path."""
    from collector.catalogue import GENERATED_HEADER as HEADER

    objects = {**prometheus_rules(), **dashboard_config_maps(), "servicemonitor.yaml": service_monitor()}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(objects),
    }
    out = {f"{DIRECTORY}/{name}": yaml.dump(body, HEADER) for name, body in objects.items()}
    out[f"{DIRECTORY}/kustomization.yaml"] = yaml.dump(kustomization, HEADER)
    return out
