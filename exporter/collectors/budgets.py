"""aitools_budget_bytes, aitools_profile_info and aitools_build_info: the configuration's
budgets and profile, and the exporter's version, as gauges for the rules."""

from __future__ import annotations

from prometheus_client.registry import Collector

from exporter import __version__
from exporter.collectors.base import gauge


class BudgetCollector(Collector):
    """aitools_budget_bytes, aitools_profile_info and aitools_build_info, straight from the config."""

    def __init__(self, budgets: dict[str, int], profile: str):
        self.budgets, self.profile = budgets, profile

    def collect(self):
        budgets = gauge("aitools_budget_bytes", "Each configured memory budget.", ["budget"])
        for name, size in self.budgets.items():
            budgets.add_metric([name], float(size))
        profile = gauge("aitools_profile_info", "1 for the active profile.", ["profile"])
        profile.add_metric([self.profile], 1.0)
        build = gauge("aitools_build_info", "The exporter's version.", ["version"])
        build.add_metric([__version__], 1.0)
        return [budgets, profile, build]
