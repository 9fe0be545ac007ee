"""The user's path: `ray job submit` of the main job to a `ray start --head` cluster, token auth on.

In its own module: `ray stop` ends every Ray process of this machine, so no other test's cluster
may be alive while it runs.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from ssagan_dist import checkpointing
from tests.test_train import FAST, data_args

REPO = Path(__file__).resolve().parents[1]


def test_ray_job_submit_to_a_head_node(sky, tmp_path):
    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    gcs, dash = port(), port()
    bin_dir = Path(sys.executable).parent
    # As after `source .venv/bin/activate`: the job's `python` is this environment's.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = [str(bin_dir / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
             "--disable-usage-stats"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        submit = [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                  "--working-dir", str(REPO), "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"), "--",
                  "python", "-m", "ssagan_dist.train", "--config", "tiny_cpu", *FAST, *data_args(sky),
                  f"run.storage_path={tmp_path / 'runs'}", "run.name=submitted"]
        done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout + done.stderr
        # Without the token the job server refuses: auth is really on.
        env_no = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        env_no["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
        listing = subprocess.run([str(bin_dir / "ray"), "job", "list", "--address", f"http://127.0.0.1:{dash}"],
                                 env=env_no, capture_output=True, text=True, timeout=120)
        assert listing.returncode != 0
    finally:
        subprocess.run([str(bin_dir / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    trainer, cfg, state = checkpointing.load_trainer(str(tmp_path / "runs" / "submitted"))
    assert state["step"] == 2 and cfg.model.name == "ssagan"
