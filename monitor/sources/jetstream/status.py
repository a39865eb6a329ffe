"""``vitalmon cluster``: the cluster as the JetStream source sees it, read from NATS.

The stream (messages, leader, replicas and whether each is current), the live members,
and the partition map: each partition's owner (its lease in ``<stream>_OWNERS``), and
its consumer's backlog (messages not yet delivered, delivered not yet acknowledged).
Read-only: it takes no lease and changes nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

from monitor.config import JetStreamSourceConfig


async def cluster_status(cfg: JetStreamSourceConfig, timeout: float = 5.0) -> dict[str, Any]:
    import nats
    from nats.js.errors import NotFoundError

    from monitor.sources.jetstream.ownership import live_keys

    nc = await nats.connect(cfg.servers, connect_timeout=timeout, max_reconnect_attempts=1)
    try:
        js = nc.jetstream(timeout=timeout)
        out: dict[str, Any] = {"stream": cfg.stream, "partitions": cfg.partitions}
        try:
            info = await js.stream_info(cfg.stream)
        except NotFoundError:
            out["error"] = f"stream {cfg.stream} does not exist (no instance has started)"
            return out
        cluster = info.cluster
        out["messages"] = info.state.messages
        out["bytes"] = info.state.bytes
        out["leader"] = cluster.leader if cluster else None
        out["replicas"] = [
            {"name": p.name, "current": bool(p.current), "lag": p.lag or 0}
            for p in (cluster.replicas or [] if cluster else [])
        ]
        owners: dict[str, str] = {}
        with contextlib.suppress(NotFoundError):
            kv = await js.key_value(f"{cfg.stream}_OWNERS")
            for key in await live_keys(kv):
                with contextlib.suppress(Exception):
                    owners[key] = ((await kv.get(key)).value or b"").decode()
        out["members"] = sorted(v for k, v in owners.items() if k.startswith("member."))
        out["capture"] = owners.get(f"p.{cfg.partitions}")
        rows = []
        for n in range(cfg.partitions):
            row: dict[str, Any] = {"partition": n, "owner": owners.get(f"p.{n}")}
            try:
                ci = await js.consumer_info(cfg.stream, f"{cfg.stream}-p{n}")
            except NotFoundError:
                row.update(pending=None, ack_pending=None)
            else:
                row.update(pending=ci.num_pending, ack_pending=ci.num_ack_pending)
            rows.append(row)
        out["partition_map"] = rows
        return out
    finally:
        await nc.close()


def render(status: dict[str, Any]) -> str:
    """The status as text for people."""
    if "error" in status:
        return f"{status['stream']}: {status['error']}"
    replicas = ", ".join(
        f"{r['name']}{'' if r['current'] else ' (behind ' + str(r['lag']) + ')'}"
        for r in status["replicas"]
    )
    lines = [
        f"stream {status['stream']}: {status['messages']} messages, "
        f"{status['bytes'] / 1e6:.1f} MB; leader {status['leader']}"
        + (f"; followers {replicas}" if replicas else ""),
        f"members: {', '.join(status['members']) or 'none'}; capture session: "
        f"{status['capture'] or 'nobody'}",
        "partition  owner                 not delivered  not acked",
    ]
    for row in status["partition_map"]:
        pending = "-" if row["pending"] is None else str(row["pending"])
        acking = "-" if row["ack_pending"] is None else str(row["ack_pending"])
        owner = row["owner"] or "NOBODY"
        lines.append(f"{row['partition']:>9}  {owner:<20}  {pending:>13}  {acking:>9}")
    return "\n".join(lines)
