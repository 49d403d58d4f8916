"""Safe defaults and the optional protections of /metrics, with real requests."""

from __future__ import annotations

import base64
import logging
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.monitor.sinks.endpoint import EndpointSecurity
from gradwatch.monitor.sinks.prometheus import PrometheusSink

from .lightning_models import lightning, regression_module, trainer

ROOT = Path(__file__).resolve().parents[1]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(name: str, cwd: Path) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}", cwd=cwd)


def make_cert(name: str, ca: str, extension: str, cwd: Path) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extension + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA with a server certificate for 127.0.0.1 and a client certificate, and an
    unrelated CA."""
    cwd = tmp_path_factory.mktemp("pki")
    make_ca("ca", cwd)
    make_ca("other-ca", cwd)
    make_cert("server", "ca", "subjectAltName=IP:127.0.0.1", cwd)
    make_cert("client", "ca", "extendedKeyUsage=clientAuth", cwd)
    return cwd


def get(url: str, auth: tuple[str, str] | None = None, context=None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


@pytest.mark.unit
def test_default_endpoint_binds_to_loopback_only():
    assert TrainingDiagnostics().options.prometheus_addr == "127.0.0.1"
    sink = PrometheusSink("r")
    sink.serve(0)
    try:
        assert sink._server.server_address[0] == "127.0.0.1"
    finally:
        sink.close()


@pytest.mark.unit
def test_basic_auth_rejects_missing_and_wrong_credentials():
    sink = PrometheusSink("r")
    port = sink.serve(0, security=EndpointSecurity(basic_auth=("scraper", "s3cret")))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        assert get(url)[0] == 401
        assert get(url, ("scraper", "wrong"))[0] == 401
        status, text = get(url, ("scraper", "s3cret"))
        assert status == 200 and "gradwatch_layers" in text
    finally:
        sink.close()
    assert "s3cret" not in repr(EndpointSecurity(basic_auth=("scraper", "s3cret")))


@pytest.mark.unit
def test_tls_with_client_certificates(pki):
    sink = PrometheusSink("r")
    security = EndpointSecurity(certfile=str(pki / "server.pem"), keyfile=str(pki / "server.key"),
                                client_cafile=str(pki / "ca.pem"))
    port = sink.serve(0, security=security)
    url = f"https://127.0.0.1:{port}/metrics"

    def client(ca: str, with_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki / f"{ca}.pem"))
        if with_cert:
            context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        return context

    try:
        status, text = get(url, context=client("ca", with_cert=True))
        assert status == 200 and "gradwatch_layers" in text
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            get(url, context=client("other-ca", with_cert=True))  # not the server we trust
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            get(url, context=client("ca", with_cert=False))  # no client certificate
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            get(f"http://127.0.0.1:{port}/metrics")  # plain HTTP to a TLS port
    finally:
        sink.close()


@pytest.mark.unit
def test_bad_security_options_fail_at_construction(pki):
    with pytest.raises(ValueError, match="prometheus_tls_cert and prometheus_tls_key"):
        TrainingDiagnostics(prometheus_tls_cert=str(pki / "server.pem"))
    with pytest.raises(ValueError, match="prometheus_basic_auth"):
        TrainingDiagnostics(prometheus_basic_auth=("user", ""))
    with pytest.raises(ValueError, match="pushgateway_basic_auth"):
        TrainingDiagnostics(pushgateway_basic_auth="user:password")


@pytest.mark.training
def test_callback_serves_behind_basic_auth_and_never_logs_secrets(tmp_path, caplog):
    pl = lightning()
    seen = {}

    class Scrape(pl.Callback):
        def on_train_end(self, trainer, module):
            seen["anonymous"] = get(diagnostics.prometheus_url)[0]
            seen["authorized"] = get(diagnostics.prometheus_url, ("prom", "hunter2"))

    diagnostics = TrainingDiagnostics(
        prometheus_port=0, prometheus_basic_auth=("prom", "hunter2"), tensorboard=False,
        alertmanager_url="http://alice:topsecret@127.0.0.1:9/")  # nothing listens there
    module = regression_module()
    torch.nn.init.zeros_(module.net[2].weight)  # the init audit alerts: something to send
    with caplog.at_level(logging.DEBUG):
        trainer(callbacks=[diagnostics, Scrape()], root=str(tmp_path), max_steps=3,
                logger=False).fit(module)
    assert seen["anonymous"] == 401
    assert seen["authorized"][0] == 200 and "gradwatch_step" in seen["authorized"][1]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1:9" in logged  # the dead Alertmanager was reported...
    assert "topsecret" not in logged and "hunter2" not in logged  # ...without its secrets


@pytest.mark.unit
def test_nothing_read_from_disk_or_network_is_unpickled_or_evaluated():
    risky = re.compile(r"\b(pickle|marshal|eval|exec)\b|yaml\.load\(|torch\.load\(")
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for folder in ("monitor", "callbacks")
                 for path in (ROOT / folder).rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if risky.search(line.split("#")[0])]
    assert offenders == []
