"""JetStream source (``sources[].type: jetstream``, the ``cluster`` extra): readings from
a replicated, partitioned stream on a NATS cluster.

Devices publish MQTT to the cluster's MQTT listeners exactly as to mosquitto. The NATS
server turns each QoS 1 publish into a core NATS message, which a stream would capture
only at most once: measured on nats-server 2.15.1 (3 nodes, replicas 3), killing the
stream leader while a device published 3,000 QoS 1 messages left 1,131 in the stream,
although the device had every PUBACK. So the messages go through a **capture session**
(:mod:`.capture`): one persistent MQTT session of the cluster's (QoS 1 subscription to the
topic template), for which the server stores each device publish, replicated, before its
PUBACK; the session puts each message into the stream with a JetStream publish (acked
once stored on a majority of replicas) and only then acknowledges it to MQTT. Measured
the same way, with the session: 3,000 of 3,000 stored.

The stream rewrites each captured subject to its partition (:mod:`.subjects`: NATS's
``partition()`` of ward and bed). The source (:mod:`.source`) reads each partition with a
durable pull consumer and acknowledges each message to JetStream only after the batch it
is in is committed to the journal, as the MQTT source does with PUBACKs: a message not
committed is delivered again (to this instance, or to whichever takes the partition
over), and the engine and the store absorb what was already committed.
"""

from __future__ import annotations

from monitor.sources.jetstream.source import JetStreamSource

__all__ = ["JetStreamSource"]
