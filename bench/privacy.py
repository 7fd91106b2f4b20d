"""What the minimise step costs beside the work the pipeline already does on the same input.

Run: ``.venv/bin/python bench/privacy.py [--rounds 20]``.

For every real input in tests/data/shared (24 emails through email-respond, 20 calendars through
calendar-prep, 5 task files through task-prioritize), one round validates and prepares the input
(step 4: parsing, rendering, clipping) and then minimises the prepared request (masking secrets and,
for the email and calendar operations, pseudonymising people), timing the two parts separately.
Prints per operation the median microseconds of each part and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from opsgate.errors import InvalidInput
from opsgate.operations import OPERATIONS
from opsgate.operations.io import input_from_file
from opsgate.operations.privacy import PrivacyPolicy

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "shared"
PLAN = {"email-respond": "emails/*.eml", "calendar-prep": "calendars/*.ics", "task-prioritize": "tasks/*.ics"}


def measure(op_id: str, pattern: str, rounds: int, policy: PrivacyPolicy) -> tuple[float, float, int]:
    """Median µs of validate+prepare and of minimise per input, and the number of inputs run."""
    op = OPERATIONS[op_id]
    prepare_us, minimise_us, inputs = [], [], 0
    for path in sorted(DATA.glob(pattern)):
        body = input_from_file(op_id, path)
        try:
            op.prepare(op.Input.model_validate(body))
        except InvalidInput:
            continue  # documented refusals (e.g. a calendar without events) send nothing
        inputs += 1
        for _ in range(rounds):
            t0 = time.perf_counter()
            prepared = op.prepare(op.Input.model_validate(body))
            t1 = time.perf_counter()
            policy.minimise(op_id, prepared.request, prepared.people)
            t2 = time.perf_counter()
            prepare_us.append((t1 - t0) * 1e6)
            minimise_us.append((t2 - t1) * 1e6)
    return statistics.median(prepare_us), statistics.median(minimise_us), inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="Repetitions per input.")
    args = parser.parse_args()
    policy = PrivacyPolicy()
    print(f"{'operation':<16} {'inputs':>6} {'prepare µs':>11} {'minimise µs':>12} {'ratio':>6}")
    for op_id, pattern in PLAN.items():
        prepare, minimise, inputs = measure(op_id, pattern, args.rounds, policy)
        print(f"{op_id:<16} {inputs:>6} {prepare:>11.0f} {minimise:>12.0f} {minimise / prepare:>6.2f}")


if __name__ == "__main__":
    main()
