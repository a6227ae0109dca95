"""serve's start-up gate: ``flowdiff config check`` finds every problem ``serve`` would hit
before READY, ``serve`` exits 2 naming the key (never a traceback), and a lock file in
``state_dir`` refuses a second daemon. Each bad config is one operator mistake."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from flowdiff.cli import main

REPO = Path(__file__).resolve().parents[1]


def serve_yaml(tiny_model: Path, *, serve: str = "", listen: str = "127.0.0.1:0") -> str:
    return (f"serve: {{model: {tiny_model}, streams: 2, pace: fast, max_records: 16, "
            f"threads: 1, sampler: {{kind: replacement, steps: 2}}{serve}}}\n"
            f"metrics: {{listen: '{listen}'}}\n")


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _cases(tiny_model: Path, tmp_path: Path, busy_port: int) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, expected text of the one error line)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {
        "listen IP 256.1.1.1": (serve_yaml(tiny_model, listen="256.1.1.1:9999").encode(),
                                ":2: metrics.listen: '256.1.1.1' is not a valid IP address"),
        "unresolvable host": (serve_yaml(tiny_model, listen="no-such-host.invalid:9999").encode(),
                              ":2: metrics.listen: host 'no-such-host.invalid' does not resolve"),
        "port in use": (serve_yaml(tiny_model, listen=f"127.0.0.1:{busy_port}").encode(),
                        f":2: metrics.listen: cannot listen on 127.0.0.1:{busy_port}"),
        "empty file": (b"# only a comment\n", ": no settings (the file is empty"),
        "state_dir is a file": (serve_yaml(tiny_model, serve=f", state_dir: {a_file}").encode(),
                                f":1: serve.state_dir: {a_file} exists and is not a directory"),
        "missing model": (serve_yaml(tmp_path / "no-model").encode(),
                          ":1: serve.model: "),
        "bogus device": (serve_yaml(tiny_model, serve=", device: bogus").encode(),
                         ":1: serve.device: 'bogus' is not a torch device"),
        "non-UTF-8": (serve_yaml(tiny_model).encode() + b"# caf\xe9\n",
                      ":3: not UTF-8 text (byte 0xe9"),
        "exporter host": (serve_yaml(tiny_model).encode() + b"exporters: [{kind: kafka, "
                          b"bootstrap_servers: 'no-such-host.invalid:9092'}]\n",
                          ":3: exporters[0].bootstrap_servers: host 'no-such-host.invalid' "
                          "does not resolve"),
    }


CASES = ["listen IP 256.1.1.1", "unresolvable host", "port in use", "empty file",
         "state_dir is a file", "missing model", "bogus device", "non-UTF-8", "exporter host"]


@pytest.mark.parametrize("case", CASES)
def test_config_check_refuses_what_serve_would_fail_on(case, tiny_model, tmp_path, busy_port,
                                                       capsys):
    content, expected = _cases(tiny_model, tmp_path, busy_port)[case]
    path = tmp_path / "serve.yaml"
    path.write_bytes(content)
    assert main(["config", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}{expected}" in out, out
    assert main(["serve", "--config", str(path)]) == 2  # in process: a traceback would raise
    err = capsys.readouterr().err
    assert expected.split(": ", 1)[1] in err or expected in err, err


def test_valid_config_checks_ok_and_serves(tiny_model, tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text(serve_yaml(tiny_model, serve=f", state_dir: {tmp_path / 'state'}"))
    assert main(["config", "check", str(path)]) == 0
    assert f"{path}: OK" in capsys.readouterr().out
    assert main(["serve", "--config", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 16


@pytest.mark.slow
def test_serve_process_exits_2_without_traceback_on_a_bogus_device(tiny_model, tmp_path):
    """The real process, as systemd runs it (RestartPreventExitStatus=2)."""
    path = tmp_path / "serve.yaml"
    path.write_text(serve_yaml(tiny_model, serve=", device: bogus"))
    proc = subprocess.run([sys.executable, "-m", "flowdiff", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "serve.device: 'bogus' is not a torch device" in proc.stderr


def test_corrupt_state_file_is_refused_by_check_and_serve(tiny_model, tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.pt").write_bytes(b"\x80not a torch file")
    path = tmp_path / "serve.yaml"
    path.write_text(serve_yaml(tiny_model, serve=f", state_dir: {state}"))
    assert main(["config", "check", str(path)]) == 1
    assert f"serve.state_dir: {state / 'state.pt'}: cannot read state file" in \
        capsys.readouterr().out
    assert main(["serve", "--config", str(path)]) == 2
    assert f"serve.state_dir: {state / 'state.pt'}: cannot read" in capsys.readouterr().err


def test_second_daemon_on_one_state_dir_is_refused(tiny_model, tmp_path, capsys):
    from flowdiff.config import parse_config
    from flowdiff.daemon.service import Service, StopFlag

    state = tmp_path / "state"
    raw = {"serve": {"model": str(tiny_model), "streams": 2, "pace": "fast", "threads": 1,
                     "state_dir": str(state), "sampler": {"kind": "replacement", "steps": 2}},
           "metrics": {"listen": "127.0.0.1:0"}, "exporters": [{"kind": "null"}]}
    stop = StopFlag()
    first = Service(parse_config(raw, "first"), stop, registry=CollectorRegistry())
    thread = threading.Thread(target=first.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while first.heartbeat is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.heartbeat is not None, "first daemon did not start"
        path = tmp_path / "serve.yaml"
        path.write_text(serve_yaml(tiny_model, serve=f", state_dir: {state}"))
        assert main(["config", "check", str(path)]) == 1
        out = capsys.readouterr().out
        assert "serve.state_dir" in out and "in use by another flowdiff daemon" in out, out
        assert main(["serve", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"(pid {__import__('os').getpid()}, lock file {state / 'flowdiff.lock'})" in err
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert main(["config", "check", str(path)]) == 0  # the lock went with the daemon


def contradictions_yaml(tiny_model: Path) -> str:
    """Three operator mistakes in one file: more ddpm steps than the tiny model's T = 50
    diffusion steps (known only with the model), a misspelt exporter key and a port that
    does not exist."""
    return (f"serve:\n"
            f"  model: {tiny_model}\n"
            f"  streams: 2\n"
            f"  pace: fast\n"
            f"  max_records: 16\n"
            f"  sampler: {{kind: ddpm, steps: 80}}\n"
            f"metrics:\n"
            f"  listen: 127.0.0.1:99999\n"
            f"exporters:\n"
            f"  - kind: stdout\n"
            f"    strem: stderr\n")


def test_config_check_reports_sampler_exporter_and_listen_problems_together(tiny_model,
                                                                            tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text(contradictions_yaml(tiny_model))
    assert main(["config", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: INVALID (3 error(s))" in out, out
    for line, message in ((6, "serve.sampler.steps: ddpm sampler: steps=80 exceeds the model's "
                              "T=50 diffusion steps"),
                          (8, "metrics.listen: expected host:port with port 0..65535, "
                              "got '127.0.0.1:99999'"),
                          (11, "exporters[0].strem: unknown key for a stdout exporter")):
        assert f"{path}:{line}: {message}" in out, out


def test_serve_refuses_the_same_config_before_ready(tiny_model, tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text(contradictions_yaml(tiny_model))
    assert main(["serve", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not one record
    assert f"{path}:8: metrics.listen" in captured.err and \
        f"{path}:11: exporters[0].strem" in captured.err, captured.err
    # with the other two fixed, the sampler contradiction alone stops serve before READY
    path.write_text(contradictions_yaml(tiny_model).replace("99999", "0")
                    .replace("    strem: stderr\n", ""))
    assert main(["serve", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}:6: serve.sampler.steps: ddpm sampler: steps=80 exceeds" in captured.err
    assert main(["config", "check", str(path)]) == 1


def test_command_line_overrides_are_checked_by_the_config_engine(tiny_model, tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text(serve_yaml(tiny_model))
    assert main(["serve", "--config", str(path), "--streams", "0", "--listen", "nowhere",
                 "--max-records", "0"]) == 2
    err = capsys.readouterr().err
    for message in ("command line --streams: serve.streams: expected a value >= 1",
                    "command line --listen: metrics.listen: expected host:port",
                    "command line --max-records: serve.max_records: expected a value >= 1"):
        assert message in err, err
    assert main(["serve", "--config", str(path), "--streams", "3", "--max-records", "6"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_unset_threads_follow_the_cpus_the_process_may_run_on():
    # serve.threads unset: torch gets the CPUs of the process's affinity mask (what systemd's
    # CPUAffinity= or taskset leave it), not the host's count; a set value is kept.
    script = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
              "from flowdiff.daemon.preflight import resolve_threads; "
              "print(resolve_threads(None), resolve_threads(3))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["1", "3"]


def test_serve_in_process_gives_the_caller_its_torch_threads_back(tiny_model, tmp_path, capsys):
    import torch

    path = tmp_path / "serve.yaml"
    path.write_text(serve_yaml(tiny_model))                        # threads: 1
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert main(["serve", "--config", str(path)]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)
    assert len(capsys.readouterr().out.splitlines()) == 16
