"""Start-up time of each console script's quickest command (``--help``, ``audioml-data list``)
against a bare ``python -c pass`` (the physical floor) and ``import torch`` (what a script that
imported the whole stack would pay at least), in fresh processes, best of ``--repeat``.

    python -m benchmarks.startup [--repeat 5]

Target: well under 2 s per command on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "audioml-train --help": ["-m", "audioml.train", "--help"],
    "audioml-eval --help": ["-m", "audioml.evaluate", "--help"],
    "audioml-predict --help": ["-m", "audioml.predict", "--help"],
    "audioml-compare --help": ["-m", "audioml.compare", "--help"],
    "audioml-data list": ["-m", "audioml.data.cli", "list"],
}
BASELINES = {"python -c pass": ["-c", "pass"], "python -c 'import torch'": ["-c", "import torch"]}


def best_time(arguments: list[str], repeat: int) -> float:
    """Fastest wall time (s) of ``python <arguments>`` over ``repeat`` fresh processes."""
    env = {k: v for k, v in os.environ.items() if k != "AUDIOML_CONFIG_PATH"}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, *arguments], check=True, capture_output=True, env=env,
                       cwd=Path(__file__).resolve().parents[1])
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    floor = best_time(BASELINES["python -c pass"], args.repeat)
    torch_import = best_time(BASELINES["python -c 'import torch'"], args.repeat)
    print(f"{'command':<28} {'seconds':>8} {'x python':>9} {'x import torch':>15}")
    print(f"{'python -c pass':<28} {floor:8.2f} {1.0:9.1f} {floor / torch_import:15.2f}")
    print(f"{'python -c import torch':<28} {torch_import:8.2f} {torch_import / floor:9.1f} {1.0:15.2f}")
    for name, arguments in COMMANDS.items():
        seconds = best_time(arguments, args.repeat)
        print(f"{name:<28} {seconds:8.2f} {seconds / floor:9.1f} {seconds / torch_import:15.2f}")


if __name__ == "__main__":
    main()
