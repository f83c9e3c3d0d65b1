"""Basic auth and content negotiation under attack: a flood of wrong logins, over-long
passwords, the scheme's case, and `Accept-Encoding: gzip;q=0`.

Before: bcrypt checks ran in parallel (8 attacking threads took both cores) and the
credential cache was emptied whole at 256 entries, so after a flood of wrong logins the
real Prometheus login took 15.7 s, past Prometheus's 10 s scrape timeout; a password of
73 bytes dropped the connection with no answer.
"""

import base64
import os
import threading
import time

import bcrypt
import httpx
import psutil
import pytest

from exporter.webconfig import EVICTED_WHEN_FULL, MAX_CACHED_CREDENTIALS, FairLock, WebConfig
from tests.parts.exporter_process import ExporterProcess

QUIET_BACKENDS = 'docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n'
PASSWORD = "prometheus-scrape-secret"
ATTACKERS = 8
FLOOD_SECONDS = 6


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def guarded_exporter(tmp_path):
    # Cost 10, as `htpasswd -nBC 10` writes it: some 70 ms a check here.
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode().replace("$2b$", "$2y$")
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    exporter = ExporterProcess(QUIET_BACKENDS, args=("--web.config.file", str(web)))
    try:
        for _ in range(200):  # /healthz is behind the login too: any answer means it is up
            try:
                httpx.get(exporter.url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield exporter
    finally:
        exporter.stop()


def test_a_flood_of_wrong_logins_does_not_hold_up_the_real_login(guarded_exporter):
    exporter = guarded_exporter
    stop = threading.Event()
    answers: list[int] = []

    def attack(number):
        with httpx.Client(timeout=30) as client:
            attempt = 0
            while not stop.is_set():
                attempt += 1
                # A fresh wrong password each time: nothing for a cache to remember.
                headers = {"Authorization": basic("prometheus" if attempt % 2 else "admin", f"guess-{number}-{attempt}")}
                try:
                    answers.append(client.get(exporter.url + "/metrics", headers=headers).status_code)
                except httpx.HTTPError:
                    answers.append(0)

    process = psutil.Process(exporter.process.pid)
    attackers = [threading.Thread(target=attack, args=(n,)) for n in range(ATTACKERS)]
    for thread in attackers:
        thread.start()
    try:
        time.sleep(1)  # the flood is under way
        cpu_before, wall_before = sum(process.cpu_times()[:2]), time.monotonic()
        login_seconds = []
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            started = time.monotonic()
            # As Prometheus scrapes: a new connection, the real credentials, a 10 s timeout.
            response = httpx.get(exporter.url + "/metrics", auth=("prometheus", PASSWORD), timeout=10)
            login_seconds.append(time.monotonic() - started)
            assert response.status_code == 200 and "aitools_build_info" in response.text
            time.sleep(0.5)
        cores = (sum(process.cpu_times()[:2]) - cpu_before) / (time.monotonic() - wall_before)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(30)
    print(f"figures: real login first {login_seconds[0]:.2f}s, worst {max(login_seconds):.2f}s; "
          f"{len(answers)} wrong logins, exporter CPU {cores:.2f} cores")
    assert len(answers) >= ATTACKERS and set(answers) == {401}, set(answers)
    # The first real login waits its turn behind the attackers' checks (some 70 ms each on
    # a quiet machine, 200 ms on a loaded one), then the scrape: within Prometheus's 10 s
    # timeout with room to spare. Later ones are cached.
    assert login_seconds[0] < 8, f"the real login took {login_seconds[0]:.1f}s under attack"
    assert max(login_seconds[1:]) < 3
    # One bcrypt check at a time: at most one core for bcrypt, plus the serving.
    assert cores < 1.4, f"exporter used {cores:.2f} cores"


def test_bcrypt_checks_are_granted_in_arrival_order():
    lock, order, inside = FairLock(), [], []

    def check(number):
        with lock:
            inside.append(number)
            assert len(inside) == 1, "two checks at once"
            order.append(number)
            time.sleep(0.002)
            inside.remove(number)

    threads = []
    with lock:  # a check under way; 20 more arrive one after another
        for number in range(20):
            threads.append(threading.Thread(target=check, args=(number,)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while len(lock._waiters) <= number and time.monotonic() < deadline:  # queued before the next comes
                time.sleep(0.001)
    for thread in threads:
        thread.join(10)
    assert order == list(range(20))


@pytest.mark.parametrize("length", [72, 73, 100, 4096])
def test_long_passwords_get_401_not_a_dropped_connection(guarded_exporter, length):
    response = httpx.get(guarded_exporter.url + "/metrics", auth=("prometheus", "p" * length), timeout=10)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    # and the server is still there for the real login
    assert httpx.get(guarded_exporter.url + "/metrics", auth=("prometheus", PASSWORD), timeout=10).status_code == 200


@pytest.mark.parametrize("scheme, status", [("Basic", 200), ("basic", 200), ("BASIC", 200), ("bAsIc", 200),
                                            ("Bearer", 401), ("Basicx", 401)])
def test_the_scheme_name_is_case_insensitive(guarded_exporter, scheme, status):
    token = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    response = httpx.get(guarded_exporter.url + "/metrics", headers={"Authorization": f"{scheme} {token}"}, timeout=10)
    assert response.status_code == status


def test_the_cache_keeps_real_logins_and_evicts_a_random_part_when_full():
    users = {f"user{n}": bcrypt.hashpw(f"pw{n}".encode(), bcrypt.gensalt(4)) for n in range(MAX_CACHED_CREDENTIALS + 40)}
    config = WebConfig(users=users)
    for n in range(MAX_CACHED_CREDENTIALS):
        assert config.authorized(basic(f"user{n}", f"pw{n}"))
    assert len(config._cache) == MAX_CACHED_CREDENTIALS
    # Wrong logins are never cached: they cannot push a real login out.
    for n in range(300):
        assert not config.authorized(basic("user0", f"wrong{n}"))
    assert len(config._cache) == MAX_CACHED_CREDENTIALS
    # Full: a random tenth goes, not the whole cache.
    assert config.authorized(basic(f"user{MAX_CACHED_CREDENTIALS}", f"pw{MAX_CACHED_CREDENTIALS}"))
    assert len(config._cache) == MAX_CACHED_CREDENTIALS - EVICTED_WHEN_FULL + 1
    for n in range(MAX_CACHED_CREDENTIALS + 1, MAX_CACHED_CREDENTIALS + 40):
        assert config.authorized(basic(f"user{n}", f"pw{n}"))
        assert MAX_CACHED_CREDENTIALS - EVICTED_WHEN_FULL < len(config._cache) <= MAX_CACHED_CREDENTIALS
    # A password past bcrypt's 72 bytes is a plain no, in process too.
    assert not config.authorized(basic("user0", "x" * 73))


@pytest.mark.parametrize("accept_encoding, gzipped", [
    ("gzip", True), ("gzip;q=0", False), ("gzip; q=0.0", False), ("GZIP;q=0.5", True),
    ("identity", False), ("*", True), ("*;q=0", False), ("gzip;q=0, *", False), ("deflate, gzip;q=1.0", True),
    ("gzip;q=nonsense", False), ("x-gzip", False),
])
def test_accept_encoding_honours_q_values(accept_encoding, gzipped):
    with ExporterProcess(QUIET_BACKENDS) as exporter:
        response = exporter.scrape(headers={"Accept-Encoding": accept_encoding})
        assert response.status_code == 200
        assert (response.headers.get("content-encoding") == "gzip") is gzipped
        assert "aitools_build_info" in response.text
