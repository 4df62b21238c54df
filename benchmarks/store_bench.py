"""The shared store: outcome recording and flush rates on PostgreSQL against SQLite, same run.

Recording: outcomes handed to the store by many calls at once, as the
outcome handler does (``record``, each acknowledged once committed): SQLite
commits them in groups with ``synchronous=FULL``; PostgreSQL one transaction
each, on a pool of ``pool_max`` connections, the server's default
``synchronous_commit=on``. Flush: the delivery worker delivers the same backlog
(a quarter from unknown callers: lead, call, task) to the Zoho simulator
with no added latency, so the store's own cost shows.

PostgreSQL comes from ``--store-url`` or ``$CRMROUTE_TEST_POSTGRES_URL``
(``eval "$(bash .ci/start-postgres)"`` starts a throwaway one); a database is
created for the run and dropped after. Without one the suite says so and
measures SQLite alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from outcomes import KNOWN, _outcomes  # noqa: E402
from zoho_simulator import ZohoSimulator  # noqa: E402

from dialplan.outbox import StoreSettings, open_store  # noqa: E402
from dialplan.outbox.interface import OutboxStore  # noqa: E402
from dialplan.outcome import outcome_from_channel  # noqa: E402
from fastagi_server.app import App  # noqa: E402
from fastagi_server.config import config_from_dict  # noqa: E402
from report import standalone  # noqa: E402

URL_ENV = "CRMROUTE_TEST_POSTGRES_URL"


def _database(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def recording(store: OutboxStore, count: int, concurrency: int) -> dict[str, float]:
    """``count`` outcomes recorded by ``concurrency`` callers at once; outcomes per second."""
    now = time.time()
    made = [
        outcome_from_channel(call_id=f"1800000000.{i}", caller=KNOWN, readings={"dial_status": "ANSWER", "peer_number": "101"}, ended_at=now, region="ES")
        for i in range(count)
    ]

    async def drive() -> float:
        queue = iter(made)

        async def caller() -> None:
            for outcome in queue:
                await store.record(outcome, time.time())

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - started

    elapsed = asyncio.run(drive())
    return {"outcomes": count, "seconds": round(elapsed, 3), "outcomes_per_second": round(count / elapsed, 1)}


def flushing(sim: ZohoSimulator, config_extra: dict[str, Any], store: OutboxStore, count: int, ids: tuple[str, str, str]) -> dict[str, float]:
    """The delivery worker delivers ``count`` recorded outcomes from ``store`` to the simulator."""
    ana_id, lead_id, boss_id = ids
    store.record_many([(o, time.time()) for o in _outcomes(count, ana_id, lead_id, True)])
    config = config_from_dict({
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES"},
        "zoho": sim.zoho_config(user_extension_field="Extension"),
        "outcomes": {"senior_manager_id": boss_id},
        "mirror": {"enabled": False},
        **config_extra,
    })

    async def flush() -> tuple[int, float]:
        app = App.from_config(config)
        try:
            started = time.perf_counter()
            summary = await app.delivery_worker.flush()
            return summary.delivered, time.perf_counter() - started
        finally:
            await app.aclose()

    delivered, elapsed = asyncio.run(flush())
    return {"outcomes": count, "delivered": delivered, "seconds": round(elapsed, 3), "outcomes_per_second": round(count / elapsed, 1)}


def _crm(sim: ZohoSimulator) -> tuple[str, str, str]:
    ana = sim.add_user("Ana García", "ana@example.com", Extension="101")
    sim.add_user("Ben Okafor", "ben@example.com", Extension="102")
    boss = sim.add_user("Sam Senior", "sam@example.com")
    lead = sim.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone=KNOWN, Lead_Status="Contacted")
    return ana["id"], lead["id"], boss["id"]


def run(options: argparse.Namespace) -> dict[str, Any]:
    base = options.store_url or os.environ.get(URL_ENV, "")
    report: dict[str, Any] = {"outcomes": options.store_outcomes, "concurrency": options.store_concurrency, "postgresql": bool(base)}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_path = Path(tmp) / "outbox.sqlite"
        stores: dict[str, tuple[OutboxStore, dict[str, Any], OutboxStore]] = {}
        sqlite_extra = {"outbox": {"path": str(sqlite_path)}}
        stores["sqlite"] = (open_store(Path(tmp) / "record.sqlite"), sqlite_extra, open_store(sqlite_path))
        dropped = ""
        if base:
            import psycopg

            name = "crmroute_bench_" + secrets.token_hex(4)
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
                conn.execute(f'CREATE DATABASE "{name}_rec"')
            dropped = name
            url = _database(base, name)
            settings = StoreSettings(url=url)
            stores["postgresql"] = (
                open_store(Path("unused"), StoreSettings(url=_database(base, name + "_rec"))),
                {"store": {"url": url}, "outbox": {"path": str(Path(tmp) / "unused.sqlite")}},
                open_store(Path("unused"), settings),
            )
        try:
            for kind, (recorder, extra, backlog) in stores.items():
                report[f"{kind}_recording"] = recording(recorder, options.store_outcomes, options.store_concurrency)
                recorder.close()
                with ZohoSimulator(latency_s=0.0, max_tokens_per_window=1000) as sim:
                    report[f"{kind}_flush"] = flushing(sim, extra, backlog, options.store_flush, _crm(sim))
                backlog.close()
        finally:
            if dropped:
                import psycopg

                with psycopg.connect(base, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{dropped}" WITH (FORCE)')
                    conn.execute(f'DROP DATABASE IF EXISTS "{dropped}_rec" WITH (FORCE)')
    if base:
        report["recording_postgresql_vs_sqlite"] = round(
            report["postgresql_recording"]["outcomes_per_second"] / report["sqlite_recording"]["outcomes_per_second"], 2
        )
        report["flush_postgresql_vs_sqlite"] = round(report["postgresql_flush"]["outcomes_per_second"] / report["sqlite_flush"]["outcomes_per_second"], 2)
    return report


def table(report: dict[str, Any]) -> str:
    lines = [f"store: {report['outcomes']} outcomes recorded by {report['concurrency']} calls at once; the delivery worker's flush to the Zoho simulator"]
    for kind in ("sqlite", "postgresql"):
        if f"{kind}_recording" not in report:
            lines.append(f"  {kind}: not measured (no PostgreSQL: --store-url or ${URL_ENV})")
            continue
        rec, fl = report[f"{kind}_recording"], report[f"{kind}_flush"]
        lines.append(
            f"  {kind}: recording {rec['outcomes_per_second']:,.0f} outcomes/s; flush {fl['outcomes_per_second']:,.0f} outcomes/s "
            f"({fl['delivered']} of {fl['outcomes']} delivered in {fl['seconds']} s)"
        )
    if report.get("postgresql"):
        lines.append(
            f"  PostgreSQL vs SQLite, same run: recording {report['recording_postgresql_vs_sqlite']}x, flush {report['flush_postgresql_vs_sqlite']}x"
        )
    return "\n".join(lines)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store-url", default="", help=f"store: a PostgreSQL server to create a database on (default ${URL_ENV})")
    parser.add_argument("--store-outcomes", type=int, help="store: outcomes recorded (default 5000; quick 300)")
    parser.add_argument("--store-flush", type=int, help="store: outcomes flushed (default 1000; quick 100)")
    parser.add_argument("--store-concurrency", type=int, default=50, help="store: calls recording at once")


def defaults(options: argparse.Namespace) -> None:
    quick = getattr(options, "quick", False)
    if getattr(options, "store_outcomes", None) is None:
        options.store_outcomes = 300 if quick else 5000
    if getattr(options, "store_flush", None) is None:
        options.store_flush = 100 if quick else 1000


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_options, defaults, run, table, argv)


if __name__ == "__main__":
    sys.exit(main())
