"""`bisenet service unit`: the systemd unit it prints has what a supervised edge box needs
(Type=notify, a watchdog, restart on failure, reload by SIGHUP, this venv's program and the
preset's absolute path), its ExecStart runs the preset from its WorkingDirectory as written,
systemd-analyze accepts it, and a missing preset is one line, exit 2."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from testkit.app_helpers import REPO, SAMPLE_VIDEO, tiny_onnx

PRESET = REPO / "configs" / "app" / "headless-file.yaml"


def unit_of(capsys, *argv) -> tuple[str, dict]:
    """The printed unit and its keys ({'Section.Key': [values]})."""
    assert main(["service", "unit", *argv]) == 0
    text = capsys.readouterr().out
    keys, section = {}, None
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            key, value = line.split("=", 1)
            keys.setdefault(f"{section}.{key}", []).append(value)
    return text, keys


def test_the_unit_runs_this_venv_under_systemds_watchdog_with_reload_and_restart(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, unit = unit_of(capsys, "--config", "headless-file", "--name", "door-cam", "--user", "edge",
                      "--watchdog-sec", "20")
    one = {k: v[0] for k, v in unit.items()}
    assert one["Service.Type"] == "notify" and one["Service.NotifyAccess"] == "main"
    assert one["Service.WatchdogSec"] == "20" and one["Service.Restart"] == "on-failure"
    assert one["Service.ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Service.User"] == "edge" and one["Service.SyslogIdentifier"] == "door-cam"
    assert one["Service.WorkingDirectory"] == str(tmp_path)
    assert one["Install.WantedBy"] == "multi-user.target"
    words = shlex.split(one["Service.ExecStart"])
    assert Path(words[0]).is_absolute() and os.access(words[0], os.X_OK)
    assert Path(words[0]).parent == Path(os.path.abspath(sys.executable)).parent   # this venv's
    assert words[-3:] == ["run", "--config", str(PRESET)]
    assert one["Service.NoNewPrivileges"] == "yes" and one["Service.ProtectSystem"] == "full"
    # Two malloc arenas, not one per thread: the soak's RSS stays flat (docs/service.md, Soak)
    assert "MALLOC_ARENA_MAX=2" in shlex.split(one["Service.Environment"])
    # Cameras and GPUs (/dev), Jetson's CSI cameras (/tmp/argus_socket), a venv under /home:
    assert not {"Service.PrivateDevices", "Service.PrivateTmp", "Service.ProtectHome"} & set(unit)


def test_a_missing_preset_is_one_line_exit_2(capsys, tmp_path):
    assert main(["service", "unit", "--config", str(tmp_path / "nope.yaml")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [f"bisenet service: error: --config {tmp_path / 'nope.yaml'}: "
                                                 "no such file (presets: desktop-webcam, headless-file, "
                                                 "jetson-csi, street-analytics)"]


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
def test_exec_start_runs_the_preset_from_the_working_directory(capsys, tmp_path, monkeypatch):
    """What systemd would start, without systemd: the ExecStart words in the WorkingDirectory
    (a source and a model added, as the preset leaves them to the command line); the preset's
    relative outputs land there."""
    monkeypatch.chdir(tmp_path)
    _, unit = unit_of(capsys, "--config", str(PRESET))
    workdir = Path(unit["Service.WorkingDirectory"][0])
    command = [*shlex.split(unit["Service.ExecStart"][0]), "--source", str(SAMPLE_VIDEO),
               "--model", str(tiny_onnx((64, 96))), "--max-frames", "3", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("NOTIFY_SOCKET", None)
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir / "artifacts" / "overlay.mp4").is_file() and (workdir / "artifacts" / "latency.csv").is_file()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verifies_the_unit(capsys, tmp_path, monkeypatch):
    presets = tmp_path / "my presets"   # a space: ExecStart's quoting is checked too
    presets.mkdir()
    shutil.copy(PRESET, presets / "street.yaml")
    monkeypatch.chdir(presets)
    text, _ = unit_of(capsys, "--config", str(presets / "street.yaml"), "--name", "bisenet-street")
    path = tmp_path / "bisenet-street.service"
    path.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    about_it = [line for line in (done.stdout + done.stderr).splitlines() if path.name in line]
    assert done.returncode == 0 and about_it == [], done.stdout + done.stderr
    assert f'--config "{presets / "street.yaml"}"' in text and f"\nWorkingDirectory={presets}\n" in text
