"""Shared test setup.

Real parts (../shared/TESTING.md) live in tests/parts/: plain classes usable from
benchmarks too, with thin pytest fixtures. A real part that cannot start skips the
test on a developer's machine and fails it under CI (CI=true): a suite that skipped
its real parts has not passed.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.parts.docker_engine",
    "tests.parts.node_processes",
    "tests.parts.llm_standins",
    "tests.parts.processes",
    "tests.parts.app_processes",
]

UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_realpart(reason: str):
    """Skip (locally) or fail (under CI) a test whose real part is not there."""
    if UNDER_CI:
        pytest.fail(f"real part missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


# --- the fast tier ------------------------------------------------------------------------
# `pytest --fast` runs only the tests that need no real part (no Docker engine, Prometheus,
# Alertmanager, Chromium, Node or stand-in processes, no exporter started as a process):
# under a minute, for every change. The full suite (`bash tests/run-all.sh`, what .ci/run
# runs) runs everything. A test needs a real part when it uses one of these fixtures, sits in
# one of these modules, or is marked `realpart` itself; such tests get the `realpart` marker
# here, so `-m realpart` / `-m "not realpart"` select the same split.
REAL_PART_FIXTURES = {
    "docker_engine", "engine", "held_container", "secret_container", "stack", "fired",   # Docker engine
    "node_steady", "node_leaky", "start_node", "node_with_signal",                       # Node processes
    "swift_frontend", "app_processes", "user_stack", "hostile_processes",                # process trees
    "prometheus_with_rules", "running_alertmanager",                                     # Prometheus, Alertmanager
    "guarded_exporter", "exporter", "served", "receiver_for",                            # the exporter/receiver as a process or server with backends
    "chain", "cluster_prometheus", "team",       # doctor's whole chain; Prometheus (Kubernetes rules, a team's store)
    "binary",                                    # llama-server (test_llama_cpp_estimate)
}
REAL_PART_MODULES = {
    "test_end_to_end",            # Docker, Prometheus, Alertmanager, Node, the exporter: the whole stack
    "test_alertmanager",          # Alertmanager and amtool
    "test_receiver_alertmanager",  # Alertmanager posting to the receiver
    "test_load_and_long_run",     # the exporter served for minutes
    "test_core_attacks",          # the exporter as a process, attacked
    "test_web_access",            # the exporter as a process with TLS and auth
    "test_cli_and_server",        # the command run as users run it
    "test_compose",               # docker-compose, nginx, Alertmanager
    "test_service",               # systemd-analyze, launchctl stand-ins, the services started
    "test_faults",                # Docker, Node and the exporter with injected faults
    "test_kept_connections",      # Node processes
    "test_deadline",              # Node and the backends held at once
    "test_secrets",               # Docker containers with secrets
    "test_dashboards",            # promtool and Prometheus on the dashboards' queries
    "test_proc_table",            # process trees started and walked
    "test_process_paths",         # processes started under odd paths
    "test_hostile_regex",         # processes with huge command lines
    "test_rules",                 # promtool and Prometheus evaluating the rules
}
# Tests that run promtool or docker-compose themselves, in modules whose other tests need no real part.
REAL_PART_TESTS = {
    "test_kubernetes": {"test_promtool_check_rules", "test_promtool_unit_tests_fire_exactly_on_their_scenarios",
                        "test_a_broken_expectation_fails"},
    "test_team": {"test_team_configs_pass_promtool_check_config", "test_compose_overrides_resolve",
                  "test_store_rules_pass_every_workstation_unit_test", "test_two_workstations_with_one_address_stay_apart"},
    "test_top": {"test_alerts_from_a_real_alertmanager_show_in_the_view",   # Alertmanager
                 "test_top_in_a_real_terminal_of_80x24_with_no_color"},     # the command in a real terminal
    "test_apps_collector": {"test_labels_stay_bounded_with_a_thousand_differently_named_programs"},  # 1,000 processes
    "test_llm_fits": {"test_fit_command_verdicts_and_exit_codes"},         # the command run as users run it
}
# No real part, but minutes of work: property-based fuzzing (hypothesis, hundreds of
# examples through stand-in servers) and bcrypt at its real cost. Full suite only.
FULL_SUITE_MODULES = {"test_parser_properties", "test_properties_system_config", "test_hostile_auth"}
# No real part, but seconds each: `top` driven headless through Textual's test driver
# (its pure helpers stay in the fast tier). Full suite only.
FULL_SUITE_TESTS = {
    "test_top": {"test_local_view_shows_the_tree_budgets_models_and_trends", "test_keys_sort_collapse_filter_and_help",
                 "test_fix_unloads_a_model_after_a_confirmation_that_shows_the_command",
                 "test_fix_refused_by_the_receivers_checks_is_not_offered_and_declining_does_nothing",
                 "test_remote_view_reads_a_served_exporter_and_keeps_its_figures_when_it_goes_away",
                 "test_garbage_and_stalling_exporters_show_the_reason_and_never_block_the_keys"},
}


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="only the fast tier: tests that need no real part (see tests/conftest.py)")


def pytest_collection_modifyitems(config, items):
    kept, dropped = [], []
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if (module in REAL_PART_MODULES or REAL_PART_FIXTURES.intersection(item.fixturenames)
                or getattr(item, "originalname", item.name) in REAL_PART_TESTS.get(module, ())
                or item.get_closest_marker("realpart")):
            if not item.get_closest_marker("realpart"):
                item.add_marker(pytest.mark.realpart)
            dropped.append(item)
        else:
            kept.append(item)
    if config.getoption("--fast"):
        def module_of(item) -> str:
            return item.module.__name__.rsplit(".", 1)[-1]
        slow = [item for item in kept if module_of(item) in FULL_SUITE_MODULES or item.get_closest_marker("slow")
                or getattr(item, "originalname", item.name) in FULL_SUITE_TESTS.get(module_of(item), ())]
        config.hook.pytest_deselected(items=dropped + slow)
        items[:] = [item for item in kept if item not in slow]
