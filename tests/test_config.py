from typing import Literal

import pytest
from pydantic import Field

from twots.config import ConfigError, Section, load, resolve


class Demo(Section):
    source: Literal["a", "b"] = "a"
    threshold: int = Field(20, ge=1)
    behaviors: list[str] = ["pv", "buy"]


def test_layers_and_cli_override(tmp_path):
    (tmp_path / "default.yaml").write_text("demo:\n  threshold: 30\n")
    (tmp_path / "b.yaml").write_text("demo:\n  threshold: 40\n")
    assert resolve(Demo, "demo", {}, conf_dir=tmp_path).threshold == 30
    assert resolve(Demo, "demo", {"source": "b"}, conf_dir=tmp_path).threshold == 40
    cfg = resolve(Demo, "demo", {"source": "b", "threshold": "7", "behaviors": "pv,cart"}, conf_dir=tmp_path)
    assert (cfg.threshold, cfg.behaviors) == (7, ["pv", "cart"])


def test_bad_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"demo\.threshold"):
        resolve(Demo, "demo", {"threshold": "0"}, conf_dir=tmp_path)
    (tmp_path / "default.yaml").write_text("demo:\n  treshold: 3\n")
    with pytest.raises(ConfigError, match=r"demo\.treshold"):
        resolve(Demo, "demo", {}, conf_dir=tmp_path)


def test_cli_exits_2_with_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        load(Demo, "demo", ["--source", "zzz"], conf_dir=tmp_path)
    assert exc.value.code == 2
    assert "demo.source" in capsys.readouterr().err
