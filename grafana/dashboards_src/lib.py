"""Shared pieces of the dashboards: data source, variables, and one helper per panel shape.

Every panel made here has a unit, a one-line description, a legend that names the
thing, explicit thresholds (Grafana would otherwise apply its default red at 80) and the
data source variable. No budget number is written here: budget lines are the
`aitools_budget_bytes` series, usage ratios come from the recording rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from grafana_foundation_sdk.builders import bargauge as bargauge_builder
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import gauge as gauge_builder
from grafana_foundation_sdk.builders import prometheus as prometheus_builder
from grafana_foundation_sdk.builders import stat as stat_builder
from grafana_foundation_sdk.builders import table as table_builder
from grafana_foundation_sdk.builders import timeseries as timeseries_builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_model
from grafana_foundation_sdk.models import prometheus as prometheus_model

# The Prometheus data source provisioned by grafana/provisioning/datasources/ has this uid.
DATASOURCE_UID = "aitools-prometheus"
DATASOURCE_TYPE = "prometheus"
# Panels and variables address the data source through the `datasource` variable, so an
# imported dashboard follows whichever Prometheus the user picks.
DATASOURCE = dashboard_model.DataSourceRef(type_val=DATASOURCE_TYPE, uid="${datasource}")

# The instance filter every query carries: one Grafana serves many workstations.
INSTANCE = 'instance="$instance"'

TAG = "aitools"

# Units (Grafana unit ids). "bytes" is IEC: KiB, MiB, GiB.
BYTES = "bytes"
RATIO = "percentunit"  # 0.0-1.0 shown as 0-100 %
SCORE = "suffix:/100"  # the efficiency scores, 0-100
COUNT = "short"
SECONDS = "s"
STATE = "none"  # up/down style panels; they always carry value mappings
UNITS = (BYTES, RATIO, SCORE, COUNT, SECONDS, STATE)

# Bands of the efficiency score (0-100). The user calls 85 and more excellent.
SCORE_MIN, SCORE_MAX = 0, 100
SCORE_BANDS: tuple[tuple[float | None, str, str], ...] = (
    (None, "red", "poor (below 50)"),
    (50, "orange", "fair (50 to 75)"),
    (75, "green", "good (75 to 85)"),
    (85, "dark-green", "excellent (85 and more)"),
)

# Bands of a usage ratio (used / budget, or used / limit). These are fractions of the
# budget itself, so they are not budget numbers: 1.0 is the budget line of the rule.
RATIO_BANDS: tuple[tuple[float | None, str, str], ...] = (
    (None, "green", "within budget"),
    (0.8, "orange", "above 80 % of the budget"),
    (1.0, "red", "over budget"),
)

# Series that draw a budget (or limit, or threshold) are styled as a dashed red line.
BUDGET_LINE_COLOR = "red"


@dataclass
class Query:
    """One PromQL query of a panel and the legend that names its series."""

    expr: str
    legend: str
    instant: bool = False
    table: bool = False
    budget_line: bool = False  # draw as a budget line (dashed, not stacked, no fill)


def query(expr: str, legend: str, **kwargs) -> Query:
    return Query(expr=expr, legend=legend, **kwargs)


def budget(name_regex: str, legend: str) -> Query:
    """The budget line(s) for budget names matching `name_regex`, from the exporter."""
    matcher = f'budget="{name_regex}"' if name_regex.isidentifier() else f'budget=~"{name_regex}"'
    return Query(expr=f"aitools_budget_bytes{{{INSTANCE}, {matcher}}}", legend=legend, budget_line=True)


def _ref_id(index: int) -> str:
    return chr(ord("A") + index)


def _targets(panel, queries: Sequence[Query]):
    for index, q in enumerate(queries):
        target = (
            prometheus_builder.Dataquery()
            .expr(q.expr)
            .legend_format(q.legend)
            .ref_id(_ref_id(index))
            .datasource(DATASOURCE)
        )
        target = target.instant() if q.instant or q.table else target.range()
        if q.table:
            target = target.format(prometheus_model.PromQueryFormat.TABLE)
        panel.with_target(target)
    return panel


def _thresholds(bands: Iterable[tuple[float | None, str, str]]):
    return (
        dashboard_builder.ThresholdsConfig()
        .mode(dashboard_model.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_model.Threshold(value=value, color=color) for value, color, _ in bands])
    )


def _base_thresholds(color: str = "green"):
    """A single base colour: no numeric threshold at all."""
    return _thresholds([(None, color, "")])


def _common(panel, title: str, description: str, unit: str, height: int, width: int):
    if "\n" in description or not description.strip():
        raise ValueError(f"panel {title!r}: the description is one line")
    return (
        panel.title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(height)
        .span(width)
    )


def _reduce_last():
    return common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def _budget_line_properties() -> list[dashboard_model.DynamicConfigValue]:
    return [
        dashboard_model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": BUDGET_LINE_COLOR}),
        dashboard_model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
        dashboard_model.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        dashboard_model.DynamicConfigValue(id_val="custom.lineWidth", value=2),
        dashboard_model.DynamicConfigValue(id_val="custom.stacking", value={"mode": "none", "group": "A"}),
    ]


# --- panel shapes -------------------------------------------------------------------------


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = BYTES,
    stacked: bool = False,
    height: int = 8,
    width: int = 12,
    min_zero: bool = True,
):
    """Values over time; queries marked budget_line are drawn as dashed red budget lines."""
    panel = _common(timeseries_builder.Panel(), title, description, unit, height, width)
    panel = (
        panel.thresholds(_base_thresholds())
        .color_scheme(dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.PALETTE_CLASSIC))
        .line_width(1)
        .fill_opacity(10 if not stacked else 35)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
    )
    if min_zero:
        panel = panel.min(0)
    if stacked:
        panel = panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL).group("A"))
    _targets(panel, queries)
    for index, q in enumerate(queries):
        if q.budget_line:
            panel = panel.override_by_query(_ref_id(index), _budget_line_properties())
    return panel


def score_gauge(title: str, description: str, expr: str, legend: str, *, height: int = 7, width: int = 4):
    """An efficiency score (0-100) in the score's own bands."""
    panel = _common(gauge_builder.Panel(), title, description, SCORE, height, width)
    panel = (
        panel.min(SCORE_MIN)
        .max(SCORE_MAX)
        .decimals(0)
        .thresholds(_thresholds(SCORE_BANDS))
        .color_scheme(dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.THRESHOLDS))
        .show_threshold_markers(True)
        .show_threshold_labels(False)
        .reduce_options(_reduce_last())
        .no_value("no data")
    )
    return _targets(panel, [Query(expr=expr, legend=legend, instant=True)])


