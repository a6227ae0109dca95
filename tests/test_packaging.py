"""The base install (no extras) runs ``flowdiff serve``; what needs an extra says which.

A fresh environment per test would cost minutes (torch), so the base install is played by
the real interpreter with the extras' packages made unimportable (a meta-path finder that
refuses them), in a real ``flowdiff`` process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("kafka", "sklearn", "scapy", "lz4", "zstandard")  # kafka, eval and test extras

BASE_INSTALL = textwrap.dedent(f"""
    import sys

    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {EXTRAS_ONLY!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (not in the base install)")

    sys.meta_path.insert(0, Absent())
    from flowdiff.cli import main
    code = main(sys.argv[1:])
    loaded = sorted(m for m in {EXTRAS_ONLY!r} if m in sys.modules)
    print("extras loaded:", loaded, file=sys.stderr)
    sys.exit(code)
""")


def run_base(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BASE_INSTALL, *argv], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_base_install_serves_the_packaged_model(tmp_path):
    proc = run_base("serve", "--pace", "fast", "--max-records", "32", "--streams", "2",
                    "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) == 32
    assert "extras loaded: []" in proc.stderr


@pytest.mark.slow
def test_an_exporter_needing_an_extra_names_it(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("exporters:\n  - {kind: kafka, bootstrap_servers: '127.0.0.1:9092'}\n")
    proc = run_base("config", "check", str(config), cwd=tmp_path)
    assert proc.returncode == 1
    assert (f"{config}:2: exporters[0].kind: exporter kind 'kafka' needs the 'kafka' extra: "
            "pip install 'flowdiff[kafka]'") in proc.stdout, proc.stdout + proc.stderr
