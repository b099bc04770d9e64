"""The collecting side of the ZMQ transport: `TrainingServer` receives runs from many senders
(exactly once, per sender token and limits), stores them and publishes models."""