def ratio_bars(title: str, description: str, queries: Sequence[Query], *, height: int = 8, width: int = 12):
    """Used against a budget or limit, as a fraction of it: one bar per series (now)."""
    panel = _common(bargauge_builder.Panel(), title, description, RATIO, height, width)
    panel = (
        panel.min(0)
        .max(1)
        .thresholds(_thresholds(RATIO_BANDS))
        .color_scheme(dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.THRESHOLDS))
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .reduce_options(_reduce_last())
        .no_value("nothing counted")
    )
    return _targets(panel, [Query(q.expr, q.legend, instant=True) for q in queries])


def bytes_bars(title: str, description: str, queries: Sequence[Query], *, height: int = 8, width: int = 12):
    """Sizes right now, largest first: one bar per series."""
    panel = _common(bargauge_builder.Panel(), title, description, BYTES, height, width)
    panel = (
        panel.min(0)
        .thresholds(_base_thresholds("blue"))
        .color_scheme(dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.CONTINUOUS_GR_YL_RD))
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .reduce_options(_reduce_last())
        .no_value("nothing loaded")
    )
    return _targets(panel, [Query(q.expr, q.legend, instant=True) for q in queries])


def value_stat(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = BYTES,
    height: int = 4,
    width: int = 4,
    continuous_ratio: bool = False,
):
    """A number now with its sparkline (bytes, counts, or a ratio coloured red-to-green)."""
    panel = _common(stat_builder.Panel(), title, description, unit, height, width)
    if continuous_ratio:
        panel = (
            panel.min(0)
            .max(1)
            .thresholds(_base_thresholds())
            .color_scheme(dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.CONTINUOUS_RD_YL_GR))
        )
    else:
        panel = panel.thresholds(_base_thresholds("blue")).color_scheme(
            dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.THRESHOLDS)
        )
    panel = (
        panel.graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(_reduce_last())
    )
    return _targets(panel, queries)


