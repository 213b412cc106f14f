"""`python -m verl_avsd.cpu`: the CPU overrides (cpu.yaml), one per line, for shell scripts:

python -m verl.trainer.main_ppo $(python -m verl_avsd.cpu) key=value ...
"""

# First, as in every verl process: the plugin imports the platform module before verl picks its
# platform. Importing verl_avsd.cpu.platform first would import verl, which would import the
# plugin while the platform module is still half-initialized, and verl would pick "cuda".
import verl_avsd.plugin  # noqa: F401,I001
from verl_avsd.cpu.platform import cpu_overrides

print("\n".join(cpu_overrides()))
