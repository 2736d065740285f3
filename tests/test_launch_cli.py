"""The top-level command line: the studio as the default command, with or without its options."""

import pytest

import launch


@pytest.fixture
def started(monkeypatch):
    calls = []
    monkeypatch.setattr(launch, "_run_app", lambda args: calls.append(args) or 0)
    return calls


def test_no_command_starts_the_studio_with_its_defaults(started):
    assert launch.main([]) == 0
    assert len(started) == 1 and started[0].port == 7860 and started[0].host == "127.0.0.1"


def test_the_studio_options_work_without_naming_the_app_command(started):
    assert launch.main(["--host", "0.0.0.0", "--port", "7999", "--compile"]) == 0
    (args,) = started
    assert (args.host, args.port, args.compile) == ("0.0.0.0", 7999, True)
    assert launch.main(["app", "--port", "7998"]) == 0 and started[1].port == 7998


def test_help_and_bad_studio_options_do_not_start_it(started, capsys):
    assert launch.main(["--help"]) == 0
    assert "starts the studio" in capsys.readouterr().out
    assert launch.main(["--port", "many"]) == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err
    assert started == []


@pytest.mark.parametrize("args,needle", [(["--steps", "0"], "--steps (timed steps per row) must be between 1"),
                                         (["--grid-steps", "-1"], "--grid-steps must be between 1")])
def test_bench_refuses_absurd_step_counts(args, needle, capsys):
    assert launch.main(["bench", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