def count_stat(title: str, description: str, expr: str, legend: str, *, alarm_from: int, height: int = 4, width: int = 4):
    """A count now; it turns red from `alarm_from` (a count of things, never a budget)."""
    panel = _common(stat_builder.Panel(), title, description, COUNT, height, width)
    panel = (
        panel.decimals(0)
        .thresholds(_thresholds([(None, "green", ""), (alarm_from, "red", "")]))
        .color_scheme(dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.THRESHOLDS))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .text_mode(common.BigValueTextMode.VALUE)
        .reduce_options(_reduce_last())
    )
    return _targets(panel, [Query(expr=expr, legend=legend, instant=True)])


def up_stat(title: str, description: str, expr: str, legend: str, *, up: str = "up", down: str = "down",
            height: int = 4, width: int = 4):
    """1/0 states (a target answering, a server up, a collector succeeding), one box per series."""
    return state_stat(title, description, expr, legend, {0: (down, "red"), 1: (up, "green")},
                      height=height, width=width)


def state_stat(title: str, description: str, expr: str, legend: str, states: dict[int, tuple[str, str]], *,
               no_value: str = "no data", height: int = 4, width: int = 4):
    """A state with more than two values (a collector ok / not running / failing, the macOS
    memory pressure level), one box per series: `states` maps each value to (text, colour)."""
    panel = _common(stat_builder.Panel(), title, description, STATE, height, width)
    mappings = [
        dashboard_model.ValueMap(
            options={
                str(value): dashboard_model.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(sorted(states.items()))
            }
        )
    ]
    panel = (
        panel.mappings(mappings)
        .thresholds(_base_thresholds("text"))
        .color_scheme(dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.THRESHOLDS))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(_reduce_last())
        .no_value(no_value)
    )
    return _targets(panel, [Query(expr=expr, legend=legend, instant=True)])


def label_stat(title: str, description: str, expr: str, legend: str, *, height: int = 4, width: int = 4):
    """Shows the legend (a label's value, e.g. the active profile) rather than the number."""
    panel = _common(stat_builder.Panel(), title, description, STATE, height, width)
    panel = (
        panel.thresholds(_base_thresholds("blue"))
        .color_scheme(dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.THRESHOLDS))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.NONE)
        .text_mode(common.BigValueTextMode.NAME)
        .reduce_options(_reduce_last())
        .no_value("unknown")
    )
    return _targets(panel, [Query(expr=expr, legend=legend, instant=True)])


@dataclass
class Column:
    """A column of a table panel: the label or value field, its header and its unit."""

    source: str  # a label name, or "Value #A" for the value of query A
    header: str
    unit: str | None = None


