"""The model artifact: ONE self-contained directory that ``serve`` and ``generate`` need.

Layout (version 1)::

    MODEL_DIR/
      artifact.json   format, version, flowdiff version, window (context, horizon),
                      training metadata (data file + sha256, rows, steps, losses, configs)
      model.pt        Diffusion-TS checkpoint (EMA weights + ModelConfig), weights-only
      codec/          the fitted FlowCodec (FlowCodec.save / FlowCodec.load)

Written atomically: everything goes to a temporary sibling directory that is renamed over
the target at the end, so a crash never leaves a half-written artifact. ``load_artifact``
checks the format and version before touching the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "flowdiff-artifact"
VERSION = 1
MANIFEST = "artifact.json"
MODEL_FILE = "model.pt"
CODEC_DIR = "codec"
PACKAGED = Path(__file__).resolve().parent / "default_model"


class ArtifactError(RuntimeError):
    """The directory is not a usable artifact (message names the path and the problem)."""


@dataclass
class Artifact:
    model: object  # flowdiff.model.DiffusionTS in eval mode
    codec: object  # flowdiff.codec.FlowCodec
    context: int
    horizon: int
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def artifact_id(self) -> str:
        """Short stable identity (hash of the manifest's training metadata)."""
        blob = json.dumps(self.meta, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model_dir(name: str | Path) -> Path:
    """``"default"`` -> the packaged model; anything else is a directory path."""
    return PACKAGED if str(name) == "default" else Path(name)


def save_artifact(directory: str | Path, artifact: Artifact) -> Path:
    from flowdiff import __version__
    from flowdiff.model import save_checkpoint

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_checkpoint(tmp / MODEL_FILE, artifact.model)
        artifact.codec.save(tmp / CODEC_DIR)
        manifest = {"format": FORMAT, "version": VERSION, "flowdiff_version": __version__,
                    "window": {"context": artifact.context, "horizon": artifact.horizon},
                    "meta": artifact.meta}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True,
                                               default=str) + "\n")
        os.chmod(tmp, 0o755)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_manifest(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: not a flowdiff model directory ({MANIFEST} missing; "
                            "create one with `flowdiff train --out DIR`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: expected format {FORMAT!r}, got "
                            f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}")
    if manifest.get("version") != VERSION:
        raise ArtifactError(f"{path}: artifact version {manifest.get('version')!r} is not "
                            f"supported by this flowdiff (expects {VERSION}); retrain or "
                            "use a matching flowdiff release")
    window = manifest.get("window")
    if not isinstance(window, dict) or not all(isinstance(window.get(k), int) and window[k] > 0
                                               for k in ("context", "horizon")):
        raise ArtifactError(f"{path}: 'window' must hold positive integers context and "
                            f"horizon, got {window!r}")
    return manifest


def load_artifact(directory: str | Path, device: str = "cpu") -> Artifact:
    from flowdiff.codec import FlowCodec
    from flowdiff.model import CheckpointError, load_checkpoint

    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        model, _extra = load_checkpoint(directory / MODEL_FILE, device=device)
    except CheckpointError as exc:
        raise ArtifactError(str(exc)) from exc
    codec = FlowCodec.load(directory / CODEC_DIR)
    context, horizon = manifest["window"]["context"], manifest["window"]["horizon"]
    if model.cfg.seq_len != context + horizon:
        raise ArtifactError(f"{directory}: model window {model.cfg.seq_len} != context {context} "
                            f"+ horizon {horizon}")
    if model.cfg.feature_size != codec.width:
        raise ArtifactError(f"{directory}: model expects {model.cfg.feature_size} features, "
                            f"codec produces {codec.width}")
    return Artifact(model=model, codec=codec, context=context, horizon=horizon,
                    meta=manifest.get("meta", {}), path=directory)
