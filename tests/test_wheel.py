"""The wheel (what `pip install .`, `pip install git+URL` and PyPI install) holds the whole package.

The editable install used everywhere else maps the source folders, so it hides a package or
data file missing from the wheel (verl_avsd.sandbox and verl_avsd.toy once were). Here the
wheel is built from the checkout and installed into a fresh venv outside it that sees the
installed dependencies but not the editable project; every module of the checkout must
import from that venv, the config yamls and the shipped toy model must be there, and
`verl-avsd demo` must train one step with nothing but the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder in the checkout -> package name once installed (workers/ and data_prep/ move under verl_avsd)
INSTALLED_AS = {"verl_avsd": "verl_avsd", "workers": "verl_avsd.workers", "data_prep": "verl_avsd.data_prep"}
# what the build needs is the source; the rest of a working checkout stays behind
NOT_SOURCE = (
    ".venv",
    ".git",
    "build",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".hypothesis",
    "outputs",
    "runs",
    "tmp",
)
DEMO_TIMEOUT_S = 900

# Runs in the fresh venv, cwd outside the checkout: import every module, report where each
# came from and where the data files and the distribution's metadata are.
PROBE = r"""
import importlib, importlib.metadata, json, sys
modules = json.loads(sys.argv[1])
files = {name: importlib.import_module(name).__file__ for name in modules}
from verl_avsd.toy import TOY_MODEL_DIR
import verl_avsd.cpu.platform as cpu_platform
dist = importlib.metadata.distribution("verl-avsd")
plugins = [ep for ep in importlib.metadata.entry_points(group="verl.plugins") if ep.name == "avsd"]
print(json.dumps({
    "files": files,
    "toy_model": sorted(p.name for p in TOY_MODEL_DIR.iterdir()),
    "toy_model_dir": str(TOY_MODEL_DIR),
    "cpu_overrides": len(cpu_platform.cpu_overrides()),
    "cpu_dir": sorted(p.name for p in cpu_platform.CPU_OVERRIDES_FILE.parent.glob("*.yaml")),
    "dist_location": str(dist.locate_file("")),
    "plugin": [ep.value for ep in plugins],
}))
"""


def checkout_modules() -> set[str]:
    """Every module the checkout's packages hold, by installed name."""
    modules = set()
    for folder, package in INSTALLED_AS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules.add(".".join((package, *parts)))
    return modules


def wheel_modules(names: list[str]) -> set[str]:
    """Module names of the .py files in a wheel's file list."""
    modules = set()
    for name in names:
        if name.endswith(".py"):
            parts = name[: -len(".py")].split("/")
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def build_wheel(dist_dir: Path, tmp: Path) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info into the source folder, and the
    # checkout's egg-info is what an editable install's metadata lookups may find.
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(dist_dir),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = dist_dir.glob("verl_avsd-*.whl")
    return wheel


def fresh_venv(root: Path) -> tuple[Path, Path]:
    """A venv whose interpreter sees this environment's packages (a .pth line) but not the
    editable install: .pth files inside a directory added that way are not processed, so the
    editable finder never runs. Returns (bin dir, site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    )
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    assert not any(Path(d).resolve().is_relative_to(root.resolve()) for d in deps)
    (site / "installed_dependencies.pth").write_text("\n".join(deps) + "\n")
    return root / "bin", site


def venv_env(bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(VIRTUAL_ENV=str(bin_dir.parent), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    return env


def under(path: str | Path, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


@pytest.mark.slow
def test_wheel_installs_every_module_data_file_and_runs_the_demo(tmp_path):
    wheel = build_wheel(tmp_path / "dist", tmp_path)

    # 1. the wheel's file list: every module, both yamls, every file of the toy model
    names = zipfile.ZipFile(wheel).namelist()
    expected = checkout_modules()
    found = wheel_modules(names)
    assert expected - found == set(), "modules missing from the wheel"
    assert found - expected == set(), "modules in the wheel that the checkout does not have"
    data = {
        f"verl_avsd/{p.relative_to(REPO / 'verl_avsd').as_posix()}"
        for sub, pattern in (("config", "*"), ("assets", "*"), ("cpu", "*.yaml"))
        for p in (REPO / "verl_avsd" / sub).rglob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {"verl_avsd/config/avsd.yaml", "verl_avsd/cpu/cpu.yaml", "verl_avsd/assets/toy_model/model.safetensors"} <= data
    assert data - set(names) == set(), "data files missing from the wheel"

    # 2. installed into a fresh venv, every module imports from there, none from the checkout
    bin_dir, site = fresh_venv(tmp_path / "venv")
    env = venv_env(bin_dir)
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index", "-q", str(wheel)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run(
        [str(bin_dir / "python"), "-c", PROBE, json.dumps(sorted(expected))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert set(report["files"]) == expected
    outside = {name: path for name, path in report["files"].items() if not under(path, site)}
    assert outside == {}, "modules imported from somewhere else than the new venv"
    assert under(report["dist_location"], site) and report["plugin"] == ["verl_avsd.plugin"]
    assert under(report["toy_model_dir"], site)
    assert report["toy_model"] == sorted(p.name for p in (REPO / "verl_avsd/assets/toy_model").iterdir())
    assert report["cpu_dir"] == ["cpu.yaml"] and report["cpu_overrides"] > 0

    # 3. the console script trains one step on the shipped model, cwd outside the checkout
    out = tmp_path / "demo"
    demo = subprocess.run(
        [str(bin_dir / "verl-avsd"), "demo", "--steps", "1", "--prompts-per-step", "4", "--output", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    log = demo.stdout[-3000:] + demo.stderr[-3000:]
    assert demo.returncode == 0, log
    assert "no model at" not in demo.stdout, log  # it would fall back to an untrained model
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1], log
    assert "critic/score/mean" in records[0] and "avsd/gate_mean" in records[0]
    assert f"model {report['toy_model_dir']}" in demo.stdout
