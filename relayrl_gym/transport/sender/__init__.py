"""The sending side of the ZMQ transport: `ZMQSink` streams a run to a collector, at least
once; what it could not deliver is spilled and resent later (`spill.resend`)."""
