"""The recording format (exporter/recording.py): what is kept of a machine, and what a bad
recording gets: a clear error naming the key, at a bounded cost."""

from __future__ import annotations

import json
import time

import pytest

from exporter.patterns import compile_pattern
from exporter.recording import (MAX_BYTES, REDACTED, Answer, Command, Process, Recording, RecordingError,
                                command_key, http_key, kept_environment, load, numbers_only, parse,
                                prune_docker, redact_arguments, save)


def test_keys():
    assert command_key(["/usr/sbin/sysctl", "-n", "vm.swapusage"]) == "sysctl -n vm.swapusage"
    assert command_key(["vm_stat"]) == "vm_stat"
    assert http_key("docker", "get", "/v1.41/containers/json?all=0&filters=x") == "docker GET /containers/json"
    assert http_key("docker", "GET", "/v1.41/containers/abc/stats?stream=false") == "docker GET /containers/abc/stats"
    assert http_key("ollama", "GET", "/api/ps") == "ollama GET /api/ps"
    assert http_key("node:api", "GET", "/v1.2/x") == "node:api GET /v1.2/x"  # only Docker's prefix goes


def test_a_token_in_an_argument_never_reaches_the_recording():
    python_ml = compile_pattern(r"python.*(uvicorn|torch)")
    argv = ["/Users/ana/venv/bin/python", "-m", "uvicorn", "app:main", "--api-key", "sk-live-9f8e7d6c5b4a39281706",
            "--token=abc", "--port", "8000", "ghp_1234567890abcdefghijklmnopqrstuv"]
    kept = redact_arguments(argv, [python_ml], home="/Users/ana")
    assert kept[0] == "~/venv/bin/python"
    assert kept[1:4] == ["-m", "uvicorn", REDACTED]  # the match ends at uvicorn
    text = " ".join(kept)
    for secret in ("sk-live", "abc", "ghp_"):
        assert secret not in text
    # Inside a match a secret-looking word is still redacted.
    everything = compile_pattern(r"python.*")
    kept = redact_arguments(argv, [everything], home="/Users/ana")
    assert kept == ["~/venv/bin/python", "-m", "uvicorn", "app:main", "--api-key", REDACTED, REDACTED, "--port",
                    "8000", REDACTED]
    # No pattern: the program only.
    assert redact_arguments(argv, [], home="/Users/ana") == ["~/venv/bin/python"] + [REDACTED] * 9
    # The replayed command line matches the pattern as the live one did.
    assert python_ml.search(" ".join(redact_arguments(argv, [python_ml], home="/Users/ana")))


def test_lm_studio_helper_path_is_kept_for_its_app():
    lms = compile_pattern(r"\.lmstudio/")
    argv = ["/Users/ana/.lmstudio/.internal/utils/node", "/Users/ana/.lmstudio/.internal/llmworker.js"]
    # The program's path is what the pattern matches: the rest is not needed.
    kept = redact_arguments(argv, [lms], home="/Users/ana")
    assert kept == ["~/.lmstudio/.internal/utils/node", REDACTED]
    assert lms.search(" ".join(kept))


def test_environment_and_engine_answers_keep_only_what_is_read():
    assert kept_environment({"OLLAMA_CONTEXT_LENGTH": "8192", "OLLAMA_HOST": "0.0.0.0", "AWS_SECRET": "x",
                             "OLLAMA_KV_CACHE_TYPE": "q8_0; rm -rf /"}) == {"OLLAMA_CONTEXT_LENGTH": "8192"}
    containers = [{"Id": "abc", "Names": ["/db"], "Image": "postgres:15", "Command": "postgres --password=x",
                   "Labels": {"com.docker.compose.project": "supabase", "secret.label": "y"}, "State": "running"}]
    assert prune_docker("/v1.41/containers/json", containers) == [
        {"Id": "abc", "Names": ["/db"], "Image": "postgres:15", "Labels": {"com.docker.compose.project": "supabase"},
         "State": "running"}]
    info = {"MemTotal": 8 * 2**30, "NCPU": 8, "HttpProxy": "http://user:pw@proxy", "Name": "docker-desktop"}
    assert prune_docker("/info", info) == {"MemTotal": 8 * 2**30, "NCPU": 8}
    assert numbers_only({"heapUsed": 5, "env": {"TOKEN": "x"}, "list": ["a", 1]}) == {
        "heapUsed": 5, "env": {"TOKEN": ""}, "list": ["", 1]}


def test_save_and_load_round_trip(tmp_path):
    recording = Recording("darwin", "Mac15,9", "2026-12-01T10:00:00Z", arch="arm64",
                          commands={"vm_stat": Command("Mach Virtual Memory Statistics: ...")},
                          processes=[Process(1, 0, "launchd", ["/sbin/launchd"], 20_000_000, 15_000_000)],
                          http={"ollama GET /api/ps": Answer(200, {"models": []})},
                          environment={7: {"OLLAMA_CONTEXT_LENGTH": "8192"}})
    save(recording, tmp_path)
    again = load(tmp_path)
    assert again == recording


@pytest.mark.parametrize("document, where", [
    ([], "(top): must be an object"),
    ({"format": 2, "platform": "darwin"}, "format: must be 1"),
    ({"format": 1, "platform": "windows"}, "platform: must be one of darwin, linux"),
    ({"format": 1, "platform": "darwin", "processes": [{"pid": -1}]}, "processes[0].pid: must be a whole number"),
    ({"format": 1, "platform": "darwin", "processes": [{"pid": 1, "rss": 10**30}]}, "processes[0].rss"),
    ({"format": 1, "platform": "darwin", "processes": [{"pid": True}]}, "processes[0].pid"),
    ({"format": 1, "platform": "darwin", "processes": [{"pid": 1, "cmdline": "ls -l"}]}, "processes[0].cmdline"),
    ({"format": 1, "platform": "darwin", "commands": {"vm_stat": {"stdout": 5}}}, "commands['vm_stat'].stdout"),
    ({"format": 1, "platform": "darwin", "http": {"ollama": {"status": 200}}}, "'SOURCE METHOD /path'"),
    ({"format": 1, "platform": "linux", "environment": {"x": {}}}, "environment['x']: the key must be a pid"),
])
def test_bad_recordings_name_the_key(document, where):
    with pytest.raises(RecordingError, match=where.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        parse(document)


def test_hostile_files_are_refused_quickly(tmp_path):
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "recording.json").write_text("[" * 200_000 + "]" * 200_000)
    started = time.monotonic()
    with pytest.raises(RecordingError, match="not JSON"):
        load(tmp_path / "deep")
    (tmp_path / "huge").mkdir()
    with open(tmp_path / "huge" / "recording.json", "wb") as handle:
        handle.truncate(MAX_BYTES + 10)
    with pytest.raises(RecordingError, match="larger than 64 MiB"):
        load(tmp_path / "huge")
    with pytest.raises(RecordingError, match="cannot read"):
        load(tmp_path / "missing")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "recording.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(RecordingError, match="not JSON"):
        load(tmp_path / "text")
    assert time.monotonic() - started < 5
    assert json.loads(json.dumps({"ok": 1}))
