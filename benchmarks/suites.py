"""The benchmark suites, one entry point, and the results page.

    python benchmarks/suites.py list             # the suites, their scripts and result files
    python benchmarks/suites.py run SUITE        # run every script of one suite (long)
    python benchmarks/suites.py page             # write docs/results.md from benchmarks/results/

Each suite names the scripts that measure one thing a reader asks about. ``design`` holds the
settings comparisons behind today's defaults (their numbers are in docs/measurements.md). The
page lists every result file under its suite with the commit that last wrote it (``git log``),
the settings it records, and a few headline numbers where the file has them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "results.md"

# suite -> (what it answers, [(script with arguments, result files or folders)])
SUITES = {
    "accuracy": ("held-out effects on real screens, on equal terms, with baselines and the noise "
                 "ceiling", [
                     ("ablation.py --screen norman --max-epochs 200", ["ablation_norman.json"]),
                     ("cell_eval_norman.py", ["cell_eval_norman.json"]),
                     ("paper_preset_check.py --published /tmp/cradle_pub",
                      ["paper_preset_check.json"]),
                     ("norman_unseen_combinations.py", ["norman"]),
                     ("norman_error_sources.py", ["norman_error_sources.json"]),
                     ("posterior_seed_stability.py", ["posterior_seed_stability.json"]),
                     ("norman_interactions.py", ["norman_interactions.json"]),
                 ]),
    "recovery": ("recovery of known truth on simulated screens, counterfactual cleaning against "
                 "clean twins", [
                     ("simulator_effects.py", ["simulator_effects.json"]),
                     ("simulator_recovery.py", ["simulator_recovery.json"]),
                     ("latent_artifacts.py --setting standard", ["latent_artifacts_standard.json"]),
                     ("latent_artifacts.py --setting overlap", ["latent_artifacts_overlap.json"]),
                     ("latent_artifacts.py --setting signature --states latent",
                      ["latent_artifacts_signature.json"]),
                     ("papalexi_artifacts.py", ["papalexi_artifacts.json"]),
                     ("papalexi_artifacts.py --states latent "
                      "--out benchmarks/results/papalexi_artifacts_abduction.json",
                      ["papalexi_artifacts_abduction.json"]),
                     ("simulated_interactions.py", ["simulated_interactions.json"]),
                 ]),
    "calibration": ("whether intervals cover at their nominal rate", [
        ("sbc.py --figure benchmarks/results/figures/sbc_ranks.png", ["sbc.json"]),
        ("sbc.py --seeds 0 --replicates 8 --oracle-decoder weights-only "
         "--out benchmarks/results/sbc_oracle_decoder.json", ["sbc_oracle_decoder.json"]),
        ("sbc.py --bayesian-decoder --out benchmarks/results/sbc_bayesian_decoder.json",
         ["sbc_bayesian_decoder.json"]),
        ("sbc.py --bootstrap-members 3 --out benchmarks/results/sbc_bagged.json",
         ["sbc_bagged.json"]),
        ("sbc.py --bootstrap-members 5 --out benchmarks/results/sbc_bagged5.json",
         ["sbc_bagged5.json"]),
        ("nuts_reference.py", ["nuts_reference.json"]),
        ("interval_kinds.py", ["interval_kinds.json"]),
        ("interval_kinds.py --seeds 0 --members 3 --bootstrap "
         "--out benchmarks/results/interval_kinds_bagged.json", ["interval_kinds_bagged.json"]),
        ("simulator_effects.py", ["simulator_effects.json"]),
        ("papalexi_diagnostics.py", ["papalexi"]),
    ]),
    "speed": ("time of a training step and of the queries", [
        ("throughput.py", ["throughput.json"]),
        ("step_vs_plain.py", ["step_vs_plain.json"]),
        ("ddp_scaling.py", ["ddp_scaling.json"]),
        ("gpu_smoke.py", ["gpu_smoke.json"]),
        ("screen_queries.py", ["screen_queries.json"]),
    ]),
    "scale": ("memory and time from 10,000 to 1,000,000 cells, and epochs by screen size", [
        ("scale.py", ["scale.json"]),
        ("scale.py --on-disk --out benchmarks/results/scale_on_disk.json", ["scale_on_disk.json"]),
        ("epochs_rule.py", ["epochs_rule.json"]),
    ]),
    "reliability": ("bad input refused in one line; no user file lost or half-written", [
        ("bad_inputs_table.py", ["bad_inputs_table.md"]),
        ("kill_writes.py", ["kill_writes.json"]),
    ]),
    "design": ("settings comparisons behind today's defaults (docs/measurements.md)", [
        ("cross_validation.py", ["cross_validation.json"]),
        ("training_length.py", ["training_length.json"]),
        ("library_effects.py", ["library_effects.json"]),
        ("gene_effects.py", ["gene_effects_norman_cradle.json"]),
        ("basal_source.py", ["basal_source_sim.json", "basal_source_norman.json"]),
        ("ensembles.py", ["ensembles.json"]),
        ("alignment_weight.py", ["alignment_weight.json"]),
        ("effect_slope_check.py", ["effect_slope_check.json"]),
    ]),
}


def last_commit(path: Path) -> str:
    out = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", str(path)], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    return out or "not committed"


def _settings(content) -> str:
    if not isinstance(content, dict):
        return ""
    for key in ("settings", "config", "defaults", "train_config"):
        if isinstance(content.get(key), dict):
            items = list(content[key].items())[:6]
            return "; ".join(f"{k}={v}" for k, v in items)
    stamp = content.get("commit")
    return f"commit recorded in file: {stamp}" if stamp else ""


def _headline(content, depth=0, prefix="") -> list:
    """Up to six numbers from the top of a result file: what a reader checks first."""
    found = []
    if not isinstance(content, dict) or depth > 2:
        return found
    for key, value in content.items():
        if len(found) >= 6:
            break
        name = f"{prefix}{key}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}")
        elif isinstance(value, dict) and key not in ("settings", "config", "trials"):
            found += _headline(value, depth + 1, name + ".")[: 6 - len(found)]
    return found


def describe(path: Path) -> tuple[str, str]:
    if path.is_dir():
        files = sorted(p.name for p in path.rglob("*.json"))[:4]
        return "", f"folder: {', '.join(files)}{' …' if len(files) == 4 else ''}"
    if path.suffix != ".json":
        return "", path.suffix.lstrip(".") + " file"
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return "", "unreadable"
    return _settings(content), ", ".join(_headline(content))


def page() -> str:
    lines = ["# Results", "",
             "Generated by `python benchmarks/suites.py page` from `benchmarks/results/`. Each row is "
             "one result file: the commit that last wrote it (`git log`), the settings it records "
             "and the first numbers in it. What the numbers mean, and which defaults each ran at, "
             "is in [What we measured](measurements.md); run a suite with "
             "`python benchmarks/suites.py run SUITE`.", ""]
    for suite, (what, entries) in SUITES.items():
        lines += [f"## {suite}", "", what[0].upper() + what[1:] + ".", "",
                  "| script | result | commit | settings | headline |", "|---|---|---|---|---|"]
        for script, results in entries:
            for result in results:
                path = RESULTS / result
                if not path.exists():
                    lines.append(f"| `{script}` | `{result}` | not run yet | | |")
                    continue
                settings, headline = describe(path)
                lines.append(f"| `{script}` | `{result}` | {last_commit(path)} | "
                             f"{settings.replace('|', '/')} | {headline.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    run = sub.add_parser("run")
    run.add_argument("suite", choices=sorted(SUITES))
    sub.add_parser("page")
    args = parser.parse_args(argv)
    if args.command == "list":
        for suite, (what, entries) in SUITES.items():
            print(f"{suite}: {what}")
            for script, results in entries:
                print(f"    {script:55s} -> {', '.join(results)}")
    elif args.command == "run":
        for script, _ in SUITES[args.suite][1]:
            cmd = [sys.executable, str(ROOT / "benchmarks" / script.split()[0]), *script.split()[1:]]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
    else:
        PAGE.write_text(page())
        print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