def table(
    title: str,
    description: str,
    queries: Sequence[Query],
    columns: Sequence[Column],
    *,
    unit: str = BYTES,
    height: int = 8,
    width: int = 12,
    sort_by: str | None = None,
):
    """Instant queries merged into one row per series; only the listed columns show, in order."""
    panel = _common(table_builder.Panel(), title, description, unit, height, width)
    panel = (
        panel.thresholds(_base_thresholds("text"))
        .color_scheme(dashboard_builder.FieldColor().mode(dashboard_model.FieldColorModeId.THRESHOLDS))
        .align(common.FieldTextAlignment.AUTO)
        .inspect(False)
    )
    _targets(panel, [Query(q.expr, q.legend, table=True) for q in queries])
    if len(queries) > 1:
        panel = panel.with_transformation(dashboard_model.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(
        dashboard_model.DataTransformerConfig(
            id_val="filterFieldsByName",
            options={"include": {"names": [column.source for column in columns]}},
        )
    ).with_transformation(
        dashboard_model.DataTransformerConfig(
            id_val="organize",
            options={
                "indexByName": {column.source: index for index, column in enumerate(columns)},
                "renameByName": {column.source: column.header for column in columns},
                "excludeByName": {},
            },
        )
    )
    for column in columns:
        if column.unit is None:
            continue
        properties = [dashboard_model.DynamicConfigValue(id_val="unit", value=column.unit)]
        if column.unit == RATIO:  # a gauge cell in the ratio bands
            properties += [
                dashboard_model.DynamicConfigValue(id_val="min", value=0),
                dashboard_model.DynamicConfigValue(id_val="max", value=1),
                dashboard_model.DynamicConfigValue(id_val="thresholds", value=_thresholds(RATIO_BANDS).build()),
                dashboard_model.DynamicConfigValue(id_val="color", value={"mode": "thresholds"}),
                dashboard_model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "gauge", "mode": "gradient"}),
            ]
        panel = panel.override_by_name(column.header, properties)
    if sort_by is not None:
        panel = panel.sort_by([common_builder.TableSortByFieldState().display_name(sort_by).desc(True)])
    return panel


def row(title: str):
    return dashboard_builder.Row(title)


# --- dashboards ---------------------------------------------------------------------------


def datasource_variable(description: str = "The Prometheus that scrapes the aitools exporter."):
    return (
        dashboard_builder.DatasourceVariable("datasource")
        .label("Data source")
        .type(DATASOURCE_TYPE)
        .current(dashboard_model.VariableOption(text="Prometheus", value=DATASOURCE_UID, selected=True))
        .description(description)
    )


def variables(extra: Sequence = ()) -> list:
    """The data source and instance variables every dashboard has, then the dashboard's own."""
    datasource = datasource_variable()
    instance = (
        dashboard_builder.QueryVariable("instance")
        .label("Workstation")
        .description("The exporter instance (one workstation).")
        .datasource(DATASOURCE)
        .query("label_values(aitools_build_info, instance)")
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
    )
    return [datasource, instance, *extra]


def label_variable(name: str, label: str, metric: str, label_name: str, description: str):
    """A multi-value variable over one label of one metric of the selected instance, `All` by default."""
    return (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}{{{INSTANCE}}}, {label_name})")
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard_model.VariableOption(text="All", value="$__all", selected=True))
    )


ALERTS_ANNOTATION_EXPR = f'ALERTS{{alertstate="firing", alertname=~"Aitools.+", {INSTANCE}}}'


def new_dashboard(uid: str, title: str, description: str, extra_variables: Sequence = (), *,
                  all_variables: Sequence | None = None, alerts_expr: str = ALERTS_ANNOTATION_EXPR):
    """A dashboard with the common variables and `extra_variables`; one beyond a single
    workstation (a team, a cluster) gives `all_variables` and the selector of its alerts instead."""
    return (
        dashboard_builder.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .tooltip(dashboard_model.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .variables(list(all_variables) if all_variables is not None else variables(extra_variables))
        .annotation(
            dashboard_builder.AnnotationQuery()
            .name("Aitools alerts")
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("red")
            .expr(alerts_expr)
        )
        .link(
            dashboard_builder.DashboardLink("AI tools memory")
            .type(dashboard_model.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


def finish(builder) -> dashboard_model.Dashboard:
    """Build, and number the panels (rows and the panels inside collapsed rows too) from 1."""
    model = builder.build()
    next_id = 1
    for panel in model.panels or []:
        panel.id_val = next_id
        next_id += 1
        for inner in getattr(panel, "panels", None) or []:
            inner.id_val = next_id
            next_id += 1
    return model


def to_json(model: dashboard_model.Dashboard) -> str:
    """The committed form: sorted keys, two-space indent, a final newline."""
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
