"""The registries every layer uses: they find the modules of their folder and the entry points of
their group, refuse duplicate names, and a lookup from another thread waits for a discovery under way."""

import sys
import textwrap
import threading

import pytest

from models.common import Registry


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package `things_pkg` on sys.path whose modules register into things_pkg.REGISTRY."""
    root = tmp_path / "things_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("from models.common import Registry\n"
                                      "REGISTRY = Registry('thing', package='things_pkg', group='test_things')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    for name in [m for m in sys.modules if m.startswith("things_pkg")]:
        del sys.modules[name]


def _module(root, name: str, registered: str, pause: float = 0.0) -> None:
    (root / f"{name}.py").write_text(textwrap.dedent(f"""
        import time
        from things_pkg import REGISTRY
        time.sleep({pause})
        REGISTRY.register({registered!r})(object())
    """))


def test_every_module_of_the_folder_registers_but_private_ones(package):
    _module(package, "first", "one")
    _module(package, "second", "two")
    _module(package, "_script", "hidden")
    import things_pkg

    assert things_pkg.REGISTRY.names() == ["one", "two"]
    with pytest.raises(KeyError, match="unknown thing 'tow' \\(did you mean 'two'\\?\\)"):
        things_pkg.REGISTRY.find("tow")


def test_entry_points_of_the_group_register_too(package, tmp_path):
    plugin = tmp_path / "plugin_things.py"
    plugin.write_text("from things_pkg import REGISTRY\nREGISTRY.register('from-plugin')(object())\n")
    info = tmp_path / "plugin_things-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-things\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[test_things]\nplugin = plugin_things\n")
    _module(package, "first", "one")
    import things_pkg

    assert things_pkg.REGISTRY.names() == ["from-plugin", "one"]
    sys.modules.pop("plugin_things", None)


def test_a_name_registered_twice_is_refused():
    registry = Registry("thing")
    registry.register("a")(object())
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        registry.register("a")(object())


def test_a_lookup_in_another_thread_waits_for_the_discovery_under_way(package):
    _module(package, "slow", "late", pause=0.5)
    import things_pkg

    found = []
    threads = [threading.Thread(target=lambda: found.append(things_pkg.REGISTRY.find("late"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 3 and found[0] is found[1] is found[2]
