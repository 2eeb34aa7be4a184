"""Summary of an ``nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,
temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 500`` log (device.sh
samples it while an engine runs): SM clock min / median / max, power, temperature and the
throttle-reason bit masks seen, as one ``[clocks]`` line. Used to tell a GPU that slowed down
from a host that did, when the same engine's step time varies from run to run."""
from __future__ import annotations

import statistics
import sys


def summarize(lines: list[str]) -> str:
    sm, mem, power, temp, reasons = [], [], [], [], {}
    for line in lines:
        f = [x.strip() for x in line.split(",")]
        if len(f) < 6:
            continue
        try:
            sm.append(float(f[1].split()[0]))
            mem.append(float(f[2].split()[0]))
            power.append(float(f[3].split()[0]))
            temp.append(float(f[4].split()[0]))
        except (ValueError, IndexError):
            continue
        reasons[f[5]] = reasons.get(f[5], 0) + 1
    if not sm:
        return "[clocks] no samples"
    return (f"[clocks] samples={len(sm)} sm_mhz min/median/max={min(sm):.0f}/{statistics.median(sm):.0f}/{max(sm):.0f}"
            f" mem_mhz median={statistics.median(mem):.0f} power_w median/max={statistics.median(power):.0f}/"
            f"{max(power):.0f} temp_c max={max(temp):.0f} throttle_reasons={reasons}")


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        print(summarize(fh.readlines()))
