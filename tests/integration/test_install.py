"""The production install (README "Running it for real"): `pip install .` into a fresh
venv, then `twistd mailserver` must know the command.

Offline and fast: the fresh venv is made without pip and sees the test venv's packages
(Twisted, pip, setuptools) through a .pth line, like a system site; pip builds the wheel
with the test venv's setuptools (--no-build-isolation: no download) and installs only
our distribution (--no-deps). A .pth line adds a directory to sys.path without reading
the .pth files inside it, so the test venv's editable install (which points at the
source tree) is not visible: only what the wheel installed can make the command work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: What a source distribution of ours is built from (setup.cfg names README.md too).
SOURCES = ("mailserver", "twisted", "setup.cfg", "pyproject.toml", "README.md")


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH (the test run points it at the source tree)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "MAILSERVER_CONFIG")}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True,
                          text=True, timeout=120)


def _fresh_install(tmp_path: Path) -> tuple[Path, Path]:
    """(the new venv's python, its site-packages) after `pip install .` of a copy."""
    source = tmp_path / "src"
    for name in SOURCES:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(item, source / name)
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     tmp_path).stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "test-venv-packages.pth").write_text("".join(p + "\n" for p in sorted(ours)))
    installed = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                      "--no-build-isolation", "--quiet", str(source)], tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python, site


def test_pip_install_makes_twistd_mailserver_work(tmp_path: Path) -> None:
    python, site = _fresh_install(tmp_path)
    # The plugin is a module of the twisted.plugins package, next to Twisted's own...
    assert (site / "twisted" / "plugins" / "mailserver_plugin.py").is_file()
    # ...and the wheel brings no package file of Twisted's that would replace the real one.
    record = next(site.glob("mailserver-*.dist-info")) / "RECORD"
    twisted_files = sorted(line.split(",")[0] for line in record.read_text().splitlines()
                           if line.startswith("twisted/") and "__pycache__" not in line)
    assert twisted_files == ["twisted/plugins/mailserver_plugin.py"]

    workdir = tmp_path / "elsewhere"  # not the source tree, which has twisted/plugins
    workdir.mkdir()
    twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    result = _run([str(python), "-c", twistd, "mailserver", "--help"], workdir)
    output = result.stdout + result.stderr
    assert "Unknown command" not in output
    assert result.returncode == 0, output
    assert "Usage: twistd [options] mailserver [--config PATH]" in output
    assert "-c, --config=  Path of the TOML config file." in output
    # The code it runs is the installed copy, not the source tree.
    where = _run([str(python), "-c", "import mailserver; print(mailserver.__file__)"], workdir)
    assert where.stdout.strip() == str(site / "mailserver" / "__init__.py")
    # The admin tool's console script is installed too.
    admin = _run([str(python.parent / "mailserver"), "--help"], workdir)
    assert admin.returncode == 0, admin.stderr
    assert admin.stdout.startswith("usage: mailserver [-h] [--config PATH] COMMAND")


def _make_tools(tmp_path: Path, swaks_support: str) -> list[str]:
    """`make tools` with a stand-in swaks printing `swaks_support` for --support, and a
    stand-in apt-get recording what it was asked to do (nothing is installed)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "apt-get.calls"
    (fake / "swaks").write_text(f"#!/bin/sh\nprintf '%s\\n' '{swaks_support}' >&2\n")
    (fake / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    for tool in fake.iterdir():
        tool.chmod(0o755)
    env = {**_clean_env(), "PATH": f"{fake}:{os.environ['PATH']}"}
    result = subprocess.run(["make", "-s", "-C", str(REPO), "tools"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return record.read_text().splitlines() if record.exists() else []


def test_make_tools_installs_what_a_lean_swaks_lacks_for_tls(tmp_path: Path) -> None:
    # swaks installed with --no-install-recommends has no Net::SSLeay: the command
    # exists, but every --tls test would fail.
    calls = _make_tools(tmp_path, "*** TLS not available: requires Net::SSLeay")
    assert calls == ["update -qq",
                     "install -y -qq --no-install-recommends swaks libnet-ssleay-perl"]


def test_make_tools_leaves_a_capable_swaks_alone(tmp_path: Path) -> None:
    assert _make_tools(tmp_path, "=== TLS supported") == []
