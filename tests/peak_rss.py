"""Peak-RSS measurement for scripts the tests run in a fresh process (so the peak is theirs alone).

`PEAK_GROWTH` is Python source that defines `peak_growth(work) -> (bytes, result)`: the peak RSS
above the current one while `work()` runs. /proc/self/clear_refs "5" resets the high-water mark;
ru_maxrss would not do, it keeps the forking parent's peak across exec."""

PEAK_GROWTH = """
def peak_growth(work):
    open("/proc/self/clear_refs", "w").write("5")
    status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    before = status("VmRSS")
    result = work()
    return status("VmHWM") - before, result
"""
