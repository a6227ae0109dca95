"""What ``serve`` needs from the world before READY, checked without starting anything.
``flowdiff config check`` runs all of it and ``serve`` runs it before loading the model, so
a config that checks OK does not then fail at start-up for a reason the check could see.

Each problem names the config key, as ``flowdiff.config`` reports its own errors
(``file:line: key: message``):

* ``metrics.listen``: the host is an IP address or a name that resolves; the port is free
  (bound and released at once; port 0 = any free port);
* ``serve.device``: a torch device that exists here (``cpu``, ``cuda[:N]`` with that GPU,
  ``mps`` when available);
* ``serve.state_dir``: a directory, or creatable; writable; not locked by a running daemon;
  an existing state file readable and written for this model and config (needs the model);
* ``serve.seed_data``: the trace exists (``start: real``);
* ``serve.model``: the artifact loads (``load_model=True``; ``serve`` loads it right after);
* ``exporters[i]``: the host names in the keys its config lists in ``ADDRESS_KEYS`` resolve,
  the directories in ``DIRECTORY_KEYS`` are usable. Whether a broker or collector answers is
  not checked: the daemon starts and reports it as unhealthy until it does.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from flowdiff.config import (Config, ConfigError, Problems, SamplerConfig, load_config,
                             parse_address_list, parse_host_port)

SUPPORTED_DEVICES = ("cpu", "cuda", "mps")


def check_host(host: str) -> str | None:
    """None when ``host`` is an IP address or a resolvable name, else the problem."""
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if all(c.isdigit() or c == "." for c in host):
        return f"{host!r} is not a valid IP address"
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return f"host {host!r} does not resolve ({getattr(exc, 'strerror', None) or exc})"
    return None


def check_port_free(host: str, port: int) -> str | None:
    """None when a TCP server could listen on ``host:port`` now (as the metrics server
    binds: SO_REUSEADDR), else the problem."""
    if port == 0:
        return None
    try:
        family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def check_directory(path: str) -> str | None:
    """None when ``path`` is a writable directory or can be created, else the problem."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        return f"{path} exists and is not a directory"
    probe = target
    while not probe.exists():  # the nearest existing ancestor decides whether mkdir works
        probe = probe.parent
    if not probe.is_dir():
        return f"{path} cannot be created: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is" if probe == target else f"cannot be created: {probe} is"
        return f"{path} {what} not writable (uid {os.getuid()})"
    return None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; other names unchanged."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_threads(threads: int | None) -> int:
    """``serve.threads``; None -> the CPUs this process may run on (its affinity mask, so
    a systemd ``CPUAffinity=`` or ``taskset`` is respected)."""
    if threads:
        return threads
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def check_device(device: str) -> str | None:
    import torch

    if device == "auto":
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        return f"{device!r} is not a torch device ({str(exc).splitlines()[0][:120]})"
    if parsed.type == "cpu":
        return None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"{device!r}: no CUDA device is available here"
        if parsed.index is not None and parsed.index >= count:
            return f"{device!r}: only {count} CUDA device(s) here"
        return None
    if parsed.type == "mps":
        return None if torch.backends.mps.is_available() else f"{device!r}: MPS is not available"
    return f"{device!r}: device type {parsed.type!r} is not supported (use one of " \
           f"{', '.join(SUPPORTED_DEVICES)})"


