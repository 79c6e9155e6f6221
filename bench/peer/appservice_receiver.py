"""Bench only: the application-service push path, measured outside the bot (`bench/capture.py`).

`python appservice_receiver.py PORT HS_TOKEN DATABASE` serves `PUT /_matrix/app/v1/transactions/{txn}` on
127.0.0.1: it checks the homeserver's token, stores every plain `m.room.message` of the transaction in SQLite
(WAL, synchronous=FULL) in one transaction, and answers 200 only once that commit returned, so Synapse retries a
transaction that was not stored (ack after durable). It is what the bot would do on this path, minus
normalising and sealing, so the bench can tell what pushing costs against syncing before building it in.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time

from aiohttp import web


def main() -> None:
    port, hs_token, database = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS messages (event_id TEXT PRIMARY KEY, room_id TEXT, json TEXT, seen REAL)")

    def store(rows: list[tuple[str, str, str, float]]) -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

    async def transaction(request: web.Request) -> web.Response:
        seen = time.monotonic()
        if request.headers.get("Authorization") != f"Bearer {hs_token}":
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        body = await request.json()
        rows = [
            (e["event_id"], e["room_id"], json.dumps(e), seen)
            for e in body.get("events", [])
            if e.get("type") == "m.room.message"
        ]
        if rows:
            await asyncio.to_thread(store, rows)
        return web.json_response({})

    async def anything(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", transaction)
    app.router.add_route("*", "/{tail:.*}", anything)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
