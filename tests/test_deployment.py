"""The Flower Deployment Engine on 127.0.0.1: TLS, SuperNode authentication, a real
2-round run across SuperLink/SuperNode processes, and clean-up (deploy/)."""

import ipaddress
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key, \
    load_ssh_public_key

from deploy.credentials import generate_credentials, generate_supernode_key
from deploy.local_deployment import (CONNECTION_NAME, MARKER_ENV, DeploymentFailed, LocalDeployment,
                                     _parse_json_output)
from experiments.processes import marked_processes

ROOT = Path(__file__).resolve().parent.parent


def deployment_processes(dep: LocalDeployment) -> list[str]:
    """Processes of this deployment only (other engineers' Flower runs may be alive):
    ``pgrep -af <work_dir>`` (SuperLink, SuperNodes, flwr run carry it in their command
    line) plus anything carrying the deployment's environment marker (SuperExec,
    flwr-serverapp, flwr-clientapp)."""
    out = subprocess.run(["pgrep", "-af", str(dep.work_dir)], capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if "pgrep" not in line]
    return lines + [f"{pid} (marked)" for pid in marked_processes(MARKER_ENV, dep.marker)]


# ---------------------------------------------------------------------------- fast


def test_credentials_chain_sans_and_key_formats(tmp_path):
    creds = generate_credentials(tmp_path / "c", 2, hosts=("127.0.0.1", "localhost", "10.1.2.3",
                                                              "superlink.lab.example"))
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                            ipaddress.ip_address("10.1.2.3")}
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink.lab.example"}
    # Python's own TLS stack accepts the pair (what uvicorn and httpx use)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(creds.server_cert, creds.server_key)
    ssl.create_default_context(cafile=str(creds.ca_cert))
    assert isinstance(load_pem_private_key(creds.server_key.read_bytes(), None), ec.EllipticCurvePrivateKey)
    # SuperNode keys: OpenSSH, NIST P-384, private files not readable by others
    assert len(creds.supernode_keys) == 2
    for key in creds.supernode_keys:
        private = load_ssh_private_key(key.private.read_bytes(), None)
        public = load_ssh_public_key(key.public.read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert key.private.stat().st_mode & 0o077 == 0
    assert creds.ca_key.stat().st_mode & 0o077 == 0
    a, b = creds.supernode_keys
    assert a.public.read_bytes() != b.public.read_bytes()


def test_credentials_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="num_supernodes.*-1"):
        generate_credentials(tmp_path, -1)
    with pytest.raises(ValueError, match="hosts"):
        generate_credentials(tmp_path, 1, hosts=())
    with pytest.raises(ValueError, match="'bad host'"):
        generate_credentials(tmp_path, 1, hosts=("bad host",))
    with pytest.raises(ValueError, match="valid_days.*0"):
        generate_credentials(tmp_path, 1, valid_days=0)


def test_parse_json_output_skips_banner_lines():
    text = "Using SuperLink: x (127.0.0.1:1)\n{\n  \"success\": true,\n  \"node-id\": 42\n}\n"
    assert _parse_json_output(text) == {"success": True, "node-id": 42}
    with pytest.raises(ValueError, match="no JSON"):
        _parse_json_output("nothing here\n")


def test_local_deployment_validates_arguments(tmp_path):
    creds = generate_credentials(tmp_path / "c", 1)
    with pytest.raises(ValueError, match="pyproject.toml"):
        LocalDeployment(tmp_path / "w", creds, project_dir=tmp_path)
    dep = LocalDeployment(tmp_path / "w", creds)
    with pytest.raises(RuntimeError, match="not been started"):
        dep.address
    dep.port = 1  # no process is started by the checks below
    with pytest.raises(ValueError, match="partition_id=2"):
        dep.start_supernode(creds.supernode_keys[0].private, 2, 2)
    with pytest.raises(ValueError, match="missing"):
        dep.start_supernode(tmp_path / "missing", 0, 1)
    assert dep.leftover_processes() == []


def test_credentials_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deploy", "credentials", str(tmp_path / "c"),
                           "--supernodes", "3", "--host", "192.168.7.7"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "192.168.7.7, 127.0.0.1, localhost" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
        ["ca.crt", "ca.key", "server.crt", "server.key"]
        + [f"supernode-{i}{ext}" for i in range(3) for ext in ("", ".pub")])


