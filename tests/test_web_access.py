"""Access control: loopback by default, TLS and basic auth from an exporter-toolkit web config."""

import base64
import socket
import ssl
import subprocess
import sys
import time

import bcrypt
import httpx
import pytest
import trustme

from exporter.cli import DEFAULT_LISTEN_ADDRESS
from exporter.webconfig import WebConfigError, load_web_config
from tests.parts.exporter_process import ExporterProcess

QUIET_BACKENDS = 'docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n'


def test_default_listen_address_is_loopback_only():
    assert DEFAULT_LISTEN_ADDRESS == "127.0.0.1:8730"


@pytest.fixture
def tls_files(tmp_path):
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return tmp_path, ca, server_cert


def write_web_config(folder, users=None, tls=True, extra=""):
    lines = []
    if tls:
        lines += ["tls_server_config:", "  cert_file: server.crt", "  key_file: server.key"]
    if users:
        lines.append("basic_auth_users:")
        for user, password in users.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")
            lines.append(f"  {user}: '{hashed}'")
    path = folder / "web.yml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_tls_and_basic_auth(tls_files):
    folder, ca, server_cert = tls_files
    web = write_web_config(folder, users={"prometheus": "s3cret-pass"},
                           extra="http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n")
    exporter = ExporterProcess(QUIET_BACKENDS, args=("--web.config.file", str(web)))
    exporter.url = exporter.url.replace("http://", "https://")
    try:
        context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
        with httpx.Client(verify=context, timeout=15) as client:
            deadline_ok = False
            for _ in range(100):
                try:
                    client.get(exporter.url + "/healthz")
                    deadline_ok = True
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            assert deadline_ok, exporter.log()

            # no credentials, wrong password, unknown user: refused
            anonymous = client.get(exporter.url + "/metrics")
            assert anonymous.status_code == 401
            assert anonymous.headers["www-authenticate"].startswith("Basic")
            assert client.get(exporter.url + "/metrics", auth=("prometheus", "wrong")).status_code == 401
            assert client.get(exporter.url + "/metrics", auth=("intruder", "s3cret-pass")).status_code == 401
            assert client.get(exporter.url + "/metrics", headers={"Authorization": "Basic !!!"}).status_code == 401

            served = client.get(exporter.url + "/metrics", auth=("prometheus", "s3cret-pass"))
            assert served.status_code == 200 and "aitools_build_info" in served.text
            assert served.headers["x-content-type-options"] == "nosniff"
            # cached verification answers the same
            assert client.get(exporter.url + "/metrics", auth=("prometheus", "s3cret-pass")).status_code == 200

        # TLS is served with the given certificate
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                presented = tls.getpeercert(binary_form=True)
        expected = ssl.PEM_cert_to_DER_cert(server_cert.cert_chain_pems[0].bytes().decode())
        assert presented == expected

        # plain HTTP to the TLS port is not served
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=3)
        # a client that does not trust the CA refuses the connection
        with pytest.raises(httpx.ConnectError):
            httpx.get(exporter.url + "/metrics", timeout=3)
    finally:
        exporter.stop()


def test_basic_auth_without_tls(tmp_path):
    web = write_web_config(tmp_path, users={"alice": "pw"}, tls=False)
    exporter = ExporterProcess(QUIET_BACKENDS, args=("--web.config.file", str(web)))
    try:
        for _ in range(100):
            try:
                status = httpx.get(exporter.url + "/healthz", timeout=2).status_code
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert status == 401  # every path is behind the credentials, as with exporter-toolkit
        assert httpx.get(exporter.url + "/metrics", auth=("alice", "pw"), timeout=15).status_code == 200
        assert httpx.get(exporter.url + "/metrics", auth=("alice", "nope"), timeout=15).status_code == 401
    finally:
        exporter.stop()


def test_bad_web_config_is_refused_at_start(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: plaintext\n")
    result = subprocess.run([sys.executable, "-m", "exporter", "--web.config.file", str(web)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "basic_auth_users.alice is not a bcrypt hash" in result.stderr


@pytest.mark.parametrize("text, message", [
    ("tls_server_config:\n  cert_file: a.crt\n", "needs cert_file and key_file"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "cannot load cert_file"),
    ("tls_config: {}\n", "unknown key 'tls_config'"),
    ("basic_auth_users: [alice]\n", "must map user names"),
])
def test_web_config_errors(tmp_path, text, message):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError, match=message):
        load_web_config(path)


def test_authorization_header_parsing(tmp_path):
    config = load_web_config(write_web_config(tmp_path, users={"bob": "pa:ss"}, tls=False))
    header = "Basic " + base64.b64encode(b"bob:pa:ss").decode()
    assert config.authorized(header)
    assert not config.authorized(None)
    assert not config.authorized("Bearer x")
    assert not config.authorized("Basic " + base64.b64encode(b"bob:pa").decode())
    assert not config.authorized("Basic " + base64.b64encode(b"\xff\xfe").decode())
