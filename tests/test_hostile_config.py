"""Hostile configuration files: refused at once, naming key and line, in bounded time and memory.

Each attack runs `aitools-exporter check-config` in a child process; a small parent
reads the child's wall time and peak resident set (getrusage of its children), so the
figure is the attack's alone.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from exporter.config import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, ConfigError, parse_config
from exporter.webconfig import WebConfigError, load_web_config

# Generous bounds for a shared 2-core machine: the exporter's own start (imports) costs
# some 0.5 s and 40 MB; before the fix the billion laughs took 14.7 s and 899 MB.
TIME_BOUND_SECONDS = 10
RSS_BOUND_BYTES = 150 * 2**20

MEASURE = textwrap.dedent("""\
    import json, resource, subprocess, sys, time
    started = time.monotonic()
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
    print(json.dumps({"seconds": time.monotonic() - started, "code": done.returncode, "stderr": done.stderr,
                      "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
    """)


def check_config(path):
    out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "exporter", "check-config",
                          "--config.file", str(path)], capture_output=True, text=True, timeout=180)
    return json.loads(out.stdout)


def laughs(levels, width):
    """The classic: each level an anchored list of `width` aliases of the level before."""
    names = "abcdefghijklmnop"
    lines = [f"a: &a [{','.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"{names[level]}: &{names[level]} [{','.join([f'*{names[level - 1]}'] * width)}]")
    return "\n".join(lines) + "\n"


ATTACKS = {
    # 9 levels of 9: 387 million strings once expanded (the 340-byte file of the issue: 14.7 s, 899 MB).
    "billion-laughs": (laughs(9, 9), "b[0]", 2, "aliases (*name) are not allowed"),
    # 10 levels of 10, a little larger: killed at 1.69 GB before the fix.
    "billion-laughs-432": (laughs(10, 10), "b[0]", 2, "aliases (*name) are not allowed"),
    "merge-key-alias": ("base: &b {profile: production}\nother:\n  <<: *b\n", "other.<<", 3, "aliases"),
    "nested-5000-lists": ("budgets: " + "[" * 5000 + "]" * 5000 + "\n", "budgets" + "[0]" * (MAX_DEPTH - 1), 1,
                          f"nested deeper than {MAX_DEPTH} levels"),
    "nested-5000-mappings": ("node:\n  targets: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
                             "node.targets" + ".a" * (MAX_DEPTH - 2), 2, f"nested deeper than {MAX_DEPTH} levels"),
    # 130,000 list items in 256 KiB: PyYAML parses in Python, some 10 s of work before the node cap.
    "130k-items": ("budgets: [" + "1," * 130_000 + "]\n", f"budgets[{MAX_NODES - 3}]", 1,
                   f"more than {MAX_NODES} keys, values and list items"),
    "25k-keys": ("".join(f"k{i}: 1\n" for i in range(25_000)), f"k{MAX_NODES // 2 - 1}", MAX_NODES // 2,
                 f"more than {MAX_NODES} keys"),
    "duplicate-key": ("profile: development\nbudgets:\n  docker: 4GB\n  docker: 40GB\n", "budgets.docker", 4,
                      "duplicate key"),
    "duplicate-top-key": ("timeout: 3s\nprofile: development\nprofile: production\n", "profile", 3, "duplicate key"),
    "port-over-65535": ("ollama:\n  url: http://127.0.0.1:99999\n", "ollama.url", 2, "Port out of range"),
    "port-not-a-number": ("node:\n  targets:\n    - name: api\n      url: http://127.0.0.1:30x0/\n",
                          "node.targets[0].url", 4, "not a usable URL"),
    "unparseable-url": ("lmstudio:\n  url: 'http://[::1/models'\n", "lmstudio.url", 2, "Invalid IPv6 URL"),
    "docker-port": ("docker:\n  host: tcp://127.0.0.1:70000\n", "docker.host", 2, "Port out of range"),
    "int-of-5000-digits": ("profile: development\ntimeout: " + "9" * 5000 + "\n", "timeout", 2,
                           "cannot read the value"),
    "impossible-date": ("timeout: 3s\nprofile: 2024-13-45\n", "profile", 2, "cannot read the value"),
    "back-reference": ("process_groups:\n  py:\n    cmdline: '(python)\\1'\n", "process_groups.py.cmdline", 3,
                       "invalid escape sequence"),
    "look-ahead": ("process_groups:\n  py: {cmdline: 'python(?=.*torch)'}\n", "process_groups.py.cmdline", 2,
                   "invalid perl operator"),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_hostile_file_is_refused_naming_key_and_line(name):
    text, key, line, reason = ATTACKS[name]
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "attack.yml")
    assert (caught.value.key, caught.value.line) == (key, line), str(caught.value)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"attack.yml:{line}: {key}: ")


@pytest.mark.parametrize("name", ["billion-laughs", "billion-laughs-432", "nested-5000-lists",
                                  "nested-5000-mappings", "130k-items", "25k-keys", "int-of-5000-digits", "duplicate-key",
                                  "port-over-65535", "unparseable-url",
                                  "back-reference"])
def test_check_config_refuses_the_attack_in_bounded_time_and_memory(tmp_path, name):
    text, key, line, reason = ATTACKS[name]
    path = tmp_path / f"{name}.yml"
    path.write_text(text)
    result = check_config(path)
    assert result["code"] == 2, result["stderr"]
    assert f"{path}:{line}: {key}: " in result["stderr"] and reason in result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert result["seconds"] < TIME_BOUND_SECONDS
    assert result["peak_rss"] < RSS_BOUND_BYTES, f"peak RSS {result['peak_rss'] / 2**20:.0f} MiB"


def test_mappings_nested_as_keys_are_counted_too():
    # `{{{…`: each mapping is the key of the one around it, so no key path grows.
    with pytest.raises(ConfigError) as caught:
        parse_config("{" * 200_000, "attack.yml")
    assert caught.value.line == 1 and f"nested deeper than {MAX_DEPTH} levels" in caught.value.reason


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yml"
    path.write_text("# padding\n" * (MAX_FILE_BYTES // 10 + 1) + "profile: production\n")
    result = check_config(path)
    assert result["code"] == 2
    assert f"{path}: the file is larger than {MAX_FILE_BYTES // 1024} KiB" in result["stderr"]
    with pytest.raises(ConfigError, match="larger than"):
        parse_config(path.read_text())


def test_anchors_without_aliases_and_the_nesting_the_file_needs_still_load():
    config = parse_config("profile: &p production\nnode:\n  targets:\n    - {name: api, url: 'http://[::1]:3000/m'}\n")
    assert config.profile == "production"
    assert config.node.targets[0].url == "http://[::1]:3000/m"
    assert parse_config("docker: {host: 'tcp://127.0.0.1:2375'}\n").docker.host == "tcp://127.0.0.1:2375"


@pytest.mark.parametrize("text, where, reason", [
    (laughs(9, 9), ":2: b[0]: ", "aliases"),
    ("basic_auth_users:\n  prometheus: '$2y$10$x'\n  prometheus: '$2y$10$y'\n", ":3: basic_auth_users.prometheus: ",
     "duplicate key"),
    ("tls_server_config: " + "[" * 5000 + "]" * 5000 + "\n", ":1: tls_server_config", "nested deeper"),
])
def test_the_web_config_file_is_read_as_strictly(tmp_path, text, where, reason):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    assert f"{path}{where}" in str(caught.value) and reason in str(caught.value)


def test_an_endless_file_is_not_read_to_its_end():
    from exporter.config import load_config

    with pytest.raises(ConfigError, match=f"larger than {MAX_FILE_BYTES // 1024} KiB"):
        load_config("/dev/zero")


def test_an_unknown_key_with_a_bracket_is_named_not_looped_on():
    """An unknown key holding "[" (no parent path to strip it to) is refused at once."""
    import time

    from exporter.config import ConfigError, parse_config

    started = time.monotonic()
    for text in ("docker: {'a[b': 1}\n", "node: {'x[': 1}\n", "'q[1': 2\n"):
        with pytest.raises(ConfigError, match="unknown key"):
            parse_config(text)
    assert time.monotonic() - started < 1
