"""The production rules for Kubernetes, over the cluster's own standard series only.

Nothing of ours runs in the cluster: the kubelet's cAdvisor publishes each container's
memory (`container_memory_working_set_bytes`, the figure the OOM killer and `kubectl top`
go by) and kube-state-metrics each container's declared requests and limits
(`kube_pod_container_resource_limits{resource="memory",unit="byte"}`, `..._requests`) and
whether it runs (`kube_pod_container_status_running`). `python prometheus/build.py` renders
these groups twice, as a plain rule file and as a PrometheusRule of the Prometheus Operator
(prometheus/kubernetes/).

The budget is `aitools_budget_bytes{budget="production_total"}` where an exporter publishes
it, else the value the rules are rendered with: exporter/config.py's default, or
`python prometheus/build.py --production-total 6GB`.
"""

from __future__ import annotations

# cAdvisor publishes, besides each container: the pod's own cgroup (container="", image=""),
# the pod's sandbox ("pause") container (container="" with the pause image under containerd
# and CRI-O, container="POD" under dockershim) and cgroups of the node (namespace=""). Only
# real containers count; the same container can also show under two nested cgroup ids
# (kubernetes/kubernetes#129253) or from two scrapes of one kubelet, hence `max by`
# container before any sum.
CONTAINER_MEMORY = (
    'max by (namespace, pod, container) (\n'
    '  container_memory_working_set_bytes{container!="", container!="POD", image!="", namespace!=""}\n'
    ')'
)
# kube-state-metrics often runs as two replicas (kubernetes-mixin's tests: instance ksm-1,
# ksm-2): each container's figure once.
MEMORY_LIMIT = ('max by (namespace, pod, container) (\n'
                '  kube_pod_container_resource_limits{resource="memory", unit="byte"} > 0\n'
                ')')
RUNNING = "max by (namespace, pod, container) (kube_pod_container_status_running == 1)"
NEAR_LIMIT = 0.9  # a share of each container's own limit, not a budget

# The score curve of prometheus/rules/aitools-recording.rules.yml (README, "Efficiency
# score"), on a ratio of used to budget: (percent, score) through (50, 100) (70, 97)
# (80, 90) (90, 75) (100, 50) (150, 0).
CURVE = ((50, 20, 3, 20), (70, 10, 7, 10), (80, 10, 3, 2), (90, 10, 5, 2), (100, 50, 1, 1))


def score_expr(ratio: str) -> str:
    terms = []
    for start, width, numerator, denominator in CURVE:
        term = f"clamp(100 * {ratio} - {start}, 0, {width})"
        if numerator != 1 or denominator != 1:
            term = f"{numerator} * {term} / {denominator}"
        terms.append(f"  - {term}")
    return "clamp(\n    100\n" + "\n".join("  " + t for t in terms) + ",\n  0, 100)\n"


def budget_expr(production_total: int) -> str:
    """The production budget: the exporter's where one publishes it, else the rendered value."""
    return f'max(aitools_budget_bytes{{budget="production_total"}}) or vector({production_total})\n'


def groups(production_total: int) -> list[dict]:
    recording = [
        # The budget, once: the alert, the ratio, the score and the dashboard read this.
        {"record": "aitools:k8s_production_budget_bytes", "expr": budget_expr(production_total)},
        {"record": "aitools:k8s_container_memory_bytes", "expr": CONTAINER_MEMORY + "\n"},
        {"record": "aitools:k8s_namespace_memory_bytes",
         "expr": "sum by (namespace) (aitools:k8s_container_memory_bytes)\n"},
        {"record": "aitools:k8s_namespace_memory:ratio",
         "expr": "aitools:k8s_namespace_memory_bytes\n  / on () group_left ()\naitools:k8s_production_budget_bytes\n"},
        {"record": "aitools:k8s_production_score",
         "expr": score_expr("aitools:k8s_namespace_memory:ratio")},
    ]
    budget_query = '{{ with query "aitools:k8s_production_budget_bytes" }}{{ . | first | value | humanize }}{{ end }}'
    alerts = [
        {
            "alert": "AitoolsProductionOverBudget",
            "expr": "aitools:k8s_namespace_memory_bytes\n  > on () group_left ()\naitools:k8s_production_budget_bytes\n",
            "for": "10m",
            "labels": {"severity": "critical", "component": "kubernetes"},
            "annotations": {
                "summary": "Namespace {{ $labels.namespace }} uses more memory than the production budget",
                "description": (
                    "The containers of namespace {{ $labels.namespace }} have a working set of "
                    "{{ $value | humanize }}B together, over the production_total budget of "
                    f"{budget_query}B for 10 minutes."),
                "action": (
                    "Find the biggest containers with `kubectl top pod -n {{ $labels.namespace }} --containers`, "
                    "then lower their replicas or memory (the Deployment's resources.limits.memory), "
                    "or raise production_total where the exporter publishes it."),
            },
        },
        {
            "alert": "AitoolsPodNearMemoryLimit",
            "expr": f"{CONTAINER_MEMORY}\n  / on (namespace, pod, container)\n{MEMORY_LIMIT}\n  > {NEAR_LIMIT}\n",
            "for": "5m",
            "labels": {"severity": "warning", "component": "kubernetes"},
            "annotations": {
                "summary": "Container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} "
                           "is near its memory limit",
                "description": (
                    "Container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} uses "
                    "{{ $value | humanizePercentage }} of its memory limit for 5 minutes: the kernel kills it "
                    "(OOMKilled) when it reaches the limit."),
                "action": (
                    "Raise resources.limits.memory of container {{ $labels.container }} "
                    "(`kubectl -n {{ $labels.namespace }} set resources deployment/NAME -c {{ $labels.container }} "
                    "--limits=memory=...`), or find what grows in it."),
            },
        },
        {
            "alert": "AitoolsPodMemoryLimitMissing",
            "expr": f"{RUNNING}\n  unless on (namespace, pod, container)\n{MEMORY_LIMIT}\n",
            "for": "15m",
            "labels": {"severity": "info", "component": "kubernetes"},
            "annotations": {
                "summary": "Container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} "
                           "has no memory limit",
                "description": (
                    "Container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} runs without "
                    "a memory limit: nothing keeps it within the production budget, and the node kills "
                    "other pods first when it grows."),
                "action": (
                    "Set resources.limits.memory (and requests.memory) on container {{ $labels.container }}, "
                    "or a LimitRange with a default limit in namespace {{ $labels.namespace }}."),
            },
        },
    ]
    return [{"name": "aitools-k8s-recording", "rules": recording},
            {"name": "aitools-k8s-alerts", "rules": alerts}]
