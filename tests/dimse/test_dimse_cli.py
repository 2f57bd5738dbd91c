"""`medgate dicom-scp`: the SCP alone, in the foreground, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.conftest import ROOT, tool, wait_for
from tests.dimse.conftest import free_port


def test_dicom_scp_command_answers_echo_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
    env.update(MEDGATE_DATA_DIR=str(tmp_path / "var"))
    log = tmp_path / "scp.log"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "dicom-scp", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def echo() -> subprocess.CompletedProcess:
        return subprocess.run([tool("echoscu"), "-aec", "MEDGATE", "127.0.0.1", str(port)],
                              capture_output=True, text=True, timeout=30)

    try:
        wait_for(lambda: "listening on" in log.read_text(), timeout=60, what="the SCP to listen")
        # MEDGATE_DICOM_HOST unset: the SCP listens where HTTP does, on 127.0.0.1
        assert f"listening on 127.0.0.1:{port}" in log.read_text()
        refused = echo()
        assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
        # a peer added while the SCP runs is accepted on its next association
        subprocess.run([sys.executable, "-m", "app.cli", "peers", "add", "ECHOSCU", "--host",
                        "127.0.0.1"], env=env, cwd=ROOT, check=True, capture_output=True)
        accepted = echo()
        assert accepted.returncode == 0, accepted.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert "stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
