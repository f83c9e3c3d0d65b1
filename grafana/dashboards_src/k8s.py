"""Production on Kubernetes: one namespace against the production budget (README,
"Production on Kubernetes"). Reads the rules of prometheus/kubernetes/ and the cluster's own
series (cAdvisor through the kubelet, kube-state-metrics); nothing of ours runs in the cluster.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.models import dashboard as dashboard_model

from .lib import (
    BYTES,
    COUNT,
    DATASOURCE,
    RATIO,
    Column,
    Query,
    datasource_variable,
    finish,
    new_dashboard,
    query,
    ratio_bars,
    row,
    score_gauge,
    table,
    timeseries,
)

UID = "aitools-k8s-namespace"
NAMESPACE = 'namespace="$namespace"'
PER_CONTAINER = "namespace, pod, container"
# kube-state-metrics' declared memory of each container, once (it may run as two replicas).
LIMITS = f'max by ({PER_CONTAINER}) (kube_pod_container_resource_limits{{{NAMESPACE}, resource="memory", unit="byte"}})'
REQUESTS = f'max by ({PER_CONTAINER}) (kube_pod_container_resource_requests{{{NAMESPACE}, resource="memory", unit="byte"}})'
WORKING_SET = f"aitools:k8s_container_memory_bytes{{{NAMESPACE}}}"


def k8s_variables() -> list:
    namespace = (
        dashboard_builder.QueryVariable("namespace")
        .label("Namespace")
        .description("The namespace the production budget applies to (from kube-state-metrics).")
        .datasource(DATASOURCE)
        .query("label_values(kube_pod_container_status_running, namespace)")
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
    )
    return [datasource_variable("The cluster's Prometheus (it scrapes the kubelets' cAdvisor and kube-state-metrics)."),
            namespace]


def build():
    dashboard = new_dashboard(
        UID,
        "AI tools memory: production namespace",
        "One Kubernetes namespace against the production budget: its containers' working set, their limits and requests, and the containers without a limit.",
        all_variables=k8s_variables(),
        alerts_expr=f'ALERTS{{alertstate="firing", alertname=~"Aitools.+", {NAMESPACE}}}',
    )

    dashboard = dashboard.with_row(row("Now")).with_panel(
        score_gauge(
            "Production score",
            "The namespace's working set on the score curve of the workstation budgets (0-100; 85 and more is excellent).",
            f"aitools:k8s_production_score{{{NAMESPACE}}}",
            "{{namespace}}",
            width=6,
        )
    ).with_panel(
        ratio_bars(
            "Production budget used",
            "The working set of the namespace's containers as a share of production_total; 100 % is the budget.",
            [query(f"aitools:k8s_namespace_memory:ratio{{{NAMESPACE}}}", "{{namespace}}")],
            width=9,
            height=7,
        )
    ).with_panel(
        table(
            "Containers without a memory limit",
            "Running containers that declare no memory limit: nothing holds them within the budget.",
            [query(f"max by ({PER_CONTAINER}) (kube_pod_container_status_running{{{NAMESPACE}}} == 1)"
                   f" unless on ({PER_CONTAINER}) ({LIMITS} > 0)", "{{pod}} {{container}}")],
            [Column("pod", "Pod"), Column("container", "Container")],
            unit=COUNT,
            width=9,
            height=7,
        )
    )

    dashboard = dashboard.with_row(row("Memory")).with_panel(
        timeseries(
            "Namespace working set against production_total",
            "The working set of every container of the namespace together (pause containers left out) with the production budget.",
            [
                query(f"aitools:k8s_namespace_memory_bytes{{{NAMESPACE}}}", "{{namespace}}"),
                Query(expr="aitools:k8s_production_budget_bytes", legend="production_total budget", budget_line=True),
            ],
        )
    ).with_panel(
        timeseries(
            "Working set per pod",
            "Each pod's containers together (the pod's sandbox left out).",
            [query(f"sum by (namespace, pod) ({WORKING_SET})", "{{pod}}")],
            stacked=True,
        )
    )

    dashboard = dashboard.with_row(row("Limits")).with_panel(
        table(
            "Containers against their limits",
            "Each container's working set beside the memory it requests and its limit (kube-state-metrics), and the share of the limit used.",
            [
                query(WORKING_SET, "{{pod}} {{container}}"),
                query(REQUESTS, "{{pod}} {{container}}"),
                query(LIMITS, "{{pod}} {{container}}"),
                query(f"{WORKING_SET} / on ({PER_CONTAINER}) ({LIMITS} > 0)", "{{pod}} {{container}}"),
            ],
            [
                Column("pod", "Pod"),
                Column("container", "Container"),
                Column("Value #A", "Working set", BYTES),
                Column("Value #B", "Request", BYTES),
                Column("Value #C", "Limit", BYTES),
                Column("Value #D", "Used / limit", RATIO),
            ],
            sort_by="Working set",
            width=24,
            height=10,
        )
    )
    return finish(dashboard)
