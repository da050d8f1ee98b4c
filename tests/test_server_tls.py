"""TLS (vLLM's ``--ssl-certfile`` / ``--ssl-keyfile``, and client certificates with ``--ssl-ca-certs`` and
``--ssl-cert-reqs 2``), against certificates a throwaway CA (``trustme``) signs; bad settings refused by name."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trustme
from fake_runner import fake_engine
from server_utils import RunningServer

from jllm.config import load_config
from jllm.config_base import ConfigError
from jllm.server.connections import tls_context

MODEL = "scripted"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(folder / "cert.pem")
    cert.private_key_pem.write_to_path(folder / "key.pem")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    return {
        "ssl_certfile": str(folder / "cert.pem"),
        "ssl_keyfile": str(folder / "key.pem"),
        "ca": str(folder / "ca.pem"),
    }


def _completion(url: str, context: ssl.SSLContext) -> dict:
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=30) as reply:
        return json.loads(reply.read())


def test_the_api_is_served_over_tls(ca: trustme.CA, server_files: dict[str, str]) -> None:
    files = {k: v for k, v in server_files.items() if k != "ca"}
    with RunningServer(fake_engine(), load_config(None, served_model_name=MODEL, **files)) as running:
        assert running.url.startswith("https://")
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        assert _completion(running.url, trusting)["usage"]["completion_tokens"] == 2
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _completion(running.url, ssl.create_default_context())  # a client that does not trust the CA


def test_client_certificates_are_required_when_asked(ca: trustme.CA, server_files: dict[str, str]) -> None:
    files = {k: v for k, v in server_files.items() if k != "ca"}
    config = load_config(None, served_model_name=MODEL, ssl_ca_certs=server_files["ca"], ssl_cert_reqs=2, **files)
    with RunningServer(fake_engine(), config) as running:
        anonymous = ssl.create_default_context()
        ca.configure_trust(anonymous)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _completion(running.url, anonymous)
        identified = ssl.create_default_context()
        ca.configure_trust(identified)
        ca.issue_cert("client@example").configure_cert(identified)
        assert _completion(running.url, identified)["usage"]["completion_tokens"] == 2


def test_bad_tls_settings_are_refused_naming_the_key(tmp_path: Path, server_files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="ssl_keyfile=None is not allowed: comes with ssl_certfile"):
        load_config(None, ssl_certfile=server_files["ssl_certfile"])
    with pytest.raises(ConfigError, match="ssl_cert_reqs=2 is not allowed: needs ssl_ca_certs"):
        load_config(None, ssl_cert_reqs=2, ssl_certfile="c", ssl_keyfile="k")
    with pytest.raises(ConfigError, match="ssl_cert_reqs=5 is not allowed: must be 0"):
        load_config(None, ssl_cert_reqs=5)
    missing = load_config(None, ssl_certfile=str(tmp_path / "absent.pem"), ssl_keyfile=str(tmp_path / "absent.key"))
    with pytest.raises(ConfigError, match="ssl_certfile / ssl_keyfile / ssl_ca_certs: cannot be loaded"):
        tls_context(missing.server)  # at start-up, before any model loads
