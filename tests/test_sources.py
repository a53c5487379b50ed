"""Where a layer is defined: the file and line of `self.<name> = ...` in the user's code."""

from __future__ import annotations

import textwrap

import pytest

torch = pytest.importorskip("torch")

from gradcheck_cli import loading, sources  # noqa: E402

USER = textwrap.dedent("""
    import torch
    import torch.nn as nn


    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.mlp = nn.Sequential(
                nn.Linear(d, 4 * d),
                nn.GELU(),
                nn.Linear(4 * d, d),
            )
            self.add_module("gate", nn.Sigmoid())

        def forward(self, x):
            return x + torch.sigmoid(self.mlp(self.norm(x)))


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed: nn.Linear = nn.Linear(8, 16)
            self.blocks = nn.ModuleList([Block(16) for _ in range(2)])
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            x = self.embed(x)
            for b in self.blocks:
                x = b(x)
            return self.head(x)


    def build():
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU())
""")


@pytest.fixture
def user_file(tmp_path, monkeypatch):
    path = tmp_path / "net.py"
    path.write_text(USER)
    monkeypatch.chdir(tmp_path)
    return path


def line_of(text: str) -> int:
    return next(i for i, line in enumerate(USER.splitlines(), 1) if text in line)


def test_layers_map_to_the_line_that_defines_them(user_file):
    cls = loading.load_object("net.py:Net")
    model = cls()
    origin = sources.object_location(cls)
    assert origin == {"file": "net.py", "line": line_of("class Net")}
    locate = sources.layer_locator(model, origin)
    assert locate("embed") == {"file": "net.py", "line": line_of("self.embed: nn.Linear")}   # annotated
    assert locate("head")["line"] == line_of("self.head =")
    assert locate("blocks.1.norm")["line"] == line_of("self.norm =")          # inside Block, via ModuleList
    assert locate("blocks.0.mlp.2")["line"] == line_of("self.mlp =")          # a Sequential child
    assert locate("blocks.0.gate")["line"] == line_of('add_module("gate"')
    call = line_of("return x + torch.sigmoid")
    assert locate(f"blocks.0.sigmoid@{call}") == {"file": "net.py", "line": call}   # functional: the call site
    assert locate("blocks.0")["line"] == line_of("self.blocks =")
    assert locate("") == origin and locate(None) == origin


def test_a_factory_and_library_classes(user_file):
    fn = loading.load_object("net.py:build")
    origin = sources.object_location(fn)
    assert origin == {"file": "net.py", "line": line_of("def build")}
    locate = sources.layer_locator(fn(), origin)
    assert locate("0") == origin                 # nn.Sequential is torch code: fall back to the factory
    assert sources.object_location(torch.nn.Linear) is None   # never point into site-packages
    assert sources.layer_locator(torch.nn.Sequential(torch.nn.Linear(2, 2)), None)("0") is None
