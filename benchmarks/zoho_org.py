"""A generated Zoho org served by the simulator in its own process, for the mirror benchmark.

    python benchmarks/zoho_org.py --records 100000 --latency-ms 300

Prints one JSON line (the simulator's address, the ``[zoho]`` section to use,
numbers by kind with the user each should reach), then serves until its
standard input closes. Its own process keeps its CPU (JSON encoding of
200-record pages) off the measured one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from zoho_simulator import ZohoSimulator, generate_org


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--sample", type=int, default=250, help="numbers of each kind to print")
    args = parser.parse_args(argv)
    sim = ZohoSimulator(max_tokens_per_window=1000)
    summary = generate_org(sim, args.records)
    sim.latency_s = args.latency_ms / 1000
    sim.start()
    kinds = {kind: list(numbers[: args.sample]) for kind, numbers in summary.kinds().items()}
    counts = {module: len(sim.records(module)) for module in ("Leads", "Contacts", "Accounts", "Deals")}
    owners = {number: summary.owner_of[number] for numbers in kinds.values() for number in numbers}
    users = {user["id"]: user.get("Extension", "") for user in summary.users}
    print(json.dumps({"url": sim.url, "zoho": sim.zoho_config(user_extension_field="Extension"), "kinds": kinds, "owners": owners, "extensions": users, "records": counts}), flush=True)
    try:
        sys.stdin.read()
    finally:
        print(json.dumps({"credits_used": sim.credits_used}), flush=True)
        sim.stop()


if __name__ == "__main__":
    main()