def test_run_deployment_rejects_mismatched_supernodes_before_starting(tmp_path):
    from deploy.run import run_deployment

    with pytest.raises(ValueError, match=r"num_supernodes \(3\).*num-clients \(2\)"):
        run_deployment({"num-clients": 2, "out-dir": str(tmp_path / "o")}, work_dir=tmp_path / "w",
                       num_supernodes=3)
    assert not (tmp_path / "w").exists()


def test_connection_name_is_written_to_private_flower_config(tmp_path):
    import tomllib

    creds = generate_credentials(tmp_path / "c", 0)
    dep = LocalDeployment(tmp_path / "w", creds)
    dep.port = 12345  # write the config without starting anything
    dep._write_cli_config()
    config = tomllib.loads((dep.cli_home / "config.toml").read_text())
    assert config["superlink"]["default"] == CONNECTION_NAME
    assert config["superlink"][CONNECTION_NAME] == {"address": "127.0.0.1:12345",
                                                    "root-certificates": str(creds.ca_cert)}
    with pytest.raises(DeploymentFailed, match="exited with code"):
        dep._wait_health(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]), timeout=10)


# ---------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_superlink_speaks_only_tls_and_is_stopped_on_error(tmp_path):
    import httpx

    creds = generate_credentials(tmp_path / "c", 0)
    foreign = generate_credentials(tmp_path / "foreign", 0)
    dep = LocalDeployment(tmp_path / "w", creds)
    with pytest.raises(RuntimeError, match="boom"):
        with dep:
            dep.start_superlink()
            ok = httpx.get(f"https://{dep.address}/health",
                           verify=ssl.create_default_context(cafile=str(creds.ca_cert)), timeout=5)
            assert ok.is_success
            with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
                httpx.get(f"http://{dep.address}/health", timeout=5)
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(f"https://{dep.address}/health",
                          verify=ssl.create_default_context(cafile=str(foreign.ca_cert)), timeout=5)
            assert deployment_processes(dep)
            raise RuntimeError("boom")
    assert deployment_processes(dep) == []


@pytest.mark.slow
def test_deployment_two_rounds_with_tls_and_supernode_auth(tmp_path):
    creds = generate_credentials(tmp_path / "credentials", 2)
    rogue = generate_supernode_key(tmp_path / "rogue" / "key", tmp_path / "rogue" / "key.pub")
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with LocalDeployment(tmp_path / "work", creds) as dep:
        dep.start_superlink()
        registered = {dep.register_supernode(k.public, name=f"supernode-{i}")
                      for i, k in enumerate(creds.supernode_keys)}
        assert len(registered) == 2
        # a SuperNode whose key was never registered, and one with no key at all
        intruders = [dep.start_supernode(rogue.private, 0, 2, name="rogue"),
                     dep.start_supernode(None, 1, 2, name="keyless")]
        for i, key in enumerate(creds.supernode_keys):
            dep.start_supernode(key.private, i, 2)
        for proc in intruders:  # refused within a bounded time: they exit on their own
            assert proc.wait(timeout=90) != 0
        assert "[code: 2004] Failed to activate SuperNode" in dep.log_text("rogue")
        assert "All SuperNodes must be registered via the CLI" in dep.log_text("keyless")
        nodes = dep.wait_for_online(2)
        assert {int(n["node-id"]) for n in nodes} == registered  # no intruder is ever listed
        assert all(n["status"] == "online" for n in nodes)
        startup = time.perf_counter() - t0

        rows_seen = []
        result = dep.run_app({"num-server-rounds": 2, "num-clients": 2, "local-steps": 2, "attack-every": 0,
                              "out-dir": str(out)}, timeout=240, on_row=rows_seen.append)
        assert [r["round"] for r in result.rows] == [1, 2] == [r["round"] for r in rows_seen]
        assert all(r["clients_ok"] == 2 and r["clients_failed"] == 0 for r in result.rows)
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in result.rows)
        assert json.loads((out / "summary.json").read_text())["status"] == "completed"
        # both SuperNodes ran the ClientApp and sent a reply in each round
        for i in range(2):
            assert dep.log_text(f"supernode-{i}").count("Sent successfully") == 2
        assert deployment_processes(dep)
    assert deployment_processes(dep) == []
    print(f"startup {startup:.1f}s, run {result.seconds:.1f}s, total {time.perf_counter() - t0:.1f}s")

