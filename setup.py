"""Package discovery for the wheel; everything else is in pyproject.toml.

The repo keeps workers/ and data_prep/ at top level (one folder per concern), but they install
as sub-packages of verl_avsd so that nothing generic lands in site-packages. pyproject.toml
can either list packages by hand or `find` them under their folder names, not both, and `find`
cannot rename workers -> verl_avsd.workers. So packages are found here: any new sub-package
of verl_avsd/, workers/ or data_prep/ is in the wheel without an edit (a hand-written list once
left out verl_avsd.sandbox and verl_avsd.toy; tests/test_wheel.py checks every module).
"""

from setuptools import find_packages, setup

# folder in the repo -> package name once installed
INSTALLED_AS = {"verl_avsd": "verl_avsd", "workers": "verl_avsd.workers", "data_prep": "verl_avsd.data_prep"}


def installed_packages() -> list[str]:
    packages = []
    for folder, name in INSTALLED_AS.items():
        for found in find_packages(include=[folder, f"{folder}.*"]):
            packages.append(name + found[len(folder) :])
    return packages


setup(
    packages=installed_packages(),
    # a sub-package's folder follows from its parent's: verl_avsd.workers.x -> workers/x
    package_dir={name: folder for folder, name in INSTALLED_AS.items()},
)
