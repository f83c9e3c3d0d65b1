import textwrap

import pytest

from exporter.config import DEFAULT_BUDGETS, Config, ConfigError, load_config, parse_config, parse_duration, parse_size


def test_defaults_are_the_contract_defaults():
    config = load_config(None)
    assert config == parse_config("") == parse_config("{}")
    assert config.profile == "development"
    assert config.budgets == {
        "node_heap": 200_000_000, "node_heap_growth": 50_000_000, "docker": 5_000_000_000,
        "ollama": 8_000_000_000, "lmstudio": 16_000_000_000, "swift_build": 6_000_000_000,
        "development_total": 20_000_000_000, "production_total": 8_000_000_000,
    }
    assert config.node.targets == ()
    assert config.docker.enabled and config.docker.host is None
    assert config.ollama.url == "http://127.0.0.1:11434"
    assert config.lmstudio.url == "http://127.0.0.1:1234"
    assert [(g.name, g.names) for g in config.process_groups] == [("swift-frontend", ("swift-frontend",))]
    assert config.system.source == "auto"
    assert config.timeout == 3.0


@pytest.mark.parametrize("text, expected", [
    (200, 200), ("200", 200), ("200B", 200), ("200MB", 200_000_000), ("200MiB", 200 * 2**20),
    ("5GB", 5 * 10**9), ("5GiB", 5 * 2**30), ("1.5GB", 1_500_000_000), ("16 GB", 16 * 10**9),
    ("512kB", 512_000), ("512KiB", 512 * 1024), ("2TB", 2 * 10**12), ("1gib", 2**30), ("4G", 4 * 10**9),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MB", "-5MB", "5XB", "five", True, None, [1], -1, float("nan"), "1e9"])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize("text, seconds", [("3s", 3), ("500ms", 0.5), ("1m", 60), (2, 2), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["0s", "-1s", "3h", "soon", True, 0, 61])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_a_full_file():
    config = parse_config(textwrap.dedent("""\
        profile: production
        budgets:
          node_heap: 150MiB
          docker: 4GB
        node:
          targets:
            - {name: api, url: http://127.0.0.1:3000/memory}
            - {name: worker, inspector: 127.0.0.1:9229}
        docker: {enabled: false, host: tcp://127.0.0.1:2375}
        ollama: {url: null}
        lmstudio: {url: "http://127.0.0.1:1234/"}
        process_groups:
          python-ml: {cmdline: "python.*(torch|uvicorn)"}
          xcode: {names: [Xcode, XCBBuildService]}
        system: {source: vm_stat}
        timeout: 1500ms
        """))
    assert config.profile == "production" and config.total_budget_name == "production_total"
    assert config.budgets["node_heap"] == 150 * 2**20 and config.budgets["docker"] == 4 * 10**9
    assert config.budgets["ollama"] == DEFAULT_BUDGETS["ollama"]
    assert [(t.name, t.url, t.inspector) for t in config.node.targets] == [
        ("api", "http://127.0.0.1:3000/memory", None), ("worker", None, "127.0.0.1:9229")]
    assert not config.docker.enabled and config.docker.host == "tcp://127.0.0.1:2375"
    assert config.ollama.url is None and config.lmstudio.url == "http://127.0.0.1:1234"
    groups = {g.name: g for g in config.process_groups}
    assert set(groups) == {"swift-frontend", "python-ml", "xcode"}
    assert groups["python-ml"].cmdline.search("python -m uvicorn app:main")
    assert groups["xcode"].names == ("Xcode", "XCBBuildService")
    assert config.system.source == "vm_stat" and config.timeout == 1.5


def test_default_group_can_be_removed():
    config = parse_config("process_groups:\n  swift-frontend: null\n  py: {names: [python3]}\n")
    assert [g.name for g in config.process_groups] == ["py"]


@pytest.mark.parametrize("text, key, line, reason", [
    ("profile: staging\n", "profile", 1, "must be one of development, production"),
    ("budgets:\n  docker: 5GB\n  dockr: 1GB\n", "budgets.dockr", 3, "unknown key"),
    ("budgets:\n  docker: lots\n", "budgets.docker", 2, "is not a size"),
    ("timeout: 3h\n", "timeout", 1, "duration"),
    ("node:\n  targets:\n    - {name: api}\n", "node.targets[0]", 3, "exactly one of url or inspector"),
    ("node:\n  targets:\n    - name: api\n      url: ftp://x\n", "node.targets[0].url", 4, "http:// or https://"),
    ("node:\n  targets:\n    - {name: a, url: 'http://x'}\n    - {name: a, url: 'http://y'}\n",
     "node.targets[1].name", 4, "duplicate target name"),
    ("node:\n  targets:\n    - {name: w, inspector: 'localhost'}\n", "node.targets[0].inspector", 3, "host:port"),
    ("docker:\n  enabled: maybe\n", "docker.enabled", 2, "true or false"),
    ("docker:\n  host: /var/run/docker.sock\n", "docker.host", 2, "unix://"),
    ("process_groups:\n  py: {cmdline: '(unclosed'}\n", "process_groups.py.cmdline", 2, "regular expression"),
    ("process_groups:\n  py: {}\n", "process_groups.py", 2, "give names"),
    ("system:\n  source: sysctl\n", "system.source", 2, "auto, procfs, vm_stat"),
    ("extra: 1\n", "extra", 1, "unknown key"),
    ("- a list\n", "", None, "must be a mapping"),
    ("budgets: [1, 2\n", "", 2, "not valid YAML"),
])
def test_bad_config_names_key_line_and_reason(text, key, line, reason):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yml")
    assert caught.value.key == key
    assert caught.value.line == line
    assert reason in caught.value.reason
    if line:
        assert str(caught.value).startswith(f"bad.yml:{line}: ")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "absent.yml")


def test_config_is_immutable():
    with pytest.raises(Exception):
        Config().profile = "production"


def test_node_target_heap_limit():
    """`heap_limit`: the V8 heap limit a target runs with (--max-old-space-size), for
    sources that do not tell it (issue 10, case 9)."""
    config = parse_config(
        "node:\n  targets:\n"
        "    - {name: api, url: 'http://127.0.0.1:3000/memory', heap_limit: 4GiB}\n"
        "    - {name: dbg, inspector: '127.0.0.1:9229', heap_limit: 2048MiB}\n"
        "    - {name: web, url: 'http://127.0.0.1:3001/metrics'}\n")
    assert [t.heap_limit for t in config.node.targets] == [4 * 2**30, 2048 * 2**20, None]
    for bad in ("0", "-1", "lots", "true"):
        with pytest.raises(ConfigError) as error:
            parse_config(f"node:\n  targets:\n    - {{name: api, url: 'http://127.0.0.1:3000/', heap_limit: {bad}}}\n")
        assert "node.targets[0].heap_limit" in str(error.value)
