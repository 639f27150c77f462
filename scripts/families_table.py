"""The README's families table (family x step: pass / fail), made from the results of
``tests/test_families_pipeline.py`` (a JUnit XML file pytest wrote, or a fresh run of those tests).

    python scripts/families_table.py                      # run the tests, print the table
    python scripts/families_table.py --junit results.xml  # from an earlier run's --junitxml
    python scripts/families_table.py --readme             # and write it between the README's markers
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = "tests/test_families_pipeline.py"
STEPS = {  # test name → column
    "test_sft_full": "SFT (full)", "test_grpo_plus_lora": "GRPO++ (LoRA)",
    "test_sft_lora_and_merge": "SFT (LoRA) + merge",
    "test_dpo_policy_pairs": "DPO (KG pairs)", "test_served_and_evaluated": "vLLM serve + eval",
    "test_hf_processor_and_vllm_count_the_same_tokens_at_the_run_budget": "image tokens HF = vLLM",
}
BEGIN, END = "<!-- families-table: begin -->", "<!-- families-table: end -->"


def results(junit: Path) -> dict[str, dict[str, str]]:
    """family → step → "pass" / "fail" / "skip"."""
    table: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        match = re.fullmatch(r"(\w+)\[(\w+)\]", case.get("name", ""))
        if not match or match.group(1) not in STEPS:
            continue
        test, family = match.groups()
        outcome = "pass"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "fail"
        elif case.find("skipped") is not None:
            outcome = "skip"
        table.setdefault(family, {})[STEPS[test]] = outcome
    return table


def markdown(table: dict[str, dict[str, str]]) -> str:
    mark = {"pass": "pass", "fail": "**fail**", "skip": "skipped"}
    cols = list(STEPS.values())
    lines = ["| family | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for family in sorted(table):
        lines.append(f"| `{family}` | " + " | ".join(mark.get(table[family].get(c, ""), "not run") for c in cols)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, nargs="*", help="JUnit XML files of the tests (default: run them now)")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md between its markers")
    args = parser.parse_args()
    files = args.junit
    if not files:
        files = [Path(tempfile.mkdtemp()) / "families.xml"]
        subprocess.run([sys.executable, "-m", "pytest", "-q", TESTS, f"--junitxml={files[0]}"], cwd=ROOT, check=False)
    merged: dict[str, dict[str, str]] = {}
    for junit in files:
        if not junit.is_file():
            sys.exit(f"error: {junit}: no JUnit XML file; run pytest {TESTS} --junitxml=FILE first")
        for family, steps in results(junit).items():
            merged.setdefault(family, {}).update(steps)
    table = markdown(merged)
    print(table)
    if args.readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        if BEGIN not in text or END not in text:
            sys.exit(f"error: README.md has no {BEGIN} ... {END} block to replace")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
