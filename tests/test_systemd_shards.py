"""systemd/flowdiff@.service, the sharded template: an instance (flowdiff@0-of-2) verifies
clean with systemd-analyze, keeps the hardening of flowdiff.service, passes the instance
name to --shard and gives each shard its own state directory."""

from __future__ import annotations

from test_systemd import (HARDENING, UNIT, assert_verifies_with_low_exposure,
                          copy_for_this_machine, directives, needs_systemd_analyze)

from flowdiff.daemon.shard import parse_shard

TEMPLATE = UNIT.with_name("flowdiff@.service")


def test_template_runs_the_instance_as_its_shard_with_its_own_state():
    found = {key: value for _, key, value in directives(TEMPLATE.read_text())}
    assert found["ExecStart"].split()[1:] == [
        "serve", "--config", "/etc/flowdiff/serve.yaml", "--shard", "%i", "$FLOWDIFF_ARGS"]
    assert found["StateDirectory"] == "flowdiff/%i"  # = serve.state_dir/<i>-of-<N>
    assert found["EnvironmentFile"] == "-/etc/flowdiff/%i.env"
    assert parse_shard("0-of-2").state_dir("/var/lib/flowdiff") == "/var/lib/flowdiff/0-of-2"
    base = {key: value for _, key, value in directives(UNIT.read_text())}
    for name in HARDENING + ("Type", "Restart", "TimeoutStopSec", "WatchdogSec", "DynamicUser"):
        assert found[name] == base[name], name


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean_on_an_instance(tmp_path):
    copy_for_this_machine(TEMPLATE, tmp_path)
    instance = tmp_path / "flowdiff@0-of-2.service"  # loaded from the template beside it
    assert_verifies_with_low_exposure(instance)
