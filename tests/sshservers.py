"""Fixtures for adapter tests: a real sshd on 127.0.0.1, for git over ssh.

The git source's ssh path (keys, known_hosts, strict host key checking) is
only worth testing against a real server, so this starts OpenSSH's sshd on a
free local port with keys made for the test. Without sshd installed the tests
are skipped locally, but fail under CI (where ``.ci/run`` installs it).
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path  # accepted by the server
    other_key: Path  # a valid key the server does not accept
    known_hosts: Path  # holds the server's host key

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}{path}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sshd exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(
        f"sshd did not accept connections within {START_TIMEOUT_SECONDS}s:\n{log.read_text()}"
    )


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if not SSHD.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SSHD} is missing in CI; .ci/run installs openssh-server")
        pytest.skip("sshd not installed: apt-get install openssh-server")
    base = tmp_path_factory.mktemp("sshd")
    host_key, client_key, other_key = base / "host_key", base / "client_key", base / "other_key"
    for key in (host_key, client_key, other_key):
        _keygen(key)
    authorized = base / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    port = _free_port()
    known_hosts = base / "known_hosts"
    host_public = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public}\n")
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "UseDNS no",
                f"PidFile {base / 'sshd.pid'}",
                "",
            ]
        )
    )
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    log = base / "sshd.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(process, port, log)
        yield SshServer(
            host="127.0.0.1",
            port=port,
            user=getpass.getuser(),
            client_key=client_key,
            other_key=other_key,
            known_hosts=known_hosts,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
