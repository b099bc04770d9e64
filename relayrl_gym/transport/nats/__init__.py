"""The NATS JetStream transport: ``sink="nats://HOST:4222/STREAM"`` publishes a run's batches
to a replicated stream (`NatsSink`); ``relayrl-gym serve --source nats://...`` and
``TrainingServer(source=...)`` consume it through a durable consumer, writing each batch once
(`NatsCollector`); models travel through the stream's object store and key-value bucket.
nats-py is needed only when one of them is used (``pip install "relayrl-gym[nats]"``).
"""
