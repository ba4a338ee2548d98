"""SIGKILL at random moments of the CLI's writes: the output is always absent, the old file,
or the complete new file.

For each of ``effects``, ``sample`` and ``counterfactual`` the command first runs once to the
end (the reference output, and how long its write takes). Then, ``--trials`` times, the same
command runs over an old file (with ``--overwrite``) and is killed with SIGKILL at a random
moment of its write: a uniform delay in [0, 1.2 × write time] after the writer starts (the
wrapper prints a line when ``cradle_pyro.inference.outputs.atomic_file`` opens and one when it has renamed
the file into place; nothing else is changed).
The output is then classified by checksum: ``old`` (the file before), ``new`` (byte for byte
the reference), ``new-equal`` (an .h5ad whose bytes differ but whose content equals the
reference), ``absent`` or ``damaged``. Any ``damaged`` is a failure.

Run: python benchmarks/kill_writes.py [--trials 20]  →  benchmarks/results/kill_writes.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "kill_writes.json"

WRAPPER = """
import sys, cradle_pyro.inference.outputs as outputs
real = outputs.atomic_file
import contextlib
@contextlib.contextmanager
def announced(path):
    print("WRITE-START", flush=True)
    with real(path) as tmp:
        yield tmp
    print("WRITE-END", flush=True)
outputs.atomic_file = announced
from cradle_pyro.inference.cli import main
sys.exit(main(sys.argv[1:]))
"""


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def same_h5ad(a: Path, b: Path) -> bool:
    import anndata as ad

    try:
        x, y = ad.read_h5ad(a), ad.read_h5ad(b)
    except Exception:
        return False
    dense = lambda m: m.toarray() if hasattr(m, "toarray") else np.asarray(m)
    return (x.shape == y.shape and np.array_equal(dense(x.X), dense(y.X))
            and x.obs.equals(y.obs) and sorted(x.layers) == sorted(y.layers))


def launch(argv, env):
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def wait_for_write(proc) -> float:
    for line in proc.stdout:
        if line.startswith("WRITE-START"):
            return time.perf_counter()
    raise RuntimeError("the command ended before writing")


def classify(out: Path, old_md5: str, ref: Path) -> str:
    if not out.exists():
        return "absent"
    digest = md5(out)
    if digest == old_md5:
        return "old"
    if digest == md5(ref):
        return "new"
    if out.suffix == ".h5ad" and same_h5ad(out, ref):
        return "new-equal"
    return "damaged"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from cradle_pyro import simulate_screen
    from cradle_pyro.inference.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="kill_writes_"))
    screen = work / "screen.h5ad"
    simulate_screen(n_cells=3000, n_genes=1500, n_singles=8, n_combinations=4, seed=1).write_h5ad(screen)
    run = work / "run"
    assert cli(["train", str(screen), "--out", str(run), "--epochs", "1", "--no-doublets",
                "--hidden-dim", "32", "--num-particles", "1"]) == 0
    perts = "P0,P1,P2,P3,P4,P5,P6,P7,P0+P1,P2+P3"
    commands = {
        "effects": ["effects", str(run), "--perturbations", perts, "--num-draws", "20",
                    "--n-cells", "20", "--out", "{out}.csv"],
        "sample": ["sample", str(run), "--perturbation", "P0+P1", "--n", "20000",
                   "--out", "{out}.h5ad"],
        "counterfactual": ["counterfactual", str(run), str(screen), "--do", "artifact=clean",
                           "--num-samples", "2", "--out", "{out}.h5ad"],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    rng = np.random.default_rng(args.seed)
    report = {"commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.strip(),
              "settings": {"trials": args.trials, "seed": args.seed, "screen": "3000 x 1500",
                           "delay": "uniform in [0, 1.2 x write time] after the writer opens"},
              "commands": {}}
    for name, template in commands.items():
        ref_argv = [a.format(out=work / f"{name}_ref") for a in template]
        ref = Path(ref_argv[-1])
        proc = launch(ref_argv, env)
        start = wait_for_write(proc)
        end = next(time.perf_counter() for line in proc.stdout if line.startswith("WRITE-END"))
        assert proc.wait() == 0, name
        write_seconds = end - start  # from opening the temporary to the rename
        out = Path(str(ref).replace("_ref", "_out"))
        outcomes = []
        for trial in range(args.trials):
            out.write_text(f"the user's old file, trial {trial}\n")
            old = md5(out)
            argv = [a.format(out=work / f"{name}_out") for a in template] + ["--overwrite"]
            proc = launch(argv, env)
            opened = wait_for_write(proc)
            delay = float(rng.uniform(0, 1.2 * write_seconds))
            time.sleep(max(0.0, opened + delay - time.perf_counter()))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            outcome = classify(out, old, ref)
            outcomes.append({"delay_s": round(delay, 3), "outcome": outcome})
            print(f"{name} trial {trial}: killed {delay:.2f} s into a {write_seconds:.2f} s write "
                  f"-> {outcome}", flush=True)
        counts = {k: sum(o["outcome"] == k for o in outcomes)
                  for k in ("old", "new", "new-equal", "absent", "damaged")}
        report["commands"][name] = {"write_seconds": round(write_seconds, 3), "counts": counts,
                                    "trials": outcomes}
    report["damaged_total"] = sum(c["counts"]["damaged"] for c in report["commands"].values())
    RESULT.write_text(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v["counts"] for k, v in report["commands"].items()}, indent=2))
    print(f"wrote {RESULT}")
    return 1 if report["damaged_total"] else 0


if __name__ == "__main__":
    sys.exit(main())
