"""ZeroMQ transport: the wire codec, node keys and addresses, and the socket loop.

The only package that imports zmq. It imports `chain` (encoding, size limits) and nothing
else of ours: inbound messages and link changes reach the actors as events through a
callback (transport.events), so this package never imports an actor.

- transport.messages: envelope, message classes, registry, per-type size limits.
- transport.keys: CURVE node keys, "<hex key>@host:port" peer addresses, endpoints.
- transport.events: LinkUp, LinkDown, Received, Rejected, AuthRefused.
- transport.loop: Transport, the thread that owns every zmq socket.
"""
