import pytest

from racerl_jax.dashboard.__main__ import parse_args


def test_the_command_line_maps_onto_the_config_and_binds_loopback_by_default():
    cfg = parse_args(["runs/a", "runs/b", "--port", "8060"])
    assert cfg.run_dirs == ("runs/a", "runs/b") and cfg.port == 8060 and cfg.host == "127.0.0.1"


@pytest.mark.parametrize("argv, message", [
    (["runs/a", "--port", "70000"], "port 70000: expected 1-65535"),
    (["runs/a", "--refresh-ms", "10"], "refresh_ms 10: give at least 50 ms"),
])
def test_bad_settings_exit_with_one_line_naming_the_setting_and_the_fix(argv, message):
    with pytest.raises(SystemExit, match=message):
        parse_args(argv)


def test_no_run_directory_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse_args([])
    assert "RUN_DIR" in capsys.readouterr().err


def test_a_port_in_use_is_refused_with_the_address_and_the_fix():
    import socket

    from racerl_jax.dashboard.__main__ import check_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot serve on 127.0.0.1:{port} .*pick another --port"):
            check_port("127.0.0.1", port)
