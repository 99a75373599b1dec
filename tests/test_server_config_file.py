"""serve --config / --print-config: the printed form is what --config reads, the file replaces the
defaults, and only flags typed on the command line override it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from energy_rerank.cli import build_parser, main
from energy_rerank.server.cli import DEST_FIELDS, config_from_args
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.config_file import config_from_json, config_to_json


def printed(capsys, *argv: str) -> dict:
    assert main(["serve", *argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_print_config_round_trips_through_config(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("ENERGY_RERANK_TOKEN", raising=False)
    argv = ["--max-batch", "4", "--switch-margin", "inf", "--sigmas", "0.1,0.2", "--metrics-port", "-1"]
    data = printed(capsys, *argv)
    assert data["switch_margin"] == "inf" and data["batch"]["max_batch"] == 4 and "auth_token" not in data
    f = tmp_path / "server.json"
    f.write_text(json.dumps(data))
    from_file = config_from_json(f.read_text())
    from_flags = config_from_args(build_parser().parse_args(["serve", *argv]))
    assert from_file == from_flags  # paths come back as paths, inf as inf, nested configs as configs
    assert isinstance(from_file.policy_path, Path) and math.isinf(from_file.switch_margin or 0)
    assert printed(capsys, "--config", str(f)) == data


def test_typed_flags_override_the_file_and_defaults_do_not(tmp_path: Path, capsys) -> None:
    f = tmp_path / "server.json"
    f.write_text(config_to_json(ServerConfig(default_candidates=8, switch_margin=2.5)))
    data = json.loads(f.read_text())
    data["batch"]["max_batch"] = 4
    f.write_text(json.dumps(data))
    out = printed(capsys, "--config", str(f))
    assert (out["batch"]["max_batch"], out["default_candidates"], out["switch_margin"]) == (4, 8, 2.5)
    out = printed(capsys, "--config", str(f), "--max-batch", "16", "--queue-limit", "9")  # 16 is the default value
    assert out["batch"] == {"max_batch": 16, "max_delay_us": 0, "queue_limit": 9}
    assert out["default_candidates"] == 8  # untouched by flags that were not typed


def test_config_file_errors_name_what_is_wrong(tmp_path: Path, capsys, monkeypatch) -> None:
    bad = tmp_path / "bad.json"
    for text, words in (
        ('{"auth_token": "secret"}', "auth_token does not belong"),
        ('{"max_batchh": 3}', "unknown config keys ['max_batchh']"),
        ('{"switch_margin": Infinity}', "not strict JSON"),
        ('{"max_candidates": 0}', "max_candidates=0"),
        ("[1]", "expected a JSON object"),
    ):
        bad.write_text(text)
        assert main(["serve", "--config", str(bad), "--print-config"]) == 2
        assert words in capsys.readouterr().err
    monkeypatch.setenv("ENERGY_RERANK_TOKEN", "tok")  # the token comes from the environment, with or without a file
    good = tmp_path / "good.json"
    good.write_text(config_to_json(ServerConfig()))
    args = build_parser().parse_args(["serve", "--config", str(good)])
    args.argv = ["serve", "--config", str(good)]
    from energy_rerank.server.cli import effective_config

    assert effective_config(args).auth_token == "tok"


def test_every_serve_flag_maps_to_a_config_field() -> None:
    import argparse
    import dataclasses

    parser = build_parser()
    serve = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    for action in serve._actions:
        if action.dest == "help":
            continue
        path = DEST_FIELDS.get(action.dest, action.dest)
        assert path is None or path.split(".")[0] in fields, f"--{action.dest} sets no ServerConfig field"