def preflight(cfg: Config, *, load_model: bool, problems: Problems | None = None) -> list[str]:
    """Every problem ``serve`` would hit before READY, as ``file:line: key: message`` lines.
    With ``problems`` (from loading the file), sections that already have a problem there
    are not checked again (they hold defaults, not what the file says)."""
    from flowdiff.daemon.lock import check_unlocked

    problems = problems if problems is not None else Problems(cfg.source, cfg.lines)
    before = len(problems.errors)
    s = cfg.serve
    if cfg.metrics.enabled and not problems.has("metrics"):
        host, port = parse_host_port(cfg.metrics.listen)
        problem = check_host(host) or check_port_free(host, port)
        if problem:
            problems.add("metrics.listen", problem)
    serve_ok = not problems.has("serve")
    device_problem = check_device(s.device) if serve_ok else None
    if device_problem:
        problems.add("serve.device", device_problem)
    state_dir = s.shard.state_dir(s.state_dir)  # <state_dir>/<i>-of-<N> when sharded
    if serve_ok and state_dir:
        problem = check_directory(state_dir) or check_unlocked(state_dir)
        if problem:
            problems.add("serve.state_dir", problem)
    if serve_ok and s.start == "real" and s.seed_data and not Path(s.seed_data).is_file():
        problems.add("serve.seed_data", f"{s.seed_data}: no such file")
    for i, exporter in enumerate(cfg.exporters):
        _check_exporter(f"exporters[{i}]", exporter.options, problems)
    if load_model and serve_ok and not device_problem:
        _check_model_and_state(cfg, problems)
    return problems.errors[before:]


def check_serve_config(path: str | None, overrides: dict | None = None, *,
                       load_model: bool) -> tuple[Config, list[str]]:
    """(config, every problem) of a serve config file (None: the defaults) with command-line
    ``overrides``: what the file says wrong and what the world would refuse, in one list.
    ``flowdiff config check`` and ``serve`` both start here; a YAML that cannot be read or
    parsed raises ConfigError."""
    problems = Problems(str(path) if path else "<defaults>")
    cfg = load_config(path, overrides, problems=problems)
    preflight(cfg, load_model=load_model, problems=problems)
    return cfg, problems.errors


def _check_exporter(path: str, options, problems: Problems) -> None:
    for key in options.ADDRESS_KEYS:
        for host, _port in parse_address_list(getattr(options, key)):
            problem = check_host(host)
            if problem:
                problems.add(f"{path}.{key}", problem)
    for key in options.DIRECTORY_KEYS:
        value = getattr(options, key)
        problem = check_directory(value) if value else None
        if problem:
            problems.add(f"{path}.{key}", problem)


def sampler_problem(sampler: SamplerConfig, timesteps: int) -> str | None:
    """None when the configured sampler runs on a model of ``timesteps`` diffusion steps
    (the daemon's predict turns, and its unconditional start: ddim with the same steps),
    else the problem."""
    from flowdiff.model import SamplerError, make_sampler

    try:
        for made in (sampler.make(), make_sampler("ddim", steps=sampler.steps)):
            made.set_timesteps(timesteps)
    except SamplerError as exc:
        return str(exc)
    return None


def check_sampler(cfg: Config, timesteps: int, problems: Problems) -> None:
    problem = sampler_problem(cfg.serve.sampler, timesteps)
    if problem:
        problems.add("serve.sampler.steps", problem)


def _check_model_and_state(cfg: Config, problems: Problems) -> None:
    from flowdiff.artifact import ArtifactError, load_artifact, resolve_model_dir
    from flowdiff.daemon.service import state_fingerprint
    from flowdiff.daemon.state import StateError, load_state

    s = cfg.serve
    try:
        artifact = load_artifact(resolve_model_dir(s.model), device=resolve_device(s.device))
    except ArtifactError as exc:
        problems.add("serve.model", str(exc))
        return
    check_sampler(cfg, artifact.model.process.timesteps, problems)
    state_dir = s.shard.state_dir(s.state_dir)
    if state_dir and Path(state_dir).is_dir():
        try:
            load_state(state_dir, state_fingerprint(artifact, s))
        except StateError as exc:
            problems.add("serve.state_dir", str(exc))


def raise_if_unfit(cfg: Config, *, load_model: bool) -> None:
    """``preflight`` as a ConfigError listing every problem (nothing when all is well)."""
    errors = preflight(cfg, load_model=load_model)
    if errors:
        raise ConfigError(cfg.source, errors)
