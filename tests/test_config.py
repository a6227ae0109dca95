"""Config loading: every shipped config loads; invalid files list every error with the file,
the line and the field."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from flowdiff.commands import config as config_command
from flowdiff.config import ConfigError, default_config, load_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    summary, errors = config_command.check_file(str(path))
    assert errors == [] and summary


def test_serve_yaml_equals_the_builtin_defaults():
    shipped = load_config(REPO / "configs" / "serve.yaml")
    builtin = default_config()
    assert shipped.serve == builtin.serve
    assert shipped.metrics == builtin.metrics
    assert [(e.kind, e.policy, e.queue) for e in shipped.exporters] == \
        [(e.kind, e.policy, e.queue) for e in builtin.exporters]
    assert builtin.metrics.listen == "127.0.0.1:9108"


def test_training_configs_have_typed_sections():
    cfg = load_config(REPO / "configs" / "train-ugr16-cpu.yaml")
    assert cfg.window.length == cfg.window.context + cfg.window.horizon
    assert cfg.model.d_model == 48 and cfg.train.device == "cpu"
    assert cfg.codec.word2vec.vector_size == 10


BAD = """\
serve:
  streams: 0
  speeed: 2
  pace: slow
  sampler:
    kind: guided
    steps: "many"
  shutdown_timeout: -1
metrics:
  listen: nowhere
model:
  d_model: 3
train:
  steps: 0
exporters:
  - kind: stdout
  - kind: stdout
    polcy: drop
  - kind: nosuch
  - kind: null
  - kind: "null"
    delay_seconds: -2
  - kind: stdout
bogus: 1
"""


def test_invalid_config_lists_every_error_with_line_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    text = "\n".join(errors)
    expected = [
        (2, "serve.streams: expected a value >= 1"),
        (3, "serve.speeed: unknown key"),
        (4, "serve.pace: expected one of 'realtime', 'fast', got 'slow'"),
        (7, "serve.sampler.steps: expected an integer, got 'many'"),
        (8, "serve.shutdown_timeout: expected a value > 0.0"),
        (10, "metrics.listen: expected host:port"),
        (12, "model.d_model: an even integer >= 4, got 3"),
        (11, "model.n_heads: an integer >= 1 dividing d_model=3, got 4"),
        (14, "train.steps: an integer >= 1, got 0"),
        (18, "exporters[1].polcy: unknown key for a stdout exporter (known: kind, name, "
             "policy, queue, stream)"),
        (19, "exporters[2].kind: unknown exporter kind 'nosuch'"),
        (20, "exporters[3].kind: is empty: write kind: \"null\" in quotes"),
        (22, "exporters[4].delay_seconds: must be >= 0"),  # the key's own line
        (23, "exporters[5].name: duplicate exporter name 'stdout'"),
        (24, "bogus: unknown section"),
    ]
    for line, message in expected:
        assert f"{path}:{line}: {message}" in text, f"missing: line {line}: {message}\n{text}"
    assert len(errors) == len(expected), text


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("serve:\n  streams: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: invalid YAML"):
        load_config(path)


def test_real_start_needs_seed_data_and_types_are_strict(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("serve:\n  start: real\n  streams: 2.5\n  metrics: 1\nmetrics:\n  enabled: 'no'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.errors)
    assert "serve.seed_data: required when serve.start is 'real'" in text
    assert "serve.streams: expected an integer, got 2.5" in text
    assert "metrics.enabled: expected true or false, got 'no'" in text  # no bool("no") casts


def test_config_check_command_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    parser = argparse.ArgumentParser()
    config_command.register(parser.add_subparsers())
    args = parser.parse_args(["config", "check", str(REPO / "configs" / "serve.yaml"), str(bad)])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "serve.yaml: OK" in out and "bad.yaml: INVALID (15 error(s))" in out
    args = parser.parse_args(["config", "check", str(REPO / "configs" / "serve.yaml")])
    assert args.func(args) == 0


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_every_kind_of_config_file_reports_file_line_and_key(tmp_path):
    """Train, time-series run and codec-only files go through the same engine: each problem
    at its own line, and cross-field rules (predict_horizon inside the window) checked
    before training starts."""
    train = tmp_path / "train.yaml"
    train.write_text("window: {context: 8, horizon: 4}\n"
                     "train:\n  predict_fraction: 0.5\n  predict_horizon: 12\n")
    run = tmp_path / "run.yaml"
    run.write_text("data:\n  csv: x.csv\n  train_fraction: 0\nmodel:\n  d_model: 7\n  n_heads: 1\n")
    codec = tmp_path / "codec.yaml"
    codec.write_text("fields:\n  srcport: onehot\nword2vec:\n  epochs: 0\n")
    expected = {train: [":4: train.predict_horizon: an integer in [1, 11] (seq_len 12)"],
                run: [":3: data.train_fraction: expected a value > 0.0 and <= 1.0, got 0",
                      ":5: model.d_model: an even integer >= 4, got 7"],
                codec: [":2: fields.srcport: transform 'onehot' not allowed",
                        ":4: word2vec.epochs: expected a value >= 1, got 0"]}
    for path, messages in expected.items():
        summary, errors = config_command.check_file(str(path))
        assert len(errors) == len(messages), errors
        for message in messages:
            assert any(e.startswith(f"{path}{message}") for e in errors), (message, errors)


def test_one_host_port_parser():
    from flowdiff.config import parse_address_list, parse_host_port

    assert parse_host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_host_port("[::1]:9092") == ("::1", 9092)
    assert parse_address_list("a:1, b:2,") == [("a", 1), ("b", 2)]
    for bad in ("nowhere", ":80", "h:65536", "h:x"):
        with pytest.raises(ValueError, match="expected host:port"):
            parse_host_port(bad)
    with pytest.raises(ValueError, match="port 1..65535"):
        parse_address_list("h:0")
