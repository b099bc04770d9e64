"""Collection at scale: the loop that drives a wrapped env with a policy (`CollectionLoop`),
and fleets of such loops in worker processes placed and supervised by Ray (`Fleet`)."""
