"""verl loads `verl_avsd.plugin` through the `verl.plugins` entry point and swallows any error it
raises, so a broken plugin would silently leave the estimators unregistered. Test both halves."""

import importlib
import subprocess
import sys
from importlib.metadata import entry_points


def test_plugin_module_imports_on_its_own():
    importlib.import_module("verl_avsd.plugin")


def test_entry_point_is_declared():
    eps = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert eps.get("avsd") == "verl_avsd.plugin"


def test_fresh_interpreter_finds_estimators_without_any_import_of_ours():
    code = (
        "from verl.trainer.ppo import core_algos\n"
        "for name in ('avsd', 'avsd_consensus', 'avsd_arithmetic', 'opsd', 'rlsd'):\n"
        "    fn = core_algos.get_adv_estimator_fn(name)\n"
        "    assert fn.__module__ == 'verl_avsd.estimators', fn\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
